"""The OpenAI-compatible proxy: a FastAPI app in front of any OpenAI-compatible upstream.

Routes: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (with or without a
trailing slash, streaming or not, the query string kept) get a budget from
:class:`~clear_learn.serve.budget.BudgetService` written into the configured field, counted
``n`` times (``best_of`` when larger); any other ``/v1/*`` route is passed through;
``GET /health``; ``GET /metrics`` (Prometheus). Every budgeted answer is the upstream's, with
the headers ``x-clear-max-tokens`` (the budget forwarded, per completion; empty when the
request went unchanged), ``x-clear-price`` and ``x-clear-abandoned``. It is unchanged but for
one case: with ``target: consumed`` the proxy asks a stream for its usage
(``stream_options.include_usage``) and, when the client did not ask for it, drops the
usage-only last event (``choices`` empty) from what it relays.

Failures are answered, never hung: the upstream unreachable, or answering a 200 that is not
JSON, gives a 502; too slow a 504 (``timeout`` seconds to the headers, and again for the rest
of the body; between chunks once a stream has begun, when the stream is ended with an SSE
``error`` event); a malformed request a 400 naming the field; all as OpenAI-style JSON errors.
The upstream's own error answers (JSON or not) are relayed with their headers. The client's
``Authorization`` header is passed to the upstream (or the key from ``upstream_api_key_env``
when the client sends none); no header is ever logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

import anyio
import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from .budget import BudgetService, Decision, Predictor
from .config import ServeConfig
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .payloads import (BadRequest, apply_budget, chat_query_text, client_cap,
                       completion_query_text, is_stream, n_copies, parse_body,
                       with_stream_usage)

__all__ = ["create_app", "Proxy"]

log = logging.getLogger("clear_learn.serve")

#: Request headers not forwarded (hop-by-hop, or set by the proxy itself).
_DROP_REQUEST = frozenset({"host", "content-length", "connection", "keep-alive",
                           "transfer-encoding", "te", "upgrade", "proxy-authorization",
                           "proxy-connection", "accept-encoding"})
#: Response headers not copied back (hop-by-hop, or rewritten by the ASGI server).
_DROP_RESPONSE = frozenset({"content-length", "connection", "keep-alive", "transfer-encoding",
                            "content-encoding", "date", "server"})


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None
           ) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": None,
                                   "code": status}}, status_code=status, headers=headers)


class UpstreamError(Exception):
    """The upstream failed; ``status`` is 502 or 504."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind = status, kind

    def response(self) -> JSONResponse:
        return _error(self.status, str(self), self.kind)


def _once(fn: Callable[[], None]) -> Callable[[], None]:
    """``fn``, run on the first call only."""
    done = False

    def call() -> None:
        nonlocal done
        if not done:
            done = True
            fn()
    return call


class _Streamed(StreamingResponse):
    """A relayed upstream stream: however the answer ends (even before its body starts), the
    upstream response is closed and ``on_end`` has run (make it safe to call twice)."""

    def __init__(self, content: AsyncIterator[bytes], upstream: httpx.Response,
                 on_end: Callable[[], None] | None = None, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self._upstream, self._on_end = upstream, on_end

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if self._on_end is not None:
                self._on_end()
            with anyio.CancelScope(shield=True):
                await self._upstream.aclose()


class Proxy:
    """The proxy's state (config, upstream client, budget service, metrics) and handlers."""

    def __init__(self, config: ServeConfig, *, budget: BudgetService | None = None,
                 predictor: Predictor | None = None,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.config = config
        self.metrics = Metrics()
        self.budget = budget
        self._predictor = predictor
        self._transport = transport
        self.client: httpx.AsyncClient | None = None

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        """Load the predictor (off the loop) and open the upstream connection pool."""
        if self.budget is None:
            self.budget = await asyncio.to_thread(
                BudgetService.from_config, self.config, self._predictor,
                on_batch=lambda n, s: self.metrics.batch_size.observe(n))
        cfg = self.config
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(cfg.timeout, connect=cfg.connect_timeout),
            limits=httpx.Limits(max_connections=1000, max_keepalive_connections=200),
            transport=self._transport, trust_env=False)
        log.info("clear-learn serve: upstream %s, budget into %r, %s", cfg.upstream,
                 cfg.budget_field, self.budget.controller)

    async def stop(self) -> None:
        """Close the upstream pool and the micro-batcher."""
        if self.client is not None:
            await self.client.aclose()
        if self.budget is not None:
            await self.budget.aclose()
        log.info("clear-learn serve: shut down cleanly")

    # ---------------------------------------------------------------- helpers
    def _upstream_headers(self, request: Request) -> dict[str, str]:
        h = {k: v for k, v in request.headers.items() if k.lower() not in _DROP_REQUEST}
        h["accept-encoding"] = "identity"
        if "authorization" not in {k.lower() for k in h}:
            key = self.config.upstream_api_key
            if key:
                h["authorization"] = f"Bearer {key}"
        return h

    def _url(self, path: str, query: str = "") -> str:
        """The upstream URL of a ``/v1/...`` path."""
        assert path.startswith("/v1")
        url = self.config.upstream + path[3:]
        return f"{url}?{query}" if query else url

    @staticmethod
    def _copy_headers(resp: httpx.Response) -> dict[str, str]:
        return {k: v for k, v in resp.headers.items() if k.lower() not in _DROP_RESPONSE}

    @staticmethod
    def _clear_headers(d: Decision) -> dict[str, str]:
        return {"x-clear-max-tokens": "" if d.budget is None else str(d.budget),
                "x-clear-price": repr(float(d.price)),
                "x-clear-abandoned": "true" if d.abandoned else "false"}

    async def _send(self, req: httpx.Request, route: str, stream: bool) -> httpx.Response:
        """Send to the upstream within ``timeout`` (to the headers); raise UpstreamError."""
        assert self.client is not None
        t0 = time.perf_counter()
        try:
            resp = await asyncio.wait_for(self.client.send(req, stream=stream),
                                          self.config.timeout)
        except (asyncio.TimeoutError, httpx.ReadTimeout, httpx.WriteTimeout,
                httpx.PoolTimeout) as err:
            self.metrics.upstream_errors.labels("timeout").inc()
            raise UpstreamError(504, "upstream_timeout",
                                f"the upstream did not answer within {self.config.timeout:g} s"
                                ) from err
        except (httpx.ConnectError, httpx.ConnectTimeout) as err:
            self.metrics.upstream_errors.labels("connect").inc()
            raise UpstreamError(502, "upstream_unreachable",
                                f"cannot connect to the upstream ({type(err).__name__})"
                                ) from err
        except httpx.HTTPError as err:
            self.metrics.upstream_errors.labels("protocol").inc()
            raise UpstreamError(502, "upstream_error",
                                f"the upstream failed ({type(err).__name__}: {err})") from err
        self.metrics.upstream.labels(route).observe(time.perf_counter() - t0)
        return resp

    async def _read(self, resp: httpx.Response) -> bytes:
        """The rest of a streamed response's body, within ``timeout``."""
        try:
            return await asyncio.wait_for(resp.aread(), self.config.timeout)
        except (asyncio.TimeoutError, httpx.TimeoutException) as err:
            self.metrics.upstream_errors.labels("timeout").inc()
            raise UpstreamError(504, "upstream_timeout", f"the upstream's answer did not "
                                f"complete within {self.config.timeout:g} s") from err
        except httpx.HTTPError as err:
            self.metrics.upstream_errors.labels("protocol").inc()
            raise UpstreamError(502, "upstream_error", f"the upstream's answer broke off "
                                f"({type(err).__name__})") from err
        finally:
            await resp.aclose()

    def _checked_json(self, resp: httpx.Response, content: bytes) -> Any:
        """The upstream's JSON answer; UpstreamError (502) when it is not JSON."""
        try:
            return json.loads(content)
        except (json.JSONDecodeError, UnicodeDecodeError):
            self.metrics.upstream_errors.labels("invalid_json").inc()
            raise UpstreamError(502, "upstream_invalid_response",
                                f"the upstream answered {resp.status_code} with a body that is "
                                f"not JSON ({len(content)} bytes)") from None

    def _report_usage(self, answer: Any) -> None:
        """Count an answer's ``usage.completion_tokens`` (if any) and feed it back; never
        raises (the answer goes to the client whatever happens here)."""
        try:
            used = answer["usage"]["completion_tokens"]
        except (KeyError, TypeError, IndexError):
            return
        if isinstance(used, int) and not isinstance(used, bool) and used >= 0:
            self.metrics.tokens_consumed.inc(used)
            assert self.budget is not None
            try:
                self.budget.report_consumed(used)
            except Exception:
                log.exception("reporting %d consumed tokens failed", used)

    # ---------------------------------------------------------------- handlers
    async def completion(self, request: Request, route: str) -> Response:
        """A budgeted ``/v1/chat/completions`` or ``/v1/completions`` request; it counts in
        ``in_flight`` until its answer has been relayed (a stream: until the relay ends)."""
        self.metrics.in_flight.inc()
        done = _once(self.metrics.in_flight.dec)
        resp: Response | None = None
        try:
            resp = await self._completion(request, route, done)
            return resp
        finally:
            if not isinstance(resp, _Streamed):
                done()
            status = 500 if resp is None else resp.status_code
            self.metrics.requests.labels(route, str(status)).inc()

    async def _completion(self, request: Request, route: str,
                          on_end: Callable[[], None]) -> Response:
        cfg = self.config
        assert self.budget is not None
        try:
            body = parse_body(await request.body())
            text = (chat_query_text(body, cfg.query) if route == "/v1/chat/completions"
                    else completion_query_text(body))
            cap = client_cap(body, cfg.budget_field)
            copies = n_copies(body)
            stream = is_stream(body)
            strip_usage = False
            if stream and cfg.target == "consumed":  # the price needs every stream's usage
                body, asked = with_stream_usage(body)
                strip_usage = not asked
        except BadRequest as err:
            return JSONResponse(err.payload(), status_code=400)
        try:
            d = await self.budget.decide(text, cap, copies=copies)
        except Exception as err:  # the predictor failed: say so, do not hang
            log.exception("budget decision failed")
            return _error(500, f"could not predict a budget ({type(err).__name__})",
                          "budget_error")
        self.metrics.record_decision(None if d.budget is None else d.budget * d.copies,
                                     d.abandoned, d.refused, d.price, d.predict_seconds,
                                     d.shed)
        headers = self._clear_headers(d)
        log.debug("%s budget=%s price=%.3g abandoned=%s", route, d.budget, d.price, d.abandoned)
        if d.refused:
            return _error(cfg.refuse_status,
                          "clear-learn: this query was abandoned at the current token price "
                          f"({d.price:.3g}): its predicted accuracy does not pay for the "
                          "tokens; retrying will not help until the price falls",
                          "budget_refused", {**headers, "x-should-retry": "false"})
        out = body if d.budget is None else apply_budget(body, d.budget, cfg.budget_field)
        assert self.client is not None
        req = self.client.build_request("POST", self._url(route, request.url.query),
                                        content=json.dumps(out).encode(),
                                        headers={**self._upstream_headers(request),
                                                 "content-type": "application/json"})
        try:
            resp = await self._send(req, route, stream=True)
            ctype = resp.headers.get("content-type", "")
            if not (stream and resp.status_code == 200 and "text/event-stream" in ctype):
                content = await self._read(resp)
                if resp.status_code == 200:  # an answer must be JSON; errors go back as is
                    self._report_usage(self._checked_json(resp, content))
                return Response(content, status_code=resp.status_code,
                                headers={**self._copy_headers(resp), **headers})
        except UpstreamError as err:
            r = err.response()
            r.headers.update(headers)
            return r
        return _Streamed(self._relay(resp, strip_usage=strip_usage, on_end=on_end),
                         upstream=resp, on_end=on_end, status_code=resp.status_code,
                         headers={**self._copy_headers(resp), **headers})

    async def _relay(self, resp: httpx.Response, *, strip_usage: bool = False,
                     on_end: Callable[[], None] | None = None) -> AsyncIterator[bytes]:
        """The upstream's stream, chunk by chunk (``strip_usage``: event by event, less the
        usage-only event); ended with an SSE error event when the upstream stalls past
        ``timeout`` or breaks off. However it ends (the client disconnecting included), the
        usage it carried is reported, then ``on_end`` is called and the upstream connection
        closed."""
        tail = b""
        finished = False
        aborted = False
        events = _UsageFilter() if strip_usage else None
        try:
            async for chunk in resp.aiter_raw():
                tail = (tail + chunk)[-8192:]
                out = chunk if events is None else events.feed(chunk)
                if out:
                    yield out
            if events is not None and (rest := events.flush()):
                yield rest
            finished = True
        except httpx.TimeoutException:
            aborted = True
            self.metrics.upstream_errors.labels("timeout").inc()
            self.metrics.stream_aborts.labels("upstream_timeout").inc()
            yield _sse_error(f"the upstream stalled for more than {self.config.timeout:g} s")
        except httpx.HTTPError as err:
            aborted = True
            self.metrics.upstream_errors.labels("protocol").inc()
            self.metrics.stream_aborts.labels("upstream_broke_off").inc()
            yield _sse_error(f"the upstream's stream broke off ({type(err).__name__})")
        finally:
            if not finished and not aborted:  # cancelled or closed: the client went away
                self.metrics.stream_aborts.labels("client_disconnected").inc()
            # the usage the upstream sent, even if the client hung up right after it (at
            # "[DONE]", as the openai client does)
            self._report_usage(_last_usage(tail))
            if on_end is not None:
                on_end()
            with anyio.CancelScope(shield=True):
                await resp.aclose()

    async def passthrough(self, request: Request, path: str) -> Response:
        """Any other ``/v1/*`` request, forwarded as is; the answer streamed back."""
        route = "/v1/*"
        status = 500
        assert self.client is not None
        try:
            req = self.client.build_request(request.method,
                                            self._url("/v1/" + path, request.url.query),
                                            content=await request.body(),
                                            headers=self._upstream_headers(request))
            try:
                resp = await self._send(req, route, stream=True)
            except UpstreamError as err:
                status = err.status
                return err.response()
            status = resp.status_code
            return _Streamed(self._relay(resp), upstream=resp, status_code=resp.status_code,
                             headers=self._copy_headers(resp))
        finally:
            self.metrics.requests.labels(route, str(status)).inc()

    def health(self) -> dict[str, Any]:
        assert self.budget is not None
        c = self.budget.controller
        return {"status": "ok", "upstream": self.config.upstream,
                "price": None if self.budget.price != self.budget.price else self.budget.price,
                "queries": c.n_queries_, "granted": c.granted_, "abandoned": c.n_abandoned_}


def _sse_error(message: str) -> bytes:
    return ("data: " + json.dumps({"error": {"message": message, "type": "upstream_error"}})
            + "\n\n").encode()


#: The end of an SSE event: a blank line.
_EVENT_END = re.compile(rb"\r?\n\r?\n")


def _usage_only(event: bytes) -> bool:
    """Whether an SSE event is the usage-only one (``choices`` empty, ``usage`` set)."""
    if b'"usage"' not in event:
        return False
    data = b"\n".join(line[5:] for line in event.splitlines() if line.startswith(b"data:"))
    try:
        obj = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return False
    return isinstance(obj, dict) and obj.get("choices") == [] and obj.get("usage") is not None


class _UsageFilter:
    """An SSE stream, fed in raw chunks cut anywhere, given back whole event by whole event,
    byte for byte, less the usage-only event."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> bytes:
        """The events that ``chunk`` completes (an unfinished one waits for its end)."""
        seen = max(0, len(self._buf) - 3)  # no event ends before the old tail
        self._buf += chunk
        out, start = [], 0
        for m in _EVENT_END.finditer(self._buf, seen):
            event = self._buf[start:m.end()]
            if not _usage_only(event):
                out.append(event)
            start = m.end()
        self._buf = self._buf[start:]
        return b"".join(out)

    def flush(self) -> bytes:
        """What is left at the end of the stream (an event without its blank line)."""
        rest, self._buf = self._buf, b""
        return b"" if _usage_only(rest) else rest


def _last_usage(tail: bytes) -> Any:
    """The last SSE event of ``tail`` that carries a ``usage`` object, parsed, or None."""
    for line in reversed(tail.split(b"\n")):
        line = line.strip()
        if line.startswith(b"data:") and b'"usage"' in line:
            try:
                return json.loads(line[5:])
            except (json.JSONDecodeError, UnicodeDecodeError):
                return None
    return None


def create_app(config: ServeConfig, *, budget: BudgetService | None = None,
               predictor: Predictor | None = None,
               transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """The proxy app for a validated ``config``.

    ``budget`` (a ready :class:`BudgetService`) or ``predictor`` (an object with
    ``predict(texts) -> Curves``) replace loading ``config.predictor``; ``transport`` replaces
    the network to the upstream (tests). The predictor loads, and the pool opens, in the
    app's lifespan; both are closed on shutdown.
    """
    proxy = Proxy(config, budget=budget, predictor=predictor, transport=transport)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await proxy.start()
        try:
            yield
        finally:
            await proxy.stop()

    app = FastAPI(title="clear-learn serve", lifespan=lifespan, docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.proxy = proxy

    # the trailing-slash spellings too: else the catch-all would pass them through unbudgeted
    @app.post("/v1/chat/completions")
    @app.post("/v1/chat/completions/")
    async def chat_completions(request: Request) -> Response:
        return await proxy.completion(request, "/v1/chat/completions")

    @app.post("/v1/completions")
    @app.post("/v1/completions/")
    async def completions(request: Request) -> Response:
        return await proxy.completion(request, "/v1/completions")

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return proxy.health()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(proxy.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.api_route("/v1/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    async def other(request: Request, path: str) -> Response:
        return await proxy.passthrough(request, path)

    return app
