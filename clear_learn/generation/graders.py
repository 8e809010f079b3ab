"""Graders: is a response's final answer correct?

- ``numeric``: exact numeric match of the last ``\\boxed{...}`` (GSM8K style);
- ``math``: ``math-verify`` equivalence of the last boxed answer and the reference (MATH style);
- ``reasoning_gym``: the reasoning-gym dataset's own ``score_answer`` on the last boxed answer
  (correct only at full score: some tasks give partial credit to near misses).
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["last_boxed", "grade", "grade_numeric", "grade_math", "grade_reasoning_gym",
           "latex_to_plain"]

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


# font and emphasis commands only: they change how an answer looks, never what it says
# (``\texttt{0x8ea7}``, ``\emph{SMITH TO DR}`` are the plain answers to reasoning-gym)
_WRAPPER = re.compile(r"^\\(?:text|textbf|textrm|textit|textsf|texttt|textnormal|emph|mathrm|"
                      r"mathbf|mathit|mathsf|mathtt|boldsymbol|operatorname|mbox)"
                      r"\s*\{(.*)\}$", re.S)


def unwrap(answer: str) -> str:
    """A boxed answer without surrounding ``$`` and ``\\text{...}``-style wrappers."""
    s = answer.replace("\\ ", " ").strip()  # LaTeX's explicit space: "SMITH\\ TO\\ DR"
    while True:
        s = s.strip().strip("$").strip()
        m = _WRAPPER.match(s)
        if not m or not _balanced(m.group(1)):  # "\\text{a} + \\text{b}" is no one wrapper
            return s
        s = m.group(1)


def _balanced(s: str) -> bool:
    depth = 0
    for c in s:
        depth += (c == "{") - (c == "}")
        if depth < 0:
            return False
    return depth == 0


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


_SPACES = re.compile(r"\\[,;:!> ]|~|\\quad|\\qquad|\s")
_UNIT_TAIL = re.compile(r"(?:(?:\\(?:text|mathrm|textrm|mbox)\{[^{}]*\}|[A-Za-z]+)\^\{?[23]\}?|"
                        r"[A-Za-z]+(?:/[A-Za-z]+)+\.?|"  # cm^2, \text{m}^3, km/h
                        r"\\(?:text|mathrm|textrm|mbox)\{[^{}]*\}|\^\{?\\circ\}?|\\circ|"
                        r"\\%|%|[A-Za-z]+\.?)$")
#: a trailing letter that names a variable, not a unit: "5x" is an expression
_VARIABLE_TAIL = re.compile(r"\d[xyzn]$")
_DECIMAL = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)")
_THOUSANDS = re.compile(r"([-+]?)(\d{1,3}(?:,\d{3})+)(\.\d+)?")
_FRACTION = re.compile(r"([-+]?)\\[dt]?frac(?:\{([-+]?\d+)\}\{(\d+)\}|(\d)(\d))|"
                       r"([-+]?)(\d+)/(\d+)")
_MIXED = re.compile(r"([-+]?)(\d+)\\[dt]?frac\{(\d+)\}\{(\d+)\}")  # 2\frac{1}{2} = 2.5
#: more than one answer on the left of the last "=": "x = 5, y = 3", "x = -5 or x = 18"
_SEVERAL = re.compile(r",|;|\\text\{(?:or|and)\}|\\(?:lor|vee)|\bor\b|\band\b")


def _fraction(s: str) -> float | None:
    m = _MIXED.fullmatch(s)
    if m:
        whole, num, den = float(m.group(2)), float(m.group(3)), float(m.group(4))
        value = whole + num / den if den else None
        return None if value is None else (-value if m.group(1) == "-" else value)
    m = _FRACTION.fullmatch(s)
    if not m:
        return None
    groups = m.groups()
    if groups[1] is not None:
        sign, num, den = groups[0], groups[1], groups[2]
    elif groups[3] is not None:
        sign, num, den = groups[0], groups[3], groups[4]
    else:
        sign, num, den = groups[5], groups[6], groups[7]
    if float(den) == 0:
        return None
    value = float(num) / float(den)
    return -value if sign == "-" else value


def _to_number(s: str) -> float | None:
    """The number a short answer spells, or None when it is not exactly one number.

    Accepts wrappers (``\\text{18}``, ``\\mathbf{18}``), a leading ``x =`` (or ``\\approx``),
    signs, ``.5``, outer parentheses, LaTeX spaces (``1\\,000``), thousands separators in
    groups of three (``1,234``, ``1{,}000``; ``3,5`` is not a number), ``$`` and ``%``,
    trailing units (``18 \\text{ dollars}``, ``cm^2``, ``km/h``, degrees) and fractions
    (``-\\frac{1}{2}``, ``\\frac12``, ``3/4``, ``2\\frac{1}{2}``). Not one number: several
    answers (``x = 5, y = 3``), an expression (``5x``)."""
    s = unwrap(str(s))
    s = s.replace("\\$", "").replace("$", "").replace("−", "-").replace("{,}", ",")
    s = s.replace("\\approx", "=")
    s = re.sub(r"\\(?:text|mathrm|mbox)\{\s*\}", "", s)  # what is left of \text{\$}
    s = _SPACES.sub("", s)
    if "=" in s:  # "x = 18": the right-hand side
        lhs, s = s.rsplit("=", 1)
        if _SEVERAL.search(lhs):
            return None
    s = unwrap(s)
    s = s.rstrip(".")
    if _VARIABLE_TAIL.search(s):
        return None
    t = s
    for _ in range(3):  # units, one at a time: "18\\text{dollars}", "90^\\circ", "12cm", "50\\%"
        t = _UNIT_TAIL.sub("", t)
        if t and re.search(r"\d\}?$", t):  # what is left ends in a number: those were units
            s = t
            break
    s = unwrap(s)
    if len(s) > 2 and s[0] == "(" and s[-1] == ")":  # "(-5)"
        s = s[1:-1]
    if _DECIMAL.fullmatch(s):
        return float(s)
    m = _THOUSANDS.fullmatch(s)
    if m:
        return float(m.group(1) + m.group(2).replace(",", "") + (m.group(3) or ""))
    return _fraction(s)


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


_LATEX_FRACTION = re.compile(r"\\[dt]?frac\s*\{\s*([-+]?\d+)\s*\}\s*\{\s*(\d+)\s*\}")
# LaTeX's logic operators as the Unicode symbols reasoning-gym's logic tasks ask for
_LOGIC = {"land": "∧", "wedge": "∧", "lor": "∨", "vee": "∨", "neg": "¬", "lnot": "¬",
          "rightarrow": "→", "to": "→", "implies": "→", "Rightarrow": "→",
          "leftrightarrow": "↔", "iff": "↔", "Leftrightarrow": "↔"}
_LOGIC_COMMAND = re.compile(r"\\(" + "|".join(sorted(_LOGIC, key=len, reverse=True))
                            + r")(?![A-Za-z])\s*")

# a LaTeX matrix (bmatrix and its kin, or an array) of plain cells
_LATEX_MATRIX = re.compile(r"\\begin\{([bpvBV]?matrix|array)\}(?:\{[^}]*\})?(.*?)"
                           r"\\end\{\1\}", re.S)
_ROW_BREAK = re.compile(r"\\\\?(?=\s|$)")  # \\ (or \ with a space: unwrap's spelling)


def _matrix_rows(body: str) -> str:
    """A matrix body's rows (split at ``\\\\``) as lines of space-separated cells, each cell
    unwrapped (``\\text{Move disk 1 ...}`` in a one-column array)."""
    rows = [" ".join(unwrap(c) for c in row.split("&")) for row in _ROW_BREAK.split(body)]
    return "\n".join(r for r in rows if r.strip())


# a LaTeX multi-line display (align and its kin): one line per ``\\``
_LATEX_LINES = re.compile(r"\\begin\{(align\*?|aligned|gather\*?|gathered)\}(.*?)\\end\{\1\}",
                          re.S)


def _display_lines(body: str) -> str:
    """An align-like body's lines (split at ``\\\\``), alignment marks ``&`` dropped, each line
    unwrapped: ``&\\text{Move disk 1 from Peg 1 to Peg 2} \\\\`` is that move's line."""
    lines = [unwrap(line.replace("&", "")) for line in _ROW_BREAK.split(body)]
    return "\n".join(line for line in lines if line)


# LaTeX's degree sign: 69.63^\circ, 69.63^{\circ}, 69.63\degree
_DEGREE = re.compile(r"\s*\^\s*(?:\{\s*\\circ\s*\}|\\circ(?![A-Za-z]))"
                     r"|\\(?:text)?degree(?![A-Za-z])")


def latex_to_plain(answer: str) -> str:
    """``answer`` with LaTeX spellings of plain symbols replaced, the spellings reasoning-gym's
    scorers read instead: ``\\frac{a}{b}`` (or ``\\dfrac``, ``\\tfrac``) of whole numbers as
    ``a/b`` (probability tasks score ``7/12``); ``\\land``, ``\\lor``, ``\\neg``,
    ``\\rightarrow``, ``\\leftrightarrow`` (and their synonyms) as ``∧ ∨ ¬ → ↔`` (logic
    tasks); a LaTeX matrix (``bmatrix``, ``pmatrix``, ``array``, ...) as rows of
    space-separated cells, one per line (rotate_matrix's layout); an ``align``-like display
    (``align*``, ``aligned``, ``gathered``) as its lines, one per ``\\\\`` (tower_of_hanoi's
    one move a line); and ``^\\circ`` (``^{\\circ}``, ``\\degree``) as ``°``
    (advanced_geometry's angles). Other text is left as it is."""
    s = _LATEX_MATRIX.sub(lambda m: _matrix_rows(m.group(2)), answer)
    s = _LATEX_LINES.sub(lambda m: _display_lines(m.group(2)), s)
    s = _DEGREE.sub("°", s)
    s = _LATEX_FRACTION.sub(r"\1/\2", s)
    return _LOGIC_COMMAND.sub(lambda m: _LOGIC[m.group(1)] + " ", s).strip()


def python_literal_as_json(answer: str) -> str:
    """``answer`` as JSON when it is a Python list or dict literal that JSON cannot read
    (``[['glossed', 'godless']]``, single quotes: tasks scored by ``json.loads`` want
    ``[["glossed", "godless"]]``); otherwise ``answer`` unchanged."""
    import ast
    import json

    try:
        json.loads(answer)
        return answer
    except ValueError:
        pass
    try:
        value = ast.literal_eval(answer)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return answer
    return json.dumps(value) if isinstance(value, (list, dict)) else answer


def grade_reasoning_gym(response: str, problem: dict) -> bool:
    """reasoning-gym's ``score_answer`` on the last boxed answer; correct at full score.

    The answer is scored as written and, when that misses, with LaTeX spellings of plain
    symbols replaced (:func:`latex_to_plain`; a task that wants LaTeX, such as
    ``fraction_simplification``'s, still gets it), then as JSON where it is a Python literal
    (:func:`python_literal_as_json`)."""
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
    plain = latex_to_plain(got)
    candidates = dict.fromkeys([got, plain, python_literal_as_json(plain)])  # distinct, in order
    return any(_full_score(ds, candidate, entry) for candidate in candidates)


def _full_score(ds, answer: str, entry: dict) -> bool:
    try:
        score = ds.score_answer(answer=answer, entry=entry)
    except Exception:  # a task's scorer raising on odd input: not correct
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
