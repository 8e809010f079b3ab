"""Cheap predictors with the same interface as ``ClearPredictor.predict``: texts -> Curves.

Both learn from per-query curves fitted to the training rollouts (:func:`fit_curves`):

- :class:`LengthCurvePredictor`: ``tau`` grows linearly with the text's length in characters
  (within the range of lengths it was fitted on: no extrapolation), ``p`` and ``k`` are
  constants (the training medians);
- :class:`TfidfCurvePredictor`: TF-IDF word and character n-grams with ridge regression onto
  ``(log(tau / M), log(k M), logit p)``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..curves import Curves
from ..fitting import fit_curves
from ..rollouts import to_arrays

__all__ = ["LengthCurvePredictor", "TfidfCurvePredictor", "check_length_range"]


def check_length_range(value, name: str) -> tuple[float, float]:
    """``value`` as a ``(low, high)`` pair of finite numbers with ``0 <= low <= high``; a
    ``ValueError`` names ``name`` otherwise."""
    try:
        low, high = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair [low, high] of numbers, got {value!r}") from None
    if not (np.isfinite(low) and np.isfinite(high) and 0 <= low <= high):
        raise ValueError(f"{name} must be finite with 0 <= low <= high, got {value!r}")
    return low, high


def _targets(records: list[dict]) -> tuple[np.ndarray, float]:
    arr = to_arrays(records)
    fit = fit_curves(arr).curves
    M = arr.max_new_tokens.astype(float)
    p = np.clip(fit.p, 1e-3, 1 - 1e-3)
    y = np.stack([np.log(fit.tau / M + 1e-6), np.log(fit.k * M), np.log(p / (1 - p))], 1)
    return y, float(np.median(M))


def _to_curves(y: np.ndarray, M: float) -> Curves:
    tau = np.maximum(np.exp(y[:, 0]) - 1e-6, 0.0) * M
    return Curves(tau, 1.0 / (1.0 + np.exp(-y[:, 2])), np.exp(y[:, 1]) / M)


class LengthCurvePredictor:
    """``tau = a + b * len(text)``, the length clipped to the range it was fitted on (a text
    longer than every training text gets the longest one's ``tau``); ``p``, ``k`` constant."""

    chars_range_: tuple[float, float] | None = None  # None: no clipping (older exports)

    def fit(self, records: list[dict]) -> "LengthCurvePredictor":
        y, self.M_ = _targets(records)
        x = np.array([len(r["text"]) for r in records], dtype=float)
        self.chars_range_ = (float(x.min()), float(x.max()))
        tau = np.exp(y[:, 0]) * self.M_
        self.coef_ = np.polyfit(x, tau, 1) if np.ptp(x) > 0 else np.array([0.0, tau.mean()])
        self.p_ = float(np.median(1 / (1 + np.exp(-y[:, 2]))))
        self.k_ = float(np.exp(np.median(y[:, 1])) / self.M_)
        return self

    def predict(self, texts: Sequence[str]) -> Curves:
        x = np.array([len(t) for t in texts], dtype=float)
        if self.chars_range_ is not None:
            x = np.clip(x, *self.chars_range_)
        tau = np.clip(np.polyval(self.coef_, x), 0.0, None)
        n = len(texts)
        return Curves(tau, np.full(n, self.p_), np.full(n, self.k_))

    def to_dict(self) -> dict:
        """The fitted line, its range of lengths and constants, JSON-ready (``from_dict``
        reads it back)."""
        out = {"tau_per_char": float(self.coef_[0]), "tau_at_zero": float(self.coef_[1]),
               "p": self.p_, "k": self.k_}
        if self.chars_range_ is not None:
            out["chars_range"] = list(self.chars_range_)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "LengthCurvePredictor":
        """A fitted predictor from :meth:`to_dict`; a ``ValueError`` names a bad field."""
        if not isinstance(d, dict):
            raise ValueError(f"expected a mapping, got {d!r}")
        want = {"tau_per_char", "tau_at_zero", "p", "k"}
        if not want <= set(d) <= want | {"chars_range"}:
            raise ValueError(f"fields {sorted(d)}, expected {sorted(want)} and optionally "
                             "chars_range")
        vals = {}
        for key in sorted(want):
            try:
                vals[key] = float(d[key])
            except (TypeError, ValueError):
                raise ValueError(f"{key} must be a number, got {d[key]!r}") from None
            if not np.isfinite(vals[key]):
                raise ValueError(f"{key} must be finite, got {d[key]!r}")
        if not 0 <= vals["p"] <= 1 or vals["k"] <= 0:
            raise ValueError(f"need 0 <= p <= 1 and k > 0, got p {vals['p']}, k {vals['k']}")
        out = cls()
        out.coef_ = np.array([vals["tau_per_char"], vals["tau_at_zero"]])
        out.p_, out.k_ = vals["p"], vals["k"]
        if "chars_range" in d:
            out.chars_range_ = check_length_range(d["chars_range"], "chars_range")
        return out


class TfidfCurvePredictor:
    """TF-IDF features and ridge regression onto the transformed curve parameters."""

    def __init__(self, alpha: float = 3.0):
        self.alpha = alpha

    def fit(self, records: list[dict]) -> "TfidfCurvePredictor":
        from scipy.sparse import hstack
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import Ridge

        y, self.M_ = _targets(records)
        texts = [r["text"] for r in records]
        self.word_ = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        self.char_ = TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4), min_df=2,
                                     sublinear_tf=True, max_features=20000)
        X = hstack([self.word_.fit_transform(texts), self.char_.fit_transform(texts)]).tocsr()
        self.ridge_ = Ridge(alpha=self.alpha).fit(X, y)
        return self

    def predict(self, texts: Sequence[str]) -> Curves:
        from scipy.sparse import hstack

        X = hstack([self.word_.transform(texts), self.char_.transform(texts)]).tocsr()
        return _to_curves(self.ridge_.predict(X), self.M_)
