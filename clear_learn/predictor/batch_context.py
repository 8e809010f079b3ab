"""Batch context: how long a query is compared with the similar queries beside it.

Within one task family, longer problem texts need longer answers and are solved less often
(on this project's 245 measured queries, within families: Spearman +0.45 with the mean
correct length, -0.50 with the accuracy; `benchmarks/batch_context_rules.py`). Across
families the text's length says little, so a predictor trained on many families learns the
pooled slope and misses this signal on a family it has never seen. This module puts it back
without knowing any family:

- :func:`within_task_slopes`: from training records, the within-family slopes of
  ``log(mean correct length)`` and of the accuracy's log-odds on the offset ``d`` below,
  computed with each training family as one batch (each family's means removed: a
  fixed-effects regression).
- :func:`neighbour_log_length`: for each text of a batch, the mean ``log(len)`` of itself
  (weight 1) and its 10 most similar texts in that batch, each weighted by its TF-IDF cosine
  similarity, so that unrelated texts count little.
- :func:`pool_look_alikes`: each curve moved the share ``pool`` of the way towards the mean
  curve of the same neighbourhood (the network's differences between look-alike texts of a
  family it never saw are mostly noise; the length shift then sets them apart).
- :func:`apply_batch_context`: the pooling, then ``tau *= exp(s_tau * d)`` and
  ``logit p += s_p * d``, with
  ``d = log(len) - centre``: a query longer than its look-alikes gets a later, lower curve.
  ``d`` is clipped to the largest offset seen within a training family (``max_offset``), so
  a text far longer than its neighbours (a long preamble, say) is not pushed beyond what the
  slopes were fitted on.

A single query is left as predicted, and so, nearly, is one unlike every other text of its
batch. Chosen among six centre rules (no shift; the 10 nearest, unweighted, above a threshold
of 0, 0.2 or 0.3; weighted by similarity or its square) on leave-one-family-out curves and on
held-out queries of seen families: a hard threshold of 0.3 kept too few neighbours (TF-IDF
favours texts of similar length), none at all hurt held-out queries of seen families, the
similarity weights did well on both (README, "Batch context").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

from ..curves import Curves

__all__ = ["BatchContext", "within_task_slopes", "neighbour_log_length", "relative_log_length",
           "clip_offsets", "shift_by_length", "pool_look_alikes", "pool_and_offsets",
           "apply_batch_context"]


@dataclass(frozen=True)
class BatchContext:
    """Slopes and neighbourhood of the batch-context adjustment (stored in a predictor's
    config under ``batch_context``)."""

    tau_slope: float
    p_slope: float
    neighbours: int = 10
    min_similarity: float = 0.0
    max_offset: float | None = None  # |d| is clipped to it; None: no clipping (older exports)
    pool: float = 0.0  # how far each curve moves towards its look-alikes' mean first (0: not)

    def __post_init__(self) -> None:
        for name in ("tau_slope", "p_slope", "min_similarity"):
            if not np.isfinite(getattr(self, name)):
                raise ValueError(f"BatchContext.{name} must be finite, got "
                                 f"{getattr(self, name)!r}")
        if int(self.neighbours) < 1:
            raise ValueError(f"BatchContext.neighbours must be >= 1, got {self.neighbours!r}")
        m = self.max_offset
        if m is not None and not (isinstance(m, (int, float)) and np.isfinite(m) and m >= 0):
            raise ValueError(f"BatchContext.max_offset must be a finite number >= 0 or None, "
                             f"got {m!r}")
        if not (isinstance(self.pool, (int, float)) and 0.0 <= self.pool <= 1.0):
            raise ValueError(f"BatchContext.pool must be a number in [0, 1], got {self.pool!r}")

    def offsets(self, texts: Sequence[str]) -> np.ndarray:
        """Each text's ``d``: its :func:`relative_log_length` in the batch ``texts``, clipped
        to ``[-max_offset, max_offset]``."""
        d = relative_log_length(texts, self.neighbours, self.min_similarity)
        return clip_offsets(d, self.max_offset)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BatchContext":
        unknown = set(d) - {"tau_slope", "p_slope", "neighbours", "min_similarity",
                            "max_offset", "pool"}
        if unknown:
            raise ValueError(f"batch_context: unknown keys {sorted(unknown)}")
        return cls(**d)


def _log_length(texts: Sequence[str]) -> np.ndarray:
    return np.log(np.maximum([len(t) for t in texts], 1)).astype(float)


def _demeaned(v: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """``v`` less the mean of its group."""
    out = v.astype(float).copy()
    for g in np.unique(groups):
        m = groups == g
        out[m] -= out[m].mean()
    return out


def _within_slope(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> float:
    """Least-squares slope of ``y`` on ``x`` after removing each group's means (0 if ``x``
    never varies within a group)."""
    xd, yd = _demeaned(x, groups), _demeaned(y, groups)
    sxx = float(xd @ xd)
    return float(xd @ yd / sxx) if sxx > 1e-12 else 0.0


def within_task_slopes(records: list[dict], *, neighbours: int = 10,
                       min_similarity: float = 0.0, pool: float = 0.0) -> BatchContext:
    """Within-family slopes of answer length and accuracy on the offset ``d`` the stage acts
    on: each training family taken as one batch, ``d`` is each text's
    :func:`relative_log_length` among its family's texts (with ``neighbours`` and
    ``min_similarity``).

    ``tau_slope``: of ``log(mean length of the correct rollouts)`` (queries never solved are
    left out); ``p_slope``: of ``log((c + 1/2) / (n - c + 1/2))`` with ``c`` correct of ``n``;
    both after removing each family's means. Families are the records' ``task`` (records
    without one form a single family). ``max_offset`` is the largest ``|d|`` among them;
    ``pool`` is passed through (:func:`pool_look_alikes`). Fitting on ``d`` itself matters:
    the centre holds the text and look-alikes of about its length, so ``d`` spans less than
    the log length less its family's mean, and slopes fitted on the latter shifted about a
    third as far as the data say (README, "Batch context").
    """
    if not records:
        raise ValueError("within_task_slopes: no records")
    groups = np.array([str(r.get("task", "")) for r in records])
    d = np.zeros(len(records))
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)
        d[members] = relative_log_length([records[i]["text"] for i in members], neighbours,
                                         min_similarity)
    n = np.array([len(r["rollouts"]) for r in records], dtype=float)
    ok = [[ro["tokens"] for ro in r["rollouts"] if ro["correct"]] for r in records]
    c = np.array([len(v) for v in ok], dtype=float)
    logit = np.log((c + 0.5) / (n - c + 0.5))
    solved = c > 0
    log_len = np.log([np.mean(v) if v else 1.0 for v in ok])
    return BatchContext(
        tau_slope=_within_slope(d[solved], log_len[solved], groups[solved]) if solved.any()
        else 0.0,
        p_slope=_within_slope(d, logit, groups),
        neighbours=int(neighbours), min_similarity=float(min_similarity),
        max_offset=float(np.abs(d).max()), pool=float(pool))


def neighbour_mean(texts: Sequence[str], values: np.ndarray, neighbours: int = 10,
                   min_similarity: float = 0.0, *, chunk: int = 1024) -> np.ndarray:
    """Weighted mean of ``values`` (one row per text) over each text (weight 1) and its
    ``neighbours`` most similar other texts of the batch (each weighted by its cosine
    similarity; 0 below ``min_similarity``), on TF-IDF word 1-2 grams fitted on the batch. A
    text unlike all others keeps about its own value. Copies of one text count as one text
    (with the mean of their values): a batch that repeats a query does not make it its own
    neighbour at similarity 1. Memory grows with ``chunk * len(texts)``, not
    ``len(texts) ** 2``."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    texts = list(texts)
    v = np.asarray(values, dtype=float)
    n = len(texts)
    if v.shape[0] != n:
        raise ValueError(f"neighbour_mean: {v.shape[0]} values for {n} texts")
    if n < 2:
        return v.copy()
    unique, inverse = np.unique(np.array(texts, dtype=object), return_inverse=True)
    if unique.size < n:
        counts = np.bincount(inverse).reshape((-1,) + (1,) * (v.ndim - 1))
        sums = np.zeros((unique.size,) + v.shape[1:])
        np.add.at(sums, inverse, v)
        return neighbour_mean(list(unique), sums / counts, neighbours, min_similarity,
                              chunk=chunk)[inverse]
    try:
        X = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit_transform(texts)
    except ValueError:  # no word at all in the batch (digits-free punctuation, say)
        return v.copy()
    k = min(int(neighbours), n - 1)
    out = np.empty_like(v)
    for a in range(0, n, chunk):
        sim = (X[a:a + chunk] @ X.T).toarray()
        rows = np.arange(sim.shape[0])
        sim[rows, a + rows] = -np.inf  # not its own neighbour
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k]
        s = sim[rows[:, None], top]
        w = np.where(s >= min_similarity, np.clip(s, 0.0, None), 0.0)
        w = w.reshape(w.shape + (1,) * (v.ndim - 1))
        out[a:a + chunk] = (v[a:a + chunk] + (v[top] * w).sum(1)) / (1 + w.sum(1))
    return out


def neighbour_log_length(texts: Sequence[str], neighbours: int = 10,
                         min_similarity: float = 0.0, *, chunk: int = 1024) -> np.ndarray:
    """:func:`neighbour_mean` of each text's ``log(len)``: the centre a text's length is
    compared with."""
    texts = list(texts)
    return neighbour_mean(texts, _log_length(texts), neighbours, min_similarity, chunk=chunk)


def relative_log_length(texts: Sequence[str], neighbours: int = 10,
                        min_similarity: float = 0.0) -> np.ndarray:
    """``log(len)`` of each text minus its :func:`neighbour_log_length` centre."""
    return _log_length(texts) - neighbour_log_length(texts, neighbours, min_similarity)


def clip_offsets(d: np.ndarray, max_offset) -> np.ndarray:
    """``d`` clipped to ``[-max_offset, max_offset]`` (one bound, or one per offset; None
    leaves it as it is, as does a None entry)."""
    if max_offset is None:
        return np.asarray(d, dtype=float)
    lim = np.array([np.inf if m is None else m for m in np.atleast_1d(max_offset)], dtype=float)
    return np.clip(np.asarray(d, dtype=float), -lim, lim)


def shift_by_length(curves: Curves, d: np.ndarray, tau_slope: np.ndarray | float,
                    p_slope: np.ndarray | float) -> Curves:
    """``tau * exp(tau_slope * d)`` and ``logit p + p_slope * d`` (slopes: one, or one per
    curve); ``k`` unchanged."""
    d = np.asarray(d, dtype=float)
    if d.shape != curves.tau.shape:
        raise ValueError(f"shift_by_length: {d.shape[0] if d.ndim else 1} offsets for "
                         f"{len(curves)} curves")
    p = np.clip(curves.p, 1e-9, 1 - 1e-9)
    logit = np.log(p / (1 - p)) + np.asarray(p_slope, dtype=float) * d
    return Curves(curves.tau * np.exp(np.asarray(tau_slope, dtype=float) * d),
                  1.0 / (1.0 + np.exp(-logit)), curves.k.copy())


def pool_and_offsets(curves: Curves, texts: Sequence[str], pool: np.ndarray | float,
                     neighbours: int = 10, min_similarity: float = 0.0
                     ) -> tuple[Curves, np.ndarray]:
    """:func:`pool_look_alikes` and the unclipped :func:`relative_log_length` of ``texts``
    from one neighbourhood (one TF-IDF fit and one similarity pass for both)."""
    texts = list(texts)
    if len(texts) != len(curves):
        raise ValueError(f"pool_and_offsets: {len(texts)} texts for {len(curves)} curves")
    pool = np.broadcast_to(np.asarray(pool, dtype=float), curves.tau.shape)
    if not np.any(pool > 0) or len(curves) < 2:
        return curves, relative_log_length(texts, neighbours, min_similarity)
    x = _log_length(texts)
    p = np.clip(curves.p, 1e-9, 1 - 1e-9)
    v = np.stack([np.log(curves.tau), np.log(p / (1 - p)), np.log(curves.k), x], axis=1)
    m = neighbour_mean(texts, v, neighbours, min_similarity)
    c = v[:, :3] + pool[:, None] * (m[:, :3] - v[:, :3])
    return (Curves(np.exp(c[:, 0]), 1.0 / (1.0 + np.exp(-c[:, 1])), np.exp(c[:, 2])),
            x - m[:, 3])


def pool_look_alikes(curves: Curves, texts: Sequence[str], pool: np.ndarray | float,
                     neighbours: int = 10, min_similarity: float = 0.0) -> Curves:
    """Each curve moved the share ``pool`` (one, or one per curve, in [0, 1]) of the way
    towards the :func:`neighbour_mean` of the batch's curves in ``(log tau, logit p, log k)``:
    within a family the network's own differences between look-alike texts are mostly noise,
    and what sets them apart is left to the length shift. 0 leaves them as they are."""
    if not np.any(np.asarray(pool) > 0) and len(texts) == len(curves):
        return curves
    return pool_and_offsets(curves, texts, pool, neighbours, min_similarity)[0]


def apply_batch_context(curves: Curves, texts: Sequence[str], ctx: BatchContext) -> Curves:
    """The curves pooled with their look-alikes' (``ctx.pool``), then shifted by each text's
    log length relative to its look-alikes in the batch."""
    texts = list(texts)
    if len(texts) != len(curves):
        raise ValueError(f"apply_batch_context: {len(texts)} texts for {len(curves)} curves")
    curves, d = pool_and_offsets(curves, texts, ctx.pool, ctx.neighbours, ctx.min_similarity)
    return shift_by_length(curves, clip_offsets(d, ctx.max_offset), ctx.tau_slope, ctx.p_slope)
