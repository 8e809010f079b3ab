"""The proxy on real loopback sockets in front of a stub upstream, with the official openai
client: budgets, headers, policies, errors and faults, the key, metrics.

The stub (clear_learn.serve.testing) echoes the body it received in ``x-stub-request``, so
each test sees exactly what the proxy forwarded. The predictor is a fake here (the encoder is
not the point; tests/test_serve_real.py uses checkpoints/default)."""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import json
import logging
import threading
import time

import httpx
import openai
import pytest

from clear_learn.controller import StreamController
from clear_learn.serve.app import create_app
from clear_learn.serve.app import _UsageFilter
from clear_learn.serve.budget import NO_TEXT, BudgetService, MicroBatcher
from clear_learn.serve.config import ServeConfig
from clear_learn.serve.testing import free_port, serve_in_thread, stub_upstream_app
from serve_support import FakePredictor, stub_process

KEY = "sk-upstream-secret-0123456789"
EASY = [{"role": "user", "content": "What is 2 + 2?"}]
HARD = [{"role": "user", "content": "a hard olympiad problem"}]
PRICE = 1e-3  # fixed (horizon 1e9): the easy curve's budget is 150 tokens there


@pytest.fixture(scope="module")
def stub():
    app = stub_upstream_app(delay=3600.0)  # "slow" never answers while a test runs
    with serve_in_thread(app) as s:
        s.app = app
        yield s


@contextlib.contextmanager
def proxy(upstream: str, predictor=None, transport=None, **settings):
    cfg = ServeConfig(upstream=upstream, **{"tokens_per_query": 100, "price": PRICE,
                                            "horizon": 1e9, **settings}).validate()
    app = create_app(cfg, predictor=predictor or FakePredictor(), transport=transport)
    with serve_in_thread(app) as s:
        s.proxy = app.state.proxy
        yield s


def client(px, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=px.url + "/v1", api_key=KEY, max_retries=0,
                         timeout=kw.pop("timeout", 20), **kw)


def forwarded(raw) -> dict:
    return json.loads(raw.headers["x-stub-request"])


def sse(body: bytes) -> list[dict]:
    """The JSON events of an SSE body (``[DONE]`` left out)."""
    return [json.loads(line[5:]) for line in body.splitlines()
            if line.startswith(b"data:") and line[5:].strip() != b"[DONE]"]


def read_stream(px, path: str, body: dict) -> tuple[httpx.Response, bytes]:
    """POST a streamed request and read its whole body (so the proxy's relay has ended)."""
    with httpx.stream("POST", px.url + path, json={**body, "stream": True}, timeout=20) as r:
        return r, r.read()


def in_flight(px) -> float:
    """The proxy's ``clear_in_flight`` gauge, read from /metrics."""
    text = httpx.get(px.url + "/metrics").text
    return float(next(ln.split()[1] for ln in text.splitlines()
                      if ln.startswith("clear_in_flight ")))


def test_budget_headers_and_the_smaller_of_the_clients_limit(stub):
    with proxy(stub.url + "/v1") as px:
        c = client(px)
        raw = c.chat.completions.with_raw_response.create(model="stub", messages=EASY)
        assert raw.headers["x-clear-max-tokens"] == "150"
        assert forwarded(raw)["max_tokens"] == 150
        assert float(raw.headers["x-clear-price"]) == pytest.approx(PRICE)
        assert raw.headers["x-clear-abandoned"] == "false"
        answer = raw.parse()
        assert answer.choices[0].message.content == " ".join(f"w{i}" for i in range(8))
        # the client's own limit is smaller: it wins, in both of its spellings
        raw = c.chat.completions.with_raw_response.create(model="stub", messages=EASY,
                                                          max_tokens=100)
        assert raw.headers["x-clear-max-tokens"] == "100"
        assert forwarded(raw)["max_tokens"] == 100
        raw = c.chat.completions.with_raw_response.create(model="stub", messages=EASY,
                                                          max_completion_tokens=90)
        fw = forwarded(raw)  # both fields: the budget binds whichever the upstream reads
        assert fw["max_tokens"] == 90 and fw["max_completion_tokens"] == 90
        # a larger client limit is lowered to the budget
        raw = c.chat.completions.with_raw_response.create(model="stub", messages=EASY,
                                                          max_tokens=4000)
        assert forwarded(raw)["max_tokens"] == 150
        # legacy completions
        raw = c.completions.with_raw_response.create(model="stub", prompt="2 + 2 =")
        assert forwarded(raw)["max_tokens"] == 150 and raw.parse().choices[0].text


def test_streaming_passes_the_stream_through_with_headers(stub):
    with proxy(stub.url + "/v1") as px:
        c = client(px)
        with c.chat.completions.with_streaming_response.create(
                model="stub", messages=EASY, stream=True, max_tokens=105,
                stream_options={"include_usage": True}) as resp:
            assert resp.headers["x-clear-max-tokens"] == "105"
            assert resp.headers["content-type"].startswith("text/event-stream")
            chunks = list(resp.parse())
        text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
        assert text.split() == [f"w{i}" for i in range(8)]
        assert chunks[-1].usage.completion_tokens == 8 and not chunks[-1].choices
        # target granted: a stream is forwarded as the client sent it
        r, body = read_stream(px, "/v1/chat/completions", {"model": "stub", "messages": EASY})
        assert "stream_options" not in forwarded(r) and all(e["choices"] for e in sse(body))
        # the whole body was read, so the proxy's relay (and its usage report) has ended:
        # the usage of the first stream was counted, even though the openai client hangs up
        # at "[DONE]" before the stream's very end
        metrics = httpx.get(px.url + "/metrics").text
        assert "clear_tokens_consumed_total 8.0" in metrics  # usage read from the stream


def test_consumed_target_asks_every_stream_for_its_usage(stub):
    with proxy(stub.url + "/v1", target="consumed") as px:
        ctl = px.proxy.budget.controller
        r, body = read_stream(px, "/v1/chat/completions", {"model": "stub", "messages": EASY})
        assert forwarded(r)["stream_options"] == {"include_usage": True}
        # the usage-only event the proxy asked for is not relayed; its tokens are counted
        events = sse(body)
        assert len(events) == 9 and all(e["choices"] for e in events)
        assert body.endswith(b"data: [DONE]\n\n") and ctl.consumed_ == 8
        # a client that asked for usage itself gets it (its other options kept)
        r, body = read_stream(px, "/v1/completions", {
            "model": "stub", "prompt": "2 + 2 =",
            "stream_options": {"include_usage": True, "continuous_usage_stats": False}})
        assert forwarded(r)["stream_options"] == {"include_usage": True,
                                                  "continuous_usage_stats": False}
        assert sse(body)[-1] == {"id": "s", "object": "chunk", "choices": [], "usage": {
            "prompt_tokens": 5, "completion_tokens": 8, "total_tokens": 13}}
        assert ctl.consumed_ == 16
        r, body = read_stream(px, "/v1/completions", {
            "model": "stub", "prompt": "2 + 2 =", "stream_options": {"include_usage": False}})
        assert forwarded(r)["stream_options"] == {"include_usage": True}
        assert all(e["choices"] for e in sse(body)) and ctl.consumed_ == 24
        r = httpx.post(px.url + "/v1/chat/completions", json={
            "model": "stub", "messages": EASY, "stream": True, "stream_options": "usage"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "stream_options"


def test_the_usage_event_is_dropped_whole_however_the_stream_is_cut():
    events = [b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\n',
              b'data: {"choices": [{"index": 0, "delta": {}}], "usage": null}\r\n\r\n',
              b'data: {"choices": [], "usage": {"completion_tokens": 3}}\n\n',
              b"data: [DONE]\n\n"]
    raw = b"".join(events)
    kept = raw.replace(events[2], b"")
    for cut in range(1, len(raw)):  # every split into two raw chunks
        f = _UsageFilter()
        assert f.feed(raw[:cut]) + f.feed(raw[cut:]) + f.flush() == kept, cut
    f = _UsageFilter()  # byte by byte; each piece given back is whole events
    pieces = [f.feed(raw[i:i + 1]) for i in range(len(raw))] + [f.flush()]
    assert b"".join(pieces) == kept
    assert [x for x in pieces if x] == [events[0], events[1], events[3]]


def test_split_sse_events_through_the_proxy():
    """An upstream whose events arrive cut into 7-byte raw chunks (httpx MockTransport)."""
    usage = b'data: {"id": "s", "choices": [], "usage": {"completion_tokens": 3}}\n\n'
    body = (b'data: {"id": "s", "choices": [{"index": 0, "delta": {"content": "a b c"}}]}'
            b"\n\n" + usage + b"data: [DONE]\n\n")
    sent = []

    async def pieces():
        for i in range(0, len(body), 7):
            yield body[i:i + 7]

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append((request.url, json.loads(request.content)))
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=pieces())

    with proxy("http://upstream.test/v1", target="consumed",
               transport=httpx.MockTransport(handler)) as px:
        with httpx.stream("POST", px.url + "/v1/chat/completions?x=1", timeout=10,
                          json={"model": "m", "messages": EASY, "stream": True}) as r:
            got = r.read()
        assert got == body.replace(usage, b"")
        assert px.proxy.budget.controller.consumed_ == 3
    url, fw = sent[0]
    assert str(url) == "http://upstream.test/v1/chat/completions?x=1"
    assert fw["stream_options"] == {"include_usage": True} and fw["max_tokens"] == 150


def test_budget_field_for_a_thinking_budget(stub):
    with proxy(stub.url + "/v1", budget_field="thinking_token_budget") as px:
        raw = client(px).chat.completions.with_raw_response.create(
            model="stub", messages=EASY, max_tokens=100)
        fw = forwarded(raw)
        assert fw["thinking_token_budget"] == 100 and fw["max_tokens"] == 100
        # a client's own thinking budget is a limit too
        raw = client(px).chat.completions.with_raw_response.create(
            model="stub", messages=EASY, extra_body={"thinking_token_budget": 70})
        assert forwarded(raw)["thinking_token_budget"] == 70


@pytest.mark.parametrize("policy", ["fallback", "refuse", "passthrough"])
def test_abandoned_query_policies(stub, policy):
    with proxy(stub.url + "/v1", abandon_policy=policy, fallback_tokens=16) as px:
        c = client(px)
        if policy == "refuse":
            with pytest.raises(openai.RateLimitError) as err:
                c.chat.completions.create(model="stub", messages=HARD)
            r = err.value.response
            assert r.headers["x-clear-abandoned"] == "true"
            assert r.headers["x-should-retry"] == "false"
            assert "abandoned" in r.json()["error"]["message"]
            assert r.json()["error"]["type"] == "budget_refused"
            return
        raw = c.chat.completions.with_raw_response.create(model="stub", messages=HARD,
                                                          max_tokens=300)
        assert raw.headers["x-clear-abandoned"] == "true"
        if policy == "fallback":
            assert raw.headers["x-clear-max-tokens"] == "16"
            assert forwarded(raw)["max_tokens"] == 16
        else:
            assert raw.headers["x-clear-max-tokens"] == ""
            assert forwarded(raw)["max_tokens"] == 300  # unchanged


@pytest.mark.parametrize("body, param", [
    ({"model": "stub"}, "messages"),
    ({"model": "stub", "messages": "hi"}, "messages"),
    ({"model": "stub", "messages": [{"content": "hi"}]}, "messages[0].role"),
    ({"model": "stub", "messages": EASY, "max_tokens": 0}, "max_tokens"),
    ({"model": "stub", "messages": EASY, "max_completion_tokens": "9"},
     "max_completion_tokens"),
    ({"model": "stub", "messages": EASY, "stream": "yes"}, "stream"),
    ({"model": 3, "messages": EASY}, "model"),
    ({"model": "stub", "messages": EASY, "n": 0}, "n"),
    ({"model": "stub", "messages": EASY, "n": 2.5}, "n"),
])
def test_malformed_requests_get_a_400_naming_the_field(stub, body, param):
    with proxy(stub.url + "/v1") as px:
        r = httpx.post(px.url + "/v1/chat/completions", json=body, timeout=10)
        assert r.status_code == 400
        assert r.json()["error"]["param"] == param
        assert r.json()["error"]["message"].startswith(param)


def test_chat_without_user_text_is_budgeted(stub):
    pred = FakePredictor()
    system_only = [{"role": "system", "content": "be brief"}]
    image_only = [{"role": "user", "content": [{"type": "image_url",
                                                "image_url": {"url": "data:,"}}]}]
    with proxy(stub.url + "/v1", predictor=pred) as px:
        for msgs in (system_only, image_only):
            r = httpx.post(px.url + "/v1/chat/completions", timeout=10,
                           json={"model": "stub", "messages": msgs})
            assert r.status_code == 200 and r.headers["x-clear-max-tokens"] == "150"
    # no user text: all messages' text; no text at all: the predictor's input for none
    assert [t for batch in pred.batches for t in batch] == ["be brief", NO_TEXT]


@pytest.mark.parametrize("value, param", [("NaN", None), ("Infinity", None),
                                          ("-Infinity", None), ("1e999", "max_tokens")])
@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_non_finite_numbers_are_a_400(stub, field, value, param):
    raw = ('{"model": "stub", "messages": [{"role": "user", "content": "hi"}], '
           f'"{field}": {value}}}').encode()
    with proxy(stub.url + "/v1") as px:
        r = httpx.post(px.url + "/v1/chat/completions", content=raw, timeout=10,
                       headers={"content-type": "application/json"})
    assert r.status_code == 400
    err = r.json()["error"]
    if param is None:  # not JSON at all
        assert err["param"] is None and f"{value.lstrip('-')} is not a JSON number" in \
            err["message"]
    else:  # JSON, but infinite
        assert err["param"] == field and err["message"].startswith(f"{field}: must be")


def test_trailing_slash_and_query_string_on_budgeted_routes(stub):
    with proxy(stub.url + "/v1") as px:
        r = httpx.post(px.url + "/v1/chat/completions/?api-version=2024-10-21", timeout=10,
                       json={"model": "stub", "messages": EASY})
        assert r.status_code == 200 and r.headers["x-clear-max-tokens"] == "150"
        assert forwarded(r)["max_tokens"] == 150
        assert r.headers["x-stub-query"] == "api-version=2024-10-21"
        r = httpx.post(px.url + "/v1/completions/", timeout=10,
                       json={"model": "stub", "prompt": "2 + 2 ="})
        assert r.headers["x-clear-max-tokens"] == "150" and forwarded(r)["max_tokens"] == 150
        assert r.headers["x-stub-query"] == ""


def test_upstream_errors_that_are_not_json_are_relayed_as_they_are(stub):
    with proxy(stub.url + "/v1") as px:
        for stream in (False, True):
            r = httpx.post(px.url + "/v1/chat/completions", timeout=10,
                           json={"model": "ratelimit", "messages": EASY, "stream": stream})
            assert r.status_code == 429 and r.text == "slow down"
            assert r.headers["retry-after"] == "7"
            assert r.headers["content-type"].startswith("text/plain")
            assert r.headers["x-clear-max-tokens"] == "150"


def test_n_completions_are_counted_n_times(stub):
    with proxy(stub.url + "/v1") as px:
        c = client(px)
        ctl = px.proxy.budget.controller
        raw = c.chat.completions.with_raw_response.create(model="stub", messages=EASY, n=3)
        assert raw.headers["x-clear-max-tokens"] == "150" and ctl.granted_ == 450
        # best_of generates best_of completions and returns the best n
        raw = c.completions.with_raw_response.create(model="stub", prompt="2 + 2 =", n=2,
                                                     best_of=4)
        assert forwarded(raw)["max_tokens"] == 150 and ctl.granted_ == 450 + 600
        assert "clear_tokens_granted_total 1050.0" in httpx.get(px.url + "/metrics").text
        r = httpx.post(px.url + "/v1/completions", json={"model": "stub", "best_of": 0,
                                                         "prompt": "x"})
        assert r.status_code == 400 and r.json()["error"]["param"] == "best_of"
        # several prompts in one request would share one max_tokens: a 400
        r = httpx.post(px.url + "/v1/completions", json={"model": "stub", "prompt": ["a", "b"]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
        assert "one request per prompt" in r.json()["error"]["message"]
        assert httpx.post(px.url + "/v1/completions",
                          json={"model": "stub", "prompt": ["a"]}).status_code == 200
    # with a hard cap, n copies share it: 3 x 150 would break 300, so each gets 100
    with proxy(stub.url + "/v1", cap_tokens=300, cap_window=1000) as px:
        raw = client(px).chat.completions.with_raw_response.create(model="stub",
                                                                   messages=EASY, n=3)
        assert raw.headers["x-clear-max-tokens"] == "100"
        assert forwarded(raw)["max_tokens"] == 100
        assert px.proxy.budget.controller.granted_ == 300


def test_invalid_json_from_the_client_and_from_the_upstream(stub):
    with proxy(stub.url + "/v1") as px:
        r = httpx.post(px.url + "/v1/chat/completions", content=b"{not json",
                       headers={"content-type": "application/json"}, timeout=10)
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
        r = httpx.post(px.url + "/v1/completions", json={"model": "stub", "prompt": [1, 2]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
        with pytest.raises(openai.APIStatusError) as err:  # the upstream answers garbage
            client(px).chat.completions.create(model="garbage", messages=EASY)
        assert err.value.status_code == 502
        assert err.value.body["type"] == "upstream_invalid_response"
        with pytest.raises(openai.InternalServerError) as err:  # its own error, unchanged
            client(px).chat.completions.create(model="error", messages=EASY)
        assert err.value.status_code == 503
        assert err.value.body["message"] == "overloaded"


def test_an_upstream_that_never_answers_gets_a_504(stub):
    with proxy(stub.url + "/v1", timeout=1.0) as px:
        # the stub never answers "slow": a 504 (not a client timeout, which would raise
        # another error; the clients' own timeouts only guard against a hang) shows the proxy
        # gave up on its own timeout
        with pytest.raises(openai.APIStatusError) as err:
            client(px).chat.completions.create(model="slow", messages=EASY)
        assert err.value.status_code == 504
        r = httpx.post(px.url + "/v1/chat/completions", timeout=60,
                       json={"model": "slow", "messages": EASY, "stream": True})
        assert r.status_code == 504
        # a stream that stalls after its first chunk is ended with an SSE error event (a hang
        # would end in the client's ReadTimeout instead)
        with httpx.stream("POST", px.url + "/v1/chat/completions", timeout=10,
                          json={"model": "stall", "messages": EASY, "stream": True}) as r:
            body = r.read().decode()
        assert r.status_code == 200
        assert body.count("data: ") == 2 and '"error"' in body.split("data: ")[-1]


def test_upstream_killed_mid_test(tmp_path):
    port = free_port()
    with stub_process(port, tmp_path) as up, proxy(f"http://127.0.0.1:{port}/v1",
                                                  timeout=5.0) as px:
        c = client(px)
        assert c.chat.completions.create(model="stub", messages=EASY).choices
        # killed in the middle of a stream: the stream ends with an error event, promptly
        with httpx.stream("POST", px.url + "/v1/chat/completions", timeout=10,
                          json={"model": "stall", "messages": EASY, "stream": True}) as r:
            it = r.iter_raw()
            first = next(it)
            assert b"w0" in first
            up.kill()
            rest = b"".join(it).decode()
        assert "broke off" in rest  # ended by the proxy, not by the client's timeout
        # and then down: a 502
        with pytest.raises(openai.APIStatusError) as err:
            c.chat.completions.create(model="stub", messages=EASY)
        assert err.value.status_code == 502
        assert err.value.body["type"] == "upstream_unreachable"
        assert httpx.get(px.url + "/health").json()["status"] == "ok"


def test_client_disconnecting_mid_stream_closes_the_upstream_stream(stub):
    opened = len(stub.app.state.requests)
    stub.app.state.stall_closed.clear()
    with proxy(stub.url + "/v1", timeout=30.0) as px:
        with httpx.stream("POST", px.url + "/v1/chat/completions", timeout=10,
                          json={"model": "stall", "messages": EASY, "stream": True}) as r:
            it = r.iter_raw()  # held: a dropped iterator would close the connection
            assert b"w0" in next(it)
            assert in_flight(px) == 1.0  # the stream is still being relayed
            it.close()
        # the client has hung up on a stream the upstream would never end: the proxy closes
        # the upstream's stream, having counted the abort and the stream's end first. No
        # timed wait: a proxy that kept it open hangs here, and the guard (not an assertion)
        # ends the run with every thread's traceback instead of hanging the suite
        faulthandler.dump_traceback_later(600, exit=True)
        try:
            stub.app.state.stall_closed.wait()
        finally:
            faulthandler.cancel_dump_traceback_later()
        m = httpx.get(px.url + "/metrics").text
        assert 'clear_stream_aborts_total{reason="client_disconnected"} 1.0' in m
        assert in_flight(px) == 0.0
        # the proxy still serves
        assert client(px).chat.completions.create(model="stub", messages=EASY).choices
    assert len(stub.app.state.requests) == opened + 2


def test_in_flight_counts_each_request_down_once(stub):
    """A stream counts until its relay ends (held open: see the disconnect test above); an
    answer, a stream read to its end and a 400 each count down exactly once."""
    with proxy(stub.url + "/v1") as px:
        client(px).chat.completions.create(model="stub", messages=EASY)
        with client(px).chat.completions.with_streaming_response.create(
                model="stub", messages=EASY, stream=True) as resp:
            list(resp.parse())  # its end is sent after the relay's own end: no race
        httpx.post(px.url + "/v1/chat/completions", json={"model": "stub"})  # a 400
        assert in_flight(px) == 0.0


def test_api_key_passed_through_and_never_logged(stub, caplog, capfd, monkeypatch):
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("UPSTREAM_KEY", "sk-from-env-987654")
    with proxy(stub.url + "/v1", upstream_api_key_env="UPSTREAM_KEY", log_level="debug") as px:
        n = len(stub.app.state.auth)
        client(px).chat.completions.create(model="stub", messages=EASY)
        client(px).models.list()  # a passed-through route
        httpx.post(px.url + "/v1/chat/completions", json={"model": "stub", "messages": EASY})
        assert stub.app.state.auth[n:] == [f"Bearer {KEY}"] * 2 + ["Bearer sk-from-env-987654"]
        text = httpx.get(px.url + "/metrics").text + httpx.get(px.url + "/health").text
    out, err = capfd.readouterr()
    logged = caplog.text + out + err
    assert "clear_learn.serve" in caplog.text  # something was logged
    for secret in (KEY, "sk-from-env-987654"):
        assert secret not in logged and secret not in text
        assert secret not in repr(px.proxy.config)


def test_metrics_and_health(stub):
    with proxy(stub.url + "/v1", abandon_policy="fallback", fallback_tokens=16) as px:
        c = client(px)
        for m in (EASY, EASY, HARD):
            c.chat.completions.create(model="stub", messages=m)
        m = httpx.get(px.url + "/metrics")
        assert m.headers["content-type"].startswith("text/plain")
        for line in ('clear_requests_total{route="/v1/chat/completions",status="200"} 3.0',
                     "clear_tokens_granted_total 316.0", "clear_abandoned_total 1.0",
                     "clear_tokens_consumed_total 24.0", "clear_prediction_seconds_count 3.0",
                     'clear_upstream_seconds_count{route="/v1/chat/completions"} 3.0'):
            assert line in m.text, line
        share = [ln for ln in m.text.splitlines() if ln.startswith("clear_abandoned_share ")]
        assert float(share[0].split()[1]) == pytest.approx(1 / 3)
        assert [ln for ln in m.text.splitlines() if ln.startswith("clear_price ")]
        h = httpx.get(px.url + "/health").json()
        assert h["status"] == "ok" and h["queries"] == 3 and h["abandoned"] == 1


def test_concurrent_requests_are_micro_batched(stub):
    pred = FakePredictor()
    with proxy(stub.url + "/v1", predictor=pred, batch_wait_ms=50) as px:
        async def burst():
            c = openai.AsyncOpenAI(base_url=px.url + "/v1", api_key=KEY, max_retries=0)
            rs = await asyncio.gather(*[c.chat.completions.create(
                model="stub", messages=[{"role": "user", "content": f"question {i}"}])
                for i in range(12)])
            await c.close()
            return rs
        assert len(asyncio.run(burst())) == 12
    assert sum(map(len, pred.batches)) == 12
    assert max(map(len, pred.batches)) > 1


def test_micro_batcher_keeps_order_and_propagates_errors():
    calls = []

    def predict(texts):
        calls.append(list(texts))
        if "boom" in texts:
            raise RuntimeError("encoder failed")
        return FakePredictor().predict(texts)

    async def main():
        mb = MicroBatcher(predict, max_batch=4, max_wait=0.05)
        out = await asyncio.gather(*[mb.predict(t) for t in
                                     ["a", "hard b", "c", "d", "hard e", "f"]])
        with pytest.raises(RuntimeError, match="encoder failed"):
            await mb.predict("boom")
        await mb.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await mb.predict("x")
        return out

    out = asyncio.run(main())
    assert [o[0] for o in out] == [40.0, 400.0, 40.0, 40.0, 400.0, 40.0]
    assert [len(c) for c in calls[:2]] == [4, 2]


def test_a_failing_on_batch_does_not_stop_the_micro_batcher(caplog):
    def on_batch(size, seconds):
        raise RuntimeError("the metrics broke")

    async def main():
        mb = MicroBatcher(FakePredictor().predict, on_batch=on_batch)
        out = []
        for text in ("a", "hard b"):
            task = asyncio.ensure_future(mb.predict(text))
            await asyncio.sleep(0)  # the first call starts the worker
            # the answer, or the worker's end (a dead worker would leave the caller waiting)
            await asyncio.wait({task, mb._worker}, return_when=asyncio.FIRST_COMPLETED)
            assert task.done() and not mb._worker.done()
            out.append(task.result())
        await mb.aclose()
        return out

    first, second = asyncio.run(main())
    assert first[0] == 40.0 and second[0] == 400.0  # results delivered, worker still up
    assert "on_batch failed" in caplog.text


class GatedPredictor(FakePredictor):
    """A FakePredictor whose batches with a 'slow' text hold the encoder until ``release``
    (each test sets it in a ``finally``, so a failure never leaves the encoder held).

    Deadlines in these tests are 0 (or as good as): whether a text is shed then depends only
    on the event loop's order (a text the worker has woken for is taken before its deadline's
    callback runs; a text queued behind the held encoder is not taken), never on a clock."""

    def __init__(self) -> None:
        super().__init__()
        self.entered, self.release = threading.Event(), threading.Event()

    def predict(self, texts, batch_context: bool = True):
        if any("slow" in t for t in texts):
            self.entered.set()
            self.release.wait()
        return super().predict(texts, batch_context)


async def _encoder_busy(pred: GatedPredictor, caller: asyncio.Future) -> None:
    """Wait until the encoder holds ``caller``'s 'slow' batch (fails, not hangs, if the
    caller ends without it)."""
    while not pred.entered.is_set():
        assert not caller.done(), "the slow text was answered without the encoder"
        await asyncio.sleep(0)


def test_micro_batcher_sheds_queued_texts_past_their_deadline():
    pred = GatedPredictor()

    async def main():
        mb = MicroBatcher(pred.predict, max_batch=4, max_wait=0.0)
        try:
            # taken by the worker at once: its deadline passes while it is predicted
            slow = asyncio.ensure_future(mb.predict("slow a", deadline=0))
            await _encoder_busy(pred, slow)
            # queued behind the held batch: given up at its deadline, never predicted
            assert await mb.predict("hard b", deadline=0) is None
            late = asyncio.ensure_future(mb.predict("c"))  # no deadline: waits its turn
        finally:
            pred.release.set()
        out = await slow, await late
        await mb.aclose()
        return out

    slow, late = asyncio.run(main())
    assert slow[0] == 40.0 and late[0] == 40.0
    assert pred.batches == [["slow a"], ["c"]]  # the shed text was skipped


def test_budget_service_grants_a_shed_query_as_the_typical_one():
    pred = GatedPredictor()
    svc = BudgetService(pred, StreamController(tokens_per_query=100, price=PRICE,
                                               horizon=1e9, fallback_tokens=16),
                        max_tokens=512, queue_timeout=1e-9)

    async def main():
        first = await svc.decide("slow but easy")  # no typical yet: it waits, no deadline
        assert svc.typical == (40.0, 0.9, 0.05)
        pred.entered.clear()
        pred.release.clear()
        try:
            held = asyncio.ensure_future(svc.decide("slow again"))
            await _encoder_busy(pred, held)
            shed = await svc.decide("a hard one")  # would be abandoned if predicted
        finally:
            pred.release.set()
        await held
        after = await svc.decide("a hard one")
        await svc.aclose()
        return first, shed, after

    pred.release.set()  # the first call passes straight through
    first, shed, after = asyncio.run(main())
    assert not first.shed and first.budget == 150
    assert shed.shed and shed.curve == (40.0, 0.9, 0.05) and shed.budget == 150
    assert not after.shed and after.abandoned and after.budget == 16
    assert svc.controller.n_queries_ == 4  # the shed query went through the controller


def test_a_query_shed_by_the_proxy_is_budgeted_and_counted(stub):
    pred = GatedPredictor()
    pred.release.set()
    with proxy(stub.url + "/v1", predictor=pred, queue_timeout_ms=1e-6) as px:
        c = client(px)
        c.chat.completions.create(model="stub", messages=EASY)  # sets the typical curve
        pred.release.clear()
        slow = threading.Thread(target=c.chat.completions.create, kwargs=dict(
            model="stub", messages=[{"role": "user", "content": "slow"}]))
        try:
            slow.start()
            while not pred.entered.is_set():  # fails, not hangs, if it ends without it
                assert slow.is_alive(), "the slow request was answered without the encoder"
                time.sleep(0)
            raw = c.chat.completions.with_raw_response.create(model="stub", messages=HARD)
        finally:
            pred.release.set()
        slow.join()
        assert raw.headers["x-clear-max-tokens"] == "150"  # the easy typical, not abandoned
        assert raw.headers["x-clear-abandoned"] == "false"
        assert "clear_shed_total 1.0" in httpx.get(px.url + "/metrics").text


def test_passthrough_of_other_routes(stub):
    with proxy(stub.url + "/v1") as px:
        models = client(px).models.list()
        assert [m.id for m in models.data] == ["stub"]
        r = httpx.get(px.url + "/v1/nothing-here")
        assert r.status_code == 404  # the upstream's own answer


def test_budget_service_uses_the_controller_and_caps():
    svc = BudgetService(FakePredictor(), StreamController(
        tokens_per_query=100, price=PRICE, horizon=1e9, fallback_tokens=16), max_tokens=120)

    async def main():
        d = await svc.decide("easy", None)
        e = await svc.decide("easy", 7)  # below the threshold tau = 40
        await svc.aclose()
        return d, e

    d, e = asyncio.run(main())
    assert d.budget == 120 and not d.abandoned  # the service's cap
    assert e.budget == 7 and e.abandoned  # within 7 tokens it cannot pay: the fallback, cut
    assert svc.controller.n_queries_ == 2 and svc.controller.granted_ == 136  # the fallback counted whole
