"""The resumable rollout writer: problems in, one rollout record per problem out.

Output is the rollout JSONL of docs/METHOD.md, *File format*, appended one complete line per problem
(written with a single ``write`` and flushed to disk). Killed at any point and rerun with the
same arguments, it drops a torn last line, skips the problems already written, and continues:
nothing finished is lost or duplicated. Records written under different settings (model,
sampling, cap) are refused rather than mixed. Problems of the shared benchmark sets are written
without their texts and answers (keyed by the shared file's name and line).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Protocol, Sequence

from ..atomic import exclusive
from ..errors import DataError
from .graders import grade
from .problems import strip_shared_texts

__all__ = ["SamplingSettings", "Completion", "Backend", "generate_rollouts", "recover",
           "regrade", "QWEN_SYSTEM_PROMPT", "BOXED_SUFFIX", "sample_seed"]

QWEN_SYSTEM_PROMPT = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
BOXED_SUFFIX = "\nPlease reason step by step, and put your final answer within \\boxed{}."


@dataclass(frozen=True)
class SamplingSettings:
    """How every problem is sampled (the project's defaults are its data set's settings)."""

    n: int = 8
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 512
    seed: int = 0
    system_prompt: str | None = QWEN_SYSTEM_PROMPT
    suffix: str = BOXED_SUFFIX

    def messages(self, text: str) -> list[dict]:
        msgs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return msgs + [{"role": "user", "content": text + self.suffix}]


@dataclass
class Completion:
    """One sampled response: ``tokens`` generated (the stop token not counted)."""

    problem: int
    sample: int
    text: str
    tokens: int
    finished: bool


class Backend(Protocol):
    """What the driver needs of an engine."""

    name: str
    model_id: str

    def generate(self, prompts: list[list[dict]], settings: SamplingSettings,
                 seeds: list[list[int]]) -> Iterator[list[Completion]]:
        """Yield, for each problem as soon as all its samples are done, its completions.

        ``prompts[i]`` are chat messages; ``seeds[i][j]`` seeds sample ``j`` of problem ``i``.
        """
        ...


def sample_seed(base: int, problem_id: str, j: int) -> int:
    """A per-sample seed that depends only on the settings' seed, the problem and the index."""
    h = hashlib.sha256(f"{base}:{problem_id}:{j}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def recover(path: Path, *, unique: bool = True) -> dict[str, dict]:
    """Records already in ``path`` by id; a torn or invalid last line is cut off in place.

    Lines may end in ``\\r\\n`` (a checkout that rewrote line endings). ``unique``: an id that
    appears twice is an error (two runs appended to one file), else the later copy wins."""
    path = Path(path)
    if not path.exists():
        return {}
    data = path.read_bytes()
    keep = data.rfind(b"\n") + 1  # everything after the last newline is torn
    lines = data[:keep].split(b"\n")[:-1]
    done: dict[str, dict] = {}
    first: dict[str, int] = {}
    good_end = 0
    offset = 0
    for i, raw in enumerate(lines):
        offset += len(raw) + 1
        line = raw.rstrip(b"\r")
        if not line.strip():
            good_end = offset
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # a torn final line (e.g. killed while the disk buffered it)
            raise ValueError(f"{path}: line {i + 1} is not JSON; refusing to append") from None
        rid = str(rec["id"])
        if unique and rid in first:
            raise ValueError(f"{path}: line {i + 1}: id {rid!r} again (first on line "
                             f"{first[rid]}); was it written by two runs at once?")
        first.setdefault(rid, i + 1)
        done[rid] = rec
        good_end = offset
    if good_end != len(data):
        with open(path, "r+b") as fh:
            fh.truncate(good_end)
    return done


def _check_same_problems(out_path: Path, done: dict[str, dict], problems: list[dict]) -> None:
    """A record already written must be of the problem that now has its id (the same text,
    answer and source where both name one): else the problem set changed under the file."""
    by_id = {str(p["id"]): p for p in problems}
    for rid, rec in done.items():
        p = by_id.get(rid)
        if p is None:
            continue
        for field in ("text", "answer", "source"):
            if field in rec and field in p and rec[field] != p[field]:
                raise ValueError(f"{out_path}: record {rid!r} has another {field} than the "
                                 f"problem {rid!r} of the problem file (was the problem set "
                                 "made again with other settings?); use another output file")


def _append_line(fh, obj: dict) -> None:
    """One complete JSON line in a single write, flushed to disk."""
    fh.write((json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8"))
    fh.flush()
    os.fsync(fh.fileno())


def _now() -> str:
    """UTC now, to the millisecond (a run's start names it in the generation log)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _log_line(run: str, out_path: Path, rec: dict, elapsed: float,
              fields: Mapping[str, object] | None) -> dict:
    """One problem's line of the generation log: when its run started, which file it went
    to, its id and generated tokens, and the seconds from the run's start to its write."""
    return {"run": run, "date": _now(), "output": out_path.name, "id": rec["id"],
            "tokens": sum(r["tokens"] for r in rec["rollouts"]),
            "elapsed": round(elapsed, 1), **(fields or {})}


def _generator_info(backend: Backend, settings: SamplingSettings) -> dict:
    s = asdict(settings)
    return {"backend": backend.name, "model": backend.model_id, **s}


def generate_rollouts(problems: Iterable[dict], backend: Backend, out_path: str | Path,
                      settings: SamplingSettings = SamplingSettings(), *,
                      keep_text: bool = False, texts_path: str | Path | None = None,
                      progress: bool = True, limit: int | None = None,
                      log_path: str | Path | None = None,
                      log_fields: Mapping[str, object] | None = None) -> dict:
    """Sample, grade and append rollouts for every problem not yet in ``out_path``.

    ``texts_path``, if given, receives every problem's response texts (one line
    ``{"id", "texts"}`` per problem, appended before its record), so the compact rollout file
    can be re-graded later (``regrade``) without sampling again. ``log_path``, if given,
    receives one line per problem written (the run's start, the output file's name, the id,
    its generated tokens, the seconds since the run began, and ``log_fields``), so that the
    rate is known even of a run that is killed. Returns a summary: problems written now,
    already present, generated tokens, seconds, tokens per second.

    The output is locked while the run writes it (:func:`clear_learn.atomic.exclusive`): a second run on the
    same file is refused at once, and so is a record of another problem under an id.
    """
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive(out_path):
        return _generate(problems, backend, out_path, settings, keep_text=keep_text,
                         texts_path=texts_path, progress=progress, limit=limit,
                         log_path=log_path, log_fields=log_fields)


def _generate(problems, backend, out_path: Path, settings, *, keep_text, texts_path, progress,
              limit, log_path, log_fields) -> dict:
    """:func:`generate_rollouts` on a locked output."""
    done = recover(out_path)
    info = _generator_info(backend, settings)
    for rid, rec in done.items():
        if rec.get("generator") != info:
            raise ValueError(f"{out_path}: record {rid!r} was generated with other settings "
                             f"({rec.get('generator')}); use another output file")
    problems = list(problems)
    ids = [str(p["id"]) for p in problems]
    if len(set(ids)) != len(ids):
        raise ValueError("problem ids are not unique")
    _check_same_problems(out_path, done, problems)
    text_fh = None
    if texts_path is not None:
        texts_path = Path(texts_path)
        texts_path.parent.mkdir(parents=True, exist_ok=True)
        recover(texts_path, unique=False)  # cut a torn last line; a repeated id is harmless
        text_fh = open(texts_path, "ab")
    todo = [p for p in problems if str(p["id"]) not in done]
    if limit is not None:
        todo = todo[:limit]
    prompts = [settings.messages(p["text"]) for p in todo]
    seeds = [[sample_seed(settings.seed, str(p["id"]), j) for j in range(settings.n)]
             for p in todo]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(todo), desc=f"rollouts ({backend.name})", unit="problem")
    n_tokens, t0, written, run = 0, time.perf_counter(), 0, _now()
    with contextlib.ExitStack() as stack:
        fh = stack.enter_context(open(out_path, "ab"))
        if text_fh is not None:
            stack.enter_context(text_fh)
        log_fh = None
        if log_path is not None:
            Path(log_path).parent.mkdir(parents=True, exist_ok=True)
            log_fh = stack.enter_context(open(log_path, "ab"))
        for comps in backend.generate(prompts, settings, seeds):
            p = todo[comps[0].problem]
            comps = sorted(comps, key=lambda c: c.sample)
            rollouts = []
            for c in comps:
                r = {"tokens": int(c.tokens), "correct": bool(c.finished and grade(c.text, p)),
                     "finished": bool(c.finished)}
                if keep_text:
                    r["text"] = c.text
                rollouts.append(r)
                n_tokens += int(c.tokens)
            if text_fh is not None:  # texts first: a record on disk always has its texts
                _append_line(text_fh, {"id": str(p["id"]), "texts": [c.text for c in comps]})
            rec = {"id": str(p["id"]), "text": p["text"], "task": p["task"],
                   "max_new_tokens": settings.max_new_tokens,
                   **{k: p[k] for k in ("difficulty", "answer", "grader", "source") if k in p},
                   "generator": info, "rollouts": rollouts}
            rec = strip_shared_texts([rec])[0]  # shared benchmark texts never land in a file
            _append_line(fh, rec)
            written += 1
            if log_fh is not None:
                _append_line(log_fh, _log_line(run, out_path, rec, time.perf_counter() - t0,
                                               log_fields))
            if bar is not None:
                dt = time.perf_counter() - t0
                # count tokens of unfinished samples too where the backend tracks them
                live = getattr(backend, "generated_tokens", n_tokens)
                bar.set_postfix(tok_s=f"{live / max(dt, 1e-9):.1f}")
                bar.update(1)
    if bar is not None:
        bar.close()
    dt = time.perf_counter() - t0
    return {"written": written, "already_done": len(done), "tokens": n_tokens,
            "seconds": dt, "tokens_per_second": n_tokens / dt if dt > 0 else 0.0}


def regrade(records: list[dict], texts: dict[str, list[str]], problems: dict[str, dict], *,
            source: str | None = None, lines: Sequence[int] | None = None,
            only_with_texts: bool = False) -> tuple[list[dict], int]:
    """Records with every rollout's ``correct`` recomputed from its saved response text.

    ``texts`` maps a record id to its responses (as ``generate_rollouts`` saved them),
    ``problems`` maps it to the problem (with its answer and grader; shared benchmark texts
    joined). Returns the new records (inputs untouched) and how many labels changed. A record
    without texts, whose texts do not match its rollouts, or a rollout without ``finished``,
    is an error naming it: a :class:`~clear_learn.errors.DataError` naming ``source`` and the
    record's line (``lines``, or its position from 1) when ``source`` is given.
    ``only_with_texts`` passes records without saved texts through unchanged instead.
    """
    def fail(i: int, rid: str, field: str | None, msg: str) -> ValueError:
        if source is None:
            return ValueError(f"record {rid!r}: {msg}")
        line = lines[i] if lines is not None else i + 1
        return DataError(source, line, f"record {rid!r}: {msg}", field)

    out, changed = [], 0
    for i, rec in enumerate(records):
        rid = str(rec["id"])
        if rid not in texts and only_with_texts:
            out.append(rec)
            continue
        if rid not in texts:
            raise fail(i, rid, None, "no saved response texts")
        if rid not in problems:
            raise fail(i, rid, None, "not in the problem file")
        resp = texts[rid]
        if len(resp) != len(rec["rollouts"]):
            raise fail(i, rid, "rollouts", f"{len(resp)} saved texts for "
                                           f"{len(rec['rollouts'])} rollouts")
        new = dict(rec)
        new["rollouts"] = []
        for j, (r, t) in enumerate(zip(rec["rollouts"], resp)):
            if not isinstance(r.get("finished"), bool):
                raise fail(i, rid, f"rollouts[{j}].finished",
                           "missing: regrading needs to know whether the response finished")
            ok = bool(r["finished"] and grade(t, problems[rid]))
            changed += ok != bool(r["correct"])
            new["rollouts"].append({**r, "correct": ok})
        out.append(new)
    return out, changed
