"""The Lightning module that trains :class:`~clear_learn.predictor.model.CurveModel`.

Loss ``likelihood`` (default): the rollouts' negative log-likelihood under the predicted curve
(:mod:`clear_learn.predictor.nll`), needing no per-query fit. Loss ``regression``: mean squared
error onto per-query fitted ``(log tau/M, log kM, logit p)``. Both report the same validation
metric, ``val_nll`` (the likelihood with the flat floor of :mod:`clear_learn.fitting`).
``runaway``: the consistent likelihood with run-away rate ``c`` (:mod:`.nll`), in training and
in ``val_nll`` alike.

``freeze_encoder=True`` trains the head alone: the encoder and its LoRA adapters keep the
weights they start with (``init_from``'s, for ``clear-learn recalibrate --mode head``) and run
in eval mode, so the head learns on the features it will see at inference. A frozen encoder
(``freeze_encoder``, or ``lora_r=0``) encodes each distinct text once per fit: its pooled
encodings are cached, so every epoch after the first trains the head alone at a small fraction
of the cost (what makes the leave-one-family-out study of a frozen encoder take minutes).
"""

from __future__ import annotations

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F

from .model import DEFAULT_BASE, K_SCALE, TAU_SCALE, CurveModel, raw_to_curve
from .nll import rollout_nll

__all__ = ["CurveLightningModule"]


class CurveLightningModule(L.LightningModule):
    def __init__(self, base_model: str = DEFAULT_BASE, lora_r: int = 8, lora_alpha: int = 16,
                 lora_dropout: float = 0.1, lora_targets: tuple[str, ...] = ("query", "value"),
                 head_hidden: int = 128, length_feature: bool = True,
                 surface_features: bool = False, lr: float = 5e-4,
                 head_lr: float = 3e-3,
                 weight_decay: float = 0.01, loss: str = "likelihood", eps: float = 1e-3,
                 max_length: int = 128, init_from: str | None = None,
                 freeze_encoder: bool = False, encoder_layers: int | None = None,
                 runaway: float | None = None):
        super().__init__()
        if loss not in ("likelihood", "regression"):
            raise ValueError(f"loss must be 'likelihood' or 'regression', got {loss!r}")
        if runaway is not None and not 0.0 < runaway < 1.0:
            raise ValueError(f"runaway must be null or in (0, 1), got {runaway!r}")
        self.save_hyperparameters()
        self.model = CurveModel(base_model, lora_r=lora_r, lora_alpha=lora_alpha,
                                lora_dropout=lora_dropout, lora_targets=tuple(lora_targets),
                                head_hidden=head_hidden, length_feature=length_feature,
                                surface_features=surface_features,
                                encoder_layers=encoder_layers)
        if freeze_encoder:
            for q in self.model.encoder.parameters():
                q.requires_grad_(False)
        self._pooled_cache: dict[bytes, torch.Tensor] = {}

    @property
    def encoder_frozen(self) -> bool:
        """Whether no encoder weight trains (``freeze_encoder``, or no LoRA: ``lora_r=0``)."""
        return not any(q.requires_grad for q in self.model.encoder.parameters())

    def _raw(self, batch) -> torch.Tensor:
        """The head's raw outputs for a batch; a frozen encoder's pooled encodings come from
        (and go into) the per-fit cache, keyed by each text's token ids."""
        ids, att = batch["input_ids"], batch["attention_mask"]
        if not self.encoder_frozen:
            return self.model(ids, att, batch["n_tokens"], batch.get("surface"))
        keys = [row[m.bool()].cpu().numpy().tobytes() for row, m in zip(ids, att)]
        first = {key: i for i, key in reversed(list(enumerate(keys)))}  # one row per text
        todo = [i for key, i in first.items() if key not in self._pooled_cache]
        if todo:
            self.model.encoder.eval()
            with torch.no_grad():
                x = self.model.pooled(ids[todo], att[todo])
            self._pooled_cache.update({keys[i]: row for i, row in zip(todo, x)})
        x = torch.stack([self._pooled_cache[key] for key in keys])
        return self.model.from_pooled(x, batch["n_tokens"], batch.get("surface"))

    def on_fit_start(self) -> None:
        """Start from the exported predictor ``init_from`` (recalibration), else the head at
        the training split's median curve; neither when resuming a checkpoint."""
        self._pooled_cache.clear()  # the encoder's weights may change below
        if self.trainer.ckpt_path is not None:
            return
        if self.hparams.init_from:
            from .export import load_into

            load_into(self.model, self.hparams.init_from, self.hparams)
            return
        dm = getattr(self.trainer, "datamodule", None)
        if not hasattr(dm, "median_curve"):
            return
        tau_rel, kM, p = dm.median_curve()
        p = min(max(p, 0.02), 0.98)

        def inv_softplus(y: float) -> float:
            return float(np.log(np.expm1(max(y, 1e-4))))

        last = self.model.head[-1]
        with torch.no_grad():
            last.weight.mul_(0.1)
            last.bias.copy_(torch.tensor([inv_softplus(tau_rel / TAU_SCALE),
                                          inv_softplus(kM / K_SCALE),
                                          float(np.log(p / (1 - p)))]))

    def on_train_batch_start(self, batch, batch_idx) -> None:
        if self.encoder_frozen:  # no dropout in a frozen encoder
            self.model.encoder.eval()

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep only LoRA and the head: the frozen base encoder is rebuilt from
        ``base_model`` on load, so each checkpoint is ~1 MB instead of ~90 MB (LoRA weights
        are kept even when frozen: they came from ``init_from``, not from the base)."""
        frozen = {n for n, q in self.named_parameters()
                  if not q.requires_grad and "lora_" not in n}
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items()
                                    if k not in frozen}
        checkpoint["frozen_from_base"] = True

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        """Fill the frozen base weights a slim checkpoint left out from the freshly loaded
        base, so that loading stays strict for everything the checkpoint does hold."""
        if checkpoint.get("frozen_from_base"):
            checkpoint["state_dict"] = {**self.state_dict(), **checkpoint["state_dict"]}

    def forward(self, input_ids, attention_mask, cap, n_tokens=None, surface=None):
        return raw_to_curve(self.model(input_ids, attention_mask, n_tokens, surface), cap)

    def _nll(self, batch, tau, p_logit, k, smooth: bool) -> torch.Tensor:
        return rollout_nll(tau, p_logit, k, batch["tokens"], batch["correct"],
                           batch["cutoff"], batch["mask"], batch["cap"],
                           eps=self.hparams.eps, smooth_floor=smooth,
                           runaway=self.hparams.get("runaway"))

    def training_step(self, batch, batch_idx):
        raw = self._raw(batch)
        if self.hparams.loss == "regression":
            if "target" not in batch:
                raise ValueError("loss 'regression' needs per-query fitted targets: build the "
                                 "data module with regression_targets=True")
            M = batch["cap"]
            tau, p_logit, k = raw_to_curve(raw, M)
            pred = torch.stack([torch.log(tau / M + 1e-6), torch.log(k * M), p_logit], 1)
            loss = F.mse_loss(pred, batch["target"])
        else:
            tau, p_logit, k = raw_to_curve(raw, batch["cap"])
            loss = self._nll(batch, tau, p_logit, k, smooth=True).mean()
        self.log("train_loss", loss, prog_bar=True, batch_size=raw.shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        tau, p_logit, k = raw_to_curve(self._raw(batch), batch["cap"])
        nll = self._nll(batch, tau, p_logit, k, smooth=False)
        n = batch["mask"].sum(1).to(nll.dtype)
        # mean per rollout over the whole validation set
        self.log("val_nll", (nll * n).sum() / n.sum(), prog_bar=True, reduce_fx="mean",
                 batch_size=int(n.sum()), sync_dist=True)

    def configure_optimizers(self):
        head = list(self.model.head.parameters())
        head_ids = {id(q) for q in head}
        enc = [q for q in self.model.parameters() if q.requires_grad and id(q) not in head_ids]
        groups = [{"params": head, "lr": self.hparams.head_lr}]
        if enc:
            groups.append({"params": enc, "lr": self.hparams.lr})
        return torch.optim.AdamW(groups, weight_decay=self.hparams.weight_decay)
