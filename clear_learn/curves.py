"""Shifted-surge accuracy curves: the value type and its vectorised functions.

A query's expected accuracy at a generation budget of ``b`` tokens is (docs/METHOD.md, "The
curve of one query")::

    U(b) = p * G(k * (b - tau))   for b > tau,   0 otherwise,    G(x) = 1 - (1 + x) exp(-x)

with the emergence threshold ``tau >= 0`` (tokens), the saturation ``0 <= p <= 1`` and the
surge rate ``k > 0`` (1/tokens). Every function here takes and returns numpy arrays and
broadcasts; none loops over queries.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from .lambertw import solve_y_minus_log_y

__all__ = [
    "Curves",
    "surge_cdf",
    "utility",
    "marginal_utility",
    "peak_marginal_utility",
    "stationary_budget",
    "tangent_point",
    "widen_threshold",
]


def surge_cdf(x: np.ndarray) -> np.ndarray:
    """``G(x) = 1 - (1 + x) exp(-x)`` for ``x > 0`` and 0 for ``x <= 0``, accurate for tiny ``x``.

    ``x`` is clipped to 1000 (where ``G`` is 1 to machine precision), so that ``x = inf``
    (a huge ``k`` times a budget past ``tau``) gives 1, not ``inf * 0``.
    """
    x = np.clip(np.asarray(x, dtype=np.float64), 0.0, 1000.0)
    g = 1.0 - (1.0 + x) * np.exp(-x)
    small = x < 1e-3
    if np.any(small):
        xs = x[small]
        series = xs * xs * (0.5 - xs * (1.0 / 3.0 - xs * (0.125 - xs / 30.0)))
        if g.ndim == 0:
            return series.reshape(())
        g[small] = series
    return g


def utility(b: np.ndarray, tau: np.ndarray, p: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Expected accuracy ``U(b) = p G(k (b - tau))`` (0 for ``b <= tau``)."""
    return np.asarray(p) * surge_cdf(np.asarray(k) * (np.asarray(b, dtype=np.float64) - tau))


def marginal_utility(b: np.ndarray, tau: np.ndarray, p: np.ndarray, k: np.ndarray) -> np.ndarray:
    """``U'(b) = p k^2 (b - tau) exp(-k (b - tau))`` for ``b > tau``, 0 otherwise."""
    x = np.clip(np.asarray(k) * (np.asarray(b, dtype=np.float64) - tau), 0.0, 1000.0)
    with np.errstate(over="ignore"):
        return np.asarray(p) * np.asarray(k) * x * np.exp(-x)


def peak_marginal_utility(p: np.ndarray, k: np.ndarray) -> np.ndarray:
    """The largest marginal utility, ``p k / e``, reached at ``b = tau + 1/k``."""
    return np.asarray(p) * np.asarray(k) * np.exp(-1.0)


def stationary_budget(price: np.ndarray | float, tau: np.ndarray, p: np.ndarray,
                      k: np.ndarray) -> np.ndarray:
    """Budget on the decaying side of ``U'`` where ``U'(b) = price``; NaN where none exists.

    ``b(lambda) = tau - W_{-1}(-lambda / (p k)) / k`` for ``0 < lambda < p k / e``; at
    ``lambda = p k / e`` it is the peak ``tau + 1/k``; above it there is no stationary point.
    A price of 0 gives ``inf`` (an unpriced token is always worth taking).
    """
    price = np.asarray(price, dtype=np.float64)
    tau, p, k = (np.asarray(a, dtype=np.float64) for a in (tau, p, k))
    with np.errstate(divide="ignore", invalid="ignore"):
        L = np.log(p * k) - np.log(price)  # -ln z, z = lambda / (p k)
    # at the peak itself L = 1 up to rounding
    on_branch = L >= 1.0 - 1e-12
    y = solve_y_minus_log_y(np.where(on_branch & np.isfinite(L), L, 1.0))
    with np.errstate(invalid="ignore"):
        b = tau + y / k
    b = np.where(on_branch, b, np.nan)
    return np.where(np.isposinf(L), np.inf, b)


def tangent_point(tau: np.ndarray, p: np.ndarray, k: np.ndarray,
                  cap: np.ndarray | float = np.inf) -> tuple[np.ndarray, np.ndarray]:
    """The budget in ``(0, cap]`` with the best average gain per token, and that gain.

    Returns ``(b_star, rate)`` with ``rate = max_{0 < b <= cap} U(b) / b``. ``rate`` is the
    price at which a query turns insolvent (rational abandonment): at any price ``lambda``,
    funding it at its stationary budget pays (``U(b) - lambda b > 0``) iff ``lambda < rate``.

    Notes
    -----
    With ``y = k (b - tau)`` and ``c = k tau``, ``d/db [U(b)/b] = 0`` is
    ``y = ln(1 + (1 + c) y + y^2)``, solved by Newton's method from an interpolated start.
    ``U(b)/b`` is unimodal, so when the unconstrained point lies beyond ``cap`` the best
    budget is ``cap`` itself.
    """
    tau, p, k = np.broadcast_arrays(*(np.asarray(a, dtype=np.float64) for a in (tau, p, k)))
    shape = tau.shape  # () for scalars: computed on 1-d arrays, returned in this shape
    tau, p, k = (np.atleast_1d(a) for a in (tau, p, k))
    c = k * tau
    y = np.interp(np.log1p(c), _TANGENT_GRID_LOGC, _TANGENT_GRID_Y)
    for _ in range(2):
        q = 1.0 + (1.0 + c) * y + y * y
        g = y - np.log(q)
        gp = 1.0 - (1.0 + c + 2.0 * y) / q
        y = y - g / gp
    b_star = tau + y / k
    # At the tangent point U(b)/b = U'(b) = p k y exp(-y).
    rate = p * k * y * np.exp(-y)
    cap = np.broadcast_to(np.asarray(cap, dtype=np.float64), b_star.shape)
    over = b_star > cap
    if np.any(over):
        b_star = np.minimum(b_star, cap)
        bo = b_star[over]
        with np.errstate(divide="ignore", invalid="ignore"):
            rate[over] = np.where(bo > 0, utility(bo, tau[over], p[over], k[over]) / bo, 0.0)
    return b_star.reshape(shape), rate.reshape(shape)


def widen_threshold(tau: np.ndarray, k: np.ndarray, spread: np.ndarray | float
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(tau, k)`` of the shifted surge that matches ``tau`` made uncertain by ``spread``.

    A solvable rollout's length is ``tau + X``, ``X ~ Gamma(2, k)``: mean ``tau + 2/k``,
    variance ``2/k^2``. Adding an independent threshold error of standard deviation
    ``spread * tau`` and matching the first two moments gives ``k' = sqrt(2 / (2/k^2 +
    (spread tau)^2))`` and ``tau' = tau + 2/k - 2/k'`` (the mean length kept), with ``tau'``
    floored at 0 (then the mean grows a little). ``spread = 0`` returns the inputs; ``p`` is
    unchanged by construction. Broadcasts.
    """
    tau, k = np.asarray(tau, dtype=np.float64), np.asarray(k, dtype=np.float64)
    spread = np.asarray(spread, dtype=np.float64)
    if np.any(~np.isfinite(spread)) or np.any(spread < 0):
        raise ValueError(f"spread must be finite and >= 0, got {spread}")
    k2 = np.sqrt(2.0 / (2.0 / k ** 2 + (spread * tau) ** 2))
    return np.maximum(tau + 2.0 / k - 2.0 / k2, 0.0), k2


def _tangent_table() -> tuple[np.ndarray, np.ndarray]:
    """Solutions of ``y = ln(1 + (1 + c) y + y^2)`` on a grid of ``log1p(c)``, by fixed point."""
    logc = np.linspace(0.0, np.log1p(1e12), 512)
    c = np.expm1(logc)
    y = np.full_like(c, 2.0) + np.log1p(c)
    for _ in range(200):
        q = 1.0 + (1.0 + c) * y + y * y
        y = y - (y - np.log(q)) / (1.0 - (1.0 + c + 2.0 * y) / q)
    return logc, y


_TANGENT_GRID_LOGC, _TANGENT_GRID_Y = _tangent_table()


@dataclass(frozen=True)
class Curves:
    """Shifted-surge curves of N queries: arrays ``tau`` (tokens), ``p`` and ``k`` (1/tokens).

    Validated on construction: equal lengths (a scalar broadcasts), finite, ``tau >= 0``,
    ``0 <= p <= 1``, ``k > 0``. The arrays are read-only float64 copies.
    """

    tau: np.ndarray
    p: np.ndarray
    k: np.ndarray

    def __post_init__(self) -> None:
        arrays = {}
        for name in ("tau", "p", "k"):
            a = np.array(getattr(self, name), dtype=np.float64, copy=True)
            if a.ndim > 1:
                raise ValueError(f"Curves.{name} must be 1-dimensional, got shape {a.shape}")
            arrays[name] = np.atleast_1d(a)
        n = max(a.size for a in arrays.values())
        for name, a in arrays.items():
            if a.size == 1 and n > 1:
                a = np.full(n, a[0])
            elif a.size != n:
                raise ValueError(f"Curves arrays differ in length: tau {arrays['tau'].size}, "
                                 f"p {arrays['p'].size}, k {arrays['k'].size}")
            _check(name, a)
            a.setflags(write=False)
            object.__setattr__(self, name, a)

    def __len__(self) -> int:
        return int(self.tau.size)

    def __getitem__(self, index: Any) -> "Curves":
        return Curves(np.atleast_1d(self.tau[index]), np.atleast_1d(self.p[index]),
                      np.atleast_1d(self.k[index]))

    def __repr__(self) -> str:
        n = len(self)
        if n <= 3:
            parts = ", ".join(f"(tau={t:.4g}, p={q:.3g}, k={kk:.4g})"
                              for t, q, kk in zip(self.tau, self.p, self.k))
            return f"Curves(n={n}: {parts})"
        return (f"Curves(n={n}, median tau={np.median(self.tau):.4g}, "
                f"mean p={self.p.mean():.3g}, median 1/k={np.median(1 / self.k):.4g})")

    def widened(self, spread: np.ndarray | float) -> "Curves":
        """These curves with a threshold uncertainty of sd ``spread * tau`` moment-matched in
        (:func:`widen_threshold`); ``p`` unchanged."""
        tau, k = widen_threshold(self.tau, self.k, spread)
        return Curves(tau, self.p, k)

    def utility(self, b: np.ndarray | float) -> np.ndarray:
        """``U_i(b_i)``: expected accuracy of each query at budget ``b`` (scalar or per query)."""
        return utility(b, self.tau, self.p, self.k)

    def marginal_utility(self, b: np.ndarray | float) -> np.ndarray:
        """``U_i'(b_i)``."""
        return marginal_utility(b, self.tau, self.p, self.k)

    def peak_marginal_utility(self) -> np.ndarray:
        """``p k / e``: prices at or above it fund nothing."""
        return peak_marginal_utility(self.p, self.k)

    def stationary_budget(self, price: float) -> np.ndarray:
        """``b_i(lambda)`` on the ``W_{-1}`` branch (NaN where ``lambda > p k / e``)."""
        return stationary_budget(price, self.tau, self.p, self.k)

    def to_records(self, ids: Iterable[str] | None = None) -> list[dict]:
        """One ``{"id", "tau", "p", "k"}`` dict per query (``id`` omitted when not given)."""
        rows = [{"tau": float(t), "p": float(q), "k": float(kk)}
                for t, q, kk in zip(self.tau, self.p, self.k)]
        if ids is not None:
            ids = list(ids)
            if len(ids) != len(rows):
                raise ValueError(f"{len(ids)} ids for {len(rows)} curves")
            rows = [{"id": i, **r} for i, r in zip(ids, rows)]
        return rows

    @classmethod
    def from_records(cls, rows: Iterable[Mapping[str, Any]], *, source: str | None = None,
                     lines: Sequence[int] | None = None) -> "Curves":
        """Inverse of :meth:`to_records`; an error names the row and field that is wrong.

        Rows count from 1, or are numbered by ``lines`` (a file's line numbers). Each row
        needs numbers ``tau``, ``p`` and ``k`` (``true``/``false`` are not numbers). With
        ``source`` (a file name) the error is a :class:`~clear_learn.errors.DataError`
        naming it; otherwise a ``ValueError``.
        """
        rows = list(rows)

        def fail(i: int, field: str | None, msg: str):
            n = lines[i] if lines is not None else i + 1
            if source is not None:
                from .errors import DataError

                return DataError(source, n, msg, field)
            where = f"curve row {n}" + (f": field '{field}'" if field else "")
            return ValueError(f"{where}: {msg}")

        cols: dict[str, list[float]] = {"tau": [], "p": [], "k": []}
        for i, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise fail(i, None, "expected an object with 'tau', 'p' and 'k', got "
                                    f"{type(row).__name__}")
            for name in cols:
                if name not in row:
                    raise fail(i, name, "missing")
                v = row[name]
                if not isinstance(v, Real) or isinstance(v, (bool, np.bool_)):
                    raise fail(i, name, f"is not a number: {_short(v)}")
                try:
                    cols[name].append(float(v))
                except OverflowError:  # an integer beyond float range
                    raise fail(i, name, "is too large to be a float") from None
        for name, col in cols.items():  # the row of the first value out of range
            a = np.asarray(col, dtype=np.float64)
            try:
                _check(name, a)
            except ValueError:
                for i in range(a.size):
                    try:
                        _check(name, a[i:i + 1])
                    except ValueError as err:
                        rule = str(err).split(":")[0].replace(f"Curves.{name} ", "")
                        raise fail(i, name, f"{rule}, got {col[i]!r}") from None
        return cls(cols["tau"], cols["p"], cols["k"])


def _short(v: Any, width: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= width else r[: width - 3] + "..."


def _check(name: str, a: np.ndarray) -> None:
    bad = ~np.isfinite(a)
    if name == "tau":
        bad |= a < 0
        rule = "finite and >= 0"
    elif name == "p":
        bad |= (a < 0) | (a > 1)
        rule = "finite and in [0, 1]"
    else:
        bad |= a <= 0
        rule = "finite and > 0"
    if np.any(bad):
        idx = np.flatnonzero(bad)
        raise ValueError(f"Curves.{name} must be {rule}: {idx.size} bad value(s), first at "
                         f"index {idx[0]}: {a[idx[0]]!r}")
