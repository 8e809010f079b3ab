"""A training run as the YAML recipe says: modules, trainer, fit, refit, export.

The recipe (``configs/default.yaml``) has sections ``data`` and ``model`` (the
``RolloutDataModule`` and ``CurveLightningModule`` arguments), ``trainer`` and
``early_stopping`` (Lightning), ``batch_context`` and ``calibration`` (the post-network
stages, see :mod:`clear_learn.predictor.pipeline`), ``export`` and ``evaluate``. Each setting
has one name, the one it has in the exported config and the API (``calibration.tau_spread``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository (configs/, runs/, checkpoints/)
DEFAULT_CONFIG = ROOT / "configs" / "default.yaml"

__all__ = ["ROOT", "DEFAULT_CONFIG", "parse_value", "load_config", "resolve", "eval_splits",
           "build_trainer", "build_modules", "predictor_from_run", "context_settings",
           "spread_from_config", "train_predictor", "best_epochs",
           "refit_on_all"]

_REMOVED = {("calibration", "tau_k_source"): "tau and k always come from the encoder now "
            "(a line in the text's length instead was level with it on unseen families and "
            "below it on seen ones: docs/RESULTS.md)"}
_REMOVED[("calibration", "tau_k_from")] = _REMOVED[("calibration", "tau_k_source")]


def parse_value(text: str):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def load_config(path: str | Path, overrides: list[str] = ()) -> dict:
    """The YAML config with ``section.key=value`` overrides applied; a setting that no longer
    exists is refused, saying why."""
    import yaml

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
    for (section, old), why in _REMOVED.items():
        if old in (cfg.get(section) or {}):
            raise SystemExit(f"{section}.{old}: no such setting any more: {why}")
    return cfg


def resolve(path: str | Path) -> Path:
    """A config path, relative to the repository root unless absolute."""
    path = Path(path)
    return path if path.is_absolute() else ROOT / path


def eval_splits(cfg: dict) -> int:
    """``evaluate.splits``: rollout halvings the held-out figures are averaged over."""
    n = cfg.get("evaluate", {}).get("splits", 1)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise SystemExit(f"evaluate.splits must be a positive integer, got {n!r}")
    return n


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


def context_settings(cfg: dict) -> dict | None:
    """The ``batch_context`` section's settings (``neighbours``, ``min_similarity``), or None
    where it is absent or ``enabled: false``."""
    bcfg = dict(cfg.get("batch_context") or {})
    return bcfg if bcfg.pop("enabled", False) else None


def spread_from_config(cfg: dict) -> float:
    """The config's ``calibration.tau_spread`` (0 where absent), checked."""
    from clear_learn.predictor.calibration import check_tau_spread

    return check_tau_spread((cfg.get("calibration") or {}).get("tau_spread", 0.0),
                            "calibration.tau_spread")


def predictor_from_run(module, dm, cfg: dict, metrics: dict | None = None):
    """The ``ClearPredictor`` of a trained module, its stages fitted on the run's training
    split (:meth:`ClearPredictor.from_trained` with the recipe's settings)."""
    from clear_learn.predictor.inference import ClearPredictor

    mcfg = cfg["model"]
    data = cfg["data"]["data"]
    if isinstance(data, (list, tuple)) and data and all(isinstance(d, dict) for d in data):
        data = f"{len(data)} records given in memory"  # not the records themselves
    training = {"data": [str(d) for d in data] if isinstance(data, (list, tuple)) else str(data),
                "split": cfg["data"]["split"],
                "test_tasks": list(cfg["data"].get("test_tasks") or []),
                "seed": cfg.get("seed", 0), "loss": mcfg.get("loss", "likelihood"),
                "runaway": mcfg.get("runaway"), "init_from": mcfg.get("init_from")}
    try:
        return ClearPredictor.from_trained(
            module.model, dm.tokenizer, dm.split_records("train"), all_records=dm.records,
            base_model=cfg["data"]["base_model"], max_length=int(cfg["data"]["max_length"]),
            lora={k: mcfg[k] for k in ("lora_r", "lora_alpha", "lora_dropout",
                                       "lora_targets") if k in mcfg},
            batch_context=context_settings(cfg), tau_spread=spread_from_config(cfg),
            training=training, metrics=metrics)
    except ValueError as err:
        raise SystemExit(str(err)) from None


def train_predictor(cfg: dict, *, resume: bool = False):
    """Fit a predictor as ``cfg`` says; returns ``(predictor, datamodule, metrics)``.

    On a DDP worker other than rank 0 the predictor is ``None``.
    """
    from clear_learn.predictor.lightning import CurveLightningModule

    run_dir = resolve(cfg["run_dir"])
    last = run_dir / "checkpoints" / "last.ckpt"
    resuming = resume and last.exists()
    check_resumable(cfg, run_dir, resuming)
    dm, module = build_modules(cfg)
    trainer, ckpt = build_trainer(cfg, run_dir)
    t0 = time.perf_counter()
    trainer.fit(module, datamodule=dm, ckpt_path=str(last) if resuming else None)
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
    return predictor_from_run(module, dm, cfg, metrics), dm, metrics


#: What a run's weights depend on: a resumed run must have the same (``trainer.max_epochs``,
#: the stages after the network, the export and the evaluation may change).
RESUME_KEYS = ("seed", "data", "model", "early_stopping")


def check_resumable(cfg: dict, run_dir: Path, resuming: bool) -> None:
    """Record the settings a run's weights depend on (``run_dir/recipe.json``) when it starts;
    when it resumes, refuse other settings (other data, split or seed would put test queries
    into the weights already trained; another model would not load), naming the keys."""
    from clear_learn.atomic import write_text

    now = json.loads(json.dumps({k: cfg.get(k) for k in RESUME_KEYS}, default=str))
    path = run_dir / "recipe.json"
    if resuming and path.is_file():
        was = json.loads(path.read_text())
        diff = []
        for k in RESUME_KEYS:
            a, b = now.get(k), was.get(k)
            if isinstance(a, dict) and isinstance(b, dict):
                diff += [f"{k}.{f}" for f in sorted(set(a) | set(b)) if a.get(f) != b.get(f)]
            elif a != b:
                diff.append(k)
        if diff:
            raise SystemExit(f"--resume: {run_dir} was trained with other settings "
                             f"({', '.join(diff)}); resume with those, or train afresh in "
                             "another run_dir")
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(now, indent=1) + "\n")


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
    return predictor_from_run(module, dm, cfg), dm, secs
