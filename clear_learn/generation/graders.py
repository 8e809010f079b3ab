"""Graders: is a response's final answer correct?

- ``numeric``: exact numeric match of the last ``\\boxed{...}`` (GSM8K style);
- ``math``: ``math-verify`` equivalence of the last boxed answer and the reference (MATH style);
- ``reasoning_gym``: the reasoning-gym dataset's own ``score_answer`` on the last boxed answer
  (correct only at full score: some tasks give partial credit to near misses).
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["last_boxed", "grade", "grade_numeric", "grade_math", "grade_reasoning_gym"]

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (braces balanced), or None."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if not starts:
        return None
    i = start = starts[-1]
    depth = 1
    while i < len(text):
        c = text[i]
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[start:i].strip()
        i += 1
    return None


_WRAPPER = re.compile(r"^\\(?:text|textbf|mathrm|mathbf|operatorname)\s*\{(.*)\}$", re.S)


def unwrap(answer: str) -> str:
    """A boxed answer without surrounding ``$`` and ``\\text{...}``-style wrappers."""
    s = answer.strip()
    while True:
        s = s.strip().strip("$").strip()
        m = _WRAPPER.match(s)
        if not m:
            return s
        s = m.group(1)


_SCI = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*(?:\\times|\\cdot|×|x|\*)\s*10\s*\^\s*"
                  r"\{?\s*([-+−]?\s*\d+)\s*\}?\s*$")
_E_POWER = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)\s*[eE]\s*\^\s*\{?\s*([-+]?\d+)\s*\}?\s*$")


def scientific_to_e(answer: str) -> str:
    """``1.23 \\times 10^{-4}`` (or ``\\cdot``, ``×``, ``e^{-4}``) as ``1.23e-4``; other text as
    it is. The number is the same; only LaTeX spelled it differently from 'e' notation."""
    m = _SCI.match(answer) or _E_POWER.match(answer)
    if not m:
        return answer
    exp = m.group(2).replace(" ", "").replace("−", "-")
    return f"{m.group(1)}e{exp}"


def _to_number(s: str) -> float | None:
    s = s.replace("\\$", "").replace("$", "").replace(",", "").replace("\\!", "")
    s = s.replace(" ", "")
    s = re.sub(r"\\(?:text|mathrm)\{[^}]*\}", "", s)
    s = s.rstrip(".").replace("\\%", "").replace("%", "")
    m = re.fullmatch(r"-?\d+(?:\.\d+)?", s)
    if m:
        return float(s)
    m = re.fullmatch(r"\\[dt]?frac\{(-?\d+)\}\{(\d+)\}", s) or re.fullmatch(r"(-?\d+)/(\d+)", s)
    if m and float(m.group(2)) != 0:
        return float(m.group(1)) / float(m.group(2))
    return None


def grade_numeric(response: str, answer: str) -> bool:
    """The last boxed answer equals the reference number exactly (commas, $ and % ignored)."""
    got = last_boxed(response)
    if got is None:
        return False
    a, b = _to_number(got), _to_number(str(answer))
    return a is not None and b is not None and abs(a - b) <= 1e-9 * max(1.0, abs(b))


def grade_math(response: str, answer: str) -> bool:
    """``math-verify`` equivalence of the last boxed answer with the reference."""
    got = last_boxed(response)
    if got is None:
        return False
    from math_verify import parse, verify

    try:
        gold = parse(f"${answer}$")
        pred = parse(f"${got}$")
        return bool(verify(gold, pred))
    except Exception:  # math-verify raises on unparsable input: not correct
        return False


@lru_cache(maxsize=64)
def _rg_dataset(family: str, config_json: str, seed: int, size: int):
    import json

    import reasoning_gym

    return reasoning_gym.create_dataset(family, seed=seed, size=size, **json.loads(config_json))


def grade_reasoning_gym(response: str, problem: dict) -> bool:
    """reasoning-gym's ``score_answer`` on the last boxed answer; correct at full score."""
    import json

    got = last_boxed(response)
    if got is None:
        return False
    got = scientific_to_e(unwrap(got))
    src = problem["source"]
    ds = _rg_dataset(src["family"], json.dumps(src["config"], sort_keys=True), int(src["seed"]),
                     int(src["size"]))
    entry = ds[int(src["index"])]
    if entry["question"] != problem["text"]:
        raise ValueError(f"problem {problem['id']}: regenerated reasoning-gym entry differs "
                         "from the stored text (package version?)")
    try:
        score = ds.score_answer(answer=got, entry=entry)
    except Exception:
        return False
    return score is not None and float(score) >= 1.0 - 1e-6


def grade(response: str, problem: dict) -> bool:
    """Dispatch on ``problem['grader']``."""
    kind = problem.get("grader", "numeric")
    if kind == "numeric":
        return grade_numeric(response, problem["answer"])
    if kind == "math":
        return grade_math(response, problem["answer"])
    if kind == "reasoning_gym":
        return grade_reasoning_gym(response, problem)
    raise ValueError(f"problem {problem.get('id')}: unknown grader {kind!r}")
