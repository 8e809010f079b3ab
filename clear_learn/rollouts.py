"""Rollout files (docs/METHOD.md, *File format*): read, validate, write, and turn into arrays.

One JSON object per line, one line per query::

    {"id": "gsm8k-17", "text": "...", "task": "gsm8k", "max_new_tokens": 512,
     "rollouts": [{"tokens": 231, "correct": true}, {"tokens": 512, "correct": false}]}

Files may be gzip-compressed (recognised by content, not by name). Fields beyond these are kept
and ignored. Content that cannot be used (gzip data truncated, bytes that are not UTF-8, a line
that is not JSON, a bad field) raises :class:`~clear_learn.errors.DataError` naming the file,
the line and the field; no line is ever dropped silently. Writing goes through
:mod:`clear_learn.atomic`: a failed or killed write leaves any earlier file in place, with its
mode.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator

import numpy as np

from .atomic import atomic_write
from .errors import DataError

__all__ = [
    "Problem",
    "RolloutValidationError",
    "RolloutArrays",
    "read_rollouts",
    "iter_jsonl",
    "read_objects",
    "validate_rollouts",
    "write_rollouts",
    "write_jsonl",
    "to_arrays",
    "to_dataset",
]

REQUIRED = ("id", "text", "task", "max_new_tokens", "rollouts")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a rollout file: where (line, id, field) and what.

    ``line`` counts from 1 (None for the file as a whole); ``field`` is ``"<line>"`` for a
    line that is not a JSON object and ``"<file>"`` for the file as a whole."""

    line: int | None
    field: str
    message: str
    id: str | None = None

    def __str__(self) -> str:
        where = "file" if self.line is None else f"line {self.line}"
        if self.id is not None:
            where += f" (id {self.id!r})"
        if self.field in ("<line>", "<file>"):
            return f"{where}: {self.message}"
        return f"{where}: field '{self.field}': {self.message}"


class RolloutValidationError(DataError):
    """Raised for an invalid rollout file; ``problems`` lists every problem found.

    A :class:`~clear_learn.errors.DataError` whose ``line`` and ``field`` are the first
    problem's."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source, self.problems = str(source), problems
        shown = "\n  ".join(str(p) for p in problems[:20])
        more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        first = problems[0] if problems else None
        super().__init__(source, None, f"{len(problems)} problem(s):\n  {shown}{more}")
        if first is not None:
            self.line = first.line
            self.field = None if first.field in ("<line>", "<file>") else first.field


_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_ERRORS = (EOFError, gzip.BadGzipFile, zlib.error)


def _open_binary(path: str | os.PathLike) -> BinaryIO:
    """The file's bytes, gunzipped when it starts with the gzip magic (not by its name)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(path, None, "is a folder, not a file")
    with open(path, "rb") as fh:
        magic = fh.read(2)
    return gzip.open(path, "rb") if magic == _GZIP_MAGIC else open(path, "rb")


def _decode(raw: bytes, lineno: int) -> tuple[str | None, str | None]:
    try:
        return raw.decode("utf-8-sig" if lineno == 1 else "utf-8"), None
    except UnicodeDecodeError as err:
        return None, (f"not UTF-8 text (byte 0x{raw[err.start]:02x} at byte {err.start + 1} "
                      "of the line)")


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any, str | None]]:
    """Yield ``(line_number, object_or_None, error_or_None)`` for each non-blank line.

    Lines count from 1. A line that is not UTF-8 or not JSON gives an error string (the
    caller decides); a file that cannot be read at all (a folder, gzip data that is truncated
    or corrupt) raises :class:`~clear_learn.errors.DataError` naming the file and the first
    line that could not be read. A missing file raises ``FileNotFoundError``.
    """
    lineno = 0
    with _open_binary(path) as fh:
        lines = iter(fh)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                break
            except _GZIP_ERRORS as err:
                reason = str(err) or type(err).__name__
                raise DataError(path, lineno + 1, f"gzip data is truncated or corrupt after "
                                f"{lineno} line(s) ({reason})") from None
            lineno += 1
            if not raw.strip():
                continue
            text, err = _decode(raw, lineno)
            if err is not None:
                yield lineno, None, err
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                err = f"not JSON ({e.msg} at column {e.colno})"
            except RecursionError:
                err = "not JSON this reader accepts (nested too deeply)"
            except ValueError as e:  # e.g. an integer of more than 4300 digits
                err = f"not JSON this reader accepts ({e})"
            yield (lineno, None, err) if err is not None else (lineno, obj, None)


#: Token counts and caps above this are refused (they would overflow the int64 arrays and
#: lose precision as floats); real caps are far below it.
MAX_TOKENS = 2**53


def read_objects(path: str | os.PathLike, what: str = "rows") -> tuple[list[dict], list[int]]:
    """The JSON objects of a JSON Lines file (plain or gzip) and their line numbers.

    Raises :class:`~clear_learn.errors.DataError` naming the file and line of the first line
    that is not a JSON object, and for a file without any (``what`` names them there)."""
    rows, lines = [], []
    for lineno, obj, err in iter_jsonl(path):
        if err is None and not isinstance(obj, dict):
            err = f"expected a JSON object, got {type(obj).__name__}"
        if err is not None:
            raise DataError(path, lineno, err)
        rows.append(obj)
        lines.append(lineno)
    if not rows:
        raise DataError(path, None, f"holds no {what}")
    return rows, lines


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _short(v: Any, width: int = 60) -> str:
    """``repr(v)``, cut to ``width`` characters for messages."""
    r = repr(v) if not (_is_int(v) and v.bit_length() > 64) else f"<{v.bit_length()}-bit int>"
    return r if len(r) <= width else r[: width - 3] + "..."


def _check_record(rec: Any, lineno: int, seen: dict[str, int]) -> list[Problem]:
    if not isinstance(rec, dict):
        return [Problem(lineno, "<line>", f"expected a JSON object, got {type(rec).__name__}")]
    rid = rec.get("id")
    rid_s = (rid if isinstance(rid, str)
             else str(rid) if _is_int(rid) and rid.bit_length() < 64 else None)
    out: list[Problem] = []

    def bad(field: str, msg: str) -> None:
        out.append(Problem(lineno, field, msg, rid_s))

    for name in REQUIRED:
        if name not in rec:
            bad(name, "missing")
    if "id" in rec:
        if rid_s is None or rid_s == "":
            bad("id", f"must be a non-empty string or a 64-bit integer, got {_short(rid)}")
        elif rid_s in seen:
            bad("id", f"duplicate of line {seen[rid_s]}")
        else:
            seen[rid_s] = lineno
    if "text" in rec and (not isinstance(rec["text"], str) or not rec["text"].strip()):
        bad("text", "must be a non-empty string")
    if "task" in rec and (not isinstance(rec["task"], str) or not rec["task"]):
        bad("task", "must be a non-empty string")
    gen = rec.get("generator")
    if gen is not None and not (isinstance(gen, dict) and isinstance(gen.get("model", ""), str)):
        bad("generator", "must be an object (with model a string), got " + _short(gen))
    cap = rec.get("max_new_tokens")
    cap_ok = _is_int(cap) and 0 < cap <= MAX_TOKENS
    if "max_new_tokens" in rec and not cap_ok:
        bad("max_new_tokens", f"must be an integer > 0 (and at most 2**53), got {_short(cap)}")
    rolls = rec.get("rollouts")
    if "rollouts" in rec:
        if not isinstance(rolls, list):
            bad("rollouts", f"must be a list, got {type(rolls).__name__}")
        elif not rolls:
            bad("rollouts", "is empty: a query needs at least one rollout")
        else:
            for j, r in enumerate(rolls):
                f = f"rollouts[{j}]"
                if not isinstance(r, dict):
                    bad(f, "must be an object with 'tokens' and 'correct'")
                    continue
                t = r.get("tokens")
                if "tokens" not in r:
                    bad(f + ".tokens", "missing")
                elif not _is_int(t):
                    bad(f + ".tokens", f"must be an integer, got {_short(t)}")
                elif t < 0:
                    bad(f + ".tokens", f"is negative ({_short(t)})")
                elif t > MAX_TOKENS:
                    bad(f + ".tokens", f"is too large ({_short(t)})")
                elif cap_ok and t > cap:
                    bad(f + ".tokens", f"{t} exceeds max_new_tokens {cap}")
                if "correct" not in r:
                    bad(f + ".correct", "missing")
                elif not isinstance(r["correct"], bool):
                    bad(f + ".correct", f"must be true or false, got {_short(r['correct'])}")
                if "finished" in r and not isinstance(r["finished"], bool):
                    bad(f + ".finished", f"must be true or false, got {_short(r['finished'])}")
    return out


def validate_rollouts(source: str | os.PathLike | Iterable[dict]) -> list[Problem]:
    """Every problem in a rollout file (a path) or in records (line = position + 1).

    No records at all is a problem too (``read_rollouts`` and ``fit`` refuse such a file), and
    so is a file that cannot be read from some line on (gzip data truncated or corrupt, a
    folder): the problems before it are kept."""
    problems: list[Problem] = []
    seen: dict[str, int] = {}
    n = 0
    if isinstance(source, (str, os.PathLike)):
        try:
            for lineno, rec, err in iter_jsonl(source):
                n += 1
                if err is not None:
                    problems.append(Problem(lineno, "<line>", err))
                else:
                    problems.extend(_check_record(rec, lineno, seen))
        except DataError as err:  # unreadable from here on: report it with the rest
            return problems + [Problem(err.line, "<file>", err.reason)]
    else:
        for i, rec in enumerate(source):
            n += 1
            problems.extend(_check_record(rec, i + 1, seen))
    if n == 0:
        problems.append(Problem(None, "<file>", "holds no records"))
    return problems


def read_rollouts(path: str | os.PathLike, *, validate: bool = True) -> list[dict]:
    """Read a rollout file (plain or gzip) into a list of dicts, one per query.

    Raises :class:`RolloutValidationError` (a :class:`~clear_learn.errors.DataError`)
    listing every problem (line, id, field), and for a file with no records. With
    ``validate=False`` the records' fields are not checked, but a line that is not a JSON
    object is still refused: no line is ever dropped silently. A missing file raises
    ``FileNotFoundError``.
    """
    records, problems, seen = [], [], {}
    for lineno, rec, err in iter_jsonl(path):
        if err is not None:
            problems.append(Problem(lineno, "<line>", err))
            continue
        if validate:
            problems.extend(_check_record(rec, lineno, seen))
        elif not isinstance(rec, dict):
            problems.append(Problem(lineno, "<line>",
                                    f"expected a JSON object, got {type(rec).__name__}"))
        records.append(rec)
    if problems:
        raise RolloutValidationError(str(path), problems)
    if not records:
        raise RolloutValidationError(str(path), [Problem(None, "<file>", "holds no records")])
    return records


def _json_line(row: Any) -> bytes:
    try:
        return json.dumps(row, ensure_ascii=False).encode("utf-8") + b"\n"
    except UnicodeEncodeError:  # a lone surrogate: \\u-escape it, so the line stays UTF-8
        return json.dumps(row).encode("ascii") + b"\n"


def write_jsonl(rows: Iterable[dict], path: str | os.PathLike) -> Path:
    """Write dicts as JSON Lines atomically (gzip when the name ends in ``.gz``).

    Through :func:`clear_learn.atomic.atomic_write`: the target is replaced whole or not at
    all, keeps its mode, and temp files of crashed writes are cleaned."""
    path = Path(path)
    with atomic_write(path) as raw:
        fh = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if path.suffix == ".gz" else raw
        for row in rows:
            fh.write(_json_line(row))
        if fh is not raw:
            fh.close()
    return path


def write_rollouts(records: Iterable[dict], path: str | os.PathLike, *,
                   validate: bool = True) -> Path:
    """Validate records and write them atomically; nothing is written if any is invalid."""
    records = list(records)
    if validate:
        problems = validate_rollouts(records)
        if problems:
            raise RolloutValidationError(f"records for {path}", problems)
    return write_jsonl(records, path)


class RolloutArrays:
    """Rollouts of Q queries as flat arrays, query after query (ragged, never padded).

    Query ``i``'s rollouts are positions ``offsets[i]:offsets[i + 1]`` of the flat arrays
    ``flat_tokens`` (int64), ``flat_correct`` and ``flat_cutoff`` (bool); ``max_new_tokens``
    is (Q,) int64. Memory and time grow with the total number of rollouts R, not with Q times
    the largest query. ``cutoff`` is the rollout's ``finished == false`` when given, else
    ``tokens == max_new_tokens``.

    ``tokens``, ``correct``, ``cutoff`` and ``mask`` are padded (Q, n_max) views, built on
    first use, for code that wants a rectangle (``mask`` marks real rollouts); they cost
    Q x n_max, which one long query makes large.
    """

    def __init__(self, flat_tokens, flat_correct, flat_cutoff, offsets, max_new_tokens):
        self.flat_tokens = np.asarray(flat_tokens, dtype=np.int64)
        self.flat_correct = np.asarray(flat_correct, dtype=bool)
        self.flat_cutoff = np.asarray(flat_cutoff, dtype=bool)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.max_new_tokens = np.asarray(max_new_tokens, dtype=np.int64)
        r, q = self.flat_tokens.size, self.max_new_tokens.size
        if (self.flat_correct.shape != (r,) or self.flat_cutoff.shape != (r,)
                or self.offsets.shape != (q + 1,) or self.offsets[0] != 0
                or self.offsets[-1] != r or np.any(np.diff(self.offsets) < 0)):
            raise ValueError(f"RolloutArrays: inconsistent shapes (flat {r}, offsets "
                             f"{self.offsets.shape}, queries {q})")
        self._padded: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return int(self.max_new_tokens.size)

    @property
    def n_rollouts(self) -> int:
        """R, the total number of rollouts."""
        return int(self.flat_tokens.size)

    @property
    def counts(self) -> np.ndarray:
        """Rollouts per query, (Q,) int64."""
        return np.diff(self.offsets)

    @property
    def query_index(self) -> np.ndarray:
        """The query of each flat rollout, (R,) int64."""
        if "query_index" not in self._padded:
            self._padded["query_index"] = np.repeat(np.arange(len(self)), self.counts)
        return self._padded["query_index"]

    def per_query_sum(self, values: np.ndarray) -> np.ndarray:
        """Sum of per-rollout ``values`` (R,) within each query, (Q,) float64."""
        out = np.bincount(self.query_index, weights=values, minlength=len(self))
        return out.astype(np.float64, copy=False)  # bincount of nothing is int64

    def split(self, values: np.ndarray) -> list[np.ndarray]:
        """Per-rollout ``values`` (R,) cut into one array per query."""
        return np.split(values, self.offsets[1:-1])

    def select(self, rows: np.ndarray) -> "RolloutArrays":
        """The queries ``rows`` (indices, repeats allowed), in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        counts = self.counts[rows]
        offsets = np.concatenate([[0], np.cumsum(counts)])
        pick = np.repeat(self.offsets[rows] - offsets[:-1], counts) + np.arange(offsets[-1])
        return RolloutArrays(self.flat_tokens[pick], self.flat_correct[pick],
                             self.flat_cutoff[pick], offsets, self.max_new_tokens[rows])

    def with_mask(self, mask: np.ndarray) -> "RolloutArrays":
        """The same queries with only the rollouts in ``mask`` kept.

        ``mask`` is flat, (R,), or padded like :attr:`mask`, (Q, n_max).
        """
        mask = np.asarray(mask, dtype=bool)
        if mask.ndim == 2:
            if mask.shape != self.mask.shape:
                raise ValueError(f"mask has shape {mask.shape}, the rollouts {self.mask.shape}")
            mask = mask[self.mask]
        if mask.shape != (self.n_rollouts,):
            raise ValueError(f"mask has shape {mask.shape}, expected ({self.n_rollouts},)")
        counts = np.bincount(self.query_index[mask], minlength=len(self))
        return RolloutArrays(self.flat_tokens[mask], self.flat_correct[mask],
                             self.flat_cutoff[mask], np.concatenate([[0], np.cumsum(counts)]),
                             self.max_new_tokens)

    def accuracy_at(self, budgets: np.ndarray) -> np.ndarray:
        """Empirical ``acc_i(b_i) = #{j: correct_ij, tokens_ij <= b_i} / n_i``."""
        b = np.asarray(budgets)[self.query_index]
        hit = self.flat_correct & (self.flat_tokens <= b)
        return self.per_query_sum(hit) / np.maximum(self.counts, 1)

    def consumed_at(self, budgets: np.ndarray) -> np.ndarray:
        """Mean tokens actually generated per query under budgets: ``mean_j min(L_ij, b_i)``."""
        b = np.asarray(budgets)[self.query_index]
        used = np.minimum(self.flat_tokens, b)
        return self.per_query_sum(used) / np.maximum(self.counts, 1)

    def _pad(self, name: str) -> np.ndarray:
        if name not in self._padded:
            q, counts = len(self), self.counts
            n_max = int(counts.max(initial=0))
            col = np.arange(self.n_rollouts) - np.repeat(self.offsets[:-1], counts)
            if name == "mask":
                out = np.zeros((q, n_max), dtype=bool)
                out[self.query_index, col] = True
            else:
                flat = getattr(self, "flat_" + name)
                out = np.zeros((q, n_max), dtype=flat.dtype)
                out[self.query_index, col] = flat
            self._padded[name] = out
        return self._padded[name]

    tokens = property(lambda self: self._pad("tokens"),
                      doc="Padded (Q, n_max) int64 token counts (0 past a query's rollouts).")
    correct = property(lambda self: self._pad("correct"), doc="Padded (Q, n_max) bool.")
    cutoff = property(lambda self: self._pad("cutoff"), doc="Padded (Q, n_max) bool.")
    mask = property(lambda self: self._pad("mask"),
                    doc="Padded (Q, n_max) bool: which cells are real rollouts.")


def to_arrays(records: list[dict]) -> RolloutArrays:
    """Pack validated records into :class:`RolloutArrays` (flat, in record order)."""
    caps = np.fromiter((int(r["max_new_tokens"]) for r in records), dtype=np.int64,
                       count=len(records))
    counts = np.fromiter((len(r["rollouts"]) for r in records), dtype=np.int64,
                         count=len(records))
    n = int(counts.sum())
    tokens = np.fromiter((int(x["tokens"]) for r in records for x in r["rollouts"]),
                         dtype=np.int64, count=n)
    correct = np.fromiter((bool(x["correct"]) for r in records for x in r["rollouts"]),
                          dtype=bool, count=n)
    finished = [x.get("finished") for r in records for x in r["rollouts"]]
    cap_of = np.repeat(caps, counts)
    cutoff = np.array([(not f) if isinstance(f, bool) else bool(t >= m)
                       for f, t, m in zip(finished, tokens.tolist(), cap_of.tolist())],
                      dtype=bool).reshape(n)
    return RolloutArrays(tokens, correct, cutoff, np.concatenate([[0], np.cumsum(counts)]),
                         caps)


def to_dataset(records: list[dict]):
    """The records as a Hugging Face ``datasets.Dataset`` (needs the ``datasets`` extra)."""
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("to_dataset needs the 'datasets' package: "
                          "pip install 'clear-learn[datasets]'") from err
    cols = {
        "id": [str(r["id"]) for r in records],
        "text": [r["text"] for r in records],
        "task": [r["task"] for r in records],
        "max_new_tokens": [int(r["max_new_tokens"]) for r in records],
        "tokens": [[int(x["tokens"]) for x in r["rollouts"]] for r in records],
        "correct": [[bool(x["correct"]) for x in r["rollouts"]] for r in records],
    }
    return datasets.Dataset.from_dict(cols)
