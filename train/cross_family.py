"""Leave-one-family-out evaluation: every query's curve comes from a model that never saw its
task family, the situation of a router facing new kinds of traffic.

    python train/cross_family.py [--config configs/default.yaml] [--families a,b,...]
                                 [--groups G [--group-seed S]] [--train-families N]
                                 [--set key=value ...] [--out runs/cross_family]

For each family F (or, with ``--groups G``, each of G fixed groups of families drawn by a
permutation seeded by ``--group-seed``): train as the config says with ``data.split=task``,
``test_tasks`` the held-out families and, for early stopping, ``val_tasks=[the next family]``
(with groups: the first family of the next group; so validation also measures an unseen
family; a family never solved is passed over, since its loss only falls with ``p``);
``--train-families N`` trains each fold on N of its other families (seeded; a learning curve
over the number of training families). Save the held-out curves: the learned network's
own and the TF-IDF and length baselines fitted on the same training queries. The pooled
out-of-family curves of all folds then go through the shipped post-network stages once
(``clear_learn.predictor.pipeline``: the config's tau/k source, each query's own fold's batch
context, each family's threshold spread fitted on the other families) and are evaluated
together (docs/METHOD.md, "Evaluation") against uniform, the oracle and the exact optimum: once
as one batch of all families (``OUT/report.json``) and once with each family its own batch
(``OUT/report-family-batches.json``). Changing the batch context or the spread re-pools
without training (``POOLING_ONLY``). Each fold's curves are written as it finishes
(``OUT/folds/NAME.jsonl``) and reused on a rerun, so an interrupted run resumes. A frozen
encoder (``--set model.lora_r=0``) caches its encodings, so a fold takes seconds of training.
The work is done by :mod:`clear_learn.training.lofo`.
"""

from __future__ import annotations

import argparse
import sys

from clear_learn.predictor.pipeline import LEARNED
from clear_learn.training.lofo import (check_same_config, evaluate_folds, fold_contexts,
                                       folds_of, median_epochs, run_folds)
from clear_learn.training.recipe import DEFAULT_CONFIG, eval_splits, load_config, resolve


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(DEFAULT_CONFIG))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--families", help="comma-separated families to hold out, one fold each "
                    "(default: every task)")
    ap.add_argument("--groups", type=int, help="hold out G fixed groups of families instead "
                    "of one family per fold")
    ap.add_argument("--group-seed", type=int, default=0,
                    help="seed of the groups' draw and of --train-families' (default 0)")
    ap.add_argument("--train-families", type=int, metavar="N",
                    help="train each fold on N of its other families (default: all)")
    ap.add_argument("--random-val", action="store_true",
                    help="validate on random training queries instead of the next solved family")
    ap.add_argument("--out", default="runs/cross_family")
    args = ap.parse_args(argv)
    cfg = load_config(args.config, args.set)
    eval_splits(cfg)  # a bad value fails now, not after every fold's training

    from clear_learn.evaluation import mean_gap_closed, plot_frontier
    from clear_learn.predictor.data import load_records

    records = load_records(cfg["data"]["data"])
    tasks = sorted({r["task"] for r in records})
    if len(tasks) < 3:
        raise SystemExit(f"leave-one-family-out needs at least 3 tasks, the data has {tasks}")
    if args.groups and args.families:
        raise SystemExit("--groups and --families exclude each other")
    try:
        folds = folds_of(records, groups=args.groups, group_seed=args.group_seed,
                         random_val=args.random_val, train_families=args.train_families)
    except ValueError as err:
        raise SystemExit(str(err)) from None
    if args.families:
        wanted = args.families.split(",")
        unknown = set(wanted) - set(tasks)
        if unknown:
            raise SystemExit(f"--families: not in the data: {sorted(unknown)} (tasks: "
                             f"{tasks})")
        if len(wanted) < 2:
            raise SystemExit("--families: give at least two (each family's threshold spread "
                             "is fitted on the others)")
        folds = [f for f in folds if f.name in set(wanted)]
    families = [fam for fold in folds for fam in fold.test]
    out = resolve(args.out)
    design = {"groups": args.groups, "group_seed": args.group_seed,
              "train_families": args.train_families}
    check_same_config(out, cfg, args.random_val,
                      design if args.groups or args.train_families else None)
    curves, fold_epochs = run_folds(cfg, records, folds, out)
    report, by_family, spreads = evaluate_folds(cfg, records, folds, curves)
    nll, per_family = report.meta["nll_per_rollout"], spreads["per_family"]
    contexts = fold_contexts(cfg, records, folds)
    report.meta.update({"protocol": "leave-one-family-out", "families": families,
                        "batch_context": contexts and {f: c.to_dict()
                                                       for f, c in contexts.items()},
                        "tau_spread": spreads,
                        "validation": "random" if args.random_val else "next solved family",
                        "fold_best_epochs": fold_epochs,
                        "folds": {f.name: {"test": f.test, "val": f.val, "train": f.train}
                                  for f in folds}, "fold_design": design})
    by_family.meta.update(protocol="leave-one-family-out, each family its own batch",
                          families=families, validation=report.meta["validation"],
                          fold_design=design)
    report.save(out / "report.json")
    by_family.save(out / "report-family-batches.json")
    plot_frontier(report, out / "frontier.png",
                  title="unseen task families (leave-one-family-out)")
    print(f"\nleave-one-family-out over {len(families)} families, {report.n_queries} queries; "
          "mean accuracy")
    print(report.table())
    print("\nshare of the uniform-to-oracle gap closed")
    print(report.table("gap_closed"))
    print("\nNLL per rollout: " + ", ".join(f"{k} {v:.4f}" for k, v in nll.items()))
    gaps = mean_gap_closed(report)
    print("mean gap closed (budgets where the oracle beats uniform by >= 0.02): "
          + ", ".join(f"{k} {v:.3f}" for k, v in gaps.items()))
    print("\neach family its own batch: share of the uniform-to-oracle gap closed")
    print(by_family.table("gap_closed"))
    gaps = mean_gap_closed(by_family)
    print("mean gap closed (budgets where the oracle beats uniform by >= 0.02): "
          + ", ".join(f"{k} {v:.3f}" for k, v in gaps.items()))
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
