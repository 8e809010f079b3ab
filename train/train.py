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
and its metrics are the held-out run's. ``export.study`` (a ``study.json`` of
``train/study.py``) and ``export.study_variant`` put that variant's figures on unseen task
families into the metrics and the card. The work is done by :mod:`clear_learn.training`.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from clear_learn.training.heldout import evaluate
from clear_learn.training.recipe import (DEFAULT_CONFIG, eval_splits, load_config,
                                         refit_on_all, resolve, train_predictor)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(DEFAULT_CONFIG))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--resume", action="store_true", help="continue from run_dir's last ckpt")
    ap.add_argument("--no-eval", action="store_true")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.set)
    if not args.no_eval:
        eval_splits(cfg)  # a bad value fails now, not after the training
    study = study_figures(cfg["export"].get("study"), cfg["export"].get("study_variant"))
    pred, dm, metrics = train_predictor(cfg, resume=args.resume)
    if pred is None:
        return 0
    if not args.no_eval:
        metrics.update(evaluate(pred, dm, cfg))
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
        pred.config = replace(pred.config, training=replace(
            pred.config.training, refit_all=True, held_out_split=cfg["data"]["split"]))
    if study is not None:
        metrics["unseen_families"] = study
    pred.config = replace(pred.config, metrics=metrics)
    out = resolve(cfg["export"]["dir"])
    pred.save_pretrained(out, merged=bool(cfg["export"].get("merged", False)))
    print(f"\nexported predictor to {out} (trained {metrics['train_seconds']} s, "
          f"{metrics['epochs']} epochs, best val NLL {metrics['best_val_nll']})")
    return 0


#: study.json ablation rows -> the card's names
STUDY_ROWS = {"every stage (shipped)": "learned", "length line (same stages)": "length line",
              "TF-IDF baseline (same stages)": "TF-IDF"}


def study_figures(path, variant) -> dict | None:
    """``variant``'s gap closed on unseen families from ``train/study.py``'s ``path``
    (study.json): per protocol ``{row: [mean, sd over seeds]}`` for the learned curves and
    the two baselines; None without a path; an exit naming the file and field otherwise."""
    if not path:
        return None
    try:
        study = json.loads(resolve(path).read_text())
    except (OSError, ValueError) as err:
        raise SystemExit(f"export.study {path}: cannot read ({err})") from None

    def cell(c: dict) -> list:  # [mean, sd over seeds (None: one seed)]
        sd = c["sd_seeds"]
        return [round(c["mean"], 4), None if sd is None else round(sd, 4)]

    try:
        got = study["variants"][variant]
        figures = {proto: {name: cell(got["ablation"][row][key])
                           for row, name in STUDY_ROWS.items()}
                   for proto, key in (("one batch", "pooled"),
                                      ("each family its own batch", "family_batches"))}
    except (KeyError, TypeError) as err:
        there = sorted(study.get("variants") or {}) if isinstance(study, dict) else []
        raise SystemExit(f"export.study {path}: no figures for export.study_variant "
                         f"{variant!r} (missing {err}); variants there: {there}") from None
    return {"variant": variant, "groups": study.get("groups"), "seeds": got.get("seeds"),
            "data": study.get("data"), "gap_closed": figures}


if __name__ == "__main__":
    sys.exit(main())
