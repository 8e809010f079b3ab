"""Leave-one-family-out evaluation: every query's curve comes from a model that never saw its
task family, the situation of a router facing new kinds of traffic.

    python train/cross_family.py [--config configs/default.yaml] [--families a,b,...]
                                 [--set key=value ...] [--out runs/cross_family]

For each family F: train as the config says with ``data.split=task``, ``test_tasks=[F]`` and,
for early stopping, ``val_tasks=[the next family]`` (so validation also measures an unseen
family); save F's curves: the learned network's own and the TF-IDF and length baselines
fitted on the same training queries. The pooled out-of-family curves of all folds then go
through the shipped post-network stages once (``clear_learn.predictor.pipeline``: the
config's tau/k source, each query's own fold's batch context, each family's threshold spread
fitted on the other families) and are evaluated together (docs/METHOD.md, "Evaluation")
against uniform, the oracle and the exact optimum: once as one batch of all families
(``OUT/report.json``) and once with each family its own batch
(``OUT/report-family-batches.json``). Changing the batch context or the spread re-pools
without training (``POOLING_ONLY``). Each fold's curves are written as it finishes
(``OUT/folds/F.jsonl``) and reused on a rerun, so an interrupted run resumes. The work is done
by :mod:`clear_learn.training.lofo`.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from clear_learn.atomic import write_text
from clear_learn.predictor.pipeline import LEARNED
from clear_learn.training.lofo import (POLICIES, check_same_config, family_batches_report,
                                       fit_spreads, fold_contexts, fold_curves, load_fold,
                                       median_epochs, pool_stages, pooled_curves, val_family)
from clear_learn.training.recipe import DEFAULT_CONFIG, eval_splits, load_config, resolve


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(DEFAULT_CONFIG))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--families", help="comma-separated folds (default: every task)")
    ap.add_argument("--random-val", action="store_true",
                    help="validate on random training queries instead of the next family")
    ap.add_argument("--out", default="runs/cross_family")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.set)
    eval_splits(cfg)  # a bad value fails now, not after every fold's training

    from clear_learn.curves import Curves
    from clear_learn.evaluation import mean_gap_closed, plot_frontier
    from clear_learn.predictor.data import load_records
    from clear_learn.predictor.report import evaluate_predictors
    from clear_learn.rollouts import write_jsonl

    records = load_records(cfg["data"]["data"])
    tasks = sorted({r["task"] for r in records})
    families = args.families.split(",") if args.families else tasks
    unknown = set(families) - set(tasks)
    if unknown:
        raise SystemExit(f"--families: not in the data: {sorted(unknown)} (tasks: {tasks})")
    if len(tasks) < 3:
        raise SystemExit(f"leave-one-family-out needs at least 3 tasks, the data has {tasks}")
    out = resolve(args.out)
    check_same_config(out, cfg, args.random_val)
    pooled: dict[str, dict[str, dict]] = {name: {} for name in POLICIES}
    fold_epochs: dict[str, int] = {}
    for i, fam in enumerate(families):
        path = out / "folds" / f"{fam}.jsonl"
        mpath = path.with_suffix(".metrics.json")
        ids = {str(r["id"]) for r in records if r["task"] == fam}
        got = load_fold(path, ids)
        if got is not None:
            print(f"fold {fam}: reusing {path}")
        else:
            val = val_family(tasks, fam, args.random_val)
            got, metrics = fold_curves(cfg, fam, val)
            mpath.parent.mkdir(parents=True, exist_ok=True)
            write_text(mpath, json.dumps(metrics) + "\n")
            write_jsonl([{"policy": name, **r} for name, rs in got.items() for r in rs], path)
        if mpath.is_file():
            fold_epochs[fam] = int(json.loads(mpath.read_text())["best_epochs"])
        for name in POLICIES:
            pooled[name].update({str(r["id"]): r for r in got[name]})
    test = [r for r in records if r["task"] in set(families)]
    curves = {name: Curves.from_records([pooled[name][str(r["id"])] for r in test])
              for name in POLICIES}
    contexts = fold_contexts(cfg, records, test, args.random_val)
    stages = pool_stages(cfg, records, contexts)
    every = np.arange(len(test))
    spreads = fit_spreads(test, pooled_curves(curves, test, every, stages, contexts))
    per_family = spreads["per_family"]
    pooled = pooled_curves(curves, test, every, stages, contexts, per_family)
    budgets = cfg.get("evaluate", {}).get("budgets_per_query", [64, 128, 256, 512])
    seed, splits = int(cfg.get("seed", 0)), eval_splits(cfg)
    report, nll = evaluate_predictors(test, pooled, budgets, seed=seed, splits=splits)
    by_family = family_batches_report(curves, test, stages, contexts, per_family, budgets,
                                      seed, splits)
    by_family.meta["nll_per_rollout"] = nll
    report.meta.update({"protocol": "leave-one-family-out", "families": families,
                        "batch_context": contexts and {f: c.to_dict()
                                                       for f, c in contexts.items()},
                        "tau_spread": spreads,
                        "validation": "random" if args.random_val else "next family",
                        "fold_best_epochs": fold_epochs})
    by_family.meta.update(protocol="leave-one-family-out, each family its own batch",
                          families=families, validation=report.meta["validation"])
    report.save(out / "report.json")
    by_family.save(out / "report-family-batches.json")
    plot_frontier(report, out / "frontier.png",
                  title="unseen task families (leave-one-family-out)")
    print(f"\nleave-one-family-out over {len(families)} families, {len(test)} queries; "
          "mean accuracy")
    print(report.table())
    print("\nshare of the uniform-to-oracle gap closed")
    print(report.table("gap_closed"))
    print("\nNLL per rollout: " + ", ".join(f"{k} {v:.4f}" for k, v in nll.items()))
    gaps = mean_gap_closed(report)
    print("mean gap closed (budgets where the oracle beats uniform by >= 0.02): "
          + ", ".join(f"{k} {gaps[k]:.3f}" for k in pooled))
    print("\neach family its own batch: share of the uniform-to-oracle gap closed")
    print(by_family.table("gap_closed"))
    gaps = mean_gap_closed(by_family)
    print("mean gap closed (budgets where the oracle beats uniform by >= 0.02): "
          + ", ".join(f"{k} {gaps[k]:.3f}" for k in pooled))
    print(f"threshold spread of each family, fitted on the others: "
          f"{per_family[LEARNED]} (learned curves); fitted on every family: "
          f"{spreads['ship']}: ship it with\n  --set calibration.tau_spread={spreads['ship']}")
    if fold_epochs:
        med = median_epochs(fold_epochs)
        print(f"best epochs per fold (validated on an unseen family): {fold_epochs}; median "
              f"{med}: ship weights tuned for unseen families with\n  python train/train.py "
              f"--set export.refit_all=true --set export.refit_epochs={med}")
    print(f"\nwrote {out / 'report.json'}, {out / 'report-family-batches.json'} and "
          f"{out / 'frontier.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
