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
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

__all__ = ["Setting", "DEFAULT_SETTINGS", "BROAD_SETTINGS", "BROAD_COUNTS",
           "reasoning_gym_problems", "broad_problems", "default_problems", "benchmark_problems", "setting_seed", "shared_problems",
           "join_shared_texts", "strip_shared_texts", "shared_root", "read_problems"]


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


#: The broadened default's families (issue 16), two settings each (easy, hard), appended after
#: :data:`DEFAULT_SETTINGS`' problems. Each setting's seed depends only on its own name (see
#: :func:`setting_seed`), so a setting can be dropped or added without changing the others.
#: Dropped after the pilot (the first problem of each setting, 8 samples; those rows stay in
#: the rollouts): bitwise_arithmetic (difficulty 1 and 2), caesar_cipher (2-3 words, shift
#: 1-3; 5-8 words), letter_jumble (light and heavy: the model copies the scrambled words) and
#: palindrome_generation (3-5 and 8-12 letters): 0 of 8 right at their easiest setting, with no
#: easier one. isomorphic_strings, ransom_note and polynomial_multiplication: their texts
#: depend on PYTHONHASHSEED, so they cannot be regenerated exactly. Dropped after their first
#: 5-6 problems (2026-12-02; their rows moved to rollouts-pilot-dropped.jsonl), never solved,
#: so that never-solved settings stay about 15% of the broad problems: cryptarithm (2 and 3
#: words), intermediate_integration (linear, mixed), jugs (3 jugs, difficulty 3 and 8),
#: modulo_grid (10x10 divisor <= 6, default) and simple_integration (degree 1-3 and 4-10: right
#: in content, but written with ^ where the task asks for **). Of the never-solved families,
#: dice, tower_of_hanoi and advanced_geometry stay (12 problems each: what the allocator must
#: learn to abandon).
BROAD_SETTINGS: tuple[Setting, ...] = (
    Setting("coin_flip", "few", dict(min_trials=3, max_trials=5)),
    Setting("coin_flip", "many", dict(min_trials=10, max_trials=15)),
    Setting("dice", "2d6", dict(num_dice=2, max_dice_size=6)),
    Setting("dice", "4d20", dict(num_dice=4, max_dice_size=20)),
    Setting("number_format", "few", dict(min_num_candidates=2, max_num_candidates=3,
                                         max_n=100000)),
    Setting("number_format", "many", dict(min_num_candidates=4, max_num_candidates=5)),
    Setting("number_sequence", "simple", dict(min_terms=4, max_terms=6, max_complexity=1)),
    Setting("number_sequence", "complex", dict(min_terms=6, max_terms=8, max_complexity=3)),
    Setting("polynomial_equations", "linear", dict(min_terms=2, max_terms=2, min_degree=1,
                                                   max_degree=1, max_value=20)),
    Setting("polynomial_equations", "cubic", dict(min_terms=3, max_terms=4, min_degree=2,
                                                  max_degree=3)),
    Setting("propositional_logic", "small", dict(min_vars=2, max_vars=2, min_statements=2,
                                                 max_statements=2, min_complexity=1,
                                                 max_complexity=1)),
    Setting("propositional_logic", "large", dict(min_vars=3, max_vars=4, min_statements=3,
                                                 max_statements=4, min_complexity=2,
                                                 max_complexity=3)),
    Setting("rectangle_count", "few", dict(max_rectangles=2, width=20, height=12)),
    Setting("rectangle_count", "many", dict(max_rectangles=5, width=40, height=20)),
    Setting("rotate_matrix", "small", dict(min_n=2, max_n=3, min_rotations=1, max_rotations=2)),
    Setting("rotate_matrix", "large", dict(min_n=4, max_n=6, min_rotations=1, max_rotations=10)),
    Setting("sentence_reordering", "short", dict(min_words_in_sentence=3,
                                                 max_words_in_sentence=5)),
    Setting("sentence_reordering", "long", dict(min_words_in_sentence=8,
                                                max_words_in_sentence=14)),
    Setting("string_insertion", "short", dict(min_string_length=5, max_string_length=8)),
    Setting("string_insertion", "long", dict(min_string_length=12, max_string_length=20)),
    Setting("string_manipulation", "short", dict(min_string_length=5, max_string_length=8,
                                                 min_num_rules=3, max_num_rules=3)),
    Setting("string_manipulation", "long", dict(min_string_length=12, max_string_length=20,
                                                min_num_rules=5, max_num_rules=8)),
    Setting("syllogism", "plain", dict(allow_some_not=False, inversion_probability=0.0)),
    Setting("syllogism", "mixed", dict()),
    Setting("word_sequence_reversal", "short", dict(min_words=3, max_words=4)),
    Setting("word_sequence_reversal", "long", dict(min_words=8, max_words=12)),
    Setting("word_sorting", "short", dict(min_words=3, max_words=4)),
    Setting("word_sorting", "long", dict(min_words=8, max_words=12)),
    Setting("knights_knaves", "2p", dict(n_people=2, depth_constraint=2, width_constraint=2)),
    Setting("knights_knaves", "3p", dict(n_people=3, depth_constraint=2, width_constraint=2)),
    Setting("tower_of_hanoi", "2-3disks", dict(min_disks=2, max_disks=3, min_pegs=3, max_pegs=3)),
    Setting("tower_of_hanoi", "4-5disks", dict(min_disks=4, max_disks=5, min_pegs=3, max_pegs=3)),
    Setting("group_anagrams", "few", dict(min_anagram_groups=2, max_anagram_groups=3,
                                          min_words_per_group=2, max_words_per_group=2)),
    Setting("group_anagrams", "many", dict(min_anagram_groups=5, max_anagram_groups=8,
                                           min_words_per_group=2, max_words_per_group=4)),
    Setting("advanced_geometry", "angle", dict(task_types=["angle_measure"])),
    Setting("advanced_geometry", "centers", dict(task_types=["orthocenter", "incircle_radius"])),
    Setting("binary_alternation", "short", dict(min_n=4, max_n=8)),
    Setting("binary_alternation", "long", dict(min_n=12, max_n=30)),
    Setting("needle_haystack", "short", dict(min_num_statements=10, max_num_statements=20)),
    Setting("needle_haystack", "long", dict(min_num_statements=50, max_num_statements=100)),
)

#: Problems per broad setting in the embedded default, unless :data:`BROAD_COUNTS` says other.
BROAD_PER_SETTING = 8

#: Planned problems of the settings that differ from :data:`BROAD_PER_SETTING` (set after the
#: first 2-3 problems of every setting were generated, 2026-12-02): settings never solved in a
#: family that is solved stop at what was generated, and the family's other setting makes up
#: its 16; the never-solved families kept stop at 12. propositional_logic small has only 4
#: distinct problems (see :func:`broad_problems`), so its large setting makes up the rest.
BROAD_COUNTS: dict[tuple[str, str], int] = {
    ("coin_flip", "few"): 13, ("coin_flip", "many"): 3,
    ("polynomial_equations", "linear"): 13, ("polynomial_equations", "cubic"): 3,
    ("sentence_reordering", "short"): 13, ("sentence_reordering", "long"): 3,
    ("word_sorting", "short"): 13, ("word_sorting", "long"): 3,
    ("binary_alternation", "short"): 14, ("binary_alternation", "long"): 2,
    ("propositional_logic", "large"): 11,
    ("dice", "2d6"): 6, ("dice", "4d20"): 6,
    ("tower_of_hanoi", "2-3disks"): 6, ("tower_of_hanoi", "4-5disks"): 6,
    ("advanced_geometry", "angle"): 6, ("advanced_geometry", "centers"): 6,
}

#: A broad setting's problems are drawn from the first BROAD_POOL items of its dataset.
BROAD_POOL = 32

#: Items of every broad setting generated under the first plan (8 a setting, round by round),
#: kept whatever they are: copies of an earlier text among them too.
BROAD_FIRST_ROUNDS = 3


def _dataset(setting: Setting, seed: int, size: int):
    import reasoning_gym

    return reasoning_gym.create_dataset(setting.family, seed=seed, size=size, **setting.config)


def setting_seed(setting: Setting, seed: int) -> int:
    """A dataset seed that depends only on ``seed`` and the setting's own name."""
    return seed + zlib.crc32(f"{setting.family}/{setting.difficulty}".encode()) % 1_000_000


def _problem(s: Setting, seed: int, size: int, index: int, entry: dict) -> dict:
    """Item ``index`` of setting ``s``'s dataset (``seed``, ``size``) as a problem row."""
    return {"id": f"rg-{s.family}-{s.difficulty}-{index}", "text": entry["question"],
            "task": s.family, "difficulty": s.difficulty, "answer": str(entry["answer"]),
            "grader": "reasoning_gym",
            "source": {"generator": "reasoning_gym", "family": s.family,
                       "config": _jsonable(s.config), "seed": seed, "size": size,
                       "index": index}}


def reasoning_gym_problems(settings: Iterable[Setting] = DEFAULT_SETTINGS, per_setting: int = 20,
                           seed: int = 2026, *, positional_seeds: bool = True) -> list[dict]:
    """Problems from reasoning-gym, ``per_setting`` of each setting, interleaved so that any
    prefix of the list is balanced across settings.

    Each problem keeps what regenerates it exactly (``source``: family, config, seed, index),
    so grading can rebuild the dataset entry. ``positional_seeds`` seeds setting ``i`` with
    ``seed + 1000 * i`` (the original default's scheme, kept so its problems stay as they
    are); otherwise each setting's seed is :func:`setting_seed`.
    """
    settings = list(settings)
    per: list[list[dict]] = []
    for s_i, s in enumerate(settings):
        s_seed = seed + 1000 * s_i if positional_seeds else setting_seed(s, seed)
        ds = _dataset(s, s_seed, per_setting)
        rows = []
        for i in range(per_setting):
            rows.append(_problem(s, s_seed, per_setting, i, ds[i]))
        per.append(rows)
    return [rows[i] for i in range(per_setting) for rows in per]


def default_problems(seed: int = 2026) -> list[dict]:
    """The embedded default problem file: the original 22 settings x 20 (ids and order as
    first published), then :func:`broad_problems`."""
    return reasoning_gym_problems(DEFAULT_SETTINGS, 20, seed) + broad_problems(seed)


def broad_problems(seed: int = 2026, settings: Iterable[Setting] = BROAD_SETTINGS,
                   counts: dict[tuple[str, str], int] | None = None) -> list[dict]:
    """The broad families' problems: of each setting (seeded by :func:`setting_seed`), its
    dataset's items in order, the first :data:`BROAD_FIRST_ROUNDS` always and later ones only
    when their text is new to the setting, up to its count (:data:`BROAD_COUNTS`, else
    :data:`BROAD_PER_SETTING`; fewer where the first :data:`BROAD_POOL` items run out);
    interleaved in proportion to the counts, so that every prefix is balanced.

    An item's ``source`` names the dataset size it was drawn from: its first 8 items from a
    dataset of 8 (as first published), later ones from one of :data:`BROAD_POOL` (an item
    does not depend on the size: tested)."""
    counts = BROAD_COUNTS if counts is None else counts
    keyed = []
    for s_i, s in enumerate(settings):
        s_seed = setting_seed(s, seed)
        want = counts.get((s.family, s.difficulty), BROAD_PER_SETTING)
        small = _dataset(s, s_seed, BROAD_PER_SETTING)
        pool = None
        rows: list[dict] = []
        seen: set[str] = set()
        for i in range(BROAD_POOL):
            if len(rows) >= want:
                break
            if i >= BROAD_PER_SETTING and pool is None:
                pool = _dataset(s, s_seed, BROAD_POOL)
            size = BROAD_PER_SETTING if i < BROAD_PER_SETTING else BROAD_POOL
            e = small[i] if i < BROAD_PER_SETTING else pool[i]
            if i >= BROAD_FIRST_ROUNDS and e["question"] in seen:
                continue
            seen.add(e["question"])
            rows.append(_problem(s, s_seed, size, i, e))
        keyed += [((r + 0.5) / len(rows), s_i, row) for r, row in enumerate(rows)]
    return [row for _, _, row in sorted(keyed, key=lambda t: t[:2])]


def _interleave(a: list, b: list) -> list:
    """``a`` and ``b`` merged so that every prefix holds them in proportion to their sizes."""
    keys = [((i + 0.5) / len(a), 0, i) for i in range(len(a))] + [
        ((j + 0.5) / len(b), 1, j) for j in range(len(b))]
    return [(a if w == 0 else b)[i] for _, w, i in sorted(keys)]


def benchmark_problems(seed: int = 2026, root: Path | None = None) -> list[dict]:
    """The embedded benchmark problem file, with texts (strip them before committing).

    First 60 GSM8K test and 60 MATH-500 level 1-3 problems, alternating (as first
    published); then 60 more GSM8K (the same seeded permutation, continued, so disjoint from
    the first) and 40 MATH-500 levels 4-5 (a second permutation), interleaved in proportion.
    """
    rng = np.random.default_rng(seed)
    gsm = shared_problems("gsm8k", root=root)
    easy = shared_problems("math500", levels=[1, 2, 3], root=root)
    gsm = [gsm[i] for i in rng.permutation(len(gsm))[:120]]
    easy = [easy[i] for i in rng.permutation(len(easy))[:60]]
    hard = shared_problems("math500", levels=[4, 5], root=root)
    hard = [hard[i] for i in np.random.default_rng(seed + 1).permutation(len(hard))[:40]]
    first = [r for pair in zip(gsm[:60], easy) for r in pair]
    return first + _interleave(gsm[60:], hard)


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
_GRADERS = ("numeric", "math", "reasoning_gym")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_problem(row: dict) -> tuple[str, str] | None:
    """``(field, what is wrong)`` for the first problem with a problem-file row, or None."""
    rid = row.get("id")
    if "id" not in row:
        return "id", "missing"
    if not ((isinstance(rid, str) and rid) or (_is_int(rid) and rid.bit_length() < 64)):
        return "id", f"must be a non-empty string or a 64-bit integer, got {str(rid)[:40]!r}"
    if not isinstance(row.get("task"), str) or not row["task"]:
        return "task", "must be a non-empty string"
    grader = row.get("grader", "numeric")
    if grader not in _GRADERS:
        return "grader", f"must be one of {', '.join(_GRADERS)}, got {str(grader)[:40]!r}"
    src = row.get("source")
    if "source" in row and not isinstance(src, dict):
        return "source", f"must be an object, got {type(src).__name__}"
    if isinstance(src, dict) and "file" in src:  # a shared benchmark problem: text joined
        if (not isinstance(src["file"], str)
                or src["file"] not in {v[0] for v in _SHARED_SETS.values()}):
            return "source.file", f"not a known shared problem file: {str(src['file'])[:60]!r}"
        if not _is_int(src.get("line")) or not 1 <= src["line"] < 2**31:
            return "source.line", "must be an integer >= 1"
        return None
    for name in ("text", "answer"):
        if not isinstance(row.get(name), str) or not row[name].strip():
            return name, "must be a non-empty string"
    if grader == "reasoning_gym":
        if not isinstance(src, dict):
            return "source", "missing: the reasoning_gym grader regenerates the entry from it"
        for name, typ in (("family", str), ("config", dict), ("seed", int), ("size", int),
                          ("index", int)):
            v = src.get(name)
            if not isinstance(v, typ) or isinstance(v, bool):
                return f"source.{name}", f"must be {'an' if typ is int else 'a'} {typ.__name__}"
    return None


def read_problems(path: str | os.PathLike) -> list[dict]:
    """The problems of a problem file (as ``clear-learn problems`` writes it), checked.

    Each line is an object with ``id`` (unique), ``task``, a known ``grader``, and either
    ``text`` and ``answer`` or a shared ``source`` (file, line) that
    :func:`join_shared_texts` fills them from. Raises
    :class:`~clear_learn.errors.DataError` naming the file, line and field of the first
    problem found.
    """
    from ..errors import DataError
    from ..rollouts import read_objects

    rows, lines = read_objects(path, "problems")
    seen: dict[str, int] = {}
    for row, n in zip(rows, lines):
        bad = _check_problem(row)
        if bad is not None:
            raise DataError(path, n, bad[1], bad[0])
        key = str(row["id"])
        if key in seen:
            raise DataError(path, n, f"duplicate of line {seen[key]}", "id")
        seen[key] = n
    return rows


def join_shared_texts(records: list[dict], root: Path | None = None) -> list[dict]:
    """Fill ``text`` and ``answer`` of records keyed by a shared ``source`` (file, line).

    Raises ``FileNotFoundError`` naming the shared file when it is not there (a user's
    machine may not have ``../shared``; set ``CLEAR_LEARN_SHARED``).
    """
    by_file = {v[0]: k for k, v in _SHARED_SETS.items()}
    cache: dict[str, list[str]] = {}
    out = []
    for rec in records:
        src = rec.get("source")
        if not isinstance(src, dict):
            src = {}
        if rec.get("text") or not isinstance(src.get("file"), str) or src["file"] not in by_file:
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
        if not 1 <= line <= len(cache[fname]):
            raise ValueError(f"record {rec.get('id')!r}: source line {line} is not in "
                             f"{fname} ({len(cache[fname])} lines)")
        full = _shared_record(by_file[fname], line, json.loads(cache[fname][line - 1]))
        out.append({**rec, **{k: full[k] for k in _SHARED_FIELDS}})
    return out


def strip_shared_texts(records: list[dict]) -> list[dict]:
    """Records without the texts and answers of shared problem sets (their ``source``, the
    shared file's name and line, stays)."""
    return [{k: v for k, v in r.items() if k not in _SHARED_FIELDS}
            if "file" in (r.get("source") or {}) else r for r in records]
