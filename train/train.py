"""Train a curve predictor with Lightning from a YAML config, export it, evaluate it.

    python train/train.py --config configs/default.yaml [--set data.split=task ...] [--resume]

Steps: seed everything; build ``RolloutDataModule`` and ``CurveLightningModule`` from the
config's ``data`` and ``model`` sections and a ``Trainer`` from ``trainer`` (devices, strategy:
DDP is a config change); fit with early stopping on ``val_nll`` and checkpoints in
``run_dir`` (``--resume`` continues from the last one); evaluate the best model on the
held-out split against uniform, the TF-IDF and length baselines, the oracle and the exact
optimum; export it as a ``ClearPredictor`` to ``export.dir`` (atomically). With
``export.refit_all: true`` the exported weights are instead the same recipe refitted on every
query for the held-out run's best number of epochs, or ``export.refit_epochs`` (for example the
median best epoch of ``cross_family.py``'s folds, chosen on unseen families); the card says so
and its metrics are the held-out run's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def parse_value(text: str):
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_config(path: str | Path, overrides: list[str] = ()) -> dict:
    """The YAML config with ``section.key=value`` overrides applied."""
    cfg = yaml.safe_load(Path(path).read_text())
    for item in overrides:
        if "=" not in item:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        node = cfg
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = parse_value(value)
    return cfg


def build_trainer(cfg: dict, run_dir: Path, *, callbacks_extra=()):
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    ckpt = ModelCheckpoint(dirpath=run_dir / "checkpoints", monitor="val_nll", mode="min",
                           save_top_k=1, save_last=True, filename="best-{epoch}-{val_nll:.4f}")
    es = EarlyStopping(mode="min", **cfg.get("early_stopping", {"monitor": "val_nll"}))
    kwargs = {"enable_progress_bar": True, **cfg.get("trainer", {})}
    trainer = L.Trainer(default_root_dir=str(run_dir), callbacks=[ckpt, es, *callbacks_extra],
                        logger=L.pytorch.loggers.CSVLogger(str(run_dir), name="logs"), **kwargs)
    return trainer, ckpt


def export_predictor(module, dm, cfg: dict, metrics: dict | None = None):
    """A ``ClearPredictor`` from a trained module, with its config and card."""
    from clear_learn.predictor.export import ClearPredictor

    records = dm.split_records("train")
    gen = records[0].get("generator", {}) if records else {}
    caps = {int(r["max_new_tokens"]) for r in dm.records}
    models = {r.get("generator", {}).get("model", "unknown") for r in dm.records}
    if len(models) != 1:
        raise SystemExit(f"training data mixes generating models {sorted(models)}: a "
                         "predictor's curves belong to one model")
    if len(caps) != 1:
        raise SystemExit(f"training data mixes generation caps {sorted(caps)}: a predictor's "
                         "curves belong to one cap")
    mcfg = cfg["model"]
    pcfg = {
        "base_model": cfg["data"]["base_model"],
        "max_length": int(cfg["data"]["max_length"]),
        "head_hidden": int(mcfg.get("head_hidden", 128)),
        "length_feature": bool(mcfg.get("length_feature", True)),
        "surface_features": bool(mcfg.get("surface_features", False)),
        "lora": {k: mcfg[k] for k in ("lora_r", "lora_alpha", "lora_dropout", "lora_targets")
                 if k in mcfg},
        "generator": {"model": gen.get("model", "unknown"),
                      "tokenizer": gen.get("model", "unknown") + " (its own tokenizer)",
                      "backend": gen.get("backend"), "temperature": gen.get("temperature"),
                      "top_p": gen.get("top_p"), "n": gen.get("n"),
                      "max_new_tokens": caps.pop()},
        "training": {"data": _json_data(cfg["data"]["data"]), "split": cfg["data"]["split"],
                     "test_tasks": list(cfg["data"].get("test_tasks") or []),
                     "n_train": len(records), "seed": cfg.get("seed", 0),
                     "tasks": sorted({r["task"] for r in records}),
                     "loss": mcfg.get("loss", "likelihood"),
                     "init_from": mcfg.get("init_from")},
        "metrics": metrics or {},
    }
    n_tok = [len(x) for x in dm.tokenizer([r["text"] for r in records], truncation=False,
                                          verbose=False)["input_ids"]]
    if n_tok:
        pcfg["n_tokens_range"] = [min(n_tok), max(n_tok)]
    ctx = context_from_config(cfg, records)
    if ctx is not None:
        pcfg["batch_context"] = ctx.to_dict()
    pcfg["tau_spread"] = spread_from_config(cfg)
    if tau_k_from_config(cfg) == "length":
        from clear_learn.predictor.baselines import LengthCurvePredictor

        pcfg["tau_k_source"] = "length"
        pcfg["length_curve"] = LengthCurvePredictor().fit(records).to_dict()
    module.model.train(False)
    return ClearPredictor(module.model, dm.tokenizer, pcfg)


def context_from_config(cfg: dict, records: list[dict]):
    """The ``BatchContext`` of the config's ``batch_context`` section fitted on ``records``
    (None where the section is absent or ``enabled: false``)."""
    from clear_learn.predictor.batch_context import within_task_slopes

    bcfg = dict(cfg.get("batch_context") or {})
    if not bcfg.pop("enabled", False) or not records:
        return None
    return within_task_slopes(records, **bcfg)


def with_context(predicted: dict, texts: list[str], ctx, per_query=None) -> dict:
    """``predicted`` with every curve shifted by batch context (``ctx``; ``per_query``, one
    ``BatchContext`` per text, replaces its slopes and offset bound text by text), plus the
    learned curves as they were under ``clear-learned-raw``; unchanged when ``ctx`` is None."""
    from clear_learn.predictor.batch_context import (clip_offsets, relative_log_length,
                                                     shift_by_length)

    if ctx is None:
        return predicted
    if per_query is None:
        d, tau_slope, p_slope = ctx.offsets(texts), ctx.tau_slope, ctx.p_slope
    else:
        d = clip_offsets(relative_log_length(texts, ctx.neighbours, ctx.min_similarity),
                         [c.max_offset for c in per_query])
        tau_slope = np.array([c.tau_slope for c in per_query])
        p_slope = np.array([c.p_slope for c in per_query])
    out = {name: shift_by_length(c, d, tau_slope, p_slope) for name, c in predicted.items()}
    out["clear-learned-raw"] = predicted["clear-learned"]
    return out


def spread_from_config(cfg: dict) -> float:
    """The config's ``calibration.tau_spread`` (0 where absent), checked."""
    from clear_learn.predictor.calibration import check_tau_spread

    return check_tau_spread((cfg.get("calibration") or {}).get("tau_spread", 0.0),
                            "calibration.tau_spread")


def tau_k_from_config(cfg: dict) -> str:
    """The config's ``calibration.tau_k_from`` (``encoder`` where absent), checked."""
    from clear_learn.predictor.export import TAU_K_SOURCES

    src = (cfg.get("calibration") or {}).get("tau_k_from", "encoder")
    if src not in TAU_K_SOURCES:
        raise SystemExit(f"calibration.tau_k_from must be one of {TAU_K_SOURCES}, got {src!r}")
    return src


def with_sources(predicted: dict, source: str) -> dict:
    """With ``source == "length"``: the learned curves take the length baseline's tau and k
    (``clear-learned``), and the encoder's own stay as ``clear-encoder``; else unchanged."""
    from clear_learn.curves import Curves

    if source != "length":
        return predicted
    enc, line = predicted["clear-learned"], predicted["clear-length"]
    return {**predicted, "clear-learned": Curves(line.tau, enc.p, line.k), "clear-encoder": enc}


def with_spread(predicted: dict, spreads: dict) -> dict:
    """``predicted`` with each policy named in ``spreads`` widened by its spread (a number or
    one per curve), plus the learned curves before it under ``clear-learned-narrow``;
    ``clear-learned-raw`` (the learned curves before batch context and spread) is left as it
    is."""
    if not any(np.any(np.asarray(s) > 0) for s in spreads.values()):
        return predicted
    out = {name: c.widened(spreads[name]) if name in spreads else c
           for name, c in predicted.items()}
    out["clear-learned-narrow"] = predicted["clear-learned"]
    return out


def _json_data(data) -> str | list[str]:
    """The config's data sources as the card records them."""
    return [str(d) for d in data] if isinstance(data, (list, tuple)) else str(data)


def resolve(path: str | Path) -> Path:
    """A config path, relative to the repository root unless absolute."""
    path = Path(path)
    return path if path.is_absolute() else ROOT / path


def build_modules(cfg: dict):
    """Threads and seeds set, then ``(datamodule, lightning module)`` as ``cfg`` says, the
    module in train mode (``from_pretrained`` returns eval mode)."""
    import lightning as L
    import torch

    torch.set_num_threads(int(cfg.get("threads", 2)))
    L.seed_everything(int(cfg.get("seed", 0)), workers=True)
    from clear_learn.predictor.data import RolloutDataModule
    from clear_learn.predictor.lightning import CurveLightningModule

    data = dict(cfg["data"])
    # the regression loss needs each query's own fitted curve as its target
    data.setdefault("regression_targets", cfg["model"].get("loss") == "regression")
    dm = RolloutDataModule(seed=int(cfg.get("seed", 0)), **data)
    mcfg = dict(cfg["model"])
    if mcfg.get("init_from"):
        mcfg["init_from"] = str(resolve(mcfg["init_from"]))
    module = CurveLightningModule(base_model=cfg["data"]["base_model"],
                                  max_length=cfg["data"]["max_length"], **mcfg)
    module.model.train()
    return dm, module


def train_predictor(cfg: dict, *, resume: bool = False):
    """Fit a predictor as ``cfg`` says; returns ``(predictor, datamodule, metrics)``.

    On a DDP worker other than rank 0 the predictor is ``None``.
    """
    from clear_learn.predictor.lightning import CurveLightningModule

    run_dir = resolve(cfg["run_dir"])
    dm, module = build_modules(cfg)
    trainer, ckpt = build_trainer(cfg, run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resume and last.exists()
                else None)
    train_s = time.perf_counter() - t0
    if trainer.global_rank != 0:
        return None, dm, {}
    best = ckpt.best_model_path
    if best:
        module = CurveLightningModule.load_from_checkpoint(best)
    dm.setup("test")
    metrics = {"train_seconds": round(train_s, 1), "best_val_nll":
               round(float(ckpt.best_model_score), 4) if ckpt.best_model_score is not None
               else None, "epochs": trainer.current_epoch,
               "best_epochs": best_epochs(best) if best else trainer.current_epoch}
    return export_predictor(module, dm, cfg, metrics), dm, metrics


def best_epochs(ckpt_path: str | Path) -> int:
    """How many epochs had been trained when the checkpoint at ``ckpt_path`` was written."""
    import torch

    return int(torch.load(ckpt_path, map_location="cpu", weights_only=False)["epoch"]) + 1


def refit_on_all(cfg: dict, epochs: int):
    """The same recipe trained on every query for ``epochs`` epochs (no validation, no test):
    the weights to ship once a held-out run has measured the recipe and chosen ``epochs``.
    Returns ``(predictor, datamodule, seconds)``."""
    import lightning as L

    cfg = json.loads(json.dumps(cfg))  # a private copy
    cfg["data"].update(split="all", test_tasks=[], val_tasks=[])
    dm, module = build_modules(cfg)
    kwargs = {"enable_progress_bar": True, **cfg.get("trainer", {})}
    kwargs.update(max_epochs=int(epochs), limit_val_batches=0, num_sanity_val_steps=0,
                  enable_checkpointing=False)
    run_dir = resolve(cfg["run_dir"]) / "refit"
    trainer = L.Trainer(default_root_dir=str(run_dir),
                        logger=L.pytorch.loggers.CSVLogger(str(run_dir), name="logs"), **kwargs)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    secs = time.perf_counter() - t0
    if trainer.global_rank != 0:
        return None, dm, secs
    return export_predictor(module, dm, cfg), dm, secs


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--resume", action="store_true", help="continue from run_dir's last ckpt")
    ap.add_argument("--no-eval", action="store_true")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.set)
    if not args.no_eval:
        eval_splits(cfg)  # a bad value fails now, not after the training
    pred, dm, metrics = train_predictor(cfg, resume=args.resume)
    if pred is None:
        return 0
    if not args.no_eval:
        metrics.update(evaluate(pred, dm, cfg))
        pred.config["metrics"] = metrics
    if cfg["export"].get("refit_all"):
        fixed = cfg["export"].get("refit_epochs")
        epochs = int(fixed) if fixed else int(metrics["best_epochs"])
        metrics["refit_epochs"] = epochs
        source = "export.refit_epochs" if fixed else "the held-out run's best"
        print(f"\nrefitting on every query for {epochs} epochs ({source})")
        pred, _, secs = refit_on_all(cfg, epochs)
        if pred is None:
            return 0
        metrics["refit_seconds"] = round(secs, 1)
        pred.config["metrics"] = metrics
        pred.config["training"].update(refit_all=True, held_out_split=cfg["data"]["split"])
    out = resolve(cfg["export"]["dir"])
    pred.save_pretrained(out, merged=bool(cfg["export"].get("merged", False)))
    print(f"\nexported predictor to {out} (trained {metrics['train_seconds']} s, "
          f"{metrics['epochs']} epochs, best val NLL {metrics['best_val_nll']})")
    return 0


def _finite(x: float) -> float | None:
    """``x``, or ``None`` where it is not a number (strict JSON has no NaN)."""
    return float(x) if x is not None and np.isfinite(x) else None


def eval_splits(cfg: dict) -> int:
    """``evaluate.splits``: rollout halvings the held-out figures are averaged over."""
    n = cfg.get("evaluate", {}).get("splits", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SystemExit(f"evaluate.splits must be a positive integer, got {n!r}")
    return n


def evaluate(pred, dm, cfg: dict) -> dict:
    """Held-out figures: NLL and allocation frontiers against baselines."""
    from clear_learn.evaluation import mean_gap_closed, plot_frontier
    from clear_learn.predictor.baselines import LengthCurvePredictor, TfidfCurvePredictor
    from clear_learn.predictor.report import evaluate_predictors

    train, test = dm.split_records("train"), dm.split_records("test")
    texts = [r["text"] for r in test]
    t0 = time.perf_counter()
    learned = pred.predict(texts, batch_context=False, tau_spread=0, tau_k_source="encoder")
    pred_s = time.perf_counter() - t0
    predicted = with_sources({"clear-learned": learned,
                              "clear-tfidf": TfidfCurvePredictor().fit(train).predict(texts),
                              "clear-length": LengthCurvePredictor().fit(train).predict(texts)},
                             pred.tau_k_source)
    predicted = with_context(predicted, texts, pred.batch_context)
    # every predictor gets the same treatment: context, then the spread
    predicted = with_spread(predicted, {name: pred.tau_spread for name in predicted
                                        if name != "clear-learned-raw"})
    ecfg = cfg.get("evaluate", {})
    budgets = ecfg.get("budgets_per_query", [64, 128, 256, 512])
    splits = eval_splits(cfg)
    report, nll = evaluate_predictors(test, predicted, budgets, seed=int(cfg.get("seed", 0)),
                                      splits=splits)
    out = resolve(ecfg.get("out", "runs/eval"))
    report.meta.update({"n_train": len(train), "split": cfg["data"]["split"],
                        "test_tasks": cfg["data"].get("test_tasks"),
                        "batch_context": pred.config.get("batch_context"),
                        "tau_spread": pred.tau_spread, "tau_k_source": pred.tau_k_source})
    report.save(out / "report.json")
    plot_frontier(report, out / "frontier.png",
                  title=f"held-out ({cfg['data']['split']} split): accuracy vs tokens")
    print(f"\nheld-out queries: {len(test)} (train {len(train)}); mean accuracy")
    print(report.table())
    print("\nshare of the uniform-to-oracle gap closed")
    print(report.table("gap_closed"))
    means = mean_gap_closed(report)
    print("mean gap closed (budgets where the oracle beats uniform by >= 0.02): "
          + ", ".join(f"{k} {means[k]:.3f}" for k in predicted))
    print("\nNLL per held-out rollout: " + ", ".join(f"{k} {v:.4f}" for k, v in nll.items()))
    print(f"wrote {out / 'report.json'} and {out / 'frontier.png'}")
    gaps = {name: [_finite(r["gap_closed"]) for r in rows] for name, rows in report.rows.items()}
    return {"test_queries": len(test), "eval_splits": splits,
            "nll_per_rollout": {k: round(v, 4) for k, v in nll.items()},
            "gap_closed": {k: [None if x is None else round(x, 3) for x in v]
                           for k, v in gaps.items()},
            "mean_gap_closed": {k: _finite(v) for k, v in means.items()},
            "budgets_per_query": budgets,
            "mean_accuracy": {k: [round(r["mean_accuracy"], 4) for r in rows]
                              for k, rows in report.rows.items()},
            "predict_seconds_per_query": pred_s / max(len(test), 1)}


if __name__ == "__main__":
    sys.exit(main())
