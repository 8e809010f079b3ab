"""Generation backends behind the driver's small interface (:class:`driver.Backend`).

- :class:`TransformersBackend`: ``generate`` with sampling; loads a model directory or a GGUF
  file (needs ``gguf`` and ``accelerate``). Slow on a CPU, but it installs from wheels.
- :class:`VLLMBackend`: for GPUs; imported only when chosen (the ``vllm`` extra).
- :class:`~clear_learn.generation.llamacpp.LlamaCppBackend` (its own module): fast CPU sampling
  of GGUF models with continuous batching.

Every backend counts a response's generated tokens without its stop token, and marks a response
that reached ``max_new_tokens`` without stopping as not finished.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from .driver import Completion, SamplingSettings

__all__ = ["TransformersBackend", "VLLMBackend", "make_backend"]


class TransformersBackend:
    """Hugging Face ``transformers`` sampling, one problem (its ``n`` samples) at a time."""

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

        for i, msgs in enumerate(prompts):
            text = self.tokenizer.apply_chat_template(msgs, tokenize=False,
                                                      add_generation_prompt=True)
            enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False)
            enc = {k: v.to(self.device) for k, v in enc.items()}
            torch.manual_seed(seeds[i][0])
            with torch.no_grad():
                out = self.model.generate(
                    **enc, do_sample=True, temperature=settings.temperature,
                    top_p=settings.top_p, top_k=0, max_new_tokens=settings.max_new_tokens,
                    num_return_sequences=settings.n, pad_token_id=self.pad_id,
                    eos_token_id=self.stop_ids)
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


class VLLMBackend:
    """vLLM sampling for GPUs (``pip install 'clear-learn[vllm]'``); all problems at once."""

    name = "vllm"

    def __init__(self, model: str | Path, *, model_id: str | None = None, **llm_kwargs):
        try:
            from vllm import LLM
        except ImportError as err:  # pragma: no cover - GPU machines only
            raise ImportError("the vllm backend needs vLLM: pip install 'clear-learn[vllm]'"
                              ) from err
        self.llm = LLM(model=str(model), **llm_kwargs)  # pragma: no cover
        self.model_id = model_id or Path(model).name  # pragma: no cover

    def generate(self, prompts, settings, seeds):  # pragma: no cover - GPU machines only
        from vllm import SamplingParams

        tok = self.llm.get_tokenizer()
        texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
                 for m in prompts]
        params = [SamplingParams(n=settings.n, temperature=settings.temperature,
                                 top_p=settings.top_p, max_tokens=settings.max_new_tokens,
                                 seed=s[0]) for s in seeds]
        for i, out in enumerate(self.llm.generate(texts, params)):
            comps = []
            for j, o in enumerate(out.outputs):
                finished = o.finish_reason == "stop"
                ids = list(o.token_ids)
                n_tok = len(ids) - 1 if finished and ids and ids[-1] in (
                    tok.eos_token_id,) else len(ids)
                comps.append(Completion(i, j, o.text, n_tok, finished))
            yield comps


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
