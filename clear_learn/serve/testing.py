"""Test and benchmark helpers: a stub OpenAI-compatible upstream, servers on loopback ports.

The stub answers ``/v1/chat/completions`` and ``/v1/completions`` (streaming or not) with a
fixed text of ``min(max_tokens, 8)`` words, echoing what it received in the
``x-stub-request`` header (and its query string in ``x-stub-query``), so that tests can see
what the proxy forwarded. A stream carries usage, as OpenAI's does, only when asked
(``stream_options.include_usage``: a last event with empty ``choices``). The ``model`` field
picks a behaviour: ``stub`` (fast), ``slow`` (sleeps ``delay`` seconds first), ``garbage``
(200 with a body that is not JSON), ``error`` (a JSON 503), ``ratelimit`` (a plain-text 429
with ``retry-after: 7``), ``stall`` (a stream that stops after one chunk and never ends).
``python -m clear_learn.serve.testing --port P`` runs it alone.
"""

import argparse
import asyncio
import contextlib
import json
import socket
import threading
import time
from typing import Any, Iterator

__all__ = ["stub_upstream_app", "free_port", "wait_http", "ServerThread", "serve_in_thread"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stub_upstream_app(delay: float = 5.0, words: int = 8):
    """The stub upstream (a FastAPI app); ``app.state.requests`` lists every JSON body and
    ``app.state.auth`` every Authorization header it received; ``app.state.stall_closed`` (a
    ``threading.Event``) is set when a ``stall`` stream is closed from the other end."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, Response, StreamingResponse

    app = FastAPI()
    app.state.requests = []
    app.state.auth = []
    app.state.stall_closed = threading.Event()

    def budget_of(body: dict[str, Any]) -> int:
        caps = [body[f] for f in ("max_tokens", "max_completion_tokens")
                if isinstance(body.get(f), int)]
        return min([words, *caps])

    async def answer(request: Request, chat: bool) -> Response:
        raw = await request.body()
        body = json.loads(raw)
        app.state.requests.append(body)
        app.state.auth.append(request.headers.get("authorization"))
        model = body.get("model", "stub")
        echo = {"x-stub-request": json.dumps(body)[:4000],
                "x-stub-query": request.url.query}
        if model == "slow":
            await asyncio.sleep(delay)
        if model == "garbage":
            return Response(b"<html>not json", media_type="application/json", headers=echo)
        if model == "error":
            return JSONResponse({"error": {"message": "overloaded"}}, status_code=503)
        if model == "ratelimit":
            return Response(b"slow down", status_code=429, media_type="text/plain",
                            headers={"retry-after": "7"})
        n = budget_of(body)
        toks = [f"w{i}" for i in range(n)]
        usage = {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": 5 + n}
        if body.get("stream"):
            async def events():
                for i, t in enumerate(toks):
                    delta = ({"delta": {"content": t + " "}, "index": 0} if chat
                             else {"text": t + " ", "index": 0})
                    yield ("data: " + json.dumps({"id": "s", "object": "chunk",
                                                  "choices": [delta]}) + "\n\n").encode()
                    if model == "stall":
                        try:
                            await asyncio.sleep(3600)
                        finally:  # cancelled: whoever read the stream closed it
                            app.state.stall_closed.set()
                    await asyncio.sleep(0)
                last = {"id": "s", "object": "chunk",
                        "choices": [{"delta": {}, "index": 0, "finish_reason": "length"}]}
                yield ("data: " + json.dumps(last) + "\n\n").encode()
                opts = body.get("stream_options")
                if isinstance(opts, dict) and opts.get("include_usage"):
                    yield ("data: " + json.dumps({"id": "s", "object": "chunk", "choices": [],
                                                  "usage": usage}) + "\n\n").encode()
                yield b"data: [DONE]\n\n"
            return StreamingResponse(events(), media_type="text/event-stream", headers=echo)
        text = " ".join(toks)
        choice = ({"index": 0, "message": {"role": "assistant", "content": text},
                   "finish_reason": "length"} if chat
                  else {"index": 0, "text": text, "finish_reason": "length"})
        return JSONResponse({"id": "s", "object": "chat.completion" if chat else
                             "text_completion", "created": int(time.time()), "model": model,
                             "choices": [choice], "usage": usage}, headers=echo)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await answer(request, True)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await answer(request, False)

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        app.state.auth.append(request.headers.get("authorization"))
        return {"object": "list", "data": [{"id": "stub", "object": "model"}]}

    return app


def wait_http(url: str, timeout: float, proc: Any = None, log=lambda: "") -> None:
    """Return once ``url`` answers 200; raise ``RuntimeError`` after ``timeout`` seconds, or at
    once when the ``subprocess.Popen`` ``proc`` (if given) has exited (``log()`` is shown)."""
    import httpx

    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:3]} exited with {proc.returncode}:\n"
                               f"{log()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} not up after {timeout:g} s:\n{log()[-3000:]}")


class ServerThread:
    """A uvicorn server for ``app`` on ``127.0.0.1:port`` in a daemon thread."""

    def __init__(self, app: Any, port: int | None = None, log_level: str = "warning") -> None:
        import uvicorn

        self.port = port or free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port,
                                                    log_level=log_level, lifespan="on",
                                                    timeout_graceful_shutdown=2,
                                                    access_log=False))
        self.server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> "ServerThread":
        """Start and wait until it accepts connections (or raise)."""
        self.thread.start()
        t_end = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > t_end:
                raise RuntimeError(f"server on port {self.port} did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Ask it to exit and wait for the thread (open connections are cut after
        ``timeout``)."""
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout)


@contextlib.contextmanager
def serve_in_thread(app: Any, port: int | None = None) -> Iterator[ServerThread]:
    """``with serve_in_thread(app) as s: ... s.url``; always stopped."""
    s = ServerThread(app, port)
    try:
        s.start()
        yield s
    finally:
        s.stop()


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    ap = argparse.ArgumentParser(description="a stub OpenAI-compatible upstream")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--delay", type=float, default=5.0)
    args = ap.parse_args(argv)
    uvicorn.run(stub_upstream_app(args.delay), host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
