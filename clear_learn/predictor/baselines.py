"""Cheap predictors with the same interface as ``ClearPredictor.predict``: texts -> Curves.

Both learn from per-query curves fitted to the training rollouts (:func:`fit_curves`):

- :class:`LengthCurvePredictor`: ``tau`` grows linearly with the text's length in characters,
  ``p`` and ``k`` are constants (the training medians);
- :class:`TfidfCurvePredictor`: TF-IDF word and character n-grams with ridge regression onto
  ``(log(tau / M), log(k M), logit p)``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..curves import Curves
from ..fitting import fit_curves
from ..rollouts import to_arrays

__all__ = ["LengthCurvePredictor", "TfidfCurvePredictor"]


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
    """``tau = a + b * len(text)``; ``p``, ``k`` constant."""

    def fit(self, records: list[dict]) -> "LengthCurvePredictor":
        y, self.M_ = _targets(records)
        x = np.array([len(r["text"]) for r in records], dtype=float)
        tau = np.exp(y[:, 0]) * self.M_
        self.coef_ = np.polyfit(x, tau, 1) if np.ptp(x) > 0 else np.array([0.0, tau.mean()])
        self.p_ = float(np.median(1 / (1 + np.exp(-y[:, 2]))))
        self.k_ = float(np.exp(np.median(y[:, 1])) / self.M_)
        return self

    def predict(self, texts: Sequence[str]) -> Curves:
        x = np.array([len(t) for t in texts], dtype=float)
        tau = np.clip(np.polyval(self.coef_, x), 0.0, None)
        n = len(texts)
        return Curves(tau, np.full(n, self.p_), np.full(n, self.k_))

    def to_dict(self) -> dict:
        """The fitted line and constants, JSON-ready (``from_dict`` reads it back)."""
        return {"tau_per_char": float(self.coef_[0]), "tau_at_zero": float(self.coef_[1]),
                "p": self.p_, "k": self.k_}

    @classmethod
    def from_dict(cls, d: dict) -> "LengthCurvePredictor":
        """A fitted predictor from :meth:`to_dict`; a ``ValueError`` names a bad field."""
        if not isinstance(d, dict):
            raise ValueError(f"expected a mapping, got {d!r}")
        want = {"tau_per_char", "tau_at_zero", "p", "k"}
        if set(d) != want:
            raise ValueError(f"fields {sorted(d)}, expected {sorted(want)}")
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
