"""The proxy's settings (YAML keys = flags, precedence, errors naming the key), request
payloads, and the LiteLLM hook called through its documented interface."""

from __future__ import annotations

import asyncio
from dataclasses import fields

import pytest

from clear_learn.cli import build_parser
from clear_learn.controller import StreamController
from clear_learn.serve.budget import BudgetService
from clear_learn.serve.config import ConfigError, ServeConfig, config_from_args
from clear_learn.serve.payloads import (BadRequest, apply_budget, chat_query_text, client_cap,
                                        completion_query_text, n_copies)
from serve_support import FakePredictor

UP = "http://127.0.0.1:8000/v1"


def parse(*argv: str) -> ServeConfig:
    return config_from_args(build_parser().parse_args(["serve", *argv]))


def test_the_five_flags_without_a_config_file():
    cfg = parse("--upstream", UP + "/", "--predictor", "checkpoints/default",
                "--tokens-per-query", "128", "--host", "0.0.0.0", "--port", "9001")
    assert (cfg.upstream, cfg.predictor, cfg.tokens_per_query, cfg.host, cfg.port) == (
        UP, "checkpoints/default", 128.0, "0.0.0.0", 9001)
    assert cfg.budget_field == "max_tokens" and cfg.abandon_policy == "fallback"


def test_every_key_is_a_flag_and_flags_override_the_yaml(tmp_path):
    opts = {a.dest for a in build_parser()._subparsers._group_actions[0].choices["serve"]
            ._actions}
    assert {f.name for f in fields(ServeConfig)} <= opts
    y = tmp_path / "serve.yaml"
    y.write_text(f"upstream: {UP}\ntokens_per_query: 64\nbudget_field: thinking_token_budget\n"
                 "abandon_policy: refuse\ntimeout: 12.5\n")
    cfg = parse("--config", str(y), "--timeout", "3")
    assert cfg.tokens_per_query == 64 and cfg.budget_field == "thinking_token_budget"
    assert cfg.abandon_policy == "refuse" and cfg.timeout == 3.0


@pytest.mark.parametrize("yaml_text, key", [
    ("upstream: http://x/v1\ntokens_per_query: 64\nmax_tokns: 5\n", "max_tokns"),
    ("upstream: http://x/v1\ntokens_per_query: lots\n", "tokens_per_query"),
    ("upstream: http://x/v1\ntokens_per_query: 64\nport: 8.5\n", "port"),
    ("upstream: http://x/v1\ntokens_per_query: 64\nabandon_policy: drop\n", "abandon_policy"),
    ("upstream: http://x\ntokens_per_query: 64\n", "upstream"),
    ("upstream: http://x/v1\n", "tokens_per_query"),
    ("upstream: http://x/v1\ntokens_per_second: 500\n", "tokens_per_second"),
    ("upstream: http://x/v1\ntokens_per_query: 64\ncap_tokens: 100\n", "cap_tokens"),
    ("upstream: http://x/v1\ntokens_per_query: 64\ntimeout: -1\n", "timeout"),
    ("upstream: http://x/v1\ntokens_per_query: 64\nabandon_policy: passthrough\n"
     "cap_tokens: 100\ncap_window: 10\n", "abandon_policy / cap_tokens: passthrough"),
    ("upstream: http://x/v1\ntokens_per_query: 64\nfallback_tokens: 0\n",
     "fallback_tokens: .*abandon_policy: refuse"),
    ("upstream: http://x/v1\ntokens_per_query: 64\nqueue_timeout_ms: 0\n", "queue_timeout_ms"),
    ("- a list\n", "config"),
])
def test_config_errors_name_the_key(tmp_path, yaml_text, key):
    y = tmp_path / "bad.yaml"
    y.write_text(yaml_text)
    with pytest.raises(ConfigError, match=rf"^{key}"):
        ServeConfig.from_yaml(y).validate()


def test_a_bad_flag_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--port", "eighty"])
    assert "port" in capsys.readouterr().err


def test_query_text_sources():
    body = {"messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": "first"},
                         {"role": "assistant", "content": None},
                         {"role": "user", "content": [{"type": "text", "text": "last"},
                                                      {"type": "image_url", "image_url": {}}]}]}
    assert chat_query_text(body) == "last"
    assert chat_query_text(body, "first_user") == "first"
    assert chat_query_text(body, "all_user") == "first\n\nlast"
    assert chat_query_text(body, "all") == "be brief\n\nfirst\n\nlast"
    with pytest.raises(BadRequest, match=r"messages\[3\].content\[0\].text"):
        chat_query_text({"messages": [*body["messages"][:3],
                                      {"role": "user", "content": [{"type": "text"}]}]})
    # no user text: the text of all messages; no text at all: the empty string
    system = {"role": "system", "content": "be brief"}
    image = {"role": "user", "content": [{"type": "image_url", "image_url": {}}]}
    assert chat_query_text({"messages": [system, image]}) == "be brief"
    assert chat_query_text({"messages": [image]}, "first_user") == ""
    assert chat_query_text({"messages": [image]}, "all") == ""
    parts = [{"type": "input_text", "text": "what is this?"}, {"type": "input_image"}]
    assert chat_query_text({"messages": [{"role": "user", "content": parts}]}) == \
        "what is this?"


def test_completion_prompts():
    assert completion_query_text({"prompt": "2 + 2 ="}) == "2 + 2 ="
    assert completion_query_text({"prompt": ["2 + 2 ="]}) == "2 + 2 ="
    # several prompts share one max_tokens: they cannot each get their own budget
    with pytest.raises(BadRequest, match="^prompt: a list of 2 prompts .* one request per"):
        completion_query_text({"prompt": ["a", "b"]})
    for bad in ([1, 2], [[1, 2]], [], None):
        with pytest.raises(BadRequest, match="^prompt"):
            completion_query_text({"prompt": bad})


def test_budget_is_the_smaller_and_written_into_the_field():
    body = {"max_tokens": 300, "max_completion_tokens": 200}
    assert client_cap(body, "max_tokens") == 200
    assert client_cap({"thinking_token_budget": 50}, "thinking_token_budget") == 50
    assert client_cap({}, "max_tokens") is None
    with pytest.raises(BadRequest, match="^max_tokens"):
        client_cap({"max_tokens": True}, "max_tokens")
    assert apply_budget(body, 90, "max_tokens") == {"max_tokens": 90,
                                                    "max_completion_tokens": 90}
    assert apply_budget({"max_tokens": 300}, 90, "thinking_token_budget") == {
        "max_tokens": 300, "thinking_token_budget": 90}
    assert body == {"max_tokens": 300, "max_completion_tokens": 200}  # not modified
    # the configured field, and the client's other standard limit lowered (llama.cpp reads
    # only max_tokens; an upstream that rejects max_tokens is given max_completion_tokens)
    assert apply_budget({"max_completion_tokens": 300}, 90, "max_tokens") == {
        "max_completion_tokens": 90, "max_tokens": 90}
    assert apply_budget({}, 90, "max_completion_tokens") == {"max_completion_tokens": 90}
    for v in (float("inf"), float("-inf"), float("nan"), 1e999):
        with pytest.raises(BadRequest, match="^max_completion_tokens: must be an integer"):
            client_cap({"max_completion_tokens": v}, "max_tokens")


def test_copies_of_a_request():
    assert n_copies({}) == 1 and n_copies({"n": 3}) == 3 and n_copies({"n": None}) == 1
    assert n_copies({"n": 2, "best_of": 5}) == 5 and n_copies({"n": 4, "best_of": 2}) == 4
    for field, v in (("n", 0), ("n", 1.5), ("n", "2"), ("n", True), ("best_of", 0),
                     ("best_of", float("inf"))):
        with pytest.raises(BadRequest, match=f"^{field}: must be an integer >= 1"):
            n_copies({field: v})


@pytest.fixture
def hook_class(monkeypatch):
    """``ClearBudgetHook``, or the test skipped without LiteLLM."""
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network at import
    pytest.importorskip("litellm")
    from clear_learn.serve.litellm_hook import ClearBudgetHook

    return ClearBudgetHook


def test_litellm_hook_through_its_documented_interface(hook_class):
    """``async_pre_call_hook(user_api_key_dict, cache, data, call_type)`` as LiteLLM's proxy
    calls it (the LiteLLM proxy server itself: tests/test_serve_real.py)."""
    from fastapi import HTTPException
    from litellm.caching.dual_cache import DualCache
    from litellm.proxy._types import UserAPIKeyAuth

    cfg = ServeConfig(tokens_per_query=100, price=1e-3, horizon=1e9,
                      abandon_policy="refuse").validate(require_upstream=False)
    hook = hook_class(cfg, predictor=FakePredictor())
    user, cache = UserAPIKeyAuth(), DualCache()

    async def main():
        data = {"model": "m", "messages": [{"role": "user", "content": "easy"}],
                "max_tokens": 500}
        out = await hook.async_pre_call_hook(user, cache, data, "acompletion")
        headers = await hook.async_post_call_response_headers_hook(out, user, None)
        emb = await hook.async_pre_call_hook(user, cache, {"input": "x"}, "aembedding")
        with pytest.raises(HTTPException) as refused:
            await hook.async_pre_call_hook(
                user, cache, {"messages": [{"role": "user", "content": "hard"}]}, "completion")
        with pytest.raises(HTTPException) as bad:
            await hook.async_pre_call_hook(user, cache, {"messages": []}, "completion")
        text = await hook.async_pre_call_hook(user, cache, {"prompt": "2+2="},
                                              "atext_completion")
        granted = (await hook.budget()).controller.granted_
        three = await hook.async_pre_call_hook(user, cache, {**data, "n": 3}, "acompletion")
        copies = (await hook.budget()).controller.granted_ - granted
        with pytest.raises(HTTPException) as bad_n:
            await hook.async_pre_call_hook(user, cache, {**data, "n": 0}, "acompletion")
        await (await hook.budget()).aclose()
        return out, headers, emb, refused.value, bad.value, text, three, copies, bad_n.value

    out, headers, emb, refused, bad, text, three, copies, bad_n = asyncio.run(main())
    assert out["max_tokens"] == 150 and out["metadata"]["clear_learn"]["abandoned"] is False
    assert headers["x-clear-max-tokens"] == "150" and headers["x-clear-abandoned"] == "false"
    assert float(headers["x-clear-price"]) == pytest.approx(1e-3)
    assert emb == {"input": "x"}
    assert refused.status_code == 429 and "abandoned" in refused.detail["message"]
    assert bad.status_code == 400 and bad.detail["param"] == "messages"
    assert text["max_tokens"] == 150
    # n = 3 completions of up to 150 tokens each: the controller counts 450
    assert three["max_tokens"] == 150 and copies == 450
    assert bad_n.status_code == 400 and bad_n.detail["param"] == "n"


@pytest.mark.filterwarnings("ignore:Item .* is using the `ReadOnly` qualifier")  # litellm's
def test_litellm_hook_reports_the_usage_of_budgeted_answers(hook_class):
    """``async_log_success_event(kwargs, response_obj, start_time, end_time)`` as LiteLLM
    calls it: the request's metadata under ``kwargs["litellm_params"]``."""
    from types import SimpleNamespace

    from litellm import ModelResponse

    cfg = ServeConfig(tokens_per_query=100, price=1e-3, horizon=1e9,
                      target="consumed").validate(require_upstream=False)
    hook = hook_class(cfg, predictor=FakePredictor())

    async def main():
        data = await hook.async_pre_call_hook(
            None, None, {"model": "m", "messages": [{"role": "user", "content": "easy"}]},
            "acompletion")
        ctl = (await hook.budget()).controller
        budgeted = {"litellm_params": {"metadata": data["metadata"]}}
        seen = []
        for kwargs, response in [
                (budgeted, ModelResponse(usage={"prompt_tokens": 3, "completion_tokens": 7,
                                                "total_tokens": 10})),
                (budgeted, {"usage": {"completion_tokens": 5}}),
                ({"litellm_params": {"litellm_metadata": data["metadata"]}},
                 SimpleNamespace(usage=SimpleNamespace(completion_tokens=2))),
                (budgeted, {"choices": []}),  # no usage: nothing to report
                (budgeted, SimpleNamespace(usage=None)),
                ({"litellm_params": {"metadata": {}}},  # not budgeted by the hook
                 {"usage": {"completion_tokens": 100}})]:
            await hook.async_log_success_event(kwargs, response, None, None)
            seen.append(ctl.consumed_)
        await (await hook.budget()).aclose()
        return seen

    assert asyncio.run(main()) == [7, 12, 14, 14, 14, 14]


def test_litellm_hook_loads_again_after_a_failed_load(hook_class, monkeypatch):
    calls = []
    real = BudgetService.from_config

    def flaky(cfg, predictor=None, **kwargs):
        calls.append(cfg)
        if len(calls) == 1:
            raise OSError("predictor: the disk is not mounted yet")
        return real(cfg, predictor, **kwargs)

    monkeypatch.setattr(BudgetService, "from_config", staticmethod(flaky))
    cfg = ServeConfig(tokens_per_query=100, price=1e-3).validate(require_upstream=False)
    hook = hook_class(cfg, predictor=FakePredictor())

    async def main():
        with pytest.raises(OSError, match="not mounted"):
            await hook.budget()
        service = await hook.budget()  # tried again, not the cached failure
        await service.aclose()
        return service

    assert isinstance(asyncio.run(main()), BudgetService) and len(calls) == 2


def test_budget_service_from_config_warm_starts_on_reference_texts(tmp_path):
    ref = tmp_path / "ref.txt"
    ref.write_text("\n".join(["easy one", "easy two", "a hard one", "easy three"]) + "\n")
    cfg = ServeConfig(upstream=UP, tokens_per_query=100, reference=str(ref)).validate()
    svc = BudgetService.from_config(cfg, FakePredictor())
    assert isinstance(svc.controller, StreamController) and svc.price > 0
    assert svc.max_tokens == 512  # the predictor's own cap
    with pytest.raises(ConfigError, match="^controller settings"):
        BudgetService.from_config(ServeConfig(upstream=UP, tokens_per_query=10,
                                              fallback_tokens=16).validate(), FakePredictor())


def test_reference_and_price_together_start_at_the_price(tmp_path):
    from clear_learn.controller import demand_elasticity

    texts = ["easy one", "easy two", "a hard one", "easy three"]
    ref = tmp_path / "ref.txt"
    ref.write_text("\n".join(texts) + "\n")
    cfg = ServeConfig(upstream=UP, tokens_per_query=100, reference=str(ref),
                      price=2e-3).validate()
    svc = BudgetService.from_config(cfg, FakePredictor())
    assert svc.price == pytest.approx(2e-3)
    assert svc.controller.elasticity_ == pytest.approx(
        demand_elasticity(FakePredictor().predict(texts), 2e-3, 512))
    # a rate target with a price needs no queries_per_second
    cfg = ServeConfig(upstream=UP, tokens_per_second=500, reference=str(ref),
                      price=2e-3).validate()
    assert BudgetService.from_config(cfg, FakePredictor()).price == pytest.approx(2e-3)


def test_queue_timeout_defaults_on_and_turns_off_from_a_flag_or_yaml(tmp_path):
    assert parse("--upstream", UP, "--tokens-per-query", "64").queue_timeout_ms == 1000.0
    cfg = parse("--upstream", UP, "--tokens-per-query", "64", "--queue-timeout-ms", "null")
    assert cfg.queue_timeout_ms is None
    y = tmp_path / "serve.yaml"
    y.write_text(f"upstream: {UP}\ntokens_per_query: 64\nqueue_timeout_ms: null\n")
    assert ServeConfig.from_yaml(y).validate().queue_timeout_ms is None
    ref = tmp_path / "ref.txt"
    ref.write_text("easy one\na hard one\n")
    svc = BudgetService.from_config(ServeConfig(upstream=UP, tokens_per_query=100,
                                                reference=str(ref),
                                                queue_timeout_ms=250).validate(),
                                    FakePredictor())
    assert svc.queue_timeout == 0.25
    assert svc.typical == pytest.approx((220.0, 0.475, 0.05))  # the reference's mean curve


def test_passthrough_cannot_go_with_a_hard_cap():
    ctl = StreamController(tokens_per_query=100, price=1e-3, cap_tokens=1000, cap_window=10)
    with pytest.raises(ValueError, match="passthrough.*cap_tokens"):
        BudgetService(FakePredictor(), ctl, abandon_policy="passthrough")
    BudgetService(FakePredictor(), ctl, abandon_policy="refuse")  # fine


def test_the_documented_router_config_is_valid(tmp_path):
    import re

    from serve_support import ROOT

    readme = (ROOT / "README.md").read_text()
    doc = readme[readme.index("## Router"):readme.index("## Bad input and interruptions")]
    yaml_block = re.search(r"```yaml\n(.*?)```", doc, re.S).group(1)
    path = tmp_path / "router.yaml"
    path.write_text(yaml_block)
    cfg = ServeConfig.from_yaml(path).validate()
    assert cfg.upstream == "http://127.0.0.1:8000/v1" and cfg.tokens_per_query == 128
    assert (ROOT / cfg.predictor).is_dir()
    flags = re.search(r"clear-learn serve --upstream (.*?)\n(.*?)\n", doc, re.S)
    argv = ("--upstream " + flags.group(1).rstrip("\\ ") + " " + flags.group(2)).split()
    assert parse(*argv).port == 8080


def test_the_batch_context_is_turned_off_under_either_name():
    from clear_learn.serve.budget import _predict_fn

    seen = []

    class New(FakePredictor):
        def predict(self, texts, *, use_batch_context=True):
            seen.append(use_batch_context)
            return super().predict(texts)

    class Old(FakePredictor):
        def predict(self, texts, *, batch_context=True):
            seen.append(batch_context)
            return super().predict(texts)

    _predict_fn(New())(["a"]), _predict_fn(Old())(["a"])
    assert seen == [False, False]
