"""Leave-one-family-out evaluation: every query's curve comes from a model that never saw its
task family, the situation of a router facing new kinds of traffic.

    python train/cross_family.py [--config configs/default.yaml] [--families a,b,...]
                                 [--set key=value ...] [--out runs/cross_family]

For each family F: train as the config says with ``data.split=task``, ``test_tasks=[F]`` and,
for early stopping, ``val_tasks=[the next family]`` (so validation also measures an unseen
family); predict F's queries with the learned model and with the TF-IDF and length baselines
fitted on the same training queries. The pooled out-of-family curves of all folds are then
evaluated together (DESIGN.md section 5) against uniform, the oracle and the exact optimum.
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
from train import (ROOT, context_from_config, load_config, resolve,  # noqa: E402
                   spread_from_config, train_predictor, with_context, with_spread)

POLICIES = ("clear-learned", "clear-tfidf", "clear-length")  # saved per fold, before context


def val_family(tasks: list[str], family: str, random_val: bool) -> str | None:
    """The fold's early-stopping family: the next one in sorted order (None: random queries)."""
    return None if random_val else tasks[(tasks.index(family) + 1) % len(tasks)]


def pooled_context(cfg: dict, records: list[dict], test: list[dict], curves: dict,
                   random_val: bool) -> tuple[dict, dict | None]:
    """Every policy's pooled curves shifted by batch context over the whole pooled test set
    (a batch of all unseen families together), each query with the slopes of its own fold's
    training families; unchanged when the config has no batch context."""
    tasks = sorted({r["task"] for r in records})
    ctxs = {}
    for fam in sorted({r["task"] for r in test}):
        held = {fam, val_family(tasks, fam, random_val)}
        ctxs[fam] = context_from_config(cfg, [r for r in records if r["task"] not in held])
    if any(c is None for c in ctxs.values()):
        return curves, None
    slopes = (np.array([ctxs[r["task"]].tau_slope for r in test]),
              np.array([ctxs[r["task"]].p_slope for r in test]))
    ctx = next(iter(ctxs.values()))
    out = with_context(curves, [r["text"] for r in test], ctx, slopes)
    return out, {fam: c.to_dict() for fam, c in ctxs.items()}


def pooled_spread(cfg: dict, test: list[dict], curves: dict) -> tuple[dict, dict | None]:
    """Every policy's pooled curves (but ``clear-learned-raw``) widened by a threshold spread
    fitted, for each family, on the likelihood of the *other* families' pooled curves of that
    policy; and ``{"per_family": {policy: {family: spread}}, "ship": spread}``, where ``ship``
    is the learned curves' spread fitted on every family (the value to export). Unchanged
    when the config's ``calibration.tau_spread`` is 0."""
    from clear_learn.predictor.calibration import fit_tau_spread, tau_spread_by_group

    if spread_from_config(cfg) == 0:
        return curves, None
    fam = [r["task"] for r in test]
    per_family, arrays = {}, {}
    for name, c in curves.items():
        if name == "clear-learned-raw":
            continue
        per_family[name] = tau_spread_by_group(c, test, fam)
        arrays[name] = np.array([per_family[name][f] for f in fam])
    ship = fit_tau_spread(curves["clear-learned"], test)
    return with_spread(curves, arrays), {"per_family": per_family, "ship": ship}


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
    curves = {"clear-learned": pred.predict(texts),
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
            "random_val": bool(random_val)}
    path = out / "config.json"
    if path.is_file():
        have = json.loads(path.read_text())
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
    curves, contexts = pooled_context(cfg, records, test, curves, args.random_val)
    curves, spreads = pooled_spread(cfg, test, curves)
    budgets = cfg.get("evaluate", {}).get("budgets_per_query", [64, 128, 256, 512])
    report, nll = evaluate_predictors(test, curves, budgets, seed=int(cfg.get("seed", 0)))
    report.meta.update({"protocol": "leave-one-family-out", "families": families,
                        "batch_context": contexts, "tau_spread": spreads,
                        "validation": "random" if args.random_val else "next family",
                        "fold_best_epochs": fold_epochs})
    report.save(out / "report.json")
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
          + ", ".join(f"{k} {gaps[k]:.3f}" for k in curves))
    if spreads:
        print(f"threshold spread of each family, fitted on the others: "
              f"{spreads['per_family']['clear-learned']} (learned curves); fitted on every "
              f"family: {spreads['ship']}: ship it with\n  --set "
              f"calibration.tau_spread={spreads['ship']}")
    if fold_epochs:
        med = median_epochs(fold_epochs)
        print(f"best epochs per fold (validated on an unseen family): {fold_epochs}; median "
              f"{med}: ship weights tuned for unseen families with\n  python train/train.py "
              f"--set export.refit_all=true --set export.refit_epochs={med}")
    print(f"\nwrote {out / 'report.json'} and {out / 'frontier.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
