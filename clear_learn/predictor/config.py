"""The exported predictor's configuration: typed, validated, versioned (``config.json``).

In the manner of peft's config dataclasses: one frozen dataclass per part, each validated on
construction with errors that name the field (``head.hidden must be ...``), read from and
written to JSON by :meth:`PredictorConfig.from_dict` / :meth:`PredictorConfig.to_dict`, unknown
keys refused by name. Format 2 (written by this version)::

    {"format_version": 2,
     "encoder":   {"base_model", "max_length", "weights", "lora": {r, alpha, dropout, targets}},
     "head":      {"hidden", "length_feature", "surface_features", "n_tokens_range"},
     "generator": {"model", "tokenizer", "backend", "temperature", "top_p", "n",
                   "max_new_tokens"},
     "stages":    {"batch_context", "tau_spread"},
     "training":  {"data", "split", ..., "text_sha256"},
     "metrics":   {...}}

``stages`` holds every post-network stage with its fitted parameters and the ranges it was
fitted on (:mod:`clear_learn.predictor.pipeline` applies them). Exports of format 1 (a flat
dict, e.g. ``checkpoints/default``) are read through :func:`migrate_v1`, the one place that
knows their layout and their defaults. Format-2 exports written before the length line was
removed also carry ``stages.tau_k_source: "encoder"`` and ``stages.length_line: null``: read
as the same predictor (:func:`_drop_tau_k_source`); one that took tau and k from the length
line is refused by name.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .batch_context import BatchContext

__all__ = ["FORMAT_VERSION", "WEIGHTS", "ConfigError", "LoraSettings", "EncoderConfig",
           "HeadConfig", "GeneratorConfig", "Stages", "TrainingRecord", "PredictorConfig",
           "migrate_v1", "text_sha256", "replace"]

FORMAT_VERSION = 2
WEIGHTS = ("adapter", "merged", "base")  # LoRA adapter dir, merged encoder dir, base as is


class ConfigError(ValueError):
    """A predictor config value or key that is not valid; the message names the field."""


def text_sha256(text: str) -> str:
    """The first 16 hex digits of the sha256 of ``text`` (UTF-8): how a config records the
    texts a predictor was trained on without storing them."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ---- field checks (each names the field) -------------------------------------------------
def _int(name: str, v, low: int | None = None) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{name} must be an integer, got {v!r}")
    if low is not None and v < low:
        raise ConfigError(f"{name} must be >= {low}, got {v!r}")
    return v


def _float(name: str, v, low: float | None = None, high: float | None = None) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{name} must be a finite number, got {v!r}")
    if (low is not None and v < low) or (high is not None and v > high):
        raise ConfigError(f"{name} must be in [{low}, {high}], got {v!r}")
    return float(v)


def _bool(name: str, v) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{name} must be true or false, got {v!r}")
    return v


def _str(name: str, v, choices: Sequence[str] | None = None) -> str:
    if not isinstance(v, str) or not v:
        raise ConfigError(f"{name} must be a non-empty string, got {v!r}")
    if choices is not None and v not in choices:
        raise ConfigError(f"{name} must be one of {tuple(choices)}, got {v!r}")
    return v


def _range(name: str, v) -> tuple[float, float] | None:
    from .baselines import check_length_range

    if v is None:
        return None
    if not isinstance(v, (list, tuple)) or any(isinstance(x, bool) for x in v):
        raise ConfigError(f"{name} must be a pair [low, high] of numbers, got {v!r}")
    try:
        return check_length_range(v, name)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _set(obj, name: str, value) -> None:
    object.__setattr__(obj, name, value)  # frozen dataclasses: normalise in __post_init__


def _build(cls, d, section: str, nested: Mapping[str, Any] | None = None):
    """``cls(**d)`` with unknown and missing keys refused naming ``section``; ``nested``
    maps a field to the function that builds it from its JSON value."""
    if not isinstance(d, Mapping):
        raise ConfigError(f"{section} must be a JSON object, got {d!r}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"{section}: unknown keys {unknown} (known: {sorted(names)})")
    args = dict(d)
    for key, make in (nested or {}).items():
        if args.get(key) is not None:
            args[key] = make(args[key])
    try:
        return cls(**args)
    except TypeError as err:  # a required key is missing
        raise ConfigError(f"{section}: {err}") from None


# ---- the parts ---------------------------------------------------------------------------
@dataclass(frozen=True)
class LoraSettings:
    """The LoRA adapter's hyperparameters (peft ``LoraConfig``: r, lora_alpha, ...)."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.1
    targets: tuple[str, ...] = ("query", "value")

    def __post_init__(self) -> None:
        _int("encoder.lora.r", self.r, 0)
        _float("encoder.lora.alpha", self.alpha, 0)
        _float("encoder.lora.dropout", self.dropout, 0, 1)
        if isinstance(self.targets, str) or not all(isinstance(t, str) for t in self.targets):
            raise ConfigError(f"encoder.lora.targets must be a list of module names, got "
                              f"{self.targets!r}")
        _set(self, "targets", tuple(self.targets))


@dataclass(frozen=True)
class EncoderConfig:
    """The text encoder: base model (``pkg:NAME`` or a path relative to the export), the
    tokens it reads, how its weights are stored (``adapter``, ``merged`` or ``base``), and
    how many of its transformer layers run (``layers``; None: all)."""

    base_model: str
    max_length: int
    weights: str = "adapter"
    lora: LoraSettings | None = None
    layers: int | None = None

    def __post_init__(self) -> None:
        _str("encoder.base_model", self.base_model)
        _int("encoder.max_length", self.max_length, 1)
        if self.layers is not None:
            _int("encoder.layers", self.layers, 0)
        _str("encoder.weights", self.weights, WEIGHTS)
        if self.lora is not None and not isinstance(self.lora, LoraSettings):
            raise ConfigError(f"encoder.lora must be LoraSettings or null, got {self.lora!r}")


@dataclass(frozen=True)
class HeadConfig:
    """The head on the pooled encoding: hidden width, its extra inputs, and the range of
    text lengths in tokens it was trained on (its length feature is clipped to it; None:
    no clipping, for exports made before it was recorded)."""

    hidden: int
    length_feature: bool = False
    surface_features: bool = False
    n_tokens_range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        _int("head.hidden", self.hidden, 1)
        _bool("head.length_feature", self.length_feature)
        _bool("head.surface_features", self.surface_features)
        _set(self, "n_tokens_range", _range("head.n_tokens_range", self.n_tokens_range))


@dataclass(frozen=True)
class GeneratorConfig:
    """The generating model the curves describe: model, tokenizer counting the tokens,
    sampling settings and the generation cap (nothing is known beyond it)."""

    model: str
    max_new_tokens: int
    tokenizer: str | None = None
    backend: str | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None

    def __post_init__(self) -> None:
        _str("generator.model", self.model)
        _int("generator.max_new_tokens", self.max_new_tokens, 1)
        for name in ("tokenizer", "backend"):
            if getattr(self, name) is not None:
                _str(f"generator.{name}", getattr(self, name))
        if self.temperature is not None:
            _float("generator.temperature", self.temperature, 0)
        if self.top_p is not None:
            _float("generator.top_p", self.top_p, 0, 1)
        if self.n is not None:
            _int("generator.n", self.n, 1)


def _context(d) -> BatchContext:
    try:
        return BatchContext.from_dict(d)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"stages.batch_context: {err}") from None


@dataclass(frozen=True)
class Stages:
    """The post-network stages, in the order they act on the network's curves: the
    ``batch_context`` (None: none), the threshold spread ``tau_spread`` (sd
    ``tau_spread * tau``; 0: none)."""

    batch_context: BatchContext | None = None
    tau_spread: float = 0.0

    def __post_init__(self) -> None:
        _set(self, "tau_spread", _float("stages.tau_spread", self.tau_spread, 0))


@dataclass(frozen=True)
class TrainingRecord:
    """What the predictor was trained on and how (for the card, and to warn when it is
    evaluated on its own training queries: ``text_sha256``, see :func:`text_sha256`)."""

    data: str | tuple[str, ...]
    split: str
    n_train: int
    tasks: tuple[str, ...] = ()
    test_tasks: tuple[str, ...] = ()
    seed: int = 0
    loss: str = "likelihood"
    runaway: float | None = None  # the likelihood's run-away rate c (None: DESIGN.md's form)
    init_from: str | None = None
    refit_all: bool = False
    held_out_split: str | None = None
    text_sha256: tuple[str, ...] | None = None  # None: not recorded (format 1 exports)

    def __post_init__(self) -> None:
        if not isinstance(self.data, str):
            _set(self, "data", tuple(str(x) for x in self.data))
        _str("training.split", self.split)
        _int("training.n_train", self.n_train, 0)
        _set(self, "tasks", tuple(self.tasks))
        _set(self, "test_tasks", tuple(self.test_tasks or ()))
        _int("training.seed", self.seed)
        _str("training.loss", self.loss)
        if self.runaway is not None:
            _float("training.runaway", self.runaway)
            if not 0.0 < self.runaway < 1.0:
                raise ConfigError(f"training.runaway must be null or in (0, 1), got "
                                  f"{self.runaway!r}")
        _bool("training.refit_all", self.refit_all)
        if self.text_sha256 is not None:
            h = tuple(self.text_sha256)
            if not all(isinstance(x, str) and len(x) == 16 for x in h):
                raise ConfigError("training.text_sha256 must be a list of 16-hex-digit "
                                  "strings")
            _set(self, "text_sha256", h)


@dataclass(frozen=True)
class PredictorConfig:
    """Everything an exported predictor is, but its weights and tokenizer files."""

    encoder: EncoderConfig
    head: HeadConfig
    generator: GeneratorConfig
    stages: Stages = field(default_factory=Stages)
    training: TrainingRecord | None = None
    metrics: dict = field(default_factory=dict)  # measured at export; the card reads them
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.format_version != FORMAT_VERSION:
            raise ConfigError(f"format_version must be {FORMAT_VERSION}, got "
                              f"{self.format_version!r} (format 1: migrate_v1)")
        for name, cls in (("encoder", EncoderConfig), ("head", HeadConfig),
                          ("generator", GeneratorConfig), ("stages", Stages)):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name} must be a {cls.__name__}, got "
                                  f"{getattr(self, name)!r}")
        if not isinstance(self.metrics, dict):
            raise ConfigError(f"metrics must be a JSON object, got {self.metrics!r}")

    # ---- JSON ------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-ready (tuples as lists); :meth:`from_dict` reads it back."""
        out = json.loads(json.dumps(asdict(self)))
        st = out["stages"]
        st["batch_context"] = self.stages.batch_context and self.stages.batch_context.to_dict()
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, d: Mapping) -> "PredictorConfig":
        """A config from its JSON object, format 1 migrated (:func:`migrate_v1`); raises
        :class:`ConfigError` naming the first bad field or unknown key."""
        if not isinstance(d, Mapping):
            raise ConfigError(f"a predictor config must be a JSON object, got {type(d).__name__}")
        version = d.get("format_version")
        if version == 1:
            d = migrate_v1(d)
        elif version != FORMAT_VERSION:
            raise ConfigError(f"format_version {version!r}: this version of clear-learn reads "
                              f"1 and {FORMAT_VERSION}")
        return _build(cls, d, "config", {
            "encoder": lambda e: _build(EncoderConfig, e, "encoder", {
                "lora": lambda x: _build(LoraSettings, x, "encoder.lora")}),
            "head": lambda h: _build(HeadConfig, h, "head"),
            "generator": lambda g: _build(GeneratorConfig, g, "generator"),
            "stages": lambda s: _build(Stages, _drop_tau_k_source(s, "stages"), "stages",
                                       {"batch_context": _context}),
            "training": lambda t: _build(TrainingRecord, t, "training")})

    @classmethod
    def from_json_file(cls, path: str | Path) -> "PredictorConfig":
        """Read ``path``; every failure is a :class:`ConfigError` naming the file."""
        path = Path(path)
        try:
            data = json.loads(path.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as err:
            raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})"
                              ) from None
        except json.JSONDecodeError as err:
            raise ConfigError(f"{path}: not JSON ({err})") from None
        except OSError as err:
            raise ConfigError(f"{path}: cannot read ({err.strerror or err})") from None
        try:
            return cls.from_dict(data)
        except ConfigError as err:
            raise ConfigError(f"{path}: {err}") from None

    # ---- what callers ask ----------------------------------------------------------
    def trained_on(self, texts: Iterable[str]) -> list[bool] | None:
        """For each text, whether the predictor was trained on it (None: not recorded)."""
        rec = self.training and self.training.text_sha256
        if rec is None:
            return None
        seen = set(rec)
        return [text_sha256(t) in seen for t in texts]


def _drop_tau_k_source(d, section: str):
    """``d`` (a ``stages`` JSON object) without the keys of the removed length-line stage
    (``tau_k_source``, ``length_line``) where they say what the stages now always do (tau
    and k from the encoder); a predictor exported with tau and k from the length line is
    refused: its curves cannot be reproduced by this version."""
    if not isinstance(d, Mapping) or not {"tau_k_source", "length_line"} & set(d):
        return d
    d = dict(d)
    source, line = d.pop("tau_k_source", "encoder"), d.pop("length_line", None)
    if source != "encoder" or line is not None:
        raise ConfigError(
            f"{section}.tau_k_source {source!r} with length_line {line!r}: this version of "
            "clear-learn takes tau and k from the encoder only (the stage that took them from "
            "a line in the text's length was removed: level with the encoder on unseen "
            "families, below it on seen ones); retrain it (train/train.py)")
    return d


def migrate_v1(d: Mapping) -> dict:
    """A format-1 config (the flat dict of the first exports) as a format-2 JSON object.

    Format 1 kept every field at the top level and left out the later ones, so its defaults
    live here and only here: no ``tau_spread`` is 0, no ``n_tokens_range`` is no clipping, no
    ``length_feature`` / ``surface_features`` is false; the training texts were not recorded;
    a ``tau_k_source`` other than the encoder's is refused (:func:`_drop_tau_k_source`).
    """
    d = dict(d)
    known = {"format_version", "base_model", "max_length", "head_hidden", "length_feature",
             "surface_features", "lora", "generator", "training", "metrics",
             "n_tokens_range", "batch_context", "tau_spread", "tau_k_source", "length_curve",
             "weights"}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"format 1 config: unknown keys {unknown}")
    for key in ("base_model", "max_length", "head_hidden", "generator", "weights"):
        if key not in d:
            raise ConfigError(f"format 1 config: missing '{key}'")
    lora = d.get("lora") or {}
    if not isinstance(lora, Mapping):
        raise ConfigError(f"encoder.lora must be a JSON object, got {lora!r}")
    lora = {k.removeprefix("lora_"): v for k, v in lora.items()}
    training = d.get("training")
    if isinstance(training, Mapping):
        training = dict(training)
        training.setdefault("data", "?")
        training.setdefault("split", "?")
        training.setdefault("n_train", 0)
        if training.get("test_tasks") is None:
            training["test_tasks"] = []
        training["text_sha256"] = None
    return {
        "format_version": FORMAT_VERSION,
        "encoder": {"base_model": d["base_model"], "max_length": d["max_length"],
                    "weights": d["weights"], "lora": lora or None},
        "head": {"hidden": d["head_hidden"],
                 "length_feature": d.get("length_feature", False),
                 "surface_features": d.get("surface_features", False),
                 "n_tokens_range": d.get("n_tokens_range")},
        "generator": d["generator"],
        "stages": _drop_tau_k_source({"tau_k_source": d.get("tau_k_source", "encoder"),
                                      "length_line": d.get("length_curve"),
                                      "batch_context": d.get("batch_context") or None,
                                      "tau_spread": d.get("tau_spread", 0.0)}, "stages"),
        "training": training,
        "metrics": d.get("metrics") or {},
    }
