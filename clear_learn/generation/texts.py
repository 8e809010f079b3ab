"""Response texts kept beside a rollout file, so that its labels can be regraded and audited.

``clear-learn rollouts --texts SIDE`` appends ``{"id", "texts"}`` lines to a plain side file as
it generates. :func:`pack_texts` folds side files into gzip-compressed JSON Lines chunks that
can be committed: chunk ``NAME-AAAA-BBBB.jsonl.gz`` holds the texts of the problems at
positions ``AAAA`` to ``BBBB - 1`` of the problem file, so a full chunk never changes again and
no chunk grows past a few MB. :func:`load_texts` reads side files, chunks or folders of chunks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..errors import DataError
from ..rollouts import iter_jsonl, write_jsonl

__all__ = ["CHUNK", "chunk_name", "load_texts", "pack_texts"]

#: Problems per packed chunk (about 1 MB of text, 0.3 MB compressed, at 8 samples).
CHUNK = 100


def chunk_name(stem: str, position: int) -> str:
    """The chunk file name that holds problem-file position ``position``."""
    start = position // CHUNK * CHUNK
    return f"{stem}-{start:04d}-{start + CHUNK:04d}.jsonl.gz"


def _text_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(p.glob("*.jsonl.gz")))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such texts file or folder")
    return out


def load_texts(paths: Iterable[str | os.PathLike]) -> dict[str, list[str]]:
    """Map each problem id to its response texts; a later copy of an id wins.

    Raises :class:`~clear_learn.errors.DataError` naming the file, line and field of a line
    that is not a ``{"id", "texts": [str]}`` object, and for unreadable files (gzip data
    truncated or corrupt, a folder given as a file). A torn last line of a plain side file is
    skipped, as the generator would cut it."""
    texts: dict[str, list[str]] = {}
    for path in _text_files(paths):
        rows = list(iter_jsonl(path))
        for i, (lineno, obj, err) in enumerate(rows):
            if err is not None:
                if i == len(rows) - 1 and not path.name.endswith(".gz"):
                    continue  # a torn last line: the generator cuts it on its next start
                raise DataError(path, lineno, err)
            if not isinstance(obj, dict):
                raise DataError(path, lineno, "expected an object {'id', 'texts': [str]}, "
                                f"got {type(obj).__name__}")
            rid = obj.get("id")
            if not ((isinstance(rid, str) and rid)
                    or (isinstance(rid, int) and not isinstance(rid, bool)
                        and rid.bit_length() < 64)):
                raise DataError(path, lineno, "must be a non-empty string or a 64-bit integer",
                                "id")
            if (not isinstance(obj.get("texts"), list)
                    or not all(isinstance(t, str) for t in obj["texts"])):
                raise DataError(path, lineno, "must be a list of strings", "texts")
            texts[str(rid)] = obj["texts"]
    return texts


def pack_texts(side_files: Iterable[str | os.PathLike], problem_ids: list[str],
               out_dir: str | os.PathLike, stem: str, *, skip: Iterable[str] = ()
               ) -> dict[str, int]:
    """Merge side files into the chunks under ``out_dir`` (texts already packed stay); write
    only the chunks that change, atomically. Ids not in ``problem_ids`` are an error, except
    those in ``skip`` (problems dropped from the file whose texts were packed before), which
    are left as they are.

    Returns ``{chunk file name: problems with texts}`` for the chunks written."""
    out_dir = Path(out_dir)
    position = {pid: i for i, pid in enumerate(problem_ids)}
    skip = set(skip)
    new = {pid: t for pid, t in load_texts(side_files).items() if pid not in skip}
    unknown = sorted(set(new) - set(position))
    if unknown:
        raise ValueError(f"texts of {len(unknown)} ids not in the problem file, e.g. "
                         f"{unknown[:3]}")
    by_chunk: dict[str, dict[str, list[str]]] = {}
    for pid, texts in new.items():
        by_chunk.setdefault(chunk_name(stem, position[pid]), {})[pid] = texts
    written = {}
    for name, rows in sorted(by_chunk.items()):
        path = out_dir / name
        merged = load_texts([path]) if path.exists() else {}
        if all(merged.get(pid) == t for pid, t in rows.items()):
            continue
        merged.update(rows)
        ordered = sorted(merged, key=lambda pid: position.get(pid, -1))
        write_jsonl(({"id": pid, "texts": merged[pid]} for pid in ordered), path)
        written[name] = len(merged)
    return written
