"""Problem sources for rollout generation.

- reasoning-gym families over difficulty settings (generated offline by the package, so their
  texts may be committed): :data:`DEFAULT_SETTINGS`, :func:`reasoning_gym_problems`;
- benchmark problem sets under ``../shared/data/rollouts/problem-sets/`` (GSM8K test, MATH-500),
  whose texts must not be copied into the repository: records carry a ``source`` key (the
  shared file's name and line) and :func:`join_shared_texts` fills the text back in.

A problem is a dict with ``id``, ``text`` (exactly what the model is asked, without the
instruction suffix), ``task``, ``difficulty``, ``answer`` and ``grader``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

__all__ = ["Setting", "DEFAULT_SETTINGS", "reasoning_gym_problems", "shared_problems",
           "join_shared_texts", "shared_root"]


@dataclass(frozen=True)
class Setting:
    """One reasoning-gym family at one difficulty: the dataset name and its config."""

    family: str
    difficulty: str
    config: dict[str, Any] = field(default_factory=dict)


#: The embedded default's families and difficulty settings (easy to hard). gsm_symbolic
#: supports only its default difficulty in reasoning-gym 0.1.x.
DEFAULT_SETTINGS: tuple[Setting, ...] = (
    Setting("chain_sum", "3x2", dict(min_terms=3, max_terms=3, min_digits=2, max_digits=2)),
    Setting("chain_sum", "5x3", dict(min_terms=5, max_terms=5, min_digits=3, max_digits=3)),
    Setting("chain_sum", "8x4", dict(min_terms=8, max_terms=8, min_digits=4, max_digits=4)),
    Setting("basic_arithmetic", "3x1", dict(min_terms=3, max_terms=3, min_digits=1,
                                            max_digits=1)),
    Setting("basic_arithmetic", "4x2", dict(min_terms=4, max_terms=4, min_digits=2,
                                            max_digits=2)),
    Setting("basic_arithmetic", "6x3", dict(min_terms=6, max_terms=6, min_digits=3,
                                            max_digits=3)),
    Setting("gsm_symbolic", "default", {}),
    Setting("decimal_arithmetic", "2t1d", dict(min_terms=2, max_terms=2,
                                               min_num_decimal_places=1,
                                               max_num_decimal_places=1)),
    Setting("decimal_arithmetic", "4t2d", dict(min_terms=4, max_terms=4,
                                               min_num_decimal_places=2,
                                               max_num_decimal_places=2)),
    Setting("decimal_arithmetic", "6t3d", dict(min_terms=6, max_terms=6,
                                               min_num_decimal_places=3,
                                               max_num_decimal_places=3)),
    Setting("fraction_simplification", "small", dict(max_value=20, max_factor=10,
                                                     styles=("plain",))),
    Setting("fraction_simplification", "large", dict(max_value=1000, max_factor=100)),
    Setting("count_bits", "8bit", dict(max_n=255)),
    Setting("count_bits", "31bit", dict()),
    Setting("power_function", "small", dict(min_base=-10.0, max_base=10.0, min_exponent=0,
                                            max_exponent=3)),
    Setting("power_function", "large", dict()),
    Setting("time_intervals", "time", dict(task_types=["time"])),
    Setting("time_intervals", "datetime", dict(task_types=["date", "datetime",
                                                           "datetime_tz"])),
    Setting("calendar_arithmetic", "easy", dict(tasks=["weekday_of_date", "is_leap_year"])),
    Setting("calendar_arithmetic", "hard", dict(tasks=["count_business_days",
                                                       "recurring_event_day",
                                                       "weekday_offset"])),
    Setting("letter_counting", "short", dict(min_words=5, max_words=8)),
    Setting("letter_counting", "long", dict(min_words=15, max_words=25)),
)


def _dataset(setting: Setting, seed: int, size: int):
    import reasoning_gym

    return reasoning_gym.create_dataset(setting.family, seed=seed, size=size, **setting.config)


def reasoning_gym_problems(settings: Iterable[Setting] = DEFAULT_SETTINGS, per_setting: int = 20,
                           seed: int = 2026) -> list[dict]:
    """Problems from reasoning-gym, ``per_setting`` of each setting, interleaved so that any
    prefix of the list is balanced across settings.

    Each problem keeps what regenerates it exactly (``source``: family, config, seed, index),
    so grading can rebuild the dataset entry.
    """
    settings = list(settings)
    per: list[list[dict]] = []
    for s_i, s in enumerate(settings):
        s_seed = seed + 1000 * s_i
        ds = _dataset(s, s_seed, per_setting)
        rows = []
        for i in range(per_setting):
            e = ds[i]
            rows.append({
                "id": f"rg-{s.family}-{s.difficulty}-{i}",
                "text": e["question"],
                "task": s.family,
                "difficulty": s.difficulty,
                "answer": str(e["answer"]),
                "grader": "reasoning_gym",
                "source": {"generator": "reasoning_gym", "family": s.family,
                           "config": _jsonable(s.config), "seed": s_seed,
                           "size": per_setting, "index": i},
            })
        per.append(rows)
    return [rows[i] for i in range(per_setting) for rows in per]


def _jsonable(config: dict) -> dict:
    return json.loads(json.dumps(config, default=list))


def shared_root() -> Path:
    """``$CLEAR_LEARN_SHARED`` or ``../shared`` beside the repository."""
    env = os.environ.get("CLEAR_LEARN_SHARED")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared"


_SHARED_SETS = {
    # name: (file, text field, answer field, grader, task)
    "gsm8k": ("gsm8k_test_openai.jsonl", "question", "answer", "numeric", "gsm8k"),
    "math500": ("math500_test.jsonl", "problem", "answer", "math", "math500"),
}


def _shared_record(name: str, lineno: int, obj: dict) -> dict:
    fname, tfield, afield, grader, task = _SHARED_SETS[name]
    ans = obj[afield]
    if name == "gsm8k":
        ans = ans.split("####")[-1].strip().replace(",", "")
    rec = {"id": f"{name}-{lineno}", "text": obj[tfield], "task": task, "answer": str(ans),
           "grader": grader, "source": {"file": fname, "line": lineno}}
    if "level" in obj:
        rec["difficulty"] = f"level-{obj['level']}"
    return rec


def shared_problems(name: str, *, levels: Iterable[int] | None = None,
                    limit: int | None = None, root: Path | None = None) -> list[dict]:
    """Problems of a shared benchmark file, keyed by file name and line (1-based).

    ``name`` is ``gsm8k`` or ``math500`` (``levels`` filters MATH-500 levels). Texts and
    answers are included for generation; :func:`strip_shared_texts` removes them before
    anything is committed.
    """
    if name not in _SHARED_SETS:
        raise ValueError(f"unknown shared problem set {name!r}; known: {sorted(_SHARED_SETS)}")
    path = (root or shared_root()) / "data" / "rollouts" / "problem-sets" / _SHARED_SETS[name][0]
    out = []
    levels = set(levels) if levels is not None else None
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            obj = json.loads(line)
            if levels is not None and int(obj.get("level", 0)) not in levels:
                continue
            out.append(_shared_record(name, lineno, obj))
            if limit is not None and len(out) >= limit:
                break
    return out


_SHARED_FIELDS = ("text", "answer")


def join_shared_texts(records: list[dict], root: Path | None = None) -> list[dict]:
    """Fill ``text`` and ``answer`` of records keyed by a shared ``source`` (file, line).

    Raises ``FileNotFoundError`` naming the shared file when it is not there (a user's
    machine may not have ``../shared``; set ``CLEAR_LEARN_SHARED``).
    """
    by_file = {v[0]: k for k, v in _SHARED_SETS.items()}
    cache: dict[str, list[str]] = {}
    out = []
    for rec in records:
        src = rec.get("source") or {}
        if rec.get("text") or src.get("file") not in by_file:
            out.append(rec)
            continue
        fname = src["file"]
        if fname not in cache:
            path = (root or shared_root()) / "data" / "rollouts" / "problem-sets" / fname
            if not path.is_file():
                raise FileNotFoundError(f"record {rec.get('id')!r} needs its text from {path}, "
                                        "which is not there (set CLEAR_LEARN_SHARED)")
            cache[fname] = path.read_text(encoding="utf-8").splitlines()
        line = int(src["line"])
        full = _shared_record(by_file[fname], line, json.loads(cache[fname][line - 1]))
        out.append({**rec, **{k: full[k] for k in _SHARED_FIELDS}})
    return out


def strip_shared_texts(records: list[dict]) -> list[dict]:
    """Records without the texts and answers of shared problem sets (their ``source``, the
    shared file's name and line, stays)."""
    return [{k: v for k, v in r.items() if k not in _SHARED_FIELDS}
            if "file" in (r.get("source") or {}) else r for r in records]
