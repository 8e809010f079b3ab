"""A live shadow price for streams: each arriving query gets ``b(lambda)`` at once.

For a stream there is no batch to split (docs/METHOD.md, *Streams*). :class:`StreamController`
holds one price ``lambda`` and gives every arriving query the budget the batch allocator
would give it at that price (section 3: ``b(lambda) = tau - W_{-1}(-lambda / (p k)) / k``,
clipped to its cap, and 0 when ``U(b) - lambda b <= 0``), with no look-ahead. The price is then
steered by what was granted (or, optionally, consumed) against a target rate ``r``: an average
budget per query (the clock counts queries) or tokens per second (the clock counts seconds).

The update rule: integral control in log-price (docs/METHOD.md, *Streams*, says why)
-------------------------------------------------------------------------------------
After each event, with ``x`` the tokens it granted (or reported consumed) and ``dc`` the clock
it advanced (1 per query, or the seconds since the last event)::

    log lambda  +=  (x - r dc) / (r h eps)

``h`` (``horizon``, in clock units) is the loop's time constant and ``eps`` (``elasticity``)
an estimate of ``-d log D / d log lambda``, the elasticity of the mean demand (from reference
traffic, see :func:`~clear_learn.pricing.demand_elasticity`). Summed over any stretch of the
stream this is an identity, as long as the price stays inside its bounds::

    granted - r * elapsed  =  r h eps (log lambda_end - log lambda_start)

so **the rate error over any window is the price change across it**, times ``h eps`` over the
window's length.

Guarantees
----------
- Exact: the rate identity above, while the price is inside ``price_bounds`` (tested).
- Tested on a synthetic three-family mix (``tests/test_controller.py``, ``h = 25``, cap 512,
  targets 48 and 128): from a cold start, warm-started on 300 reference queries or
  bootstrapped, every window of 200 queries from query 50 on grants a mean within 20% of the
  target, everything from query 50 on within 3%, and the price stays within ``exp(+-0.6)`` of
  the stream's batch price from query 50 on. After a switch from easy-heavy to hard-heavy
  traffic that moves the batch price more than ``e``-fold, the price is within
  ``exp(+-0.3)`` of the new batch price within 120 queries and every window of 200 from
  there meets the 20%. On the real switches of the benchmark: median 31, at most 90 queries.
- The hard cap is never exceeded (property-tested over queries and over seconds).
- The state has a constant size (tested: the same keys, lengths and pickled size after 100 and
  1,800 queries).

Starting price. :func:`batch_price` on reference curves at the target is the price the loop
would converge to on such traffic (:meth:`StreamController.from_reference` also measures
``eps`` there). Without one, a per-query controller bootstraps: for its first ``bootstrap``
queries the price is the batch (Lagrangian) price of the queries seen so far, each counted
``copies`` times (kept in a buffer of that fixed size, then dropped), and it estimates ``eps``
on them (one copy each).

Hard cap. ``cap_tokens`` per ``cap_window`` is a separate guard, checked before each grant:
a budget that would break it is trimmed to what is left (split evenly over a query's
``copies``; when the trimmed budget still pays at the price, else the query is abandoned), so
the cap is never exceeded. Over queries the window is exact (any ``cap_window`` consecutive
queries); over seconds the window is split into ``cap_buckets`` buckets and the check spans
one bucket more than the window, so every interval of ``cap_window`` seconds is covered
(conservative by up to one bucket). A trimmed grant feeds back its untrimmed demand
(anti-windup: a binding cap does not drive the price down).

State. A few scalars, the cap's ring of fixed length and the bootstrap buffer of fixed length:
nothing grows with the stream. Elapsed time credited per event is at most ``h`` (an idle server
does not bank an unbounded credit), and the price is clamped to ``price_bounds``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .allocation import as_caps
from .allocation import as_whole as _whole
from .curves import Curves
from .pricing import (_best_budget, _best_budgets, _lagrangian_log_price, _positive,
                      batch_price, budgets_at_price, demand_elasticity)

__all__ = ["StreamController", "Grant", "GrantBatch", "budgets_at_price", "batch_price",
           "demand_elasticity"]


@dataclass(frozen=True)
class Grant:
    """One query's grant.

    budget : tokens granted (``max_tokens`` to forward), per copy; ``fallback_tokens`` when
        abandoned (0 when even that would break the hard cap).
    abandoned : the query is not worth its cost at this price (or did not fit the cap).
    trimmed : the hard cap cut the budget (or refused it).
    price : the price it was granted at.
    demand : the budget it asked for at that price, before the hard cap.
    """

    budget: int
    abandoned: bool
    trimmed: bool
    price: float
    demand: int


@dataclass
class GrantBatch:
    """Grants of a sequence of queries, in order: arrays of :class:`Grant`'s fields."""

    budgets: np.ndarray
    abandoned: np.ndarray
    trimmed: np.ndarray
    prices: np.ndarray
    demands: np.ndarray

    def __len__(self) -> int:
        return int(self.budgets.size)


#: Grants over which the running means of the elasticity estimate are taken.
ELASTICITY_MEMORY = 100
#: Half-width, in log-price, of the per-query secant of the demand.
ELASTICITY_STEP = 0.25
#: The elasticity estimate is kept within these.
ELASTICITY_BOUNDS = (0.25, 4.0)

_TARGETS = ("granted", "consumed")
_UNITS = ("queries", "seconds")


class StreamController:
    """A live shadow price: grants ``b(lambda)`` to each arriving query, steers ``lambda``.

    Parameters
    ----------
    tokens_per_query : float, optional
        Target mean budget per query (the clock counts queries). Exactly one of this and
        ``tokens_per_second``.
    tokens_per_second : float, optional
        Target tokens per second (the clock counts seconds; every call passes ``now``).
    price : float, optional
        Starting price (see :func:`batch_price`). Without it a per-query controller
        bootstraps on its first ``bootstrap`` queries; a per-second one needs it.
    elasticity : float, optional
        Starting ``eps`` of the update rule (see :func:`demand_elasticity`); default 1, or
        measured on the bootstrap sample.
    adapt_elasticity : bool
        Track ``eps`` on the stream: running means over ``ELASTICITY_MEMORY`` grants of each
        query's demand and of its secant ``b(lambda e^-s) - b(lambda e^s)`` (``s =
        ELASTICITY_STEP``), so that ``h`` keeps its meaning when the mix changes. Off by
        default: on the real streams it did not improve accuracy and widened the rate's
        tails (bursts of near-identical curves make the local secant much steeper than the
        demand over the price's excursions).
    horizon : float
        ``h``, the loop's time constant in clock units (queries, or seconds).
    target : "granted" or "consumed"
        What the rate counts: tokens granted (the batch allocator's constraint), or tokens
        consumed as reported by :meth:`report_consumed`.
    max_tokens : int, optional
        Default per-query cap (a call's own ``max_tokens`` overrides it).
    cap_tokens, cap_window : int, float, optional
        Hard cap: never more than ``cap_tokens`` granted in any ``cap_window`` (in
        ``cap_unit``).
    cap_unit : "queries" or "seconds", optional
        Unit of ``cap_window``; default the target's clock.
    cap_buckets : int
        Buckets per window of a cap over seconds.
    fallback_tokens : int
        Budget of an abandoned query (counted as granted, and against the cap).
    bootstrap : int
        Queries priced by the batch price of the queries seen so far when no ``price`` is
        given.
    price_bounds : (float, float)
        The price stays within these.

    Attributes
    ----------
    price_ : the current price. elasticity_ : the ``eps`` in use.
    n_queries_, granted_, consumed_, n_abandoned_, n_trimmed_ : running totals.
    """

    def __init__(self, *, tokens_per_query: float | None = None,
                 tokens_per_second: float | None = None, price: float | None = None,
                 elasticity: float | None = None, adapt_elasticity: bool = False,
                 horizon: float = 25.0,
                 target: str = "granted", max_tokens: int | None = None,
                 cap_tokens: int | None = None, cap_window: float | None = None,
                 cap_unit: str | None = None, cap_buckets: int = 16,
                 fallback_tokens: int = 0, bootstrap: int = 32,
                 price_bounds: tuple[float, float] = (1e-12, 1.0)) -> None:
        self.tokens_per_query = tokens_per_query
        self.tokens_per_second = tokens_per_second
        self.price = price
        self.elasticity = elasticity
        self.adapt_elasticity = adapt_elasticity
        self.horizon = horizon
        self.target = target
        self.max_tokens = max_tokens
        self.cap_tokens = cap_tokens
        self.cap_window = cap_window
        self.cap_unit = cap_unit
        self.cap_buckets = cap_buckets
        self.fallback_tokens = fallback_tokens
        self.bootstrap = bootstrap
        self.price_bounds = price_bounds
        self._validate()
        self.reset()

    # ------------------------------------------------------------------ construction
    def _validate(self) -> None:
        if (self.tokens_per_query is None) == (self.tokens_per_second is None):
            raise ValueError("give exactly one of tokens_per_query and tokens_per_second, got "
                             f"tokens_per_query={self.tokens_per_query!r}, "
                             f"tokens_per_second={self.tokens_per_second!r}")
        self._per_second = self.tokens_per_second is not None
        self._rate = _positive("tokens_per_second" if self._per_second else "tokens_per_query",
                               self.tokens_per_second if self._per_second
                               else self.tokens_per_query)
        lo, hi = _bounds(self.price_bounds)
        self._log_lo, self._log_hi = math.log(lo), math.log(hi)
        if self.price is not None:
            p = _positive("price", self.price)
            if not lo <= p <= hi:
                raise ValueError(f"price must lie within price_bounds {self.price_bounds}, "
                                 f"got {self.price!r}")
        elif self._per_second:
            raise ValueError("a tokens_per_second controller needs a starting price: pass "
                             "price=batch_price(reference_curves, tokens_per_second / "
                             "queries_per_second), or use StreamController.from_reference")
        if self.elasticity is not None:
            _positive("elasticity", self.elasticity)
        _positive("horizon", self.horizon)
        if self.target not in _TARGETS:
            raise ValueError(f"target must be one of {_TARGETS}, got {self.target!r}")
        if self.max_tokens is not None:
            _whole("max_tokens", self.max_tokens)
        self._fallback = _whole("fallback_tokens", self.fallback_tokens)
        if not self._per_second and self._fallback >= self._rate:
            raise ValueError(f"fallback_tokens={self.fallback_tokens!r} must be below "
                             f"tokens_per_query={self.tokens_per_query!r}")
        self._boot_size = _whole("bootstrap", self.bootstrap)
        if self.price is None and self._boot_size < 1:
            raise ValueError(f"bootstrap must be >= 1 without a starting price, got "
                             f"{self.bootstrap!r}")
        unit = self.cap_unit or ("seconds" if self._per_second else "queries")
        if unit not in _UNITS:
            raise ValueError(f"cap_unit must be one of {_UNITS}, got {self.cap_unit!r}")
        self._cap_unit = unit
        if (self.cap_tokens is None) != (self.cap_window is None):
            raise ValueError("give both cap_tokens and cap_window, or neither; got "
                             f"cap_tokens={self.cap_tokens!r}, cap_window={self.cap_window!r}")
        self._cap = None if self.cap_tokens is None else _whole("cap_tokens", self.cap_tokens)
        if self._cap is not None:
            if unit == "queries":
                self._span = _whole("cap_window", self.cap_window)
                if self._span < 1:
                    raise ValueError(f"cap_window must be >= 1 query, got {self.cap_window!r}")
                self._bucket_width = 1.0
            else:
                w = _positive("cap_window", self.cap_window)
                m = _whole("cap_buckets", self.cap_buckets)
                if m < 1:
                    raise ValueError(f"cap_buckets must be >= 1, got {self.cap_buckets!r}")
                self._span, self._bucket_width = m + 1, w / m

    @classmethod
    def from_reference(cls, curves: Curves, *, tokens_per_query: float | None = None,
                       tokens_per_second: float | None = None,
                       queries_per_second: float | None = None, max_tokens=None,
                       price: float | None = None, **kwargs: Any) -> "StreamController":
        """A controller warm-started on reference traffic.

        The starting price is ``price`` when given, else :func:`batch_price` of ``curves`` at
        the target per query (``tokens_per_second / queries_per_second`` for a rate target),
        raised to the lower price bound; ``elasticity`` is measured at the starting price
        (:func:`demand_elasticity`). Other keyword arguments go to the constructor.
        """
        cap = max_tokens
        if price is None:
            if tokens_per_second is not None:
                if queries_per_second is None:
                    raise ValueError("from_reference with tokens_per_second needs "
                                     "queries_per_second (the reference traffic's arrival "
                                     "rate), or a starting price")
                per_query = (_positive("tokens_per_second", tokens_per_second)
                             / _positive("queries_per_second", queries_per_second))
            elif tokens_per_query is None:
                raise ValueError("from_reference needs tokens_per_query or tokens_per_second")
            else:
                per_query = tokens_per_query
            lo, hi = _bounds(kwargs.get("price_bounds", (1e-12, 1.0)))
            price = min(max(batch_price(curves, per_query, cap), lo), hi)
        else:
            price = _positive("price", price)
        kwargs.setdefault("elasticity", demand_elasticity(curves, price, cap))
        return cls(tokens_per_query=tokens_per_query, tokens_per_second=tokens_per_second,
                   price=price, max_tokens=cap, **kwargs)

    def reset(self) -> None:
        """Forget the stream: back to the starting price and empty windows."""
        self.log_price_ = math.log(self.price) if self.price is not None else math.nan
        self.elasticity_ = float(self.elasticity) if self.elasticity is not None else 1.0
        self._seed_elasticity()
        self.n_queries_ = 0
        self.granted_ = 0
        self.consumed_ = 0
        self.n_abandoned_ = 0
        self.n_trimmed_ = 0
        self._last_time: float | None = None
        self._boot = np.zeros((self._boot_size, 5)) if self.price is None else None
        self._boot_n = 0
        if self._cap is not None:
            self._ring = np.zeros(self._span, dtype=np.int64)
            self._ring_sum = 0
            self._ring_head: int | None = None

    # ------------------------------------------------------------------ the loop
    @property
    def price_(self) -> float:
        return math.exp(self.log_price_) if math.isfinite(self.log_price_) else math.nan

    @property
    def bootstrapping(self) -> bool:
        """Whether the price is still set by the bootstrap sample."""
        return self._boot is not None and self._boot_n < self._boot_size

    def grant(self, tau: float, p: float, k: float, *, max_tokens: int | None = None,
              now: float | None = None, copies: int = 1) -> Grant:
        """Grant one arriving query its budget at the current price, then update the price.

        ``tau, p, k`` is its predicted curve; ``max_tokens`` its own cap (default the
        controller's); ``now`` the time in seconds (needed for a rate target or a cap over
        seconds; never decreasing). ``copies``: how many completions the query generates
        (an OpenAI ``n``), each up to the budget: the returned budget is per copy, chosen as
        for one at the price, and everything else (the hard cap, ``granted_``, the price's
        feedback) counts it ``copies`` times. The grant never breaks the hard cap.
        """
        tau, p, k = _curve(tau, p, k)
        if isinstance(copies, bool) or not isinstance(copies, (int, np.integer)) or copies < 1:
            raise ValueError(f"copies must be a whole number >= 1, got {copies!r}")
        copies = int(copies)
        cap = self.max_tokens if max_tokens is None else max_tokens
        cap = math.inf if cap is None else float(_whole("max_tokens", cap))
        now = self._tick(now)
        if self.bootstrapping:
            self._bootstrap_price(tau, p, k, cap, copies)
        lam = math.exp(self.log_price_)
        if self.adapt_elasticity:
            lp = self.log_price_ + np.array([0.0, -ELASTICITY_STEP, ELASTICITY_STEP])
            d0, d_lo, d_hi = _best_budgets(tau, p, k, lp, cap)
            demand = int(d0)
            self._track_elasticity(d0 * copies, (d_lo - d_hi) * copies)
        else:
            demand = _best_budget(tau, p, k, lam, cap)
        budget, trimmed = demand, False
        headroom = self._headroom(now)
        if demand * copies > headroom:
            trimmed = True
            budget = _best_budget(tau, p, k, lam, min(cap, float(headroom // copies)))
        abandoned = budget == 0
        if abandoned:
            fits = self._fallback <= cap and self._fallback * copies <= headroom
            budget = self._fallback if fits else 0
        self._record(budget * copies)
        self.n_queries_ += 1
        self.granted_ += budget * copies
        self.n_abandoned_ += abandoned
        self.n_trimmed_ += trimmed
        if self.target == "granted":
            fed = (max(demand, self._fallback) if trimmed else budget) * copies
        else:
            fed = 0
        if not self._per_second:
            self._step(fed - self._rate)
        else:
            self._step(fed)
        return Grant(budget=int(budget), abandoned=bool(abandoned), trimmed=trimmed,
                     price=lam, demand=int(demand))

    def grant_curves(self, curves: Curves, *, max_tokens: int | Sequence[int] | None = None,
                     times: Sequence[float] | None = None) -> GrantBatch:
        """:meth:`grant` for each query of ``curves`` in order (arrivals at ``times``);
        ``max_tokens`` one cap or one per query (``None`` or ``inf``: the controller's)."""
        n = len(curves)
        caps = None if max_tokens is None else as_caps(max_tokens, n)
        if times is not None:
            times = np.asarray(times, dtype=np.float64)
            if times.shape != (n,):
                raise ValueError(f"times must be one per query ({n}), got shape {times.shape}")
        out = np.zeros((n, 5))
        for i in range(n):
            c = None if caps is None or not math.isfinite(caps[i]) else int(caps[i])
            g = self.grant(curves.tau[i], curves.p[i], curves.k[i], max_tokens=c,
                           now=None if times is None else float(times[i]))
            out[i] = (g.budget, g.abandoned, g.trimmed, g.price, g.demand)
        return GrantBatch(budgets=out[:, 0].astype(np.int64), abandoned=out[:, 1] > 0,
                          trimmed=out[:, 2] > 0, prices=out[:, 3],
                          demands=out[:, 4].astype(np.int64))

    def report_consumed(self, tokens: int, *, now: float | None = None) -> None:
        """Record that a response ended having generated ``tokens``; with
        ``target="consumed"`` this is the feedback that moves the price."""
        tokens = _whole("tokens", tokens)
        if self.target == "consumed":
            self._tick(now)
            self._step(tokens)
        self.consumed_ += tokens

    # ------------------------------------------------------------------ internals
    def _seed_elasticity(self) -> None:
        """Start the elasticity's running means at ``elasticity_`` for a demand of one
        query's share of the target."""
        share = self._rate if not self._per_second else 1.0
        self._ew_demand = share
        self._ew_secant = self.elasticity_ * 2.0 * ELASTICITY_STEP * share

    def _tick(self, now: float | None) -> float | None:
        """Validate ``now``; for a rate target, credit the elapsed time (at most ``h``)."""
        needs = self._per_second or (self._cap is not None and self._cap_unit == "seconds")
        if now is None:
            if needs:
                raise ValueError("now (seconds) is required with a tokens_per_second target "
                                 "or a hard cap over seconds")
            return None
        now = float(now)
        if not math.isfinite(now):
            raise ValueError(f"now must be a finite time in seconds, got {now!r}")
        if self._last_time is not None and now < self._last_time:
            raise ValueError(f"now must not go backwards: got {now!r} after {self._last_time!r}")
        if self._per_second and self._last_time is not None:
            self._step(-self._rate * min(now - self._last_time, float(self.horizon)))
        self._last_time = now
        return now

    def _step(self, tokens: float) -> None:
        if self.bootstrapping or not math.isfinite(self.log_price_):
            return
        x = self.log_price_ + tokens / (self._rate * float(self.horizon) * self.elasticity_)
        self.log_price_ = min(max(x, self._log_lo), self._log_hi)

    def _track_elasticity(self, demand: float, secant: float) -> None:
        a = 1.0 / ELASTICITY_MEMORY
        self._ew_demand += a * (float(demand) - self._ew_demand)
        self._ew_secant += a * (float(secant) - self._ew_secant)
        if self.bootstrapping:
            return
        eps = self._ew_secant / (2.0 * ELASTICITY_STEP * max(self._ew_demand, 1.0))
        self.elasticity_ = float(min(max(eps, ELASTICITY_BOUNDS[0]), ELASTICITY_BOUNDS[1]))

    def _bootstrap_price(self, tau: float, p: float, k: float, cap: float,
                         copies: int) -> None:
        """The batch price of the queries seen so far (each counted ``copies`` times)."""
        self._boot[self._boot_n] = (tau, p, k, cap, copies)
        self._boot_n += 1
        rows = self._boot[:self._boot_n]
        sample = Curves(rows[:, 0], rows[:, 1], rows[:, 2])
        self.log_price_ = _lagrangian_log_price(sample, self._rate * self._boot_n, rows[:, 3],
                                                self._log_lo, self._log_hi, copies=rows[:, 4])
        price = math.exp(self.log_price_)
        if self._boot_n == self._boot_size:
            if self.elasticity is None:
                self.elasticity_ = demand_elasticity(sample, price, rows[:, 3])
                self._seed_elasticity()
            self._boot = None  # the sample is dropped; the loop takes over

    def _bucket(self, now: float | None) -> int:
        if self._cap_unit == "queries":
            return self.n_queries_
        return int(math.floor(now / self._bucket_width))

    def _headroom(self, now: float | None) -> float:
        if self._cap is None:
            return math.inf
        j = self._bucket(now)
        head = self._ring_head
        if head is not None and j > head:
            if j - head >= self._span:
                self._ring[:] = 0
                self._ring_sum = 0
            else:
                for s in range(head + 1, j + 1):
                    slot = s % self._span
                    self._ring_sum -= int(self._ring[slot])
                    self._ring[slot] = 0
        if head is None or j > head:
            self._ring_head = j
        return float(self._cap - self._ring_sum)

    def _record(self, budget: int) -> None:
        if self._cap is not None and budget:
            self._ring[self._ring_head % self._span] += budget
            self._ring_sum += budget

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """The controller's whole mutable state, JSON-ready; its size does not depend on how
        many queries it has seen."""
        d = {"log_price": self.log_price_, "elasticity": self.elasticity_,
             "ew_demand": self._ew_demand, "ew_secant": self._ew_secant,
             "n_queries": self.n_queries_, "granted": self.granted_,
             "consumed": self.consumed_, "n_abandoned": self.n_abandoned_,
             "n_trimmed": self.n_trimmed_, "last_time": self._last_time,
             "boot": None if self._boot is None else self._boot.tolist(),
             "boot_n": self._boot_n}
        if self._cap is not None:
            d.update(ring=self._ring.tolist(), ring_sum=self._ring_sum,
                     ring_head=self._ring_head)
        return d

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (on a controller of the same settings)."""
        self.log_price_ = float(state["log_price"])
        self.elasticity_ = float(state["elasticity"])
        self._ew_demand, self._ew_secant = float(state["ew_demand"]), float(state["ew_secant"])
        self.n_queries_, self.granted_ = int(state["n_queries"]), int(state["granted"])
        self.consumed_ = int(state["consumed"])
        self.n_abandoned_, self.n_trimmed_ = int(state["n_abandoned"]), int(state["n_trimmed"])
        self._last_time = state["last_time"]
        self._boot = None if state["boot"] is None else np.array(state["boot"], dtype=float)
        if self._boot is not None and self._boot.shape[1] == 4:  # saved before copies: one each
            self._boot = np.column_stack([self._boot, np.ones(len(self._boot))])
        self._boot_n = int(state["boot_n"])
        if self._cap is not None:
            ring = np.array(state["ring"], dtype=np.int64)
            if ring.shape != (self._span,):
                raise ValueError(f"state ring has {ring.size} slots, this controller "
                                 f"{self._span}")
            self._ring, self._ring_sum = ring, int(state["ring_sum"])
            self._ring_head = state["ring_head"]

    def __repr__(self) -> str:
        what = (f"tokens_per_second={self.tokens_per_second!r}" if self._per_second
                else f"tokens_per_query={self.tokens_per_query!r}")
        return (f"StreamController({what}, price_={self.price_:.4g}, "
                f"elasticity_={self.elasticity_:.3g}, n_queries_={self.n_queries_}, "
                f"granted_={self.granted_}, n_abandoned_={self.n_abandoned_})")


def _curve(tau, p, k) -> tuple[float, float, float]:
    try:
        tau, p, k = float(tau), float(p), float(k)
    except (TypeError, ValueError):
        raise TypeError(f"tau, p, k must be numbers, got {tau!r}, {p!r}, {k!r}") from None
    if not (math.isfinite(tau) and tau >= 0):
        raise ValueError(f"tau must be finite and >= 0, got {tau!r}")
    if not (0.0 <= p <= 1.0):
        raise ValueError(f"p must lie in [0, 1], got {p!r}")
    if not (math.isfinite(k) and k > 0):
        raise ValueError(f"k must be finite and > 0, got {k!r}")
    return tau, p, k


def _bounds(bounds) -> tuple[float, float]:
    try:
        lo, hi = (float(b) for b in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"price_bounds must be two numbers (low, high), got {bounds!r}") \
            from None
    if not (0 < lo < hi and math.isfinite(hi)):
        raise ValueError(f"price_bounds must satisfy 0 < low < high < inf, got {bounds!r}")
    return lo, hi
