"""Threshold spread: widen predicted curves by the predictor's uncertainty about ``tau``.

A curve predicted for a family the predictor never saw is often right about the shape and
wrong about where the surge starts. Treating the threshold as uncertain, with standard
deviation ``spread * tau``, and moment-matching that back into a shifted surge
(:func:`clear_learn.curves.widen_threshold`) gives flatter curves that keep the allocator's
closed form. ``spread`` is one number per predictor, chosen by the likelihood of rollouts the
curves were not trained on (``train/cross_family.py`` fits it on unseen families); the
exported predictor stores it as ``tau_spread`` and applies it in ``predict``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..curves import Curves
from ..fitting import rollout_nll
from ..rollouts import to_arrays

__all__ = ["SPREAD_GRID", "spread_nll", "fit_tau_spread", "tau_spread_by_group",
           "check_tau_spread"]

SPREAD_GRID = tuple(round(0.1 * i, 1) for i in range(16))  # 0.0, 0.1, ..., 1.5


def check_tau_spread(value, name: str = "tau_spread") -> float:
    """``value`` as a float, or a ``ValueError`` naming ``name`` unless finite and >= 0."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number >= 0, got {value!r}") from None
    if not np.isfinite(x) or x < 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return x


def spread_nll(curves: Curves, records: Sequence[dict],
               grid: Sequence[float] = SPREAD_GRID) -> np.ndarray:
    """Total negative log-likelihood of ``records``' rollouts under ``curves`` widened by each
    spread of ``grid``, per query: shape ``(len(grid), len(records))``."""
    if len(curves) != len(records):
        raise ValueError(f"{len(curves)} curves for {len(records)} records")
    data = to_arrays(list(records))
    counts = data.counts.astype(np.float64)
    return np.stack([rollout_nll(curves.widened(s), data) * counts for s in grid])


def fit_tau_spread(curves: Curves, records: Sequence[dict],
                   grid: Sequence[float] = SPREAD_GRID) -> float:
    """The spread of ``grid`` under which ``records``' rollouts are most likely."""
    return float(grid[int(np.argmin(spread_nll(curves, records, grid).sum(axis=1)))])


def tau_spread_by_group(curves: Curves, records: Sequence[dict], groups: Sequence[str],
                        grid: Sequence[float] = SPREAD_GRID) -> dict[str, float]:
    """Each group's spread fitted on the *other* groups' rollouts only (leave-one-group-out),
    so that a group's widened curves are honest predictions for it."""
    groups = np.asarray(groups)
    if groups.shape != (len(records),):
        raise ValueError(f"{groups.size} groups for {len(records)} records")
    nll = spread_nll(curves, records, grid)
    out = {}
    for g in sorted(set(groups.tolist())):
        other = groups != g
        if not other.any():
            raise ValueError(f"tau_spread_by_group: group {g!r} is the only group; the "
                             "spread of a group is fitted on the others")
        out[str(g)] = float(grid[int(np.argmin(nll[:, other].sum(axis=1)))])
    return out
