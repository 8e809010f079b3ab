"""The shadow-price allocator (CLEAR): per-query budgets under a total, in closed form.

Maximise ``sum_i U_i(b_i)`` subject to ``sum_i b_i <= B`` and integer ``0 <= b_i <= max_tokens_i``
(docs/METHOD.md, *Allocating with a shadow price*). For a price ``lambda`` each query takes its
stationary budget
``b_i(lambda) = tau_i - W_{-1}(-lambda / (p_i k_i)) / k_i`` (clipped to its cap) when that pays
for its entry cost and 0 otherwise; the price is the smallest one whose integer demand fits in
``B``. The leftover is then spent greedily by gain per token of a jump, which can revive an
abandoned query.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np

from .curves import Curves, surge_cdf, utility
from .demand import Demand, search_price
from .large_batch import search_subsampled, trim
from .lambertw import solve_y_minus_log_y

__all__ = ["AllocationResult", "allocate", "uniform_budgets", "proportional_budgets",
           "as_caps", "as_whole"]

#: Above this many queries the price is first located on a random subsample.
SUBSAMPLE_ABOVE = 65_536
#: Up to this many queries, the solution is polished by re-solving near-by funded sets.
POLISH_MAX_N = 2048
#: Relative tolerance of the log-price search; the greedy fill spends what it leaves.
PRICE_RTOL = 1e-8
#: Polish only when the duality gap exceeds this share of the bound.
POLISH_GAP = 1e-3
#: The greedy fill offers each funded query at most this many tokens a round.
FILL_BLOCK = 4096


@dataclass(repr=False)
class AllocationResult:
    """What :func:`allocate` returns (in the spirit of ``scipy.optimize.OptimizeResult``).

    Attributes
    ----------
    budgets : int64 array, one per query; ``sum(budgets) <= total_budget``.
    abandoned : bool array, queries the allocator chose not to reason about (they hold
        ``fallback_tokens``, 0 by default).
    price : the shadow price ``lambda`` (expected accuracy per token) at the optimum.
    expected_accuracy : mean of ``U_i(budgets_i)`` under the given curves.
    expected_correct : sum of ``U_i(budgets_i)``.
    total_budget, allocated : the budget given and the tokens handed out.
    upper_bound : an upper bound on the expected correct answers of any allocation of
        ``total_budget`` (weak Lagrangian duality), so ``expected_correct / upper_bound`` is a
        certificate of near-optimality; with ``fallback_tokens``, of any allocation giving
        every query at least the fallback.
    converged : whether the price search met its tolerance.
    message : a one-line summary of how it ended.
    """

    budgets: np.ndarray
    abandoned: np.ndarray
    price: float
    expected_accuracy: float
    expected_correct: float
    total_budget: int
    allocated: int
    fallback_tokens: int = 0
    upper_bound: float = float("nan")
    converged: bool = True
    message: str = ""
    info: dict = field(default_factory=dict)

    @property
    def optimality_gap(self) -> float:
        """``1 - expected_correct / upper_bound``: how far from optimal it can at most be."""
        if not self.upper_bound > 0:
            return float("nan") if np.isnan(self.upper_bound) else 0.0
        return max(0.0, 1.0 - self.expected_correct / self.upper_bound)

    @property
    def n_abandoned(self) -> int:
        return int(np.count_nonzero(self.abandoned))

    def __len__(self) -> int:
        return int(self.budgets.size)

    def __repr__(self) -> str:
        n = len(self)
        return (f"AllocationResult(n={n}, total_budget={self.total_budget}, "
                f"allocated={self.allocated}, abandoned={self.n_abandoned}, "
                f"price={self.price:.6g}, expected_accuracy={self.expected_accuracy:.4f}, "
                f"optimality_gap<={self.optimality_gap:.2%}, "
                f"converged={self.converged}, message={self.message!r})")

    def to_dict(self, *, arrays: bool = True) -> dict:
        """A JSON-ready dict; ``arrays=False`` leaves out the per-query arrays."""
        d = asdict(self)
        d["n_abandoned"] = self.n_abandoned
        d["optimality_gap"] = self.optimality_gap
        if arrays:
            d["budgets"] = self.budgets.tolist()
            d["abandoned"] = self.abandoned.tolist()
        else:
            del d["budgets"], d["abandoned"]
        return d

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)


def as_caps(max_tokens, n: int, name: str = "max_tokens") -> np.ndarray:
    """Per-query caps as float64 (``inf`` for None), validated: whole numbers >= 0."""
    if max_tokens is None:
        return np.full(n, np.inf)
    caps = np.asarray(max_tokens, dtype=np.float64)
    if caps.ndim == 0:
        caps = np.full(n, float(caps))
    if caps.shape != (n,):
        raise ValueError(f"{name} must be one number or one per query ({n}), got shape "
                         f"{caps.shape}")
    bad = ~(caps >= 0) | (np.isfinite(caps) & (caps != np.floor(caps)))
    if np.any(bad):
        i = int(np.flatnonzero(bad)[0])
        raise ValueError(f"{name} must be whole numbers >= 0 (or inf); index {i} is {caps[i]!r}")
    return caps


def uniform_budgets(n: int, total_budget: int, max_tokens=None) -> np.ndarray:
    """The uniform split: ``floor(B / N)`` each, clipped to the caps."""
    caps = as_caps(max_tokens, n)
    each = total_budget // n if n else 0
    return np.minimum(np.full(n, each, dtype=np.float64), caps).astype(np.int64)


def proportional_budgets(weights, total_budget: int, max_tokens=None) -> np.ndarray:
    """The heuristic a practitioner tries first: budgets proportional to ``weights`` (a
    difficulty score, the text's length), each clipped to its cap with the excess shared
    among the others in the same proportions; whole tokens, ``sum <= total_budget``."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be one finite number >= 0 per query")
    caps = as_caps(max_tokens, w.size)
    b = np.zeros(w.size)
    free = w > 0
    left = float(total_budget)
    while left > 0 and free.any():  # each round either fits every budget or caps one more
        share = np.zeros_like(w)
        share[free] = left * (w[free] / w[free].sum())  # the free ones' only: no overflow
        over = free & (b + share >= caps)
        if not over.any():
            b[free] += share[free]
            break
        left -= float((caps[over] - b[over]).sum())
        b[over], free = caps[over], free & ~over
    return np.floor(np.minimum(b, caps) + 1e-9).astype(np.int64)


def allocate(curves: Curves, total_budget: int, *, max_tokens=None, fallback_tokens: int = 0,
             max_fill_rounds: int = 10_000) -> AllocationResult:
    """Split ``total_budget`` tokens among queries to maximise expected correct answers.

    Parameters
    ----------
    curves : Curves
        One shifted-surge curve per query.
    total_budget : int
        ``B >= 0``; the budgets returned never sum above it.
    max_tokens : None, int or array of int
        Per-query cap (``None``: no cap). Budgets never exceed it.
    fallback_tokens : int
        Budget for abandoned queries (many servers reject ``max_tokens < 1``). It is reserved
        out of ``B``: queries that are funded get it too, below their own budget.
    max_fill_rounds : int
        Bound on the rounds of the greedy fill.

    Returns
    -------
    AllocationResult

    Notes
    -----
    Solves ``max sum_i U_i(b_i) s.t. sum_i b_i <= B, b_i in {0..max_tokens_i}``. The price
    search uses the integer demand ``D(lambda) = sum_i floor(min(b_i(lambda), cap_i))`` over
    solvent queries, so that rounding is accounted for; the remaining tokens go, in rounds,
    either to the funded queries whose next tokens gain most or, as a jump, to the abandoned
    query whose best affordable budget has the highest average gain per token. For up to
    ``POLISH_MAX_N`` queries whose result is more than ``POLISH_GAP`` below the duality
    bound, the funded set is re-solved on its own, with single queries forced in or out and
    with one pair swapped, and the best kept (``benchmarks/bench_optimality.py``: on 232
    random batches of 2 to 16 queries at least 0.990 of the exact integer optimum, 0.99995
    on average; without this polish, as little as 0.876).
    """
    if not isinstance(curves, Curves):
        raise TypeError(f"curves must be a clear_learn.Curves, got {type(curves).__name__}")
    n = len(curves)
    total_budget = as_whole("total_budget", total_budget)
    fallback = as_whole("fallback_tokens", fallback_tokens)
    caps = as_caps(max_tokens, n)
    if fallback and n * fallback > total_budget:
        raise ValueError(f"fallback_tokens={fallback} for {n} queries needs {n * fallback} "
                         f"tokens, more than total_budget={total_budget}")
    if fallback and np.any(caps < fallback):
        raise ValueError(f"fallback_tokens={fallback} exceeds max_tokens of some queries")

    tau, p, k = curves.tau, curves.p, curves.k
    if fallback:
        # Every query holds `fallback` tokens; allocate the rest on curves seen from there.
        tau_eff, caps_eff, budget_eff = np.maximum(tau - fallback, 0.0), caps - fallback, \
            total_budget - n * fallback
    else:
        tau_eff, caps_eff, budget_eff = tau, caps, total_budget

    extra, price, converged, info = _allocate_core(tau_eff, p, k, caps_eff, budget_eff,
                                                   max_fill_rounds)
    abandoned = extra == 0
    budgets = extra + fallback
    u = utility(budgets, tau, p, k)
    allocated = int(budgets.sum())
    expected = float(u.sum())
    bound = info.pop("upper_bound", None)
    if fallback or bound is None:
        # the core's bound is for the curves seen from the fallback: bound this problem
        bound = _dual_bound(price, total_budget, tau, p, k, caps, floor=fallback)
    msg = (f"{n - int(abandoned.sum())} of {n} queries funded at price {price:.4g}; "
           f"{total_budget - allocated} of {total_budget} tokens unspent")
    return AllocationResult(budgets=budgets, abandoned=abandoned, price=float(price),
                            expected_accuracy=expected / n if n else 0.0,
                            expected_correct=expected, total_budget=total_budget,
                            allocated=allocated, fallback_tokens=fallback,
                            upper_bound=float(bound), converged=converged, message=msg,
                            info=info)


def as_whole(name: str, value) -> int:
    """``value`` as an int >= 0; TypeError or ValueError naming ``name`` otherwise."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a whole number, got {value!r}") from None
    if not np.isfinite(v) or v < 0 or v != int(v):
        raise ValueError(f"{name} must be a whole number >= 0, got {value!r}")
    return int(v)


def _allocate_core(tau, p, k, caps, budget, max_fill_rounds):
    n = tau.size
    info: dict = {}
    if n == 0:
        return np.zeros(0, dtype=np.int64), 0.0, True, info
    demand = Demand(tau, p, k, caps)
    useful = demand.rate > 0
    if not np.any(useful):
        return np.zeros(n, dtype=np.int64), 0.0, True, info
    full = np.where(useful, caps, 0.0)
    if np.all(np.isfinite(full)) and full.sum() <= budget:
        # Ample: every query that can gain anything takes its cap.
        return full.astype(np.int64), 0.0, True, {
            "ample": True, "upper_bound": float(utility(full, tau, p, k).sum())}

    hi = float(demand.log_rate[useful].max())
    lo = float(demand.log_rate[useful].min()) - 60.0
    if n > SUBSAMPLE_ABOVE:
        log_price, b, converged, evals = search_subsampled(demand, budget, lo, hi)
        trim(b, b.sum() - budget, tau, p, k)
    else:
        if demand.total(lo) <= budget:
            log_price, converged, evals = lo, True, 1
        else:
            log_price, lo_end, evals = search_price(demand, budget, lo, hi, max_evals=200,
                                                    rtol=PRICE_RTOL)
            converged = log_price - lo_end <= PRICE_RTOL * max(1.0, abs(log_price))
        b = demand.budgets(log_price)
    info["price_evals"] = evals
    rounds = _greedy_fill(b, budget - b.sum(), tau, p, k, caps, demand, max_fill_rounds)
    info["fill_rounds"] = rounds
    bound = _dual_bound(float(np.exp(log_price)), budget, tau, p, k, caps)
    if n <= POLISH_MAX_N and float(utility(b, tau, p, k).sum()) < bound * (1 - POLISH_GAP):
        b, info["polish_swaps"] = _polish(b, budget, tau, p, k, caps, demand, max_fill_rounds,
                                           log_price)
        # the polish fills on a demand with queries forced in or out: refill on the real one
        _greedy_fill(b, budget - b.sum(), tau, p, k, caps, demand, max_fill_rounds)
    info["upper_bound"] = bound
    return b.astype(np.int64), float(np.exp(log_price)), converged, info


def _dual_bound(lam: float, budget: float, tau, p, k, caps, floor: float = 0.0) -> float:
    """Weak-duality bound on the best expected correct answers of any feasible allocation.

    For any price ``lambda >= 0`` and every ``b`` with ``sum_i b_i <= B`` and ``floor <= b_i <=
    cap_i``: ``sum_i U_i(b_i) <= lambda (B - N floor) + sum_i max_{floor <= b <= cap_i}
    (U_i(b) - lambda (b - floor))``. ``U - lambda b`` falls up to the rising side's stationary
    point, rises to the decaying side's ``b_i(lambda)`` and falls after it, so each inner
    maximum is at ``floor`` or at ``b_i(lambda)`` clipped to ``cap_i`` (when not below ``floor``).

    Notes
    -----
    Computed so that rounding cannot make it too small: the clipped point is evaluated in
    ``y = k (b - tau)``, never as ``b`` (with ``y / k`` below one ulp of ``tau``, a huge ``k``,
    ``U(tau + y / k)`` would round to 0 and the bound to about ``lambda B``); the floor is
    taken out before multiplying by ``lambda``; and the sum is raised by a bound on its own
    rounding error (``(N + 4) eps`` of the sum of magnitudes, which matters only when a huge
    price makes its terms cancel). The bound at ``lambda = 0`` (every query at its cap) is
    valid too, and the smaller of the two is returned.
    """
    n = np.size(tau)
    with np.errstate(all="ignore"):
        at_cap = float(np.where(np.isfinite(caps), utility(caps, tau, p, k), p).sum())
        spare = budget - n * floor
        if not 0 < lam < np.inf:
            return at_cap
        L = np.log(p) + np.log(k) - np.log(lam)  # -ln(lambda / (p k)), no underflow
        y = solve_y_minus_log_y(np.where(np.isfinite(L), L, 1.0))
        e = (tau - floor) + y / k  # b - floor at the stationary point
        over = e > caps - floor
        y = np.where(over, k * (caps - tau), y)
        e = np.where(over, caps - floor, e)
        extra = lam * e
        gain = np.where(e >= 0, np.where(y > 0, p * surge_cdf(y), 0.0) - extra, -np.inf)
        at_floor = utility(floor, tau, p, k)
        top = gain > at_floor
        value = np.where(top, gain, at_floor)
        bound = lam * spare + value.sum()
        scale = lam * spare + p.sum() + np.where(top, extra, 0.0).sum()
        bound += (n + 4) * np.finfo(float).eps * scale
        return float(np.fmin(bound, at_cap))


def _polish(b, budget, tau, p, k, caps, demand, max_fill_rounds, log_price,
            n_candidates: int = 2, max_rounds: int = 3):
    """Improve a small allocation by forcing one query in, or out, of the funded set.

    The Lagrangian funds queries in order of their insolvency price; near the critical price
    that order can be wrong for the integer problem (with few queries, one query's entry cost
    is a large share of the budget), and the best budgets of a funded set may sit at a price
    at which some of its queries are insolvent and others would enter. For the few abandoned
    queries with the highest rates, and the few funded ones with the lowest, re-solve with
    that query forced in (or out), once with the others left to the price and once with the
    funded set otherwise fixed (its queries held in, the rest out); also the funded set
    itself, fixed. Keep the best. Returns ``(budgets, swaps made)``.
    """
    best_b, best_u = b, float(utility(b, tau, p, k).sum())
    swaps = 0
    for _ in range(max_rounds):
        funded = best_b > 0
        rate = demand.rate
        out_idx = np.flatnonzero(~funded & (rate > 0))
        in_idx = np.flatnonzero(funded)
        ins = out_idx[np.argsort(-rate[out_idx])[:n_candidates]]
        outs = in_idx[np.argsort(rate[in_idx])[:n_candidates]]
        trials = [((), True)] + [((int(j),), exact) for j in (*ins, *outs)
                                 for exact in (False, True)]
        trials += [((int(i), int(j)), True) for i in ins for j in outs]  # swaps
        improved = False
        for flip, exact in trials:
            new_rate = np.where(funded, np.inf, 0.0) if exact else rate.copy()
            for j in flip:
                new_rate[j] = 0.0 if funded[j] else np.inf
            with np.errstate(divide="ignore"):
                new_log_rate = np.log(new_rate)
            forced = Demand(tau, None, k, caps, _parts=(demand.lpk, demand.b_star, new_rate,
                                                         new_log_rate))
            x = _bracket_search(forced, budget, log_price)
            if x is None:
                continue  # the forced queries alone do not fit
            cand_b = forced.budgets(x)
            _greedy_fill(cand_b, budget - cand_b.sum(), tau, p, k, caps, forced,
                         max_fill_rounds)
            u = float(utility(cand_b, tau, p, k).sum())
            if u > best_u * (1 + 1e-12) + 1e-15:
                best_b, best_u, improved = cand_b, u, True
        if not improved:
            break
        swaps += 1
    return best_b, swaps


def _bracket_search(demand: Demand, budget: float, x0: float) -> float | None:
    """Smallest log-price with demand <= budget, searched outward from ``x0`` (upwards when
    the demand at ``x0`` does not fit, else downwards). Returns None when no price makes the
    demand fit.
    """
    step = 1e-3
    if demand.total(x0) > budget:
        lo, hi = x0, x0 + step
        while demand.total(hi) > budget:
            lo, step = hi, step * 8
            hi = hi + step
            if step > 1e4:
                return None
    else:
        lo, hi = x0 - step, x0
        while demand.total(lo) <= budget:
            hi, step = lo, step * 8
            lo = lo - step
            if step > 1e4:
                return lo
    x, _, _ = search_price(demand, budget, lo, hi, max_evals=60, rtol=PRICE_RTOL)
    return x


def _greedy_fill(b, leftover, tau, p, k, caps, demand, max_rounds) -> int:
    """Spend ``leftover`` tokens in place on ``b`` by gain per token; returns rounds used.

    The options are the next tokens of a funded query (the ``j``-th one gains
    ``U(b+j) - U(b+j-1)``, taken as non-increasing in ``j``: a token's gain is at most that
    of the one before, so tokens are taken in order) and a jump that revives an abandoned
    query (gain per token ``U(c) / c`` at its best affordable budget ``c``). Each round
    offers every funded query its next ``ceil(leftover / funded)`` tokens and takes the best
    options in order of gain per token while they fit; the next round looks again with what
    is left.
    """
    leftover = int(leftover)
    rounds = 0
    while leftover > 0 and rounds < max_rounds:
        rounds += 1
        funded = np.flatnonzero((b > 0) & (b < caps))
        m = min(-(-leftover // max(funded.size, 1)), FILL_BLOCK)
        steps = np.arange(m + 1, dtype=np.float64)
        bf = np.minimum(b[funded, None] + steps, caps[funded, None])
        u = utility(bf, tau[funded, None], p[funded, None], k[funded, None])
        g = np.minimum.accumulate(np.diff(u, axis=1), axis=1)  # (funded, m)
        who_f = np.repeat(funded, m)
        g = g.ravel()
        keep = g > 0
        g, who_f = g[keep], who_f[keep]
        # A revival can only enter the top `leftover` options if it beats the
        # leftover-th best one-token gain.
        floor_rate = 0.0
        if g.size > leftover:
            floor_rate = float(np.partition(g, g.size - leftover)[g.size - leftover])
        cand, cost, rate = _revivals(b, leftover, floor_rate, tau, p, k, caps, demand)
        rates = np.concatenate([g, rate])
        costs = np.concatenate([np.ones(g.size), cost])
        who = np.concatenate([who_f, cand])
        if rates.size == 0:
            break
        if rates.size > leftover:
            top = np.argpartition(-rates, leftover - 1)[:leftover]
            rates, costs, who = rates[top], costs[top], who[top]
        order = np.argsort(-rates, kind="stable")
        cum = np.cumsum(costs[order])
        n_take = int(np.searchsorted(cum, leftover, side="right"))
        if n_take == 0:
            break
        chosen = order[:n_take]
        np.add.at(b, who[chosen], costs[chosen])  # funded: tokens; revived: 0 -> cost
        leftover -= int(cum[n_take - 1])
    return rounds


def _revivals(b, leftover, floor_rate, tau, p, k, caps, demand):
    """Abandoned queries' best budgets within ``leftover`` and their gains per token.

    Only queries whose best possible rate beats ``floor_rate`` are considered.
    """
    cand = np.flatnonzero((b == 0) & (demand.rate > floor_rate) & (tau < leftover)
                          & (caps >= 1))
    if cand.size == 0:
        return cand, np.zeros(0), np.zeros(0)
    limit = np.minimum(caps[cand], leftover)
    bs = demand.b_star[cand]
    tc, pc, kc = tau[cand], p[cand], k[cand]
    lo_c = np.clip(np.floor(bs), 1.0, limit)
    hi_c = np.clip(np.ceil(bs), 1.0, limit)
    lo_r = utility(lo_c, tc, pc, kc) / lo_c
    hi_r = utility(hi_c, tc, pc, kc) / hi_c
    take_hi = hi_r > lo_r
    cost = np.where(take_hi, hi_c, lo_c)
    rate = np.where(take_hi, hi_r, lo_r)
    ok = rate > 0
    return cand[ok], cost[ok], rate[ok]
