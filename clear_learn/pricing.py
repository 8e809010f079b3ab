"""Budgets at a given shadow price, and the price of a batch: what a live price needs.

At price ``lambda`` each query on its own takes ``b(lambda) = tau - W_{-1}(-lambda/(p k))/k``,
clipped to its cap and floored, when ``U(b) - lambda b > 0``, else 0 (docs/METHOD.md,
*Allocating with a shadow price*, without the batch's greedy fill). These functions give that
demand for many queries, the price at which a batch's demand fits a mean budget, and the
demand's elasticity there (:class:`~clear_learn.controller.StreamController` uses all three).
"""

from __future__ import annotations

import math

import numpy as np

from .allocation import allocate, as_caps
from .curves import Curves, stationary_budget, utility
from .lambertw import solve_y_minus_log_y

__all__ = ["budgets_at_price", "batch_price", "demand_elasticity"]


def budgets_at_price(curves: Curves, price: float, max_tokens=None) -> np.ndarray:
    """The integer budget each query takes on its own at ``price`` (the Lagrangian step).

    ``c_i = floor(min(b_i(lambda), cap_i))`` when ``U_i(c_i) - lambda c_i > 0``, else 0
    (docs/METHOD.md, *Allocating with a shadow price*, without the batch's greedy fill).
    ``price`` must be > 0.
    """
    price = _positive("price", price)
    caps = as_caps(max_tokens, len(curves))
    b = stationary_budget(price, curves.tau, curves.p, curves.k)
    c = np.floor(np.minimum(np.nan_to_num(b, nan=0.0), caps))
    pays = utility(c, curves.tau, curves.p, curves.k) - price * c > 0
    return np.where(pays, c, 0.0).astype(np.int64)


def batch_price(curves: Curves, tokens_per_query: float, max_tokens=None) -> float:
    """The batch-optimal price of ``curves`` at a mean budget of ``tokens_per_query``.

    The price of :func:`clear_learn.allocate` with ``round(tokens_per_query * N)`` tokens: the
    smallest price whose demand fits. 0 when every query can take its cap.
    """
    n = len(curves)
    if n == 0:
        raise ValueError("batch_price needs at least one reference curve")
    tokens_per_query = _positive("tokens_per_query", tokens_per_query)
    return float(allocate(curves, int(round(tokens_per_query * n)),
                          max_tokens=max_tokens).price)


def demand_elasticity(curves: Curves, price: float, max_tokens=None, *, step: float = 0.25,
                      bounds: tuple[float, float] = (0.25, 4.0)) -> float:
    """``-d log D / d log lambda`` of the mean demand of ``curves`` near ``price``.

    A secant over ``price * exp(+-step)`` of :func:`budgets_at_price` (the demand jumps where
    queries turn insolvent, so a derivative would miss them), clipped to ``bounds``.
    """
    price = _positive("price", price)
    lo = budgets_at_price(curves, price * math.exp(-step), max_tokens).sum()
    hi = budgets_at_price(curves, price * math.exp(step), max_tokens).sum()
    eps = (math.log(max(lo, 1.0)) - math.log(max(hi, 1.0))) / (2.0 * step)
    return float(min(max(eps, bounds[0]), bounds[1]))


def _best_budgets(tau: float, p: float, k: float, log_prices: np.ndarray,
                  cap: float) -> np.ndarray:
    """``floor(min(b(lambda), cap))`` where it pays, else 0, at each of ``log_prices``
    (one query)."""
    out = np.zeros(log_prices.size)
    if p <= 0.0 or cap < 1.0:
        return out
    L = math.log(p * k) - log_prices
    on = L >= 1.0  # below the peak marginal utility p k / e
    if not on.any():
        return out
    y = solve_y_minus_log_y(L[on])
    c = np.floor(np.minimum(tau + y / k, cap))
    u = utility(c, tau, p, k)
    out[on] = np.where(u - np.exp(log_prices[on]) * c > 0.0, c, 0.0)
    return out


def _best_budget(tau: float, p: float, k: float, lam: float, cap: float) -> int:
    """``floor(min(b(lambda), cap))`` when it pays at ``lam``, else 0 (one query)."""
    return int(_best_budgets(tau, p, k, np.array([math.log(lam)]), cap)[0])


def _lagrangian_log_price(curves: Curves, total: float, caps: np.ndarray, lo: float,
                          hi: float, rounds: int = 4, points: int = 33,
                          copies: np.ndarray | float = 1.0) -> float:
    """Smallest log-price in ``[lo, hi]`` whose :func:`budgets_at_price` demand (each
    query's budget times its ``copies``) fits ``total``, to ``(hi - lo) / (points -
    1)^rounds``, by rounds of a grid search (each one broadcast call over grid x queries);
    ``lo`` when it fits there."""
    tau, p, k = curves.tau, curves.p, curves.k
    for _ in range(rounds):
        grid = np.linspace(lo, hi, points)
        lam = np.exp(grid)[:, None]
        b = stationary_budget(lam, tau, p, k)
        c = np.floor(np.minimum(np.nan_to_num(b, nan=0.0), caps))
        pays = utility(c, tau, p, k) - lam * c > 0
        fits = (np.where(pays, c, 0.0) * copies).sum(axis=1) <= total
        i = int(np.argmax(fits)) if fits.any() else points - 1
        if i == 0:
            return float(grid[0])
        lo, hi = float(grid[i - 1]), float(grid[i])
    return hi


def _positive(name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return v
