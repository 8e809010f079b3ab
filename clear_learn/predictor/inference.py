"""``ClearPredictor``: texts -> curves -> budgets, with a trained curve model.

The network gives each text's curve (:meth:`ClearPredictor.predict_raw`); the post-network
stages of its config turn them into the shipped curves (:func:`.pipeline.postprocess`);
:meth:`ClearPredictor.allocate` feeds those to the CLEAR allocator. Saving and loading live in
:mod:`.storage`, the model card in :mod:`.card`, the config's schema in :mod:`.config`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Set
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..allocation import AllocationResult, allocate, as_caps
from ..allocation import as_whole as _whole
from ..curves import Curves
from .batch_context import BatchContext
from .calibration import check_tau_spread
from .config import (EncoderConfig, GeneratorConfig, HeadConfig, LoraSettings, PredictorConfig,
                     Stages, TrainingRecord, text_sha256)
from .features import surface_features
from .pipeline import postprocess
from .runtime import OnnxEncoder, check_runtime

__all__ = ["ClearPredictor", "PASS_SIZE"]

#: Texts per forward pass of the encoder, by default. A call's texts are sorted by length and
#: run in passes of this many, so each pass pads to a length close to its texts' own: on mixed
#: lengths, passes of 16 predict about twice as many texts per second as one pass of 64
#: (``benchmarks/bench_predict.py``).
PASS_SIZE = 16

#: Predictions from several threads take turns at the tokenizer: a fast tokenizer's padding and
#: truncation settings are state that each call changes (two calls race to wrong lengths).
_TOKENIZER_LOCK = threading.Lock()


class ClearPredictor:
    """Predict each query's curve from its text, then allocate a token budget with CLEAR.

    Build one with :meth:`from_pretrained` (an exported directory) or, after training, with
    :meth:`from_trained`. ``config`` is a :class:`~.config.PredictorConfig`.
    """

    def __init__(self, model, tokenizer, config: PredictorConfig, device: str = "cpu", *,
                 runtime: str = "torch"):
        if not isinstance(config, PredictorConfig):
            raise TypeError(f"config must be a PredictorConfig, got {type(config).__name__}")
        check_runtime(runtime)
        if runtime != "torch" and device != "cpu":
            raise ValueError(f"runtime {runtime!r} runs on the CPU; got device {device!r}")
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.config = config
        self.device = device
        self.runtime = runtime
        self._onnx = OnnxEncoder(self.model) if runtime == "onnx" else None

    # ---- what it is ------------------------------------------------------------------
    @property
    def max_new_tokens(self) -> int:
        """The generation cap of the rollouts it learned from: nothing is known beyond it."""
        return self.config.generator.max_new_tokens

    @property
    def stages(self) -> Stages:
        """Its post-network stages (:mod:`.pipeline`)."""
        return self.config.stages

    @property
    def batch_context(self) -> BatchContext | None:
        """The batch-context stage it was exported with (None: predictions per text)."""
        return self.config.stages.batch_context

    @property
    def n_tokens_range(self) -> tuple[float, float] | None:
        """The range of text lengths in tokens it was trained on: the head's length feature
        is clipped to it (None: no clipping, for exports made before it was recorded)."""
        return self.config.head.n_tokens_range

    @property
    def tau_spread(self) -> float:
        """The threshold uncertainty it was exported with (sd ``tau_spread * tau``; 0: none)."""
        return self.config.stages.tau_spread

    def stages_for(self, *, use_batch_context: bool = True, tau_spread: float | None = None
                   ) -> Stages:
        """Its stages with a call's overrides (``None`` keeps its own value), checked."""
        if not isinstance(use_batch_context, bool):
            raise TypeError(f"use_batch_context must be True or False, got "
                            f"{use_batch_context!r}")
        st = self.config.stages
        return replace(st, batch_context=st.batch_context if use_batch_context else None,
                       tau_spread=st.tau_spread if tau_spread is None
                       else check_tau_spread(tau_spread))

    # ---- prediction --------------------------------------------------------------------
    def predict(self, texts: Sequence[str], *, batch_size: int = PASS_SIZE,
                use_batch_context: bool = True, tau_spread: float | None = None) -> Curves:
        """One curve per text: :meth:`predict_raw`, then the post-network stages.

        ``use_batch_context`` (with a
        predictor exported with one, see :mod:`.batch_context`): shift each curve by its
        text's length relative to the similar texts of the same call (a text longer than its
        look-alikes gets a later, lower curve; a call of one text is unaffected).
        ``tau_spread``: widen each curve by a threshold uncertainty of sd ``tau_spread * tau``
        (:mod:`.calibration`); ``None`` takes the predictor's own :attr:`tau_spread`, 0 turns
        it off. Every argument is checked before the network runs.
        """
        stages = self.stages_for(use_batch_context=use_batch_context, tau_spread=tau_spread)
        texts = _checked_texts(texts)
        return postprocess(self.predict_raw(texts, batch_size=batch_size), texts, stages)

    def predict_raw(self, texts: Sequence[str], *, batch_size: int = PASS_SIZE) -> Curves:
        """The network's own curves, one per text: tau, p and k all from the encoder, before
        any post-network stage (no batch context or threshold spread).

        ``batch_size``: texts per forward pass (the texts are sorted by length first)."""
        import torch

        from .model import raw_to_curve

        texts = _checked_texts(texts)
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
                or batch_size < 1:
            raise ValueError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
        parts = []
        cap = float(self.max_new_tokens)
        n_range = self.n_tokens_range
        max_length = self.config.encoder.max_length
        with torch.inference_mode():
            order = np.argsort([len(t) for t in texts])  # similar lengths pad less
            for a in range(0, len(texts), int(batch_size)):
                idx = order[a:a + int(batch_size)]
                batch = [texts[i] for i in idx]
                with _TOKENIZER_LOCK:  # each call resets the shared tokenizer's truncation
                    enc = self.tokenizer(batch, padding=True, truncation=True,
                                         max_length=max_length, return_tensors="pt")
                    full = self.tokenizer(batch, truncation=False, verbose=False)["input_ids"]
                n_tok = torch.tensor([len(x) for x in full], dtype=torch.float32,
                                     device=self.device)
                if n_range is not None:  # no extrapolation beyond the trained lengths
                    n_tok = n_tok.clamp(*n_range)
                surface = None
                if getattr(self.model, "surface_features", False):
                    surface = torch.from_numpy(surface_features(batch)).to(self.device)
                if self._onnx is not None:
                    pooled = torch.from_numpy(self._onnx(enc["input_ids"].numpy(),
                                                         enc["attention_mask"].numpy()))
                else:
                    pooled = self.model.pooled(enc["input_ids"].to(self.device),
                                               enc["attention_mask"].to(self.device))
                raw = self.model.from_pooled(pooled, n_tok, surface)
                tau, p_logit, k = raw_to_curve(raw, torch.full((len(idx),), cap,
                                                               device=self.device))
                parts.append((idx, tau.double().cpu().numpy(),
                             torch.sigmoid(p_logit).double().cpu().numpy(),
                             k.double().cpu().numpy()))
        out = np.zeros((3, len(texts)))
        for idx, t, p, k in parts:
            out[0, idx], out[1, idx], out[2, idx] = t, p, k
        return Curves(out[0], out[1], out[2])

    def allocate(self, texts: Sequence[str], total_budget: int, *, max_tokens=None,
                 fallback_tokens: int = 0, batch_size: int = PASS_SIZE,
                 use_batch_context: bool = True, tau_spread: float | None = None,
                 **kwargs) -> AllocationResult:
        """Predict curves for ``texts`` and allocate ``total_budget`` tokens among them
        (:func:`clear_learn.allocate`; its arguments are checked before the network runs).

        ``max_tokens`` defaults to the generation cap the predictor learned from; the other
        arguments as in :meth:`predict`.
        """
        texts = _checked_texts(texts)
        _whole("total_budget", total_budget)
        _whole("fallback_tokens", fallback_tokens)
        cap = self.max_new_tokens if max_tokens is None else max_tokens
        as_caps(cap, len(texts))
        curves = self.predict(texts, batch_size=batch_size,
                              use_batch_context=use_batch_context, tau_spread=tau_spread)
        return allocate(curves, total_budget, max_tokens=cap, fallback_tokens=fallback_tokens,
                        **kwargs)

    def trained_on(self, texts: Sequence[str]) -> list[bool] | None:
        """For each text, whether this predictor was trained on it (None: not recorded)."""
        return self.config.trained_on(texts)

    # ---- construction, save / load -----------------------------------------------------
    @classmethod
    def from_trained(cls, model, tokenizer, records: list[dict], *, base_model: str,
                     max_length: int, lora: dict | None = None,
                     batch_context: dict | None = None, tau_spread: float = 0.0,
                     training: dict | None = None,
                     metrics: dict | None = None, all_records: list[dict] | None = None
                     ) -> "ClearPredictor":
        """A predictor from a freshly trained :class:`~.model.CurveModel` and the records it
        was trained on: every post-network stage is fitted here, on ``records``.

        ``batch_context``: the batch-context settings (``neighbours``, ``min_similarity``;
        None: no batch context); ``tau_spread``: the threshold spread;
        ``training``: what the card records of the run (data, split, seed, loss, init_from,
        ...); ``all_records``: every record of the run (default ``records``), which must
        share one generating model and one cap. The training texts are recorded by hash.
        """
        from .batch_context import within_task_slopes

        every = records if all_records is None else all_records
        caps = {int(r["max_new_tokens"]) for r in every}
        models = {(r.get("generator") or {}).get("model", "unknown") for r in every}
        if len(models) != 1:
            raise ValueError(f"training data mixes generating models {sorted(models)}: a "
                             "predictor's curves belong to one model")
        if len(caps) != 1:
            raise ValueError(f"training data mixes generation caps {sorted(caps)}: a "
                             "predictor's curves belong to one cap")
        gen = (records[0].get("generator") or {}) if records else {}
        name = gen.get("model", "unknown")
        n_tok = [len(x) for x in tokenizer([r["text"] for r in records], truncation=False,
                                           verbose=False)["input_ids"]] if records else []
        lora = {k.removeprefix("lora_"): v for k, v in (lora or {}).items()}
        if not lora.get("r"):
            lora = {}  # a frozen encoder: no adapter to record
        ctx = (within_task_slopes(records, **batch_context)
               if batch_context is not None and records else None)
        enc = model.encoder
        weights = "adapter" if hasattr(enc, "peft_config") else "base"
        config = PredictorConfig(
            encoder=EncoderConfig(base_model=base_model, max_length=int(max_length),
                                  weights=weights, lora=LoraSettings(**lora) if lora else None,
                                  layers=getattr(model, "encoder_layers", None)),
            head=HeadConfig(hidden=int(model.head[0].out_features),
                            length_feature=bool(model.length_feature),
                            surface_features=bool(model.surface_features),
                            n_tokens_range=(min(n_tok), max(n_tok)) if n_tok else None),
            generator=GeneratorConfig(model=name, tokenizer=f"{name} (its own tokenizer)",
                                      backend=gen.get("backend"),
                                      temperature=gen.get("temperature"),
                                      top_p=gen.get("top_p"), n=gen.get("n"),
                                      max_new_tokens=caps.pop()),
            stages=Stages(batch_context=ctx, tau_spread=check_tau_spread(tau_spread)),
            training=TrainingRecord(**{
                "split": "?", "data": "?", **(training or {}), "n_train": len(records),
                "tasks": sorted({r["task"] for r in records}),
                "text_sha256": sorted({text_sha256(r["text"]) for r in records})}),
            metrics=dict(metrics or {}))
        model.train(False)
        return cls(model, tokenizer, config)

    def save_pretrained(self, path: str | os.PathLike, *, merged: bool = False,
                        card: str | None = None) -> Path:
        """Write the predictor to ``path`` atomically (:func:`.storage.save`)."""
        from .storage import save

        return save(self, path, merged=merged, card=card)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str = "cpu",
                        runtime: str = "torch") -> "ClearPredictor":
        """Load an exported predictor (:func:`.storage.load`); raises
        :class:`~.storage.PredictorLoadError` naming what is missing or wrong. Works with
        the network off (everything is read locally).

        ``runtime``: how the encoder runs, ``torch`` or ``onnx`` (ONNX Runtime: the same
        curves, faster; the graph is exported once per machine), see :mod:`.runtime`.
        """
        from .storage import load

        check_runtime(runtime)
        model, tokenizer, config = load(path, device=device)
        return cls(model, tokenizer, config, device=device, runtime=runtime)

    def __repr__(self) -> str:
        st = self.stages
        return (f"ClearPredictor({self.config.encoder.base_model}, generator "
                f"{self.config.generator.model} cap {self.max_new_tokens}, batch context "
                f"{'on' if st.batch_context else 'off'}, "
                f"tau_spread {st.tau_spread:g}, runtime {self.runtime})")


def _checked_texts(texts: Any) -> list[str]:
    """``texts`` as a list of non-empty strings, or an error naming the first bad one."""
    if isinstance(texts, str):
        raise TypeError("predict takes a list of texts, not one string")
    if texts is None or not hasattr(texts, "__iter__"):
        raise TypeError(f"predict takes a list of texts, got {type(texts).__name__}")
    if isinstance(texts, (Mapping, Set)):  # keys, or no order to give the curves back in
        raise TypeError(f"predict takes an ordered list of texts, got a "
                        f"{type(texts).__name__}")
    texts = list(texts)
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if bad:
        raise ValueError(f"texts must be non-empty strings; index {bad[0]} is "
                         f"{texts[bad[0]]!r}")
    return texts
