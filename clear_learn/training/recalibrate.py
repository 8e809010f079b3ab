"""Recalibration: an exported predictor trained further on a user's own rollouts.

:func:`recalibrate` starts from an exported predictor (its weights loaded as the recipe's
``model.init_from``) and trains on every query of the user's rollout file for a fixed number
of epochs (:func:`recalibration_config` is that recipe, run by
:func:`~clear_learn.training.recipe.refit_on_all`). What it keeps from the base and what it
refits:

- the architecture (base encoder, ``max_length``, LoRA r / alpha / dropout / targets, head
  width, length and surface features) and the stages' choices (batch
  context on or off with its neighbourhood, ``tau_spread``) are the base's;
- the generator section and the cap are the user's: the curves live in tokens of the new
  model. The batch-context slopes (log-log, so free of the tokens' unit) are the base's and
  the user's pooled, each weighted by the number of queries it was fitted on
  (:func:`pooled_context`): a slope fitted on 25 queries of one family alone is mostly noise,
  and its clipping range is the union of both. The network's outputs are
  relative to the cap ``M`` (:func:`~clear_learn.predictor.model.raw_to_curve`), so at another
  cap the base starts from the same curves as shares of ``M`` and training moves them;
- the caller's process is left as it was: torch's thread count and the random generators'
  states (torch, numpy, ``random``) are restored after training;
- the head's trained range of text lengths is the union of the base's and the user's (the
  weights learned from both); the recorded training texts and families are the union too, so
  that ``clear-learn evaluate`` warns on either.

Modes (:data:`MODES`): ``head`` trains the head alone, the encoder and its LoRA adapters
frozen at the base's weights; ``head+lora`` also trains the adapters (refused for a predictor
whose encoder has none, a frozen encoder). The default (:func:`default_mode`) is ``head+lora``
where the base has adapters, else ``head``. Measured (``train/recalibration_curve.py`` on the
LoRA checkpoint, paired by draw): head+lora minus head is level at 25 queries (-0.01 +- 0.02
of the uniform-to-oracle gap on unseen task families, -0.01 on Qwen2.5-Math, +0.07 +- 0.08 on
OpenAI's GSM8K solutions) and ahead from 50 (+0.03 +- 0.02 and +0.05 +- 0.01 at 50 and 100 on
unseen families, +0.08 +- 0.04 and +0.05 +- 0.01 at 100 and 200 on GSM8K), for 15-100 s of
training on one thread against 3-9 s.

:func:`register` adds the command line, ``clear-learn recalibrate PREDICTOR ROLLOUTS -o OUT``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

if TYPE_CHECKING:
    from ..predictor.batch_context import BatchContext
    from ..predictor.inference import ClearPredictor

__all__ = ["MODES", "default_mode", "DEFAULT_EPOCHS", "MIN_QUERIES", "recalibrate",
           "recalibration_config", "user_records", "check_output", "pooled_context",
           "register"]

MODES = ("head", "head+lora")
#: Epochs by mode: fixed, no early stopping (every query trains). With batches of 16, 25
#: queries make 40 head steps, 200 queries 260.
DEFAULT_EPOCHS = {"head": 20, "head+lora": 10}
MIN_QUERIES = 8
#: Optimiser settings of the training recipe (configs/default.yaml, section model).
OPTIMISER = {"lr": 5e-4, "head_lr": 3e-3, "weight_decay": 0.01, "loss": "likelihood"}


def user_records(records: str | os.PathLike | Iterable[dict]) -> list[dict]:
    """The user's records (a rollout file or records), validated, with one generation cap
    and one generating model, at least :data:`MIN_QUERIES` of them; a ``ValueError`` says
    what is wrong."""
    from ..rollouts import RolloutValidationError, read_rollouts, validate_rollouts

    if isinstance(records, (str, os.PathLike)):
        where, records = str(records), read_rollouts(records)
    else:
        where, records = "records", list(records)
        problems = validate_rollouts(records)
        if problems:
            raise RolloutValidationError(where, problems)
    caps = sorted({int(r["max_new_tokens"]) for r in records})
    if len(caps) > 1:
        raise ValueError(f"{where}: mixes generation caps {caps}: recalibrate on rollouts of "
                         "one cap (the curves live in its tokens)")
    models = sorted({str((r.get("generator") or {}).get("model", "unknown")) for r in records})
    if len(models) > 1:
        raise ValueError(f"{where}: mixes generating models {models}: recalibrate on "
                         "rollouts of one model")
    if len(records) < MIN_QUERIES:
        raise ValueError(f"{where}: {len(records)} queries; recalibration needs at least "
                         f"{MIN_QUERIES}")
    return records


def check_output(base_dir: str | os.PathLike, out: str | os.PathLike) -> Path:
    """``out`` as a path a recalibrated predictor may be saved to, else a ``ValueError``:
    not the base predictor, not a folder holding it or inside it, and not an existing file or
    non-empty folder that is not an exported predictor (a save replaces the whole folder)."""
    base, path = Path(base_dir).resolve(), Path(out).resolve()
    if path == base:
        raise ValueError(f"{out}: is the base predictor itself; write the recalibrated "
                         "predictor to another folder")
    if path in base.parents or base in path.parents:
        raise ValueError(f"{out}: holds or lies inside the base predictor {base_dir}; write "
                         "the recalibrated predictor to a folder of its own")
    from ..predictor.storage import check_replaceable

    check_replaceable(out)
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{out}: cannot write under {parent}, which is a file")
            break
    return path


def pooled_context(base: "BatchContext | None", n_base: int, own: "BatchContext | None",
                   n_own: int) -> "BatchContext | None":
    """The batch context of a recalibrated predictor: ``own`` (fitted on the user's ``n_own``
    queries) with its slopes pooled with the ``base``'s (fitted on ``n_base``), weighted by
    those counts, and clipped to the wider of the two ranges; ``own`` where either is None."""
    if base is None or own is None or n_base + n_own <= 0:
        return own
    w = n_own / (n_base + n_own)
    spans = [m for m in (base.max_offset, own.max_offset) if m is not None]
    return replace(own, tau_slope=w * own.tau_slope + (1 - w) * base.tau_slope,
                   p_slope=w * own.p_slope + (1 - w) * base.p_slope,
                   max_offset=max(spans) if len(spans) == 2 else None)


@contextlib.contextmanager
def _caller_state_kept():
    """Restore torch's thread count and the torch, numpy and ``random`` generators' states
    (and Lightning's seed variables) on exit: training seeds and sets them globally."""
    import numpy as np
    import torch

    threads, rng = torch.get_num_threads(), torch.random.get_rng_state()
    np_state, py_state = np.random.get_state(), random.getstate()
    env = {k: os.environ.get(k) for k in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")}
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.random.set_rng_state(rng)
        np.random.set_state(np_state)
        random.setstate(py_state)
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def default_mode(base: "ClearPredictor") -> str:
    """The mode :func:`recalibrate` uses unless told: ``head+lora`` for a predictor with LoRA
    adapters, ``head`` for a frozen encoder (nothing else can train)."""
    lora = base.config.encoder.lora
    return "head+lora" if lora is not None and lora.r > 0 else "head"


def recalibration_config(base: "ClearPredictor", base_dir: str | os.PathLike, records: list[dict], *,
                         mode: str | None = None, seed: int = 0, threads: int = 2,
                         batch_size: int = 16, run_dir: str | os.PathLike = "runs/recalibrate",
                         progress: bool = False) -> dict:
    """The training recipe (a :mod:`.recipe` config) that recalibrates ``base`` (a loaded
    ``ClearPredictor`` from ``base_dir``) on ``records``: the base's architecture and stage
    choices, its weights as ``model.init_from``, every query trained on (``split: all``).

    Setting ``model.init_from`` to None and ``model.freeze_encoder`` to False gives the same
    recipe trained from scratch on the same queries (the comparison issue 20 asks for). The
    likelihood is the base's (``training.runaway``), so that both train on the same loss."""
    from ..predictor.storage import PredictorLoadError

    mode = default_mode(base) if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    enc, head, st = base.config.encoder, base.config.head, base.config.stages
    if enc.weights == "merged":
        raise PredictorLoadError(f"{base_dir}: recalibration needs a predictor stored with its "
                                 "LoRA adapter apart (or none), this one has weights='merged'")
    lora = enc.lora if enc.lora is not None and enc.lora.r > 0 else None
    if lora is None and mode != "head":
        raise PredictorLoadError(f"{base_dir}: its encoder has no LoRA adapter (a frozen "
                                 f"encoder): recalibrate it with mode 'head', not {mode!r}")
    if not (enc.base_model.startswith("pkg:") or Path(enc.base_model).is_absolute()):
        raise PredictorLoadError(f"{base_dir}: its base encoder {enc.base_model!r} is a path "
                                 "relative to it; recalibration needs one named by package "
                                 "(pkg:NAME)")
    ctx = st.batch_context
    return {
        "seed": int(seed), "threads": int(threads), "run_dir": str(Path(run_dir).resolve()),
        "data": {"data": records, "base_model": enc.base_model, "max_length": enc.max_length,
                 "batch_size": int(batch_size), "split": "all"},
        "model": {**({"lora_r": lora.r, "lora_alpha": lora.alpha,
                     "lora_dropout": lora.dropout, "lora_targets": list(lora.targets)}
                    if lora is not None else {"lora_r": 0}),
                  "head_hidden": head.hidden, "length_feature": head.length_feature,
                  "surface_features": head.surface_features,
                  "encoder_layers": enc.layers, **OPTIMISER,
                  "runaway": base.config.training and base.config.training.runaway,
                  "init_from": str(Path(base_dir).resolve()),
                  "freeze_encoder": mode == "head"},
        "batch_context": ({"enabled": True, "neighbours": ctx.neighbours,
                           "min_similarity": ctx.min_similarity, "pool": ctx.pool}
                          if ctx is not None
                          else {"enabled": False}),
        "calibration": {"tau_spread": st.tau_spread},
        "trainer": {"accelerator": "auto", "devices": 1, "gradient_clip_val": 1.0,
                    "log_every_n_steps": 5, "enable_progress_bar": bool(progress),
                    "enable_model_summary": False},
    }


@_caller_state_kept()
def recalibrate(predictor_dir: str | os.PathLike, records: str | os.PathLike | Iterable[dict],
                *, mode: str | None = None, epochs: int | None = None, seed: int = 0,
                threads: int = 2, generator_model: str | None = None,
                out: str | os.PathLike | None = None, progress: bool = False
                ) -> "ClearPredictor":
    """A new ``ClearPredictor``: the one exported at ``predictor_dir`` trained further on
    ``records`` (a rollout file or records of the user's model; all of them train).

    ``mode``: ``head`` (the encoder and its LoRA frozen) or ``head+lora`` (None:
    :func:`default_mode`); ``epochs``: default :data:`DEFAULT_EPOCHS` of the mode; ``generator_model``: the generating model's
    name where the records do not give one (``generator.model``); ``out``: also save it there
    (checked by :func:`check_output` before any training; the save is atomic). Every input is
    checked before training: a bad predictor raises
    :class:`~clear_learn.predictor.storage.PredictorLoadError`, bad records a ``ValueError``.
    """
    from ..predictor.inference import ClearPredictor
    from .recipe import refit_on_all

    if mode is not None and mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int)
                               or epochs < 1):
        raise ValueError(f"epochs must be a whole number >= 1, got {epochs!r}")
    if out is not None:
        check_output(predictor_dir, out)
    label = str(records) if isinstance(records, (str, os.PathLike)) else None
    records = user_records(records)
    named = (records[0].get("generator") or {}).get("model")
    if generator_model is not None and named is not None and named != generator_model:
        raise ValueError(f"the records name their generating model {named!r}, not "
                         f"{generator_model!r}")
    base = ClearPredictor.from_pretrained(predictor_dir)
    mode = default_mode(base) if mode is None else mode
    epochs = DEFAULT_EPOCHS[mode] if epochs is None else epochs
    with tempfile.TemporaryDirectory(prefix="clear-learn-recalibrate-") as tmp:
        cfg = recalibration_config(base, predictor_dir, records, mode=mode, seed=seed,
                                   threads=threads, run_dir=tmp, progress=progress)
        t0 = time.perf_counter()
        pred, _, _ = refit_on_all(cfg, epochs)
        secs = time.perf_counter() - t0
    c, b = pred.config, base.config
    gen = c.generator
    if named is None and generator_model is not None:
        gen = replace(gen, model=generator_model,
                      tokenizer=f"{generator_model} (its own tokenizer)")
    tokenizers = {r.get("tokenizer") for r in records}
    if len(tokenizers) == 1 and isinstance(next(iter(tokenizers)), str):
        gen = replace(gen, tokenizer=tokenizers.pop())  # as the importers record it
    own, was = c.head.n_tokens_range, b.head.n_tokens_range
    n_range = own if was is None or own is None else (min(own[0], was[0]),
                                                      max(own[1], was[1]))
    t, bt = c.training, b.training
    training = replace(
        t, data=label or f"{len(records)} records given in memory",
        init_from=str(predictor_dir), refit_all=False,
        tasks=tuple(sorted(set(t.tasks) | set(bt.tasks if bt else ()))),
        text_sha256=(tuple(sorted(set(t.text_sha256) | set(bt.text_sha256)))
                     if bt is not None and bt.text_sha256 is not None else t.text_sha256))
    metrics = {"recalibration": {
        "mode": mode, "epochs": epochs, "queries": len(records),
        "train_seconds": round(secs, 1), "base_generator": b.generator.model,
        "base_max_new_tokens": b.generator.max_new_tokens}}
    stages = replace(c.stages, batch_context=pooled_context(
        b.stages.batch_context, bt.n_train if bt is not None else 0, c.stages.batch_context,
        len(records)))
    config = replace(c, head=replace(c.head, n_tokens_range=n_range), generator=gen,
                     stages=stages, training=training, metrics=metrics)
    new = ClearPredictor(pred.model, pred.tokenizer, config)
    if out is not None:
        new.save_pretrained(out)
    return new


# ---- the command line: clear-learn recalibrate ------------------------------------------
def register(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``recalibrate`` subcommand on a ``clear-learn`` subparsers object."""
    from ..cli_types import output_dir, positive_int

    p = subparsers.add_parser(
        "recalibrate", help="a predictor trained further on rollouts of your own model",
        description="Train an exported predictor further on a rollout file of your own model "
                    "or traffic (every query trains, for a fixed number of epochs) and export "
                    "the result: the base's architecture and stage choices, the post-network "
                    "stages refitted on your rollouts, the curves in tokens of your model "
                    "under its cap (which may differ from the base's).")
    p.add_argument("predictor", help="the exported predictor to start from (e.g. "
                                     "checkpoints/default)")
    p.add_argument("rollouts", help=f"rollouts of your model (one cap, one generating model, "
                                    f"at least {MIN_QUERIES} queries)")
    p.add_argument("-o", "--output", required=True, type=output_dir,
                   help="folder for the new predictor (not the base; replaced atomically if "
                        "it holds a predictor)")
    p.add_argument("--mode", choices=MODES, default=None,
                   help="head+lora (the default where the predictor has LoRA adapters): the "
                        "head and the adapters train; head (the default for a frozen "
                        "encoder): only the head trains, the encoder keeps the base's weights. "
                        "Measured: level at 25 queries, head+lora 0.03-0.08 of the gap ahead "
                        "from 50 (docs/RESULTS.md)")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="passes over your rollouts (default " + ", ".join(
                       f"{n} for {m}" for m, n in DEFAULT_EPOCHS.items()) + ")")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=positive_int, default=2, help="torch threads (default 2)")
    p.add_argument("--generator-model",
                   help="the name of the model that generated the rollouts, where they do "
                        "not give one (field generator.model; imported files do not)")
    p.set_defaults(func=_run)
    return p


def _run(args: argparse.Namespace) -> int:
    pred = recalibrate(args.predictor, args.rollouts, mode=args.mode, epochs=args.epochs,
                       seed=args.seed, threads=args.threads,
                       generator_model=args.generator_model, out=args.output, progress=True)
    print(json.dumps({**pred.config.metrics["recalibration"],
                      "generator": pred.config.generator.model,
                      "max_new_tokens": pred.max_new_tokens, "written": args.output}))
    return 0
