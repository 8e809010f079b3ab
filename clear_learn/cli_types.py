"""argparse types shared by the command modules: numbers in range and writable outputs.

Each refuses a bad value at parse time, before any work, with a message naming the value.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

__all__ = ["budgets_list", "positive_int", "nonnegative_int", "nonnegative_number",
           "fraction", "output_file", "output_dir"]


def budgets_list(text: str) -> list[float]:
    """An argparse type: comma-separated finite numbers >= 0."""
    try:
        vals = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"budgets must be comma-separated numbers: {text!r}")
    if not vals or any(not (v >= 0 and math.isfinite(v)) for v in vals):
        raise argparse.ArgumentTypeError(f"budgets must be finite numbers >= 0: {text!r}")
    return vals


def _checked(text: str, parse, ok, what: str):
    """``parse(text)`` if it parses and passes ``ok``, else an argparse error saying ``what``."""
    try:
        x = parse(text)
    except ValueError:
        x = None
    if x is None or not ok(x):
        raise argparse.ArgumentTypeError(f"must be {what}: {text!r}")
    return x


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1."""
    return _checked(text, int, lambda n: n >= 1, "a positive integer")


def nonnegative_int(text: str) -> int:
    """An argparse type: an integer >= 0."""
    return _checked(text, int, lambda n: n >= 0, "an integer >= 0")


def nonnegative_number(text: str) -> float:
    """An argparse type: a finite number >= 0 (``inf``, ``nan`` and negatives refused)."""
    return _checked(text, float, lambda x: math.isfinite(x) and x >= 0, "a finite number >= 0")


def fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1."""
    return _checked(text, float, lambda x: 0 < x < 1, "a number strictly between 0 and 1")


def output_file(text: str) -> str:
    """An argparse type: a file path that can be written (checked before any work)."""
    from .atomic import check_target

    try:
        check_target(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def output_dir(text: str) -> str:
    """An argparse type: a folder to write into (it, or its nearest existing parent, is a
    folder)."""
    path = Path(text)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise argparse.ArgumentTypeError(f"{text}: {p} is a file, not a folder")
            break
    return text
