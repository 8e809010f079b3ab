"""The transformers and vLLM backends: per-sample seeds and token counts (issue 18 item 17).

The transformers backend runs on a tiny randomly initialised model (no download); vLLM cannot
run here, so its backend runs against fake ``vllm`` objects.
"""

import sys
import types
from dataclasses import replace

import pytest

from clear_learn.generation.backends import TransformersBackend, VLLMBackend, _vllm_completion
from clear_learn.generation.driver import SamplingSettings

MSGS = [{"role": "user", "content": "what is 2 + 2?"}]


class _TinyTokenizer:
    eos_token_id = 2
    pad_token_id = 0

    def apply_chat_template(self, msgs, tokenize=False, add_generation_prompt=True):
        return " ".join(m["content"] for m in msgs)

    def __call__(self, text, return_tensors="pt", add_special_tokens=False):
        import torch

        ids = [3 + ord(c) % 60 for c in text]
        return {"input_ids": torch.tensor([ids]),
                "attention_mask": torch.ones(1, len(ids), dtype=torch.long)}

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


@pytest.fixture(scope="module")
def tiny_backend():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=2, max_position_embeddings=128,
                                   bos_token_id=1, eos_token_id=2, pad_token_id=0)
    be = TransformersBackend.__new__(TransformersBackend)  # no files to load
    be.model = transformers.LlamaForCausalLM(cfg).eval()
    be.tokenizer, be.device, be.model_id = _TinyTokenizer(), "cpu", "tiny-random-llama"
    be.stop_ids, be.pad_id = [2], 0
    return be


def test_transformers_backend_seeds_each_sample(tiny_backend):
    """Sample j depends only on its own seed: the same seed gives the same response whatever
    the other samples of the batch (the backend seeded once per problem)."""
    s = SamplingSettings(n=3, max_new_tokens=12, temperature=1.0, top_p=0.95)
    a = next(tiny_backend.generate([MSGS], s, [[11, 22, 33]]))
    b = next(tiny_backend.generate([MSGS], replace(s, n=2), [[33, 11]]))
    assert [c.sample for c in a] == [0, 1, 2]
    assert a[2].text == b[0].text and a[2].tokens == b[0].tokens
    assert a[0].text == b[1].text and a[0].tokens == b[1].tokens
    assert len({c.text for c in a}) == 3  # distinct seeds, distinct samples
    for c in a + b:
        assert 0 <= c.tokens <= 12 and c.finished == (c.tokens < 12)


def test_seeded_sampler_filters_as_transformers_does():
    """Temperature then top-p, as generate(do_sample=True) applies them: the same tokens
    survive, and the draws follow the filtered probabilities."""
    torch = pytest.importorskip("torch")
    from transformers.generation.logits_process import (TemperatureLogitsWarper,
                                                        TopPLogitsWarper)

    from clear_learn.generation.backends import _SeededSampler

    scores = torch.randn(4, 50, generator=torch.Generator().manual_seed(1)) * 3
    ids = torch.zeros(4, 1, dtype=torch.long)
    ref = TopPLogitsWarper(0.8)(ids, TemperatureLogitsWarper(0.7)(ids, scores.clone()))
    keep = torch.isfinite(ref)
    sampler = _SeededSampler([1, 2, 3, 4], 0.7, 0.8)
    for _ in range(50):
        out = sampler(ids, scores.clone())
        assert torch.all((out == 0).sum(1) == 1) and torch.all(keep[out == 0])
    with pytest.raises(ValueError, match="top_p"):
        _SeededSampler([1], 0.7, 0.0)
    with pytest.raises(ValueError, match="temperature"):
        _SeededSampler([1], 0.0, 0.9)


def _out(ids, finish, stop_reason=None):
    return types.SimpleNamespace(token_ids=ids, finish_reason=finish, stop_reason=stop_reason,
                                 text="x")


def test_vllm_token_count_leaves_out_any_stop_token():
    """A stop on a generation-config EOS other than the tokenizer's was counted."""
    eos = {151645}
    assert _vllm_completion(0, 0, _out([5, 6, 151645], "stop"), eos).tokens == 2
    other = _out([5, 6, 151643], "stop", stop_reason=151643)  # e.g. <|endoftext|>
    assert _vllm_completion(0, 0, other, eos).tokens == 2
    assert _vllm_completion(0, 0, other, eos).finished
    cut = _vllm_completion(0, 1, _out([5, 6, 7], "length"), eos)
    assert cut.tokens == 3 and not cut.finished
    string_stop = _out([5, 6, 7], "stop", stop_reason="\n\n")  # a stop string: no token kept
    assert _vllm_completion(0, 0, string_stop, eos).tokens == 3


def test_vllm_backend_sends_one_seeded_request_per_sample(monkeypatch):
    sent = []

    class SamplingParams:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    class Tok:
        eos_token_id = 9

        def apply_chat_template(self, m, tokenize=False, add_generation_prompt=True):
            return m[-1]["content"]

    class LLM:
        def get_tokenizer(self):
            return Tok()

        def generate(self, requests, params):
            sent.extend(zip(requests, params))
            return [types.SimpleNamespace(outputs=[_out([1, 2, 9], "stop")]) for _ in requests]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(SamplingParams=SamplingParams))
    be = VLLMBackend.__new__(VLLMBackend)
    be.llm, be.model_id = LLM(), "fake"
    s = SamplingSettings(n=2, max_new_tokens=16)
    prompts = [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]
    got = list(be.generate(prompts, s, [[101, 102], [201, 202]]))
    assert [(r, p.seed, p.n) for r, p in sent] == [("a", 101, 1), ("a", 102, 1),
                                                   ("b", 201, 1), ("b", 202, 1)]
    assert [[(c.problem, c.sample, c.tokens) for c in comps] for comps in got] == [
        [(0, 0, 2), (0, 1, 2)], [(1, 0, 2), (1, 1, 2)]]
