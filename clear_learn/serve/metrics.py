"""The proxy's Prometheus metrics, in a registry of its own (one per app, so that several
apps in one process, as in the tests, do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import CONTENT_TYPE_LATEST

__all__ = ["Metrics", "CONTENT_TYPE_LATEST"]

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0, 30.0, 60.0, 120.0)


class Metrics:
    """Counters, gauges and histograms of one proxy; :meth:`render` is the /metrics body."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("clear_requests", "Requests answered, by route and status",
                                ["route", "status"], registry=r)
        self.budgeted = Counter("clear_budgeted_requests",
                                "Requests that went through the budget (completions)",
                                registry=r)
        self.tokens_granted = Counter("clear_tokens_granted",
                                      "Tokens granted: each budget written into the budget "
                                      "field, times the request's completions (n)",
                                      registry=r)
        self.tokens_consumed = Counter("clear_tokens_consumed",
                                       "Completion tokens reported in upstream usage",
                                       registry=r)
        self.abandoned = Counter("clear_abandoned", "Queries the controller abandoned",
                                 registry=r)
        self.refused = Counter("clear_refused", "Abandoned queries refused", registry=r)
        self.shed = Counter("clear_shed", "Queries granted as the typical query because the "
                            "encoder did not start on them within queue_timeout_ms",
                            registry=r)
        self.abandoned_share = Gauge("clear_abandoned_share",
                                     "Share of budgeted queries abandoned so far", registry=r)
        self.price = Gauge("clear_price", "The controller's live shadow price", registry=r)
        self.prediction = Histogram("clear_prediction_seconds",
                                    "Arrival to predicted curve (queueing and encoder)",
                                    buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("clear_prediction_batch_size",
                                    "Texts per encoder micro-batch",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.upstream = Histogram("clear_upstream_seconds",
                                  "Upstream time to response headers, by route",
                                  ["route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.upstream_errors = Counter("clear_upstream_errors",
                                       "Upstream failures, by kind", ["kind"], registry=r)
        self.stream_aborts = Counter("clear_stream_aborts",
                                     "Streams that ended early, by reason", ["reason"],
                                     registry=r)
        self.in_flight = Gauge("clear_in_flight", "Requests being proxied now", registry=r)
        self._n_budgeted = 0
        self._n_abandoned = 0

    def record_decision(self, budget: int | None, abandoned: bool, refused: bool,
                        price: float, predict_seconds: float, shed: bool = False) -> None:
        """Account one request's budget decision (``budget``: the tokens granted, all of
        its completions together)."""
        self.budgeted.inc()
        if shed:
            self.shed.inc()
        if budget:
            self.tokens_granted.inc(budget)
        if abandoned:
            self.abandoned.inc()
        if refused:
            self.refused.inc()
        self._n_budgeted += 1
        self._n_abandoned += bool(abandoned)
        self.abandoned_share.set(self._n_abandoned / self._n_budgeted)
        if price == price:  # not NaN
            self.price.set(price)
        self.prediction.observe(predict_seconds)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
