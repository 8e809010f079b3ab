"""The integer demand of a set of queries as a function of the shadow price.

At a price ``lambda`` a query is solvent when ``lambda`` is below its rate (the best average
gain per token, :func:`~clear_learn.curves.tangent_point`); a solvent query takes its
stationary budget ``b_i(lambda) = tau_i + y_i / k_i`` with ``y_i - ln y_i = ln(p_i k_i) -
ln(lambda)`` (``y_i = -W_{-1}(-lambda / (p_i k_i))``), clipped to its cap and rounded down.
The integer demand ``D(lambda) = sum_i floor(min(b_i(lambda), cap_i))`` over solvent queries is
non-increasing in ``lambda``; :func:`search_price` bisects for the smallest price whose demand
fits in a budget. Everything is in log-price, which keeps every step finite.
"""

from __future__ import annotations

import numpy as np

from .curves import tangent_point
from .lambertw import solve_y_minus_log_y

__all__ = ["Demand", "search_price"]


class Demand:
    """The integer demand of a set of queries as a function of the log-price."""

    def __init__(self, tau, p, k, caps, *, _parts=None):
        self.tau, self.k, self.caps = tau, k, caps
        if _parts is not None:
            self.lpk, self.b_star, self.rate, self.log_rate = _parts
            return
        with np.errstate(divide="ignore"):
            self.lpk = np.log(p * k)
        self.b_star, self.rate = tangent_point(tau, p, k, caps)
        with np.errstate(divide="ignore"):
            self.log_rate = np.log(self.rate)

    def subset(self, idx: np.ndarray) -> "Demand":
        parts = (self.lpk[idx], self.b_star[idx], self.rate[idx], self.log_rate[idx])
        return Demand(self.tau[idx], None, self.k[idx], self.caps[idx], _parts=parts)

    def funded(self, log_price: float) -> tuple[np.ndarray, np.ndarray]:
        """Indices of the queries solvent at ``log_price`` and their ``y = k (b - tau)``."""
        idx = np.flatnonzero(self.log_rate > log_price)
        y = solve_y_minus_log_y(self.lpk[idx] - log_price)
        return idx, y

    def budgets(self, log_price: float) -> np.ndarray:
        """Integer budgets ``floor(min(b_i(lambda), cap_i))`` of solvent queries, 0 elsewhere."""
        idx, y = self.funded(log_price)
        b = np.zeros(self.tau.size)
        b[idx] = np.floor(np.minimum(self.tau[idx] + y / self.k[idx], self.caps[idx]))
        return b

    def total(self, log_price: float) -> float:
        return float(self.budgets(log_price).sum())


def search_price(demand: Demand, budget: float, lo: float, hi: float,
                 max_evals: int, rtol: float = 1e-12) -> tuple[float, float, int]:
    """Bisect for the smallest log-price with demand <= budget; returns (hi, lo, evals).

    Assumes ``demand(lo) > budget >= demand(hi)``.
    """
    evals = 0
    while hi - lo > rtol * max(1.0, abs(hi)) and evals < max_evals:
        mid = 0.5 * (lo + hi)
        if demand.total(mid) <= budget:
            hi = mid
        else:
            lo = mid
        evals += 1
    return hi, lo, evals

