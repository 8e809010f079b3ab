"""Every reader, fed truncated, bit-flipped and mistyped files, loads or raises DataError.

Issue 18: a property test over the project's file readers (rollout files plain and gzip,
curves files, problem files, response-text files plain and gzip, and the ``validate`` and
``allocate`` commands on top of them). Each example must either load or raise
:class:`clear_learn.errors.DataError` naming the file (and the line, counted from 1, where
there is one): never another exception (a reader that hung would keep the suite from
finishing; no clock is asserted on). ``FUZZ_EXAMPLES`` sets the examples per reader (default 60).
"""

import contextlib
import gzip
import io
import json
import os
import tempfile
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from clear_learn.curves import Curves  # noqa: E402
from clear_learn.errors import DataError  # noqa: E402
from clear_learn.generation.problems import read_problems  # noqa: E402
from clear_learn.generation.texts import load_texts  # noqa: E402
from clear_learn.rollouts import read_objects, read_rollouts, validate_rollouts  # noqa: E402

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "60"))
TRIED: dict[str, int] = {}
REFUSED: dict[str, int] = {}

ROLLOUTS = [
    {"id": f"q{i}", "text": f"What is {i} + {i}?", "task": "toy", "max_new_tokens": 64,
     "generator": {"model": "m", "n": 2},
     "rollouts": [{"tokens": 10 + i, "correct": True, "finished": True},
                  {"tokens": 64, "correct": False, "finished": False}]}
    for i in range(3)]
CURVES = [{"id": f"q{i}", "tau": 20.0 * i, "p": 0.3 * i, "k": 0.05, "nll": 1.5}
          for i in range(1, 4)]
PROBLEMS = [
    {"id": "p0", "text": "compute = 3", "task": "toy", "answer": "3", "grader": "numeric"},
    {"id": "rg-chain_sum-3x2-0", "text": "74 + 75 =", "task": "chain_sum", "answer": "149",
     "grader": "reasoning_gym", "source": {"generator": "reasoning_gym", "family": "chain_sum",
                                           "config": {"min_terms": 2}, "seed": 1, "size": 20,
                                           "index": 0}},
    {"id": "gsm8k-44", "task": "gsm8k", "grader": "numeric",
     "source": {"file": "gsm8k_test_openai.jsonl", "line": 44}}]
TEXTS = [{"id": f"q{i}", "texts": [f"\\boxed{{{2 * i}}}", "I do not know"]} for i in range(3)]

ODD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2**70, 2**70), st.text(max_size=4),
    st.floats(allow_nan=True, allow_infinity=True), st.builds(list), st.builds(dict),
    st.lists(st.integers(-3, 3), max_size=2), st.builds(lambda: {"tokens": "x"}),
    st.just(10**400))  # fresh containers: a drawn value may be mutated later


@st.composite
def mistyped(draw, records: list[dict]) -> list:
    """The records with a few values replaced by values of other types, or keys dropped."""
    recs = json.loads(json.dumps(records))
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(recs) - 1))
        if draw(st.integers(0, 9)) == 0:
            recs[i] = draw(ODD_VALUES)  # the whole line
            continue
        node = recs[i]
        while isinstance(node, (dict, list)) and node:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            key = draw(st.sampled_from(keys))
            if not isinstance(node[key], (dict, list)) or draw(st.booleans()):
                if isinstance(node, dict) and draw(st.integers(0, 4)) == 0:
                    del node[key]
                else:
                    node[key] = draw(ODD_VALUES)
                break
            node = node[key]
    return recs


def _dumps(v) -> str:
    try:
        return json.dumps(v)
    except ValueError:  # an integer too long to print: write it as digits
        return "9" * 5000


@st.composite
def damaged(draw, records: list[dict], gz: bool) -> bytes:
    """A file of ``records`` (gzip when ``gz``) mistyped, truncated, bit-flipped or spliced."""
    recs = draw(mistyped(records)) if draw(st.booleans()) else records
    data = "".join(_dumps(r) + "\n" for r in recs).encode()
    if gz and draw(st.booleans()):
        data = gzip.compress(data, mtime=0)
        gz = False  # damage the compressed bytes
    data = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["cut", "flip", "insert", "delete"]))
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        if op == "cut":
            del data[pos:]
        elif op == "flip":
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from(
                [b",", b"\n", b"\xff", b"\xc3", b"\x00", b'"', b"{", b"]", b"\x1f\x8b", b"NaN"]))
        else:
            del data[pos:pos + draw(st.integers(1, 8))]
    data = bytes(data)
    return gzip.compress(data, mtime=0) if gz else data


def _names_the_file(err: DataError, path: Path) -> None:
    assert err.path == str(path) and str(path) in str(err), str(err)
    if err.line is not None:
        assert err.line >= 1 and f"line {err.line}" in str(err), str(err)


def _property(name: str, records: list[dict], suffix: str, read) -> None:
    """Write each damaged file, read it, and accept only a load or a DataError naming it."""
    gz = suffix.endswith(".gz")

    @settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(damaged(records, gz))
    def check(data: bytes) -> None:
        TRIED[name] = TRIED.get(name, 0) + 1
        with tempfile.TemporaryDirectory() as d:
            path = Path(d) / f"file{suffix}"
            path.write_bytes(data)
            try:
                read(path)
            except DataError as err:
                REFUSED[name] = REFUSED.get(name, 0) + 1
                _names_the_file(err, path)

    check()


def _curves(path: Path) -> Curves:
    rows, lines = read_objects(path, "curve rows")
    return Curves.from_records(rows, source=str(path), lines=lines)


def _validate(path: Path) -> None:
    for p in validate_rollouts(path):
        assert p.line is None or p.line >= 1


READERS = {
    "rollouts (read_rollouts)": (ROLLOUTS, ".jsonl", read_rollouts),
    "rollouts gzip (read_rollouts)": (ROLLOUTS, ".jsonl.gz", read_rollouts),
    "rollouts (validate_rollouts)": (ROLLOUTS, ".jsonl", _validate),
    "rollouts gzip (validate_rollouts)": (ROLLOUTS, ".jsonl.gz", _validate),
    "rollouts (read_rollouts, validate=False)": (
        ROLLOUTS, ".jsonl", lambda p: read_rollouts(p, validate=False)),
    "curves": (CURVES, ".jsonl", _curves),
    "problems": (PROBLEMS, ".jsonl", read_problems),
    "texts plain side file": (TEXTS, ".jsonl", lambda p: load_texts([p])),
    "texts gzip chunk": (TEXTS, ".jsonl.gz", lambda p: load_texts([p])),
}


@pytest.mark.parametrize("name", list(READERS))
def test_reader_loads_or_names_the_file(name):
    records, suffix, read = READERS[name]
    _property(name, records, suffix, read)
    print(f"\nfuzz {name}: {TRIED[name]} examples, {REFUSED.get(name, 0)} refused by name")


def _command(argv: list[str], path: Path) -> None:
    """A command on a damaged file: status 0 (or 1 for validate's findings) or a message
    naming the file with status 2, never a traceback."""
    from clear_learn.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    if status == 2:
        assert str(path) in err.getvalue(), err.getvalue()
    else:
        assert status in (0, 1), (status, err.getvalue())


COMMANDS = {
    "validate command": (ROLLOUTS, ".jsonl.gz", lambda p: _command(["validate", str(p)], p)),
    "allocate command": (CURVES, ".jsonl", lambda p: _command(
        ["allocate", str(p), "--total-budget", "150", "--max-tokens", "512"], p)),
}


@pytest.mark.parametrize("name", list(COMMANDS))
def test_command_never_tracebacks(name):
    records, suffix, run = COMMANDS[name]
    _property(name, records, suffix, run)
    print(f"\nfuzz {name}: {TRIED[name]} examples")


def test_known_bad_files_are_named():
    """The damage the fuzzing draws, once each, with the exact message."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "r.jsonl.gz"
        plain = "".join(json.dumps(r) + "\n" for r in ROLLOUTS).encode()
        cases = {
            gzip.compress(plain)[:-12]: ", line 3: gzip data is truncated or corrupt after 2",
            b"\x1f\x8b" + os.urandom(64): ", line 1: gzip data is truncated or corrupt",
            plain.replace(b"What", b"Wh\xffat", 1): "line 1: not UTF-8 text (byte 0xff",
            plain.replace(b"}\n", b"},\n", 1): "line 1: not JSON (Extra data",
            plain + b"[" * 100_000 + b"\n": "line 4: not JSON this reader accepts",
            plain + b"1" * 5000 + b"\n": "line 4: not JSON this reader accepts",
        }
        for data, words in cases.items():
            path.write_bytes(data)
            with pytest.raises(DataError) as err:
                read_rollouts(path)
            assert str(path) in str(err.value) and words in str(err.value), str(err.value)
        # a truncated gzip stream: the lines before the damage are reported with it
        path.write_bytes(gzip.compress(plain.replace(b'"task": "toy"', b'"task": 3', 1)
                                       * 200)[:-40])
        problems = validate_rollouts(path)
        assert problems[0].line == 1 and problems[0].field == "task"
        assert problems[-1].field == "<file>" and "truncated" in problems[-1].message
        folder = Path(d) / "folder.jsonl"
        folder.mkdir()
        for read in (read_rollouts, read_problems, _curves):  # load_texts takes folders
            with pytest.raises(DataError, match="is a folder"):
                read(folder)
