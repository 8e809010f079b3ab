"""Per-request budgets: the predictor, micro-batched off the event loop, and the live price.

:class:`MicroBatcher` turns concurrent ``predict`` calls into batches for the encoder, which
runs in one worker thread (the event loop never waits on torch). :class:`BudgetService`
composes it with a :class:`~clear_learn.controller.StreamController` and the abandoned-query
policy: one call, :meth:`BudgetService.decide`, per request. The controller is only touched
from the event loop's thread, one grant at a time, so it needs no lock.

One controller per process. Several replicas behind a load balancer each run their own, on
their share of the target (a per-query target is the same on each replica; a per-second one
is divided by the number of replicas); there is no coordination between replicas.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from ..controller import StreamController
from ..curves import Curves
from .config import ConfigError, ServeConfig

__all__ = ["Predictor", "MicroBatcher", "BudgetService", "Decision", "load_predictor",
           "NO_TEXT"]

log = logging.getLogger("clear_learn.serve")

#: What the predictor is given for a query with no text (an image-only question): a
#: predictor takes non-empty texts only, and this one gives a curve for "nothing to go on".
NO_TEXT = "(no text)"


class Predictor(Protocol):
    """What the proxy needs of a predictor: ``predict(texts) -> Curves``."""

    def predict(self, texts: Sequence[str]) -> Curves: ...


@dataclass(frozen=True)
class Decision:
    """What the proxy does with one request.

    budget : tokens to write into the budget field; ``None``: forward the request unchanged.
    refused : answer with the refuse status instead of forwarding.
    abandoned : the controller abandoned the query at this price.
    price : the price it was granted at.
    curve : its predicted ``(tau, p, k)``.
    predict_seconds : time from arrival to its curve (queueing and the encoder).
    copies : completions the request generates, each up to ``budget`` (its ``n``).
    shed : the encoder did not start on it in time; ``curve`` is the typical one.
    """

    budget: int | None
    refused: bool
    abandoned: bool
    price: float
    curve: tuple[float, float, float]
    predict_seconds: float
    copies: int = 1
    shed: bool = False


def load_predictor(path: str | Path, runtime: str = "onnx") -> Predictor:
    """``ClearPredictor.from_pretrained(path, runtime=runtime)`` (imports torch; call it off
    the event loop)."""
    from ..predictor import ClearPredictor

    return ClearPredictor.from_pretrained(path, runtime=runtime)


def _predict_fn(predictor: Predictor) -> Callable[[list[str]], Curves]:
    """``predictor.predict`` without the batch context (a micro-batch is an accident of
    timing, so each text's curve must not depend on who arrived with it)."""
    try:
        params = inspect.signature(predictor.predict).parameters
    except (TypeError, ValueError):
        params = {}
    for name in ("use_batch_context", "batch_context"):  # its name before and after 0.1
        if name in params:
            return lambda texts: predictor.predict(texts, **{name: False})
    return predictor.predict


@dataclass(eq=False)
class _Pending:
    """A text waiting for the encoder; ``taken`` once a forming batch holds it."""

    text: str
    future: asyncio.Future
    taken: bool = False


class MicroBatcher:
    """Batches concurrent :meth:`predict` calls for a predictor running in one thread.

    A batch starts when the worker is free and a text is waiting; it takes what has arrived
    within ``max_wait`` seconds, at most ``max_batch`` texts. Under load the queue fills
    while the encoder runs, so batches grow by themselves; alone, a text waits ``max_wait``.
    ``on_batch(size, seconds)`` is called after each batch (an error it raises is logged;
    the batch's results are delivered and the worker goes on).

    Load shedding: ``predict(text, deadline=s)`` gives up on a text that no batch has taken
    within ``s`` seconds and returns ``None`` at once; the worker then skips it, so beyond
    the encoder's rate the queue sheds instead of growing and the wait stays bounded (by
    the deadline plus, for a text taken, ``max_wait`` and one batch).
    """

    def __init__(self, predict: Callable[[list[str]], Curves], *, max_batch: int = 64,
                 max_wait: float = 0.002,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch!r}")
        self._predict = predict
        self.max_batch = int(max_batch)
        self.max_wait = float(max_wait)
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Pending] | None = None
        self._worker: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clear-predict")
        self._closed = False

    async def predict(self, text: str, deadline: float | None = None
                      ) -> tuple[float, float, float] | None:
        """The curve ``(tau, p, k)`` of one text, predicted in some batch; ``None`` when no
        batch took it within ``deadline`` seconds (``None``: wait as long as it takes)."""
        if self._closed:
            raise RuntimeError("the micro-batcher is closed")
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.create_task(self._run(), name="clear-micro-batcher")
        loop = asyncio.get_running_loop()
        item = _Pending(text, loop.create_future())
        self._queue.put_nowait(item)
        timer = None if deadline is None else loop.call_later(deadline, _shed, item)
        try:
            return await item.future
        finally:
            if timer is not None:
                timer.cancel()

    async def _run(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = _take(await self._queue.get())
            if not batch:
                continue
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                try:
                    batch += _take(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch += _take(await asyncio.wait_for(self._queue.get(), left))
                except asyncio.TimeoutError:
                    break
            batch = [it for it in batch if not it.future.done()]  # callers that gave up
            if not batch:
                continue
            texts = [it.text for it in batch]
            t0 = time.perf_counter()
            try:
                curves = await loop.run_in_executor(self._pool, self._predict, texts)
                rows = np.column_stack([curves.tau, curves.p, curves.k]).astype(float)
                if rows.shape != (len(texts), 3):
                    raise RuntimeError(f"the predictor returned {rows.shape[0]} curves for "
                                       f"{len(texts)} texts")
            except Exception as err:  # every waiting request gets the error
                log.exception("prediction failed for a batch of %d", len(texts))
                for it in batch:
                    if not it.future.done():
                        it.future.set_exception(err)
                continue
            if self._on_batch is not None:
                try:
                    self._on_batch(len(texts), time.perf_counter() - t0)
                except Exception:  # a metric hook must not stop the predictions
                    log.exception("on_batch failed after a batch of %d", len(texts))
            for it, row in zip(batch, rows):
                if not it.future.done():
                    it.future.set_result((float(row[0]), float(row[1]), float(row[2])))

    async def aclose(self) -> None:
        """Stop the worker; requests still waiting get an error. Idempotent."""
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except (asyncio.CancelledError, Exception):
                pass
            self._worker = None
        if self._queue is not None:
            while not self._queue.empty():
                f = self._queue.get_nowait().future
                if not f.done():
                    f.set_exception(RuntimeError("the proxy is shutting down"))
        self._pool.shutdown(wait=False, cancel_futures=True)


def _take(item: _Pending) -> list[_Pending]:
    """A queued text pulled into a forming batch: ``[item]``, now safe from its deadline,
    or ``[]`` if it was shed (or its caller gave up) while it waited."""
    if item.future.done():
        return []
    item.taken = True
    return [item]


def _shed(item: _Pending) -> None:
    """The deadline of a queued text: answer ``None`` unless a batch has taken it."""
    if not item.taken and not item.future.done():
        item.future.set_result(None)


#: Queries the typical curve (what a shed query is granted as) averages over.
TYPICAL_SPAN = 500


def _mean_curve(curves: Curves) -> tuple[float, float, float]:
    """The mean ``(tau, p, k)`` of some curves (the typical query of reference traffic)."""
    return (float(np.mean(curves.tau)), float(np.mean(curves.p)), float(np.mean(curves.k)))


class BudgetService:
    """Predictor + micro-batcher + controller + abandoned-query policy: one budget per request.

    ``max_tokens`` is the per-query cap (a request's own limit lowers it);
    ``abandon_policy`` one of ``fallback`` (forward with the controller's
    ``fallback_tokens``, or the request's own limit if smaller; refused when even that would
    break the hard cap), ``refuse`` or ``passthrough`` (forward unchanged; the controller
    counts 0 tokens for it, so it cannot go with a hard cap: a ``ValueError``).
    ``clock`` gives the seconds passed to the controller (monotonic).

    ``queue_timeout`` (seconds; ``None``: wait) bounds the wait for the encoder: a query
    that no micro-batch has taken by then is granted as the typical query (the running mean
    of the predicted curves, :attr:`typical`, or of ``typical`` given here) at the live
    price, through the same controller and hard cap. Until a first curve is known there is
    no typical query and every query waits.
    """

    def __init__(self, predictor: Predictor, controller: StreamController, *,
                 max_tokens: int | None = None, abandon_policy: str = "fallback",
                 batch_size: int = 64, batch_wait: float = 0.002,
                 queue_timeout: float | None = None,
                 typical: tuple[float, float, float] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 on_batch: Callable[[int, float], None] | None = None) -> None:
        if queue_timeout is not None and not (math.isfinite(queue_timeout)
                                              and queue_timeout > 0):
            raise ValueError(f"queue_timeout must be a finite number of seconds > 0, or "
                             f"None, got {queue_timeout!r}")
        if abandon_policy not in ("fallback", "refuse", "passthrough"):
            raise ValueError(f"abandon_policy must be fallback, refuse or passthrough, got "
                             f"{abandon_policy!r}")
        if abandon_policy == "passthrough" and controller.cap_tokens is not None:
            raise ValueError("abandon_policy passthrough cannot go with the controller's "
                             "cap_tokens: it forwards abandoned queries with no limit, which "
                             "the hard cap cannot count")
        self.predictor = predictor
        self.controller = controller
        self.max_tokens = max_tokens
        self.abandon_policy = abandon_policy
        self.clock = clock
        self._t0 = clock()
        self.queue_timeout = queue_timeout
        self.typical = None if typical is None else tuple(float(v) for v in typical)
        # a given typical curve (the reference traffic's) weighs as a full span of queries
        self._n_predicted = 0 if typical is None else TYPICAL_SPAN
        self.batcher = MicroBatcher(_predict_fn(predictor), max_batch=batch_size,
                                    max_wait=batch_wait, on_batch=on_batch)

    @classmethod
    def from_config(cls, cfg: ServeConfig, predictor: Predictor | None = None,
                    **kwargs: Any) -> "BudgetService":
        """Build from a validated config; loads ``cfg.predictor`` unless ``predictor`` is
        given. Blocking (loads torch, predicts the reference texts): run it off the loop."""
        if predictor is None:
            if not cfg.predictor:
                raise ConfigError("predictor: required (an exported predictor directory)")
            predictor = load_predictor(cfg.predictor, cfg.runtime)
        cap = cfg.max_tokens
        if cap is None:
            cap = getattr(predictor, "max_new_tokens", None)
        ctl_kwargs: dict[str, Any] = dict(
            horizon=cfg.horizon, target=cfg.target, cap_tokens=cfg.cap_tokens,
            cap_window=cfg.cap_window,
            fallback_tokens=cfg.fallback_tokens if cfg.abandon_policy == "fallback" else 0)
        try:
            if cfg.reference is not None:
                texts = [t.strip() for t in Path(cfg.reference).read_text().splitlines()]
                texts = [t for t in texts if t]
                if not texts:
                    raise ConfigError(f"reference: {cfg.reference} holds no texts")
                curves = _predict_fn(predictor)(texts)
                kwargs.setdefault("typical", _mean_curve(curves))
                controller = StreamController.from_reference(
                    curves, tokens_per_query=cfg.tokens_per_query,
                    tokens_per_second=cfg.tokens_per_second,
                    queries_per_second=cfg.queries_per_second, max_tokens=cap,
                    price=cfg.price, **ctl_kwargs)
            else:
                controller = StreamController(
                    tokens_per_query=cfg.tokens_per_query,
                    tokens_per_second=cfg.tokens_per_second, price=cfg.price,
                    max_tokens=cap, **ctl_kwargs)
        except (TypeError, ValueError) as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(f"controller settings: {err}") from None
        return cls(predictor, controller, max_tokens=cap, abandon_policy=cfg.abandon_policy,
                   batch_size=cfg.batch_size, batch_wait=cfg.batch_wait_ms / 1000.0,
                   queue_timeout=(None if cfg.queue_timeout_ms is None
                                  else cfg.queue_timeout_ms / 1000.0), **kwargs)

    async def decide(self, text: str, client_cap: int | None = None, *,
                     copies: int = 1) -> Decision:
        """Predict ``text``'s curve, grant it a budget at the live price, apply the policy.

        ``client_cap`` is the request's own limit; the budget never exceeds it (nor
        ``max_tokens``). ``copies``: completions the request generates (its ``n``), each up
        to the budget; the controller and its hard cap count the budget that many times. A
        text that is empty (or only spaces) is predicted as :data:`NO_TEXT`. Past
        ``queue_timeout`` it is granted as the typical query (``Decision.shed``).
        """
        t0 = time.perf_counter()
        deadline = self.queue_timeout if self.typical is not None else None
        curve = await self.batcher.predict(text if text.strip() else NO_TEXT, deadline)
        waited = time.perf_counter() - t0
        shed = curve is None
        if curve is None:
            assert self.typical is not None
            curve = self.typical
        else:
            self._observe(curve)
        tau, p, k = curve
        caps = [c for c in (client_cap, self.max_tokens) if c is not None]
        cap = min(caps) if caps else None
        # a limit below the fallback still gets the fallback, trimmed to the limit (the
        # controller counts the whole fallback: conservative for the hard cap)
        ctl_cap = cap if cap is None else max(cap, self.controller.fallback_tokens)
        g = self.controller.grant(tau, p, k, max_tokens=ctl_cap, now=self.clock() - self._t0,
                                  copies=copies)
        budget: int | None = g.budget if cap is None else min(g.budget, cap)
        refused = False
        if g.abandoned:
            if self.abandon_policy == "refuse" or (self.abandon_policy == "fallback"
                                                   and g.budget == 0):
                budget, refused = None, True
            elif self.abandon_policy == "passthrough":
                budget = None
        return Decision(budget=budget, refused=refused, abandoned=g.abandoned, price=g.price,
                        curve=(tau, p, k), predict_seconds=waited, copies=copies, shed=shed)

    def _observe(self, curve: tuple[float, float, float]) -> None:
        """Fold a predicted curve into :attr:`typical` (the mean of the curves so far, then
        an exponential average over about the last ``TYPICAL_SPAN`` queries)."""
        self._n_predicted += 1
        if self.typical is None:
            self.typical = curve
            return
        w = 1.0 / min(self._n_predicted, TYPICAL_SPAN)
        self.typical = tuple(a + w * (b - a) for a, b in zip(self.typical, curve))

    def report_consumed(self, tokens: int) -> None:
        """Feed back the completion tokens a response used (moves the price only with
        ``target: consumed``)."""
        if tokens >= 0:
            self.controller.report_consumed(int(tokens), now=self.clock() - self._t0)

    @property
    def price(self) -> float:
        p = self.controller.price_
        return p if math.isfinite(p) else float("nan")

    async def aclose(self) -> None:
        """Stop the micro-batcher."""
        await self.batcher.aclose()
