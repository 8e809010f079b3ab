"""The price search for many queries (above ``allocation.SUBSAMPLE_ABOVE``).

For a large batch, bisecting on the exact demand costs one Lambert W solve of every query
per step. Instead the price is located on a random subsample, the funded queries' budgets are
solved exactly once at a point just below it, and the price is refined on a second-order Taylor
model of each budget in the log-price; the budgets are then solved exactly at that price, and
any token of overshoot is taken back from the queries that lose least by it.
"""

from __future__ import annotations

import numpy as np

from .curves import utility
from .demand import Demand, search_price
from .lambertw import solve_y_minus_log_y

__all__ = ["search_subsampled", "trim"]

#: Queries in the random subsample that locates the price.
SUBSAMPLE_SIZE = 32_768


def search_subsampled(demand: Demand, budget: float, lo: float, hi: float,
                      max_evals: int = 12):
    """The price for many queries: located on a subsample, refined on a Taylor model.

    The subsample's price, lowered by a margin, is an expansion point ``x0`` (log-price) at
    which the funded queries' ``y`` are solved exactly once; for ``x >= x0`` their budgets
    follow ``y(x) = y0 + y'(x - x0) + y''(x - x0)^2 / 2`` (``y' = -y/(y-1)``,
    ``y'' = -y/(y-1)^3``, bounded since funded queries have ``y >= 1.79``). Regula falsi on
    that model finds the price (to 1e-5 B); the budgets are then solved exactly there.
    Returns ``(log_price, budgets, converged, evals)``.
    """
    n = demand.caps.size
    idx = np.random.default_rng(0).choice(n, SUBSAMPLE_SIZE, replace=False)
    sub = demand.subset(idx)
    scale = SUBSAMPLE_SIZE / n
    if sub.total(lo) <= budget * scale:
        est = lo
    else:
        est, _, _ = search_price(sub, budget * scale, lo, hi, max_evals=60, rtol=1e-6)
    margin = 0.05
    evals = 0
    while True:
        x0 = max(est - margin, lo)
        model = _TaylorDemand(demand, x0)
        evals += 1
        fa = model.total(x0) - budget
        if fa > 0 or x0 <= lo:
            break
        margin *= 4.0
    if fa <= 0:
        return x0, demand.budgets(x0), True, evals
    # Regula falsi (Illinois) on the model between x0 (over budget) and an upper end.
    a = x0
    b_, step = est, margin
    fb = model.total(b_) - budget
    while fb > 0:
        a, fa = b_, fb
        b_ = min(b_ + step, hi)
        step *= 4.0
        fb = model.total(b_) - budget
    side = 0
    converged = False
    for _ in range(max_evals):
        if fb >= -1e-5 * budget or b_ - a < 1e-9 * max(1.0, abs(b_)):
            converged = True
            break
        x = (a * fb - b_ * fa) / (fb - fa)
        if not a < x < b_:
            x = 0.5 * (a + b_)
        fx = model.total(x) - budget
        evals += 1
        if fx > 0:
            a, fa = x, fx
            if side == -1:
                fb *= 0.5
            side = -1
        else:
            b_, fb = x, fx
            if side == 1:
                fa *= 0.5
            side = 1
    return b_, model.exact_budgets(b_), converged, evals


class _TaylorDemand:
    """Budgets of the queries funded at log-price ``x0``, modelled for prices above it."""

    def __init__(self, demand: Demand, x0: float):
        self.demand, self.x0 = demand, x0
        idx, y0 = demand.funded(x0)
        self.idx, self.y0 = idx, y0
        inv_k = 1.0 / demand.k[idx]
        ym1 = y0 - 1.0
        self.a = demand.tau[idx] + y0 * inv_k
        self.c1 = -y0 / ym1 * inv_k
        self.c2 = -0.5 * y0 / (ym1 * ym1 * ym1) * inv_k
        self.cap = demand.caps[idx]
        self.log_rate = demand.log_rate[idx]

    def total(self, x: float) -> float:
        d = x - self.x0
        b = np.minimum(self.a + d * (self.c1 + d * self.c2), self.cap)
        np.floor(b, out=b)
        return float(b[self.log_rate > x].sum())

    def exact_budgets(self, x: float) -> np.ndarray:
        """Budgets at ``x`` solved exactly (one Halley step from the model's start)."""
        d = self.demand
        keep = self.log_rate > x
        idx = self.idx[keep]
        dx = x - self.x0
        start = (self.a[keep] + dx * (self.c1[keep] + dx * self.c2[keep]) - d.tau[idx]) \
            * d.k[idx]
        y = solve_y_minus_log_y(d.lpk[idx] - x, iterations=1, start=start)
        b = np.zeros(d.tau.size)
        b[idx] = np.floor(np.minimum(d.tau[idx] + y / d.k[idx], d.caps[idx]))
        return b



def trim(b, excess, tau, p, k) -> None:
    """Take ``excess`` tokens back, one each from the funded queries that lose least."""
    excess = int(excess)
    if excess <= 0:
        return
    funded = np.flatnonzero(b > 0)
    bf = b[funded]
    loss = utility(bf, tau[funded], p[funded], k[funded]) - utility(
        bf - 1, tau[funded], p[funded], k[funded])
    if excess >= funded.size:  # not expected: the model is accurate to far below a token
        raise RuntimeError("allocation overshot the budget by more than one token per query")
    take = np.argpartition(loss, excess - 1)[:excess]
    b[funded[take]] -= 1

