"""clear_learn.atomic: whole-or-nothing writes, modes kept, crashed writes cleaned (issue 18)."""

import gzip
import json
import os
import random
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clear_learn.atomic import atomic_write, check_target, clean_stale_temps, write_text
from clear_learn.rollouts import write_jsonl

ROOT = Path(__file__).resolve().parents[1]


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture
def umask022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_new_files_get_the_umask_mode_and_replaced_files_keep_theirs(tmp_path, umask022):
    """Item 3: every file written through write_jsonl was 0600, a replaced 0644 file too."""
    path = tmp_path / "r.jsonl"
    write_jsonl([{"a": 1}], path)
    assert _mode(path) == 0o644
    for mode in (0o640, 0o664, 0o600, 0o444):
        os.chmod(path, mode)
        write_jsonl([{"a": 2}], path)
        assert _mode(path) == mode
        assert path.read_text() == '{"a": 2}\n'
    gz = tmp_path / "r.jsonl.gz"
    write_jsonl([{"a": 1}], gz)
    assert _mode(gz) == 0o644 and gzip.decompress(gz.read_bytes()) == b'{"a": 1}\n'
    os.umask(0o077)
    write_text(tmp_path / "private.md", "x")
    assert _mode(tmp_path / "private.md") == 0o600
    assert _temps(tmp_path) == []


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "r.jsonl"
    write_jsonl([{"a": 1}], path)

    def rows():
        yield {"a": 2}
        raise RuntimeError("the producer failed")

    with pytest.raises(RuntimeError):
        write_jsonl(rows(), path)
    assert path.read_text() == '{"a": 1}\n' and _temps(tmp_path) == []
    with pytest.raises(TypeError):  # not JSON serialisable
        write_jsonl([{"a": object()}], path)
    assert path.read_text() == '{"a": 1}\n' and _temps(tmp_path) == []
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "new.bin") as fh:
            fh.write(b"half")
            raise RuntimeError("stop")
    assert not (tmp_path / "new.bin").exists() and _temps(tmp_path) == []


def test_a_lone_surrogate_is_written_as_an_escape(tmp_path):
    path = tmp_path / "r.jsonl"
    write_jsonl([{"text": "a\ud800b"}], path)
    assert json.loads(path.read_bytes().decode("utf-8")) == {"text": "a\ud800b"}


def test_stale_temps_of_crashed_writes_are_cleaned(tmp_path):
    """Item 12: a SIGKILL mid-write left '.NAME.*.tmp' beside the file, and nothing cleaned it."""
    path = tmp_path / "r.jsonl"
    write_jsonl([{"a": 1}], path)
    dead = tmp_path / f".r.jsonl.{_dead_pid()}.0a1b2c3d.tmp"
    legacy_old = tmp_path / ".r.jsonl.k2x_9abq.tmp"  # tempfile.mkstemp, older versions
    legacy_new = tmp_path / ".r.jsonl.z8y7x6w5.tmp"
    other = tmp_path / f".other.jsonl.{_dead_pid()}.0a1b2c3d.tmp"
    mine = tmp_path / f".r.jsonl.{os.getpid()}.0a1b2c3d.tmp"  # a live writer: this process
    for p in (dead, legacy_old, legacy_new, other, mine):
        p.write_text("torn")
    hour_ago = time.time() - 7200
    os.utime(legacy_old, (hour_ago, hour_ago))
    write_jsonl([{"a": 2}], path)
    assert not dead.exists() and not legacy_old.exists()
    assert legacy_new.exists() and other.exists() and mine.exists()
    assert path.read_text() == '{"a": 2}\n'


@pytest.mark.skipif(sys.platform == "win32", reason="fcntl locks")
def test_a_locked_temp_of_a_live_writer_is_kept(tmp_path):
    import fcntl

    tmp = tmp_path / f".r.jsonl.{_dead_pid()}.0a1b2c3d.tmp"  # its pid gone, yet still locked
    with open(tmp, "wb") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        assert clean_stale_temps(tmp_path / "r.jsonl") == []
        assert tmp.exists()
    assert clean_stale_temps(tmp_path / "r.jsonl") == [tmp]


def test_check_target(tmp_path):
    """Item 6: a folder, or a path under a file, is refused before any work."""
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a folder"):
        check_target(tmp_path / "d")
    with pytest.raises(ValueError, match="which is a file"):
        check_target(tmp_path / "f" / "x" / "y.jsonl")
    assert check_target(tmp_path / "new" / "deeper" / "x.jsonl").name == "x.jsonl"
    with pytest.raises(ValueError, match="is a folder"):
        write_jsonl([{"a": 1}], tmp_path / "d")


# --- crash tests: a writer killed with SIGKILL at random moments -------------------------------

# A zygote imports the library once and forks one writer per kill (a fresh interpreter per
# kill would spend most of the time importing numpy). Each writer rewrites its target in a
# loop, version after version, until the test kills it.
ZYGOTE = r"""
import json, os, sys
from clear_learn.atomic import atomic_write, write_text
from clear_learn.evaluation import EvalReport, plot_frontier
from clear_learn.rollouts import write_jsonl
import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot

def write(kind, target, v):
    rows = [{"v": v, "i": i, "pad": "x" * 150} for i in range(400)] + [{"end": v, "n": 401}]
    if kind in ("jsonl", "jsonl.gz"):            # rollouts, curves, budgets, text chunks
        write_jsonl(rows, target)
    elif kind == "report":                       # evaluation reports
        EvalReport({"uniform": rows[:200]}, [float(v)], v, {"v": v}).save(target)
    elif kind == "text":                         # data cards, train/ state files
        write_text(target, f"v={v}\n" + "x" * 60000 + f"\nend v={v}\n")
    elif kind == "stream":                       # the model fetch: streamed, then verified
        with atomic_write(target) as fh:
            for r in rows:
                fh.write((json.dumps(r) + "\n").encode())
    elif kind == "figure":                       # frontier figures
        rep = EvalReport({"uniform": [{"allocated_tokens": t, "mean_accuracy": t / (t + v)}
                                      for t in range(1, 30)]}, [1.0], v)
        plot_frontier(rep, target)

print("ready", flush=True)
for line in sys.stdin:
    cmd = json.loads(line)
    if cmd["op"] == "spawn":
        pid = os.fork()
        if pid == 0:
            sys.stdin.close()
            v = cmd["start"]
            while True:
                v += 1
                write(cmd["kind"], cmd["target"], v)
        print(pid, flush=True)
    else:  # reap the killed writer, so that its pid is gone
        os.waitpid(cmd["pid"], 0)
        print("reaped", flush=True)
"""


@pytest.fixture(scope="module")
def zygote():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", ZYGOTE], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=ROOT, env=env)
    assert proc.stdout.readline().strip() == "ready"

    def ask(**cmd):
        proc.stdin.write(json.dumps(cmd) + "\n")
        proc.stdin.flush()
        return proc.stdout.readline().strip()

    yield ask
    proc.stdin.close()
    proc.wait(timeout=30)


def _check(kind: str, path: Path) -> None:
    """An AssertionError if the target is torn (not one complete version)."""
    data = path.read_bytes()
    if kind == "figure":
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")
        return
    if kind == "jsonl.gz":
        data = gzip.decompress(data)
    if kind == "text":
        first, *_, last = data.decode().splitlines()
        assert first == last.replace("end ", "")
        return
    if kind == "report":
        d = json.loads(data)
        assert d["n_queries"] == d["meta"]["v"] and len(d["policies"]["uniform"]) == 200
        return
    rows = [json.loads(x) for x in data.decode().splitlines()]
    assert len(rows) == rows[-1]["n"] and {r["v"] for r in rows[:-1]} == {rows[-1]["end"]}


KINDS = {"jsonl": "r.jsonl", "jsonl.gz": "t.jsonl.gz", "report": "report.json",
         "text": "DATACARD.md", "stream": "model.gguf", "figure": "frontier.png"}
SEEDS, KILLS_PER_SEED = (0, 1, 2, 3), 4
#: Kill delays (s) after a writer starts: any moment of its write loop. A figure is drawn
#: before its file is opened and takes 0.1-0.3 s, so it gets longer delays and fewer kills.
DELAYS = {"figure": (0.05, 0.35)}
FEWER = {"figure": 2}
CRASH_COUNTS: dict[str, dict[str, int]] = {}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL")
@pytest.mark.parametrize("kind", list(KINDS))
def test_killed_writer_never_leaves_the_target_missing_torn_or_of_another_mode(
        tmp_path, zygote, kind):
    import signal

    path = tmp_path / KINDS[kind]
    pid = int(zygote(op="spawn", kind=kind, target=str(path), start=0))
    while not path.exists():  # the first version, written normally
        time.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    zygote(op="reap", pid=pid)
    os.chmod(path, 0o640)
    counts = {"kills": 0, "mid_write": 0, "new_versions": 0}
    _check(kind, path)
    last = os.stat(path).st_ino  # each complete write is a rename: a new inode
    for seed in SEEDS:
        rng = random.Random(f"{kind}-{seed}")
        for _ in range(FEWER.get(kind, KILLS_PER_SEED)):
            pid = int(zygote(op="spawn", kind=kind, target=str(path), start=1000 * seed))
            time.sleep(rng.uniform(*DELAYS.get(kind, (0.0, 0.04))))
            os.kill(pid, signal.SIGKILL)
            zygote(op="reap", pid=pid)
            counts["kills"] += 1
            counts["mid_write"] += bool(_temps(tmp_path))
            assert path.exists(), f"{kind}: the target is missing after a kill"
            _check(kind, path)
            counts["new_versions"] += os.stat(path).st_ino != last
            last = os.stat(path).st_ino
            assert _mode(path) == 0o640, f"{kind}: mode {oct(_mode(path))} after a kill"
            assert len(_temps(tmp_path)) <= 1  # each writer cleaned its predecessor's
    # the next write cleans what the last kill left
    pid = int(zygote(op="spawn", kind=kind, target=str(path), start=10**6))
    while os.stat(path).st_ino == last:  # until it has written once
        time.sleep(0.005)
    os.kill(pid, signal.SIGSTOP)  # between two writes or in one: at most its own temp
    leftover = _temps(tmp_path)
    assert all(f".{pid}." in name for name in leftover), leftover
    os.kill(pid, signal.SIGKILL)
    zygote(op="reap", pid=pid)
    assert _mode(path) == 0o640
    CRASH_COUNTS[kind] = counts
    print(f"\ncrash test {kind}: {counts}")
    assert counts["mid_write"] > 0, "no kill landed inside a write: the test proves nothing"
