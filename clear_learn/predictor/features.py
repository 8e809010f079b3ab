"""Surface features of a query's text that say how much work its answer takes, whatever its
task family: how long it is, how many numbers it holds and how long they are, how many
operators. Each is a log count, scaled to roughly unit size, so that the head can use them
next to the encoder's pooled output (``surface_features: true`` in the model config).
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np

__all__ = ["surface_features", "SURFACE_FEATURES"]

_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_OPERATOR = re.compile(r"[+\-*/^=×÷]")

# name -> scale dividing log1p(count)
SURFACE_FEATURES = {"chars": 6.0, "words": 5.0, "numbers": 3.0, "digits": 4.0,
                    "longest_number": 3.0, "operators": 3.0}


def surface_features(texts: Sequence[str]) -> np.ndarray:
    """``(len(texts), 6)`` float32: scaled log counts of chars, words, numbers, digits,
    the longest number's digits and operator symbols, in the order of ``SURFACE_FEATURES``."""
    out = np.zeros((len(texts), len(SURFACE_FEATURES)), dtype=np.float64)
    for i, t in enumerate(texts):
        nums = _NUMBER.findall(t)
        digit_counts = [sum(ch.isdigit() for ch in n) for n in nums]
        out[i] = (len(t), len(t.split()), len(nums), sum(digit_counts),
                  max(digit_counts, default=0), len(_OPERATOR.findall(t)))
    scale = np.array(list(SURFACE_FEATURES.values()))
    return (np.log1p(out) / scale).astype(np.float32)
