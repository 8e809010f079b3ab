"""Atomic file writes: a file is replaced whole or not at all.

Every file the project writes (rollouts, curves, budgets, reports, figures, data cards) goes
through :func:`atomic_write`:

1. the target is checked first (:func:`check_target`): not a folder, its folder not a file;
2. temp files that an earlier, crashed write of the same target left behind are removed
   (:func:`clean_stale_temps`);
3. the bytes go to a temp file ``.NAME.<pid>.<random>.tmp`` in the target's folder, created
   with the normal mode (0666 less the umask) or, when it replaces a file, that file's mode;
4. the temp file is flushed and fsynced, renamed over the target (``os.replace``, atomic on
   POSIX and Windows), and the folder is fsynced so that the rename survives a power cut;
5. on any failure, the temp file is removed and the old target is left as it was.

A writer killed at any moment (SIGKILL included) therefore leaves the target either as it was
or fully written, with its mode, and at most one temp file, which the next write cleans. A
live writer holds a lock on its temp file (where ``fcntl`` exists), so a concurrent write of the
same target never removes a temp file still in use.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import time
from pathlib import Path
from typing import BinaryIO, Iterator

try:  # POSIX only; elsewhere a temp file counts as stale by its age alone
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["atomic_write", "write_bytes", "write_text", "check_target", "clean_stale_temps",
           "exclusive", "pid_alive"]

#: Temp files whose process id cannot be read (older versions) are stale after this long.
STALE_AFTER_S = 3600.0


def check_target(path: str | os.PathLike) -> Path:
    """``path`` as a :class:`Path` if a file can be written there, else ``ValueError``.

    Refused: an existing folder, and a path under an existing file (``FILE/x``). Folders that
    do not exist yet are fine (writers create them). Call it before long work, so that a bad
    ``-o`` fails at once rather than after the work.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder; give a file name to write")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{path}: cannot write under {parent}, which is a file")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ValueError(f"{path}: the folder {parent} is not writable")
            break
    return path


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (True when it cannot be told)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or we cannot tell: keep its file
    return True


def _unlocked(path: Path) -> bool:
    """True if no live process holds the writer's lock on ``path``."""
    if fcntl is None:  # pragma: no cover - Windows
        return True
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops the probe's lock
    return True


@contextlib.contextmanager
def exclusive(path: str | os.PathLike) -> Iterator[None]:
    """Hold an advisory lock on ``path`` (created empty if absent) while appending to it in
    place; a ``ValueError`` at once if another process holds it (a generation run appending
    to it). Where ``fcntl`` is missing (Windows), nothing is locked."""
    if fcntl is None:  # pragma: no cover - Windows
        yield
        return
    path = Path(path)
    with open(path, "rb" if path.exists() else "ab") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ValueError(f"{path}: another process is writing it (a clear-learn rollouts "
                             "run?); let it finish or stop it first") from None
        yield


def _temp_pattern(name: str) -> re.Pattern:
    """This module's ``.NAME.<pid>.<hex>.tmp`` (group 1: the pid) or an older
    ``.NAME.<random>.tmp`` / ``.NAME.tmp``."""
    return re.compile(re.escape(f".{name}.")
                      + r"(?:(\d+)\.[0-9a-f]{8}\.|[a-z0-9_]{8}\.)?tmp")


def clean_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temp files ``.NAME.*.tmp`` of crashed writes of ``path``; return them.

    A temp file is stale when no process holds its lock and the process that made it is gone
    (its id is in the name), or, for names without an id (older versions), when it is older
    than :data:`STALE_AFTER_S`. Files of live writers are never touched.
    """
    path = Path(path)
    folder = path.parent
    pattern = _temp_pattern(path.name)
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        m = pattern.fullmatch(name)
        if m is None:
            continue
        tmp = folder / name
        try:
            age = time.time() - tmp.lstat().st_mtime
        except OSError:
            continue
        pid = int(m.group(1)) if m.group(1) else None
        if pid is not None:
            stale = pid != os.getpid() and (not pid_alive(pid) or age > 24 * STALE_AFTER_S)
        else:
            stale = age > STALE_AFTER_S
        if stale and _unlocked(tmp):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without folder handles
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse it
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Write ``path`` atomically: ``with atomic_write(p) as fh: fh.write(b"...")``.

    The target takes the new bytes only when the ``with`` block ends without an error; until
    then, and if it raises, the old file (or its absence) stays. A replaced file keeps its
    mode; a new one gets 0666 less the umask. Missing parent folders are created.
    """
    path = check_target(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temps(path)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = None
    while True:
        tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        try:  # the kernel applies the umask to 0o666, as for any new file
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                         0o666)
            break
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
    try:
        with os.fdopen(fd, "wb") as fh:
            if fcntl is not None:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            if mode is not None:
                os.chmod(fh.fileno() if os.chmod in os.supports_fd else tmp, mode)
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
            os.replace(tmp, path)  # still locked: a concurrent cleaner leaves it alone
        _fsync_folder(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    with atomic_write(path) as fh:
        fh.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return write_bytes(path, text.encode(encoding))
