"""The proxy's settings: one typed dataclass, read from a YAML file, every key also a flag.

``ServeConfig`` is the single source of truth: its fields are the YAML keys (snake_case)
and the command-line flags (``--kebab-case``). Precedence: the field's default, then the
YAML file (``--config``), then flags given on the command line. Unknown YAML keys and values
of the wrong type are errors naming the key. This module imports only the standard library
and PyYAML, so ``clear-learn --help`` stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

__all__ = ["ServeConfig", "ConfigError", "add_arguments", "config_from_args", "register",
           "ABANDON_POLICIES", "QUERY_SOURCES", "STANDARD_BUDGET_FIELDS"]

ABANDON_POLICIES = ("fallback", "refuse", "passthrough")
QUERY_SOURCES = ("last_user", "first_user", "all_user", "all")
TARGETS = ("granted", "consumed")
#: Budget fields that bound the whole completion; a client's own value of either caps the budget.
STANDARD_BUDGET_FIELDS = ("max_tokens", "max_completion_tokens")


class ConfigError(ValueError):
    """A setting that is missing, unknown or invalid; the message names the key."""


@dataclass
class ServeConfig:
    """Settings of ``clear-learn serve`` (each one a YAML key and a ``--flag``)."""

    upstream: str = field(default="", metadata={
        "metavar": "URL", "help": "base URL of the OpenAI-compatible upstream, ending in /v1 "
                "(e.g. http://127.0.0.1:8000/v1)"})
    predictor: str | None = field(default=None, metadata={
        "metavar": "DIR", "help": "an exported predictor directory (ClearPredictor.from_pretrained)"})
    runtime: Literal["onnx", "torch"] = field(default="onnx", metadata={
        "help": "how the predictor's encoder runs: onnx (ONNX Runtime, exported once per "
                "machine; the same curves as torch, faster) or torch"})
    host: str = field(default="127.0.0.1", metadata={"help": "address to listen on"})
    port: int = field(default=8080, metadata={"help": "port to listen on"})
    tokens_per_query: float | None = field(default=None, metadata={
        "help": "target mean budget granted per query (exactly one of this and "
                "tokens_per_second)"})
    tokens_per_second: float | None = field(default=None, metadata={
        "help": "target tokens granted per second, this replica's share (needs price or "
                "reference)"})
    max_tokens: int | None = field(default=None, metadata={
        "help": "per-query cap on the budget (default: the predictor's max_new_tokens)"})
    budget_field: str = field(default="max_tokens", metadata={
        "help": "request field the budget is written into: max_tokens, "
                "max_completion_tokens, or a thinking-budget field such as "
                "thinking_token_budget"})
    query: Literal["last_user", "first_user", "all_user", "all"] = field(
        default="last_user", metadata={"help": "which chat text is the query"})
    abandon_policy: Literal["fallback", "refuse", "passthrough"] = field(
        default="fallback", metadata={
            "help": "abandoned queries: forward with fallback_tokens, refuse with "
                    "refuse_status, or forward unchanged (passthrough; not with cap_tokens)"})
    fallback_tokens: int = field(default=16, metadata={
        "help": "budget of an abandoned query under the fallback policy"})
    refuse_status: int = field(default=429, metadata={
        "help": "HTTP status of a refused (abandoned) query"})
    price: float | None = field(default=None, metadata={
        "help": "starting shadow price (default: bootstrapped, or from reference)"})
    reference: str | None = field(default=None, metadata={
        "metavar": "FILE", "help": "a text file of reference queries (one per line) to warm-start the price"})
    queries_per_second: float | None = field(default=None, metadata={
        "help": "arrival rate of the reference traffic (with tokens_per_second and "
                "reference)"})
    horizon: float = field(default=25.0, metadata={
        "help": "the controller's time constant, in queries (or seconds)"})
    target: Literal["granted", "consumed"] = field(default="granted", metadata={
        "help": "what the rate counts: tokens granted, or consumed as reported in usage "
                "(streams are then asked for their usage)"})
    cap_tokens: int | None = field(default=None, metadata={
        "help": "hard cap: never more than this many tokens granted per cap_window"})
    cap_window: float | None = field(default=None, metadata={
        "help": "window of the hard cap (queries, or seconds with tokens_per_second)"})
    timeout: float = field(default=60.0, metadata={
        "help": "seconds to wait for the upstream before a 504: to the headers, and again "
                "for the rest of the body (between chunks when streaming)"})
    connect_timeout: float = field(default=5.0, metadata={
        "help": "seconds to connect to the upstream before a 502"})
    batch_size: int = field(default=64, metadata={
        "help": "most queries the encoder predicts in one micro-batch"})
    batch_wait_ms: float = field(default=0.0, metadata={
        "help": "how long a micro-batch waits for company once the encoder is free (0: "
                "none; batches still form from what queued while the encoder ran)"})
    queue_timeout_ms: float | None = field(default=1000.0, metadata={
        "help": "longest a query waits for the encoder to start on it; past it, it is "
                "granted as the typical query (the mean predicted curve) at the live price "
                "(shed; keep it above a full batch's time, clear_prediction_seconds; null: "
                "wait)"})
    upstream_api_key_env: str | None = field(default=None, metadata={
        "help": "name of an environment variable holding the upstream's API key, used when "
                "a client sends no Authorization (never logged)"})
    log_level: str = field(default="info", metadata={"help": "log level"})

    # ---------------------------------------------------------------- validation
    def validate(self, *, require_upstream: bool = True) -> "ServeConfig":
        """Check every setting (``upstream`` may be empty without ``require_upstream``, as
        for the LiteLLM hook); raises :class:`ConfigError` naming the first bad key."""
        if self.upstream or require_upstream:
            if not self.upstream:
                raise ConfigError("upstream: required (the upstream's base URL ending in /v1)")
            if not self.upstream.startswith(("http://", "https://")):
                raise ConfigError(f"upstream: must be an http(s) URL, got {self.upstream!r}")
            self.upstream = self.upstream.rstrip("/")
            if not self.upstream.endswith("/v1"):
                raise ConfigError(f"upstream: must end in /v1, got {self.upstream!r}")
        if (self.tokens_per_query is None) == (self.tokens_per_second is None):
            raise ConfigError("tokens_per_query / tokens_per_second: give exactly one")
        for name in ("tokens_per_query", "tokens_per_second", "price", "queries_per_second",
                     "horizon", "timeout", "connect_timeout", "cap_window",
                     "queue_timeout_ms"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ConfigError(f"{name}: must be a finite number > 0, got {v!r}")
        for name in ("max_tokens", "cap_tokens", "batch_size"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConfigError(f"{name}: must be >= 1, got {v!r}")
        if self.fallback_tokens < 0:
            raise ConfigError(f"fallback_tokens: must be >= 0, got {self.fallback_tokens!r}")
        if self.abandon_policy == "fallback" and self.fallback_tokens == 0:
            raise ConfigError("fallback_tokens: must be >= 1 with abandon_policy fallback (0 "
                              "would refuse every abandoned query; say abandon_policy: refuse "
                              "for that)")
        if self.batch_wait_ms < 0:
            raise ConfigError(f"batch_wait_ms: must be >= 0, got {self.batch_wait_ms!r}")
        if not 1 <= self.port <= 65535:
            raise ConfigError(f"port: must be in 1..65535, got {self.port!r}")
        if not 400 <= self.refuse_status <= 599:
            raise ConfigError(f"refuse_status: must be an HTTP error status, got "
                              f"{self.refuse_status!r}")
        if not self.budget_field.isidentifier():
            raise ConfigError(f"budget_field: must be a field name, got {self.budget_field!r}")
        if (self.cap_tokens is None) != (self.cap_window is None):
            raise ConfigError("cap_tokens / cap_window: give both or neither")
        if self.abandon_policy == "passthrough" and self.cap_tokens is not None:
            raise ConfigError("abandon_policy / cap_tokens: passthrough forwards abandoned "
                              "queries with no limit, which the hard cap cannot count; use "
                              "fallback or refuse with cap_tokens")
        if self.tokens_per_second is not None and self.price is None and (
                self.reference is None or self.queries_per_second is None):
            raise ConfigError("tokens_per_second: needs price, or reference with "
                              "queries_per_second")
        if self.reference is not None and not Path(self.reference).is_file():
            raise ConfigError(f"reference: no such file {self.reference!r}")
        if self.upstream_api_key_env is not None and self.upstream_api_key_env not in os.environ:
            raise ConfigError(f"upstream_api_key_env: environment variable "
                              f"{self.upstream_api_key_env!r} is not set")
        return self

    @property
    def upstream_api_key(self) -> str | None:
        """The upstream key from ``upstream_api_key_env`` (read when needed, never stored)."""
        return os.environ.get(self.upstream_api_key_env) if self.upstream_api_key_env else None

    # ---------------------------------------------------------------- YAML
    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "ServeConfig":
        """Read a YAML mapping of these keys (unknown keys and wrong types are errors)."""
        import yaml

        try:
            data = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as err:
            raise ConfigError(f"config: cannot read {path}: {err}") from None
        except yaml.YAMLError as err:
            raise ConfigError(f"config: {path} is not valid YAML: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config: {path} must hold a mapping of settings")
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ServeConfig":
        """Build from a mapping of these keys, coercing and checking each value's type."""
        known = {f.name: f for f in fields(cls)}
        kwargs = {}
        for key, value in data.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise ConfigError(f"{key}: unknown setting (known: {', '.join(known)})")
            kwargs[name] = _coerce(name, _field_type(known[name]), value)
        return cls(**kwargs)


def _field_type(f: dataclasses.Field) -> Any:
    return typing.get_type_hints(ServeConfig)[f.name]


def _base(tp: Any) -> tuple[Any, bool, tuple | None]:
    """(scalar type, optional?, allowed choices) of a field's annotation."""
    optional = False
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        rest = [a for a in args if a is not type(None)]
        optional = len(rest) < len(args)
        tp = rest[0]
    if typing.get_origin(tp) is Literal:
        return str, optional, typing.get_args(tp)
    return tp, optional, None


def _coerce(name: str, tp: Any, value: Any) -> Any:
    base, optional, choices = _base(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{name}: must not be empty")
    try:
        if base is bool:
            if not isinstance(value, bool):
                raise TypeError
            out: Any = value
        elif base is int:
            if isinstance(value, bool) or (isinstance(value, float) and value != int(value)):
                raise TypeError
            out = int(value)
        elif base is float:
            if isinstance(value, bool):
                raise TypeError
            out = float(value)
        else:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise TypeError
            out = str(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected {getattr(base, '__name__', base)}, got "
                          f"{value!r}") from None
    if choices is not None and out not in choices:
        raise ConfigError(f"{name}: must be one of {choices}, got {value!r}")
    return out


# -------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one ``--flag`` per :class:`ServeConfig` field to ``parser``.

    Flags default to ``argparse.SUPPRESS`` so that only the flags actually given override
    the YAML file.
    """
    parser.add_argument("--config", help="a YAML file of these settings (flags override it)")
    for f in fields(ServeConfig):
        base, _, choices = _base(_field_type(f))
        kind = {int: "int", float: "float"}.get(base, "str")
        parser.add_argument("--" + f.name.replace("_", "-"), dest=f.name,
                            type=lambda s, n=f.name, t=_field_type(f): _flag(n, t, s),
                            choices=choices, default=argparse.SUPPRESS,
                            metavar=(f.metadata.get("metavar", kind.upper())
                                     if choices is None else None),
                            help=f"{f.metadata.get('help', '')} (YAML key {f.name}; "
                                 f"default {f.default!r})")


def _flag(name: str, tp: Any, text: str) -> Any:
    try:
        base, optional, _ = _base(tp)
        if optional and text.strip().lower() in ("none", "null"):  # YAML's null
            return None
        return _coerce(name, tp, base(text) if base in (int, float) else text)
    except (ConfigError, ValueError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """The validated config of parsed arguments: defaults < ``--config`` YAML < flags."""
    cfg = ServeConfig.from_yaml(args.config) if getattr(args, "config", None) else ServeConfig()
    for f in fields(ServeConfig):
        if hasattr(args, f.name):
            setattr(cfg, f.name, getattr(args, f.name))
    return cfg.validate()


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``serve`` subcommand on a ``clear-learn`` subparsers object."""
    p = subparsers.add_parser(
        "serve", help="an OpenAI-compatible proxy that sets each request's token budget",
        description="Run an OpenAI-compatible HTTP proxy in front of an upstream server "
                    "(vLLM, SGLang, llama.cpp, transformers serve, a hosted API): each "
                    "request's budget is set from its predicted curve and a live shadow "
                    "price. Every setting is a YAML key of --config and a flag.")
    add_arguments(p)
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    try:
        cfg = config_from_args(args)
    except ConfigError as err:
        raise ValueError(str(err)) from None
    from .server import run

    return run(cfg)
