"""Leave-one-family-out evaluation: every query's curve comes from a model that never saw its
task family, the situation of a router facing new kinds of traffic.

    python train/cross_family.py [--config configs/default.yaml] [--families a,b,...]
                                 [--set key=value ...] [--out runs/cross_family]

For each family F: train as the config says with ``data.split=task``, ``test_tasks=[F]`` and,
for early stopping, ``val_tasks=[the next family]`` (so validation also measures an unseen
family); predict F's queries with the learned model and with the TF-IDF and length baselines
fitted on the same training queries. The pooled out-of-family curves of all folds are then
evaluated together (DESIGN.md section 5) against uniform, the oracle and the exact optimum:
once as one batch of all families (``OUT/report.json``) and once with each family its own
batch (``OUT/report-family-batches.json``). Batch context and threshold spread act on the
saved curves (``POOLING_ONLY``), so changing them re-pools without training.
Each fold's curves are written as it finishes (``OUT/folds/F.jsonl``) and reused on a rerun,
so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train import (ROOT, context_from_config, eval_splits, load_config, resolve,  # noqa: E402
                   tau_k_from_config, train_predictor, with_context,
                   with_sources, with_spread)

POLICIES = ("clear-learned", "clear-tfidf", "clear-length")  # saved per fold, before context
# what the saved folds hold; folds written before it (clear-learned saved by predict() with the
# fold predictor's length line, batch context and spread, then pooled with them again) are
# refused by check_same_config
FOLD_CONTENTS = "network curves: clear-learned = ClearPredictor.predict_raw"


def val_family(tasks: list[str], family: str, random_val: bool) -> str | None:
    """The fold's early-stopping family: the next one in sorted order (None: random queries)."""
    return None if random_val else tasks[(tasks.index(family) + 1) % len(tasks)]


def fold_contexts(cfg: dict, records: list[dict], test: list[dict], random_val: bool
                  ) -> dict | None:
    """``{family: BatchContext}``: each family's batch context with the slopes of its own
    fold's training families; None when the config has no batch context."""
    tasks = sorted({r["task"] for r in records})
    ctxs = {}
    for fam in sorted({r["task"] for r in test}):
        held = {fam, val_family(tasks, fam, random_val)}
        ctxs[fam] = context_from_config(cfg, [r for r in records if r["task"] not in held])
    return None if any(c is None for c in ctxs.values()) else ctxs


def adjust(curves: dict, test: list[dict], idx: np.ndarray, contexts: dict | None,
           spreads: dict | None = None) -> dict:
    """The policies' curves of the queries ``test[idx]`` as a router would see them with
    ``idx`` as one batch: shifted by the batch context of that batch (each query with its
    family's ``contexts`` slopes), then widened by its family's ``spreads`` (``{policy:
    {family: spread}}``; ``clear-learned-raw`` is left as it was predicted)."""
    sub = [test[i] for i in idx]
    out = {name: c[idx] for name, c in curves.items()}
    if contexts:
        out = with_context(out, [r["text"] for r in sub], next(iter(contexts.values())),
                           [contexts[r["task"]] for r in sub])
    if spreads:
        out = with_spread(out, {name: np.array([per[r["task"]] for r in sub])
                                for name, per in spreads.items()})
    return out


def fit_spreads(test: list[dict], curves: dict) -> dict:
    """``{"per_family": {policy: {family: spread}}, "ship": spread}``: for every policy but
    ``clear-learned-raw``, each family's threshold spread fitted on the likelihood of the
    *other* families' ``curves``; ``ship`` is the learned curves' spread fitted on every
    family (the value to export, whatever the config's ``calibration.tau_spread``)."""
    from clear_learn.predictor.calibration import fit_tau_spread, tau_spread_by_group

    fam = [r["task"] for r in test]
    per_family = {name: tau_spread_by_group(c, test, fam) for name, c in curves.items()
                  if name != "clear-learned-raw"}
    return {"per_family": per_family, "ship": fit_tau_spread(curves["clear-learned"], test)}


def family_batches_report(curves: dict, test: list[dict], contexts: dict | None,
                          spreads: dict, budgets, seed: int, splits: int = 1):
    """Every family allocated as its own batch (batch context within it), accuracies pooled
    over the families: what a router sees when unseen traffic arrives one kind at a time."""
    from clear_learn.allocation import allocate
    from clear_learn.evaluation import evaluate_policies

    fam = np.array([r["task"] for r in test])
    batches = [np.where(fam == f)[0] for f in sorted(set(fam))]
    caps = np.array([int(r["max_new_tokens"]) for r in test])
    cache: dict[int, dict] = {}

    def policy(name: str):
        def f(idx: np.ndarray, total: int) -> np.ndarray:
            key = int(idx[0])  # batches are disjoint: the first index names one
            if key not in cache:
                cache[key] = adjust(curves, test, idx, contexts, spreads)
            return allocate(cache[key][name], int(total), max_tokens=caps[idx]).budgets
        return f

    names = list(adjust(curves, test, batches[0][:1], contexts, spreads))
    return evaluate_policies(test, {n: policy(n) for n in names}, budgets, seed=seed,
                             batches=batches, splits=splits)


def fold_curves(cfg: dict, family: str, val_family: str | None
                ) -> tuple[dict[str, list[dict]], dict]:
    """Out-of-family curves of one fold, ``{policy: [{id, tau, p, k}, ...]}``, and the fold's
    training metrics (``best_epochs``: chosen by validation on an unseen family)."""
    from clear_learn.predictor.baselines import LengthCurvePredictor, TfidfCurvePredictor

    cfg = json.loads(json.dumps(cfg))  # a private copy
    cfg["data"].update(split="task", test_tasks=[family],
                       val_tasks=[val_family] if val_family else [])
    cfg["run_dir"] = str(Path(cfg["run_dir"]) / "folds" / family)
    pred, dm, metrics = train_predictor(cfg)
    train, test = dm.split_records("train"), dm.split_records("test")
    texts = [r["text"] for r in test]
    curves = {"clear-learned": pred.predict_raw(texts),  # the pooling adds every stage once
              "clear-tfidf": TfidfCurvePredictor().fit(train).predict(texts),
              "clear-length": LengthCurvePredictor().fit(train).predict(texts)}
    print(f"fold {family}: {len(train)} train, {len(test)} test, {metrics}")
    return {name: [{"id": r["id"], "tau": float(t), "p": float(q), "k": float(k)}
                   for r, t, q, k in zip(test, c.tau, c.p, c.k)]
            for name, c in curves.items()}, metrics


def median_epochs(fold_epochs: dict[str, int]) -> int:
    """The folds' median best epoch count, rounded up: the epochs to ship for unseen traffic."""
    return int(np.ceil(np.median(list(fold_epochs.values()))))


POOLING_ONLY = ("batch_context", "calibration", "evaluate")  # config sections the saved folds do not depend on


def check_same_config(out: Path, cfg: dict, random_val: bool) -> None:
    """Record the run's config in ``OUT/config.json``; refuse to mix folds of another one
    (the sections in ``POOLING_ONLY`` act after the folds, so they may differ)."""
    want = {"config": {k: v for k, v in cfg.items() if k not in POOLING_ONLY},
            "random_val": bool(random_val), "folds": FOLD_CONTENTS}
    path = out / "config.json"
    if path.is_file():
        have = json.loads(path.read_text())
        if have.get("folds") != FOLD_CONTENTS:
            raise SystemExit(f"{out} holds folds written before the fix of their contents "
                             "(their clear-learned curves already had the batch context and "
                             "spread that pooling adds again): pass another --out, or delete "
                             "it to start over")
        if have != json.loads(json.dumps(want)):
            raise SystemExit(f"{out} holds folds of another config ({path}): pass another "
                             "--out, or delete it to start over")
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(want, indent=1))


def load_fold(path: Path, ids: set[str]) -> dict[str, list[dict]] | None:
    """A saved fold's curves if it covers exactly the family's queries ``ids`` (else the data
    has changed since it was written, and it is trained again)."""
    if not path.is_file():
        return None
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    got = {name: [r for r in rows if r["policy"] == name] for name in POLICIES}
    if any({str(r["id"]) for r in got[name]} != ids for name in POLICIES):
        print(f"{path}: written for other queries of this family; training it again")
        return None
    return got


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
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
            mpath.write_text(json.dumps(metrics) + "\n")
            write_jsonl([{"policy": name, **r} for name, rs in got.items() for r in rs], path)
        if mpath.is_file():
            fold_epochs[fam] = int(json.loads(mpath.read_text())["best_epochs"])
        for name in POLICIES:
            pooled[name].update({str(r["id"]): r for r in got[name]})
    test = [r for r in records if r["task"] in set(families)]
    curves = {name: Curves.from_records([pooled[name][str(r["id"])] for r in test])
              for name in POLICIES}
    curves = with_sources(curves, tau_k_from_config(cfg))
    contexts = fold_contexts(cfg, records, test, args.random_val)
    every = np.arange(len(test))
    spreads = fit_spreads(test, adjust(curves, test, every, contexts))
    per_family = spreads["per_family"]
    pooled = adjust(curves, test, every, contexts, per_family)
    budgets = cfg.get("evaluate", {}).get("budgets_per_query", [64, 128, 256, 512])
    seed, splits = int(cfg.get("seed", 0)), eval_splits(cfg)
    report, nll = evaluate_predictors(test, pooled, budgets, seed=seed, splits=splits)
    by_family = family_batches_report(curves, test, contexts, per_family, budgets, seed,
                                      splits)
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
          f"{per_family['clear-learned']} (learned curves); fitted on every family: "
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
