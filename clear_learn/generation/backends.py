"""Generation backends behind the driver's small interface (:class:`driver.Backend`).

- :class:`TransformersBackend`: ``generate`` with sampling; loads a model directory or a GGUF
  file (needs ``gguf`` and ``accelerate``). Slow on a CPU, but it installs from wheels.
- :class:`VLLMBackend`: for GPUs; imported only when chosen (the ``vllm`` extra).
- :class:`~clear_learn.generation.llamacpp.LlamaCppBackend` (its own module): fast CPU sampling
  of GGUF models with continuous batching.

Every backend draws sample ``j`` of problem ``i`` with its own seed ``seeds[i][j]`` (so a sample
depends only on its seed), counts a response's generated tokens without its stop token, and
marks a response that reached ``max_new_tokens`` without stopping as not finished.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from .driver import Completion, SamplingSettings

__all__ = ["TransformersBackend", "VLLMBackend", "make_backend"]


class TransformersBackend:
    """Hugging Face ``transformers`` sampling, one problem (its ``n`` samples) at a time.

    Sample ``j`` of a problem is drawn with its own seed ``seeds[i][j]`` (as the llama.cpp
    backend does): the ``n`` samples run as one batch, and :class:`_SeededSampler` draws each
    row's next token from that row's own generator, so that a sample depends only on its seed,
    not on ``n`` or on the other samples.
    """

    name = "transformers"

    def __init__(self, model: str | Path, *, device: str = "cpu", threads: int | None = None,
                 model_id: str | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if threads:
            torch.set_num_threads(threads)
        path = Path(model)
        kwargs = {}
        if path.suffix == ".gguf":
            kwargs["gguf_file"] = path.name
            path = path.parent
        self.tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        self.model = AutoModelForCausalLM.from_pretrained(path, **kwargs).to(device).eval()
        self.device = device
        self.model_id = model_id or Path(model).name
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        if self.tokenizer.eos_token_id is not None:
            eos.append(self.tokenizer.eos_token_id)
        self.stop_ids = sorted(set(eos))
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.stop_ids[0]

    def generate(self, prompts: list[list[dict]], settings: SamplingSettings,
                 seeds: list[list[int]]) -> Iterator[list[Completion]]:
        import torch
        from transformers import LogitsProcessorList

        for i, msgs in enumerate(prompts):
            text = self.tokenizer.apply_chat_template(msgs, tokenize=False,
                                                      add_generation_prompt=True)
            enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
            n = len(seeds[i])
            enc = {k: v.to(self.device).repeat(n, 1) for k, v in enc.items()}
            sampler = _SeededSampler(seeds[i], settings.temperature, settings.top_p,
                                     self.device)
            with torch.no_grad():
                # greedy over the sampler's one-hot scores: the draw is the sampler's
                out = self.model.generate(
                    **enc, do_sample=False, num_beams=1, temperature=None, top_p=None,
                    top_k=None, repetition_penalty=1.0,  # not the model's: the settings only
                    max_new_tokens=settings.max_new_tokens,
                    pad_token_id=self.pad_id, eos_token_id=self.stop_ids,
                    logits_processor=LogitsProcessorList([sampler]))
            gen = out[:, enc["input_ids"].shape[1]:].tolist()
            comps = []
            for j, ids in enumerate(gen):
                stop = next((t for t, tok in enumerate(ids) if tok in self.stop_ids), None)
                n_tok = stop if stop is not None else len(ids)
                comps.append(Completion(problem=i, sample=j, tokens=n_tok,
                                        finished=stop is not None,
                                        text=self.tokenizer.decode(ids[:n_tok],
                                                                   skip_special_tokens=True)))
            yield comps


class _SeededSampler:
    """A ``transformers`` logits processor that samples row ``j``'s next token with its own
    ``torch.Generator`` (seeded ``seeds[j]``), after temperature and nucleus (top-p)
    filtering as ``generate(do_sample=True)`` applies them, and returns scores that are 0 at
    the drawn token and ``-inf`` elsewhere, so that greedy decoding emits it."""

    def __init__(self, seeds: list[int], temperature: float, top_p: float, device="cpu"):
        import torch

        if not temperature > 0:
            raise ValueError(f"temperature must be > 0 for sampling, got {temperature!r}")
        if not 0 < top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
        self.temperature, self.top_p = float(temperature), float(top_p)
        self.generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]

    def __call__(self, input_ids, scores):
        import torch

        probs = torch.softmax(scores.float() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sp, order = probs.sort(dim=-1, descending=True)
            # drop a token when the more likely ones already hold top_p (the first never is)
            sp = sp.masked_fill(sp.cumsum(dim=-1) - sp >= self.top_p, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, order, sp)
        picked = torch.cat([torch.multinomial(probs[r], 1, generator=g)
                            for r, g in enumerate(self.generators)])
        out = torch.full_like(scores, float("-inf"))
        out[torch.arange(scores.shape[0]), picked] = 0.0
        return out


def _vllm_completion(problem: int, sample: int, output, stop_ids) -> Completion:
    """A :class:`Completion` from a vLLM ``CompletionOutput``.

    vLLM keeps the stop token in ``token_ids``: the tokenizer's EOS (``stop_reason`` None)
    or any other stop token, such as a generation config's further EOS ids, which vLLM adds
    to the stop tokens and reports as ``stop_reason``. Either is not counted.
    """
    ids = list(output.token_ids)
    finished = output.finish_reason == "stop"
    reason = output.stop_reason
    stopped_on_token = finished and bool(ids) and (
        ids[-1] in stop_ids
        or (isinstance(reason, int) and not isinstance(reason, bool) and ids[-1] == reason))
    n_tok = len(ids) - 1 if stopped_on_token else len(ids)
    return Completion(problem, sample, output.text, n_tok, finished)


class VLLMBackend:
    """vLLM sampling for GPUs (``pip install 'clear-learn[vllm]'``); all problems at once.

    Every sample is its own request with its own seed ``seeds[i][j]`` (as the llama.cpp
    backend does), so a sample depends only on its seed.
    """

    name = "vllm"

    def __init__(self, model: str | Path, *, model_id: str | None = None, **llm_kwargs):
        try:
            from vllm import LLM
        except ImportError as err:  # pragma: no cover - GPU machines only
            raise ImportError("the vllm backend needs vLLM: pip install 'clear-learn[vllm]'"
                              ) from err
        self.llm = LLM(model=str(model), **llm_kwargs)  # pragma: no cover
        self.model_id = model_id or Path(model).name  # pragma: no cover

    def generate(self, prompts, settings, seeds):
        from vllm import SamplingParams

        tok = self.llm.get_tokenizer()
        texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
                 for m in prompts]
        requests, params = [], []
        for text, row in zip(texts, seeds):
            for s in row:
                requests.append(text)
                params.append(SamplingParams(n=1, temperature=settings.temperature,
                                             top_p=settings.top_p,
                                             max_tokens=settings.max_new_tokens, seed=s))
        stop_ids = {tok.eos_token_id} - {None}
        outs = iter(self.llm.generate(requests, params))
        for i, row in enumerate(seeds):
            yield [_vllm_completion(i, j, next(outs).outputs[0], stop_ids)
                   for j in range(len(row))]


def make_backend(name: str, model: str | Path, **kwargs):
    """A backend by name: ``llamacpp``, ``transformers`` or ``vllm``."""
    if name == "llamacpp":
        from .llamacpp import LlamaCppBackend

        return LlamaCppBackend(model, **kwargs)
    if name == "transformers":
        return TransformersBackend(model, **kwargs)
    if name == "vllm":
        return VLLMBackend(model, **kwargs)
    raise ValueError(f"unknown backend {name!r}: choose llamacpp, transformers or vllm")
