"""Exact optima for evaluation: multiple-choice knapsacks over candidate budgets.

Each query picks one budget from a short list of candidates (0 always among them); the best
total value under a total budget is found by dynamic programming. Two uses:

- :func:`grid_optimum`: parametric curves on a token grid (a ceiling only for allocations on
  that grid);
- :func:`empirical_optimum`: empirical accuracy curves, whose only useful budgets are 0 and the
  lengths of correct rollouts, so the optimum over all integer budgets is exact.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .allocation import as_caps
from .curves import Curves

__all__ = ["KnapsackFrontier", "grid_optimum", "empirical_optimum", "knapsack_frontier"]


@dataclass
class KnapsackFrontier:
    """Best total value for every total budget ``0..max_total`` (in units of ``unit`` tokens).

    ``value[t]`` is the optimum with at most ``t`` units beyond the ``floor`` tokens that
    every query holds; :meth:`best` and :meth:`budgets` take a total in tokens, floors
    included, and :meth:`budgets` recovers one optimal allocation (in tokens).
    """

    value: np.ndarray
    choice: np.ndarray  # (n_queries, max_total + 1) index into each query's candidates
    costs: list[np.ndarray]
    unit: int
    floor: int = 0

    def _units(self, total_tokens: int) -> int:
        spare = int(total_tokens) - len(self.costs) * self.floor
        if spare < 0:
            raise ValueError(f"total_tokens={int(total_tokens)} cannot give {len(self.costs)} "
                             f"queries their fallback_tokens={self.floor} each")
        return min(spare // self.unit, self.value.size - 1)

    def best(self, total_tokens: int) -> float:
        return float(self.value[self._units(total_tokens)])

    def budgets(self, total_tokens: int) -> np.ndarray:
        t = self._units(total_tokens)
        out = np.zeros(len(self.costs), dtype=np.int64)
        for i in range(len(self.costs) - 1, -1, -1):
            c = int(self.costs[i][self.choice[i, t]])
            out[i] = c * self.unit + self.floor
            t -= c
        return out


def knapsack_frontier(costs: list[np.ndarray], values: list[np.ndarray],
                      max_total: int, unit: int = 1) -> KnapsackFrontier:
    """Solve ``max sum_i values_i[j_i]`` s.t. ``sum_i costs_i[j_i] <= t`` for all ``t <= max_total``.

    ``costs_i`` are whole numbers >= 0 (in units), ``costs_i[0] == 0`` with ``values_i[0]``
    the value of choosing nothing. Time ``O(max_total * sum_i len(costs_i))``.
    """
    T = int(max_total)
    n = len(costs)
    dp = np.zeros(T + 1)
    ctype = np.uint8 if max((len(c) for c in costs), default=1) <= 255 else np.uint16
    choice = np.zeros((n, T + 1), dtype=ctype)
    for i, (c, v) in enumerate(zip(costs, values)):
        c = np.asarray(c, dtype=np.int64)
        v = np.asarray(v, dtype=np.float64)
        if c[0] != 0:
            raise ValueError("each query's first candidate must cost 0")
        new = dp + v[0]
        ch = choice[i]
        for j in range(1, c.size):
            cj = int(c[j])
            if cj > T:
                continue
            cand = dp[: T + 1 - cj] + v[j]
            better = cand > new[cj:]
            new[cj:][better] = cand[better]
            ch[cj:][better] = j
        dp = new
    return KnapsackFrontier(value=dp, choice=choice,
                            costs=[np.asarray(c, dtype=np.int64) for c in costs], unit=unit)


def grid_optimum(curves: Curves, max_total_tokens: int, *, grid: int = 10,
                 max_tokens=None) -> KnapsackFrontier:
    """Optimal expected correct answers when every budget is a multiple of ``grid`` tokens.

    Candidates per query are ``0`` and the grid points in ``(tau, max_tokens]``; values are
    ``U_i`` at them. Without ``max_tokens`` the candidates stop at ``max_total_tokens``.
    """
    n = len(curves)
    caps = as_caps(max_tokens, n)
    T = int(max_total_tokens) // grid
    costs, values = [], []
    for i in range(n):
        top = int(min(caps[i] // grid, T))
        lo = int(curves.tau[i] // grid) + 1
        c = np.concatenate([[0], np.arange(lo, top + 1)]) if lo <= top else np.array([0])
        costs.append(c)
        values.append(curves[i].utility(c * float(grid)) if c.size > 1 else np.zeros(1))
    return knapsack_frontier(costs, values, T, unit=grid)


def empirical_optimum(lengths: list[np.ndarray], correct: list[np.ndarray],
                      max_total_tokens: int, *, max_tokens=None,
                      fallback_tokens: int = 0) -> KnapsackFrontier:
    """Exact optimum of mean empirical accuracy over integer budgets.

    ``lengths[i]``, ``correct[i]``: the token counts and correctness of query ``i``'s rollouts.
    ``acc_i(b) = #{j: correct_ij and L_ij <= b} / n_i`` only rises at correct lengths, so
    each query's candidates are 0 and those lengths (up to its cap). Values are in accuracy
    units (``value.sum`` of ``acc_i``).

    With ``fallback_tokens = f`` every query holds at least ``f`` tokens (as
    :func:`~clear_learn.allocation.allocate` gives them): the candidates are ``f`` and the
    correct lengths above it, and ``f`` tokens per query are taken out of every total. A
    query left at ``f`` is the optimum's abandoned one.
    """
    n = len(lengths)
    caps = as_caps(max_tokens, n)
    f = int(fallback_tokens)
    if f < 0 or np.any(caps < f):
        raise ValueError(f"fallback_tokens={fallback_tokens} must be >= 0 and at most every "
                         "query's max_tokens")
    costs, values = [], []
    for i in range(n):
        L = np.asarray(lengths[i], dtype=np.int64)
        ok = np.asarray(correct[i], dtype=bool) & (L <= caps[i])
        cl = np.sort(L[ok])
        base = np.count_nonzero(cl <= f)
        uniq, last = np.unique(cl[cl > f], return_index=False, return_counts=True)
        cum = (base + np.cumsum(last)) / max(L.size, 1)
        costs.append(np.concatenate([[0], uniq - f]))
        values.append(np.concatenate([[base / max(L.size, 1)], cum]))
    spare = int(max_total_tokens) - n * f
    if spare < 0:
        raise ValueError(f"fallback_tokens={f} for {n} queries needs {n * f} tokens, more than "
                         f"max_total_tokens={int(max_total_tokens)}")
    fr = knapsack_frontier(costs, values, spare)
    fr.floor = f
    return fr
