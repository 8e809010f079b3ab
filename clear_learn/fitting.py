"""Per-query curves from rollouts: penalised maximum likelihood, vectorised over queries.

Under the shifted-surge model (docs/METHOD.md, *Rollouts and the likelihood*) a rollout is
solvable with probability ``p``; a solvable one has length ``tau + X``, ``X ~ Gamma(2, k)``. The log-likelihood of a
query's rollouts, with the density floored by a broad uniform component of weight ``eps``
(so that a correct rollout shorter than ``tau`` costs a finite amount)::

    correct, length L:       log p + log((1 - eps) f_k(L - tau) + eps / M)
    incorrect, finished:     log(1 - p)
    cut off at the cap M:    log(1 - p ((1 - eps) G(k (M - tau)) + eps))

is maximised with a weak prior on ``log(tau / M)``, ``log(1 / (k M))`` and ``logit(p)``, jointly
for all queries at once by damped Newton steps on arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .curves import Curves
from .rollouts import RolloutArrays, to_arrays

__all__ = ["FitPrior", "FitResult", "fit_curves", "rollout_nll"]


@dataclass(frozen=True)
class FitPrior:
    """Weak Gaussian priors on the unconstrained parameters, and the likelihood floor.

    ``log(tau / M) ~ N(log_tau_mean, log_tau_sd)``, ``log(1 / (k M)) ~ N(log_width_mean,
    log_width_sd)``, ``logit(p) ~ N(0, logit_p_sd)``; ``eps`` is the floor's weight.
    ``runaway``: None for DESIGN.md section 4's likelihood (a finished wrong answer ``1 - p``,
    a cut-off ``1 - p G``: not normalised); a rate ``c`` in (0, 1) for the consistent one,
    where an unsolvable response runs to the cap with probability ``c`` (finished wrong
    ``(1 - p)(1 - c)``, cut off ``p (1 - G) + (1 - p) c``).
    """

    log_tau_mean: float = float(np.log(0.25))
    log_tau_sd: float = 2.0
    log_width_mean: float = float(np.log(1.0 / 16.0))
    log_width_sd: float = 1.5
    logit_p_sd: float = 4.0
    eps: float = 1e-3
    runaway: float | None = None

    def __post_init__(self) -> None:
        if self.runaway is not None and not 0.0 < self.runaway < 1.0:
            raise ValueError(f"runaway must be None or in (0, 1), got {self.runaway!r}")


@dataclass
class FitResult:
    """Fitted curves with the mean negative log-likelihood per rollout of each query."""

    curves: Curves
    nll: np.ndarray
    converged: bool
    n_iter: int
    message: str

    def __repr__(self) -> str:
        return (f"FitResult(n={len(self.curves)}, mean nll={self.nll.mean():.4f}, "
                f"converged={self.converged}, n_iter={self.n_iter})")


class _FitData:
    """What the likelihood needs of each query: its correct lengths and outcome counts.

    The correct rollouts' lengths ``L`` are flat, with ``query`` giving each one's query, so
    that every array here grows with the number of rollouts, not with Q times the largest.
    """

    def __init__(self, data: RolloutArrays):
        q = len(data)
        qi = data.query_index
        corr = data.flat_correct
        wrong = ~corr
        self.q = q
        self.M = data.max_new_tokens.astype(np.float64)
        self.n_c = np.bincount(qi[corr], minlength=q).astype(np.float64)
        self.n_w = np.bincount(qi[wrong & ~data.flat_cutoff], minlength=q).astype(np.float64)
        self.n_cut = np.bincount(qi[wrong & data.flat_cutoff], minlength=q).astype(np.float64)
        self.query = qi[corr]
        self.L = data.flat_tokens[corr].astype(np.float64)
        self.n = data.counts.astype(np.float64)

    def sum(self, values: np.ndarray) -> np.ndarray:
        """Per-query sums of values given on the correct rollouts (0 for a query with none)."""
        out = np.bincount(self.query, weights=values, minlength=self.q)
        return out.astype(np.float64, copy=False)  # bincount of nothing is int64


def _terms(theta: np.ndarray, d: _FitData, eps: float, need_grad: bool,
           runaway: float | None = None):
    """Log-likelihood of each query, and its gradient in ``(a, w, v)`` as a (Q, 3) array.

    ``theta`` is (Q, 3): ``a = log(tau / M)``, ``w = log(1 / (k M))``, ``v = logit(p)``;
    ``runaway`` as in :class:`FitPrior` (None: the cut-off term is ``1 - p h``, the same as
    ``p (1 - h) + (1 - p) c`` with ``c = 1``).
    """
    c = 1.0 if runaway is None else float(runaway)
    a, w, v = theta[:, 0], theta[:, 1], theta[:, 2]
    M = d.M
    tau = M * np.exp(a)
    k = np.exp(-w) / M
    x = d.L - tau[d.query]
    pos = x > 0
    kc = k[d.query]
    kx = np.where(pos, kc * x, 0.0)
    ekx = np.exp(-kx)
    f = np.where(pos, kc * kx * ekx, 0.0)
    qd = (1.0 - eps) * f + eps / M[d.query]
    ll_c = d.sum(np.log(qd))

    y = np.maximum(k * (M - tau), 0.0)
    ey = np.exp(-y)
    h = (1.0 - eps) * (1.0 - (1.0 + y) * ey) + eps
    p = 1.0 / (1.0 + np.exp(-v))
    # the cut-off's probability (as written for c = 1, so DESIGN's form rounds as it did)
    one_ph = 1.0 - p * h if runaway is None else p * (1.0 - h) + (1.0 - p) * c
    log1mp = -np.logaddexp(0.0, v)  # log(1 - p), stable
    logp = -np.logaddexp(0.0, -v)
    wrong = log1mp if runaway is None else log1mp + np.log1p(-c)
    ll = d.n_c * logp + ll_c + d.n_w * wrong + d.n_cut * np.log(one_ph)
    if not need_grad:
        return ll, None
    r = (1.0 - eps) / qd
    d_tau = -d.sum(r * kc * kc * ekx * (1.0 - kx) * pos)
    d_k = d.sum(r * f * (2.0 / kc - np.where(pos, x, 0.0)))
    dc_dh = -d.n_cut * p / one_ph
    live = (M - tau) > 0
    gp = (1.0 - eps) * y * ey * dc_dh
    d_tau += np.where(live, -gp * k, 0.0)
    d_k += np.where(live, gp * (M - tau), 0.0)
    d_cut = -h if runaway is None else 1.0 - h - c  # d(cut-off probability) / dp
    d_v = d.n_c * (1.0 - p) - d.n_w * p + d.n_cut * d_cut * p * (1.0 - p) / one_ph
    return ll, np.stack([d_tau * tau, -d_k * k, d_v], axis=1)


def _prior(theta: np.ndarray, prior: FitPrior):
    mean = np.array([prior.log_tau_mean, prior.log_width_mean, 0.0])
    sd = np.array([prior.log_tau_sd, prior.log_width_sd, prior.logit_p_sd])
    z = (theta - mean) / sd
    return -0.5 * (z * z).sum(1), -z / sd


def _init(d: _FitData) -> np.ndarray:
    M = d.M
    has = d.n_c > 0
    first = np.full(d.q, np.inf)
    np.minimum.at(first, d.query, d.L)
    mean_c = d.sum(d.L) / np.maximum(d.n_c, 1)
    tau0 = np.maximum(np.where(has, 0.7 * np.minimum(first, M), 0.5 * M), 1e-3 * M)
    width0 = np.where(has, np.maximum((mean_c - tau0) / 2.0, 0.01 * M), M / 16.0)
    p0 = (d.n_c + 0.5) / (d.n + 1.0)
    return np.stack([np.log(tau0 / M), np.log(width0 / M), np.log(p0 / (1.0 - p0))], axis=1)


def _objective(theta, d, prior, need_grad=True):
    """Negative log-posterior per query (and gradient, (Q, 3))."""
    ll, g = _terms(theta, d, prior.eps, need_grad, prior.runaway)
    lp, gp = _prior(theta, prior)
    return -(ll + lp), (None if g is None else -(g + gp))


def fit_curves(rollouts: list[dict] | RolloutArrays, *, prior: FitPrior | None = None,
               max_iter: int = 100, tol: float = 1e-6) -> FitResult:
    """Fit one shifted-surge curve per query to its rollouts.

    Parameters
    ----------
    rollouts : records (docs/METHOD.md, *File format*) or :class:`RolloutArrays`.
    prior : FitPrior, optional
        Weak priors and the likelihood floor (defaults are documented on the class).
    max_iter : int
        Newton iterations at most.
    tol : float
        Converged when no query's Newton step moves a parameter by more than ``tol``.

    Returns
    -------
    FitResult
        ``curves`` (a :class:`Curves`), ``nll`` per query (mean over its rollouts, without the
        prior), and whether every query converged.

    Notes
    -----
    Each query's 3-parameter posterior mode is found by damped Newton (Levenberg-Marquardt:
    ``(H + mu I) step = -g``, ``mu`` shrunk after a step that lowers the objective, grown
    after one that does not), with all queries in one set of array operations. The Hessian
    is a forward difference of the analytic gradient. Queries never solved get ``p`` near 0
    (their incorrect rollouts pull it down; only the weak prior holds it off 0).
    """
    prior = prior or FitPrior()
    data = rollouts if isinstance(rollouts, RolloutArrays) else to_arrays(rollouts)
    q = len(data)
    if q == 0:
        return FitResult(Curves([], [], []), np.zeros(0), True, 0, "no queries")
    if np.any(data.counts == 0):
        i = int(np.flatnonzero(data.counts == 0)[0])
        raise ValueError(f"query {i} has no rollouts to fit")
    d = _FitData(data)
    theta = _init(d)
    f, g = _objective(theta, d, prior)
    mu = np.full(q, 1e-2)
    active = np.ones(q, dtype=bool)
    h = 1e-5
    it = 0
    for it in range(1, max_iter + 1):
        H = np.empty((q, 3, 3))
        for j in range(3):
            th = theta.copy()
            th[:, j] += h
            H[:, :, j] = (_objective(th, d, prior)[1] - g) / h
        H = 0.5 * (H + H.transpose(0, 2, 1))
        step = -np.linalg.solve(H + mu[:, None, None] * np.eye(3), g[..., None])[..., 0]
        step = np.clip(step, -2.0, 2.0)
        step[~active] = 0.0
        f_new, g_new = _objective(theta + step, d, prior)
        better = (f_new <= f) & active
        theta[better] += step[better]
        f[better], g[better] = f_new[better], g_new[better]
        mu = np.where(better, np.maximum(mu / 3.0, 1e-8), np.minimum(mu * 4.0, 1e8))
        done = better & (np.abs(step).max(1) < tol)
        active &= ~done & (mu < 1e8)
        if not active.any():
            break
    M = d.M
    tau = M * np.exp(theta[:, 0])
    k = np.exp(-theta[:, 1]) / M
    p = 1.0 / (1.0 + np.exp(-theta[:, 2]))
    ll, _ = _terms(theta, d, prior.eps, False, prior.runaway)
    n_left = int(active.sum())
    msg = "converged" if n_left == 0 else f"{n_left} of {q} queries still moving after {it} steps"
    return FitResult(Curves(tau, p, k), -ll / d.n, n_left == 0, it, msg)


def rollout_nll(curves: Curves, rollouts: list[dict] | RolloutArrays,
                eps: float = 1e-3, runaway: float | None = None) -> np.ndarray:
    """Mean negative log-likelihood per rollout of each query under given curves
    (``runaway`` as in :class:`FitPrior`)."""
    data = rollouts if isinstance(rollouts, RolloutArrays) else to_arrays(rollouts)
    if len(curves) != len(data):
        raise ValueError(f"rollout_nll: {len(curves)} curves for {len(data)} queries (give "
                         "one curve per query, in the rollouts' order)")
    M = data.max_new_tokens.astype(np.float64)
    tau = np.maximum(curves.tau, 1e-300 * M)
    p = np.clip(curves.p, 1e-12, 1 - 1e-12)
    theta = np.concatenate([np.log(tau / M), -np.log(curves.k * M), np.log(p / (1 - p))])
    ll, _ = _terms(theta.reshape(3, -1).T, _FitData(data), eps, False, runaway)
    return -ll / np.maximum(data.counts, 1)
