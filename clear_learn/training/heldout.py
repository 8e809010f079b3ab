"""Held-out figures of a freshly trained predictor: NLL and allocation frontiers against the
baselines, the oracle and the exact optimum (``train/train.py``)."""

from __future__ import annotations

import time

import numpy as np

from .recipe import eval_splits, resolve

__all__ = ["evaluate"]


def _finite(x: float) -> float | None:
    """``x``, or ``None`` where it is not a number (strict JSON has no NaN)."""
    return float(x) if x is not None and np.isfinite(x) else None


def evaluate(pred, dm, cfg: dict) -> dict:
    """Every policy of :func:`~clear_learn.predictor.pipeline.policy_curves` on the held-out
    split, with the report and frontier written to ``evaluate.out``; returns the metrics to
    record in the export."""
    from clear_learn.evaluation import mean_gap_closed, plot_frontier
    from clear_learn.predictor.baselines import LengthCurvePredictor, TfidfCurvePredictor
    from clear_learn.predictor.pipeline import LENGTH, TFIDF, policy_curves
    from clear_learn.predictor.report import evaluate_predictors

    train, test = dm.split_records("train"), dm.split_records("test")
    texts = [r["text"] for r in test]
    t0 = time.perf_counter()
    network = pred.predict_raw(texts)
    pred_s = time.perf_counter() - t0
    baselines = {TFIDF: TfidfCurvePredictor().fit(train).predict(texts),
                 LENGTH: LengthCurvePredictor().fit(train).predict(texts)}
    predicted = policy_curves(network, baselines, texts, pred.stages)
    ecfg = cfg.get("evaluate", {})
    budgets = ecfg.get("budgets_per_query", [64, 128, 256, 512])
    splits = eval_splits(cfg)
    report, nll = evaluate_predictors(test, predicted, budgets, seed=int(cfg.get("seed", 0)),
                                      splits=splits)
    out = resolve(ecfg.get("out", "runs/eval"))
    ctx = pred.batch_context
    report.meta.update({"n_train": len(train), "split": cfg["data"]["split"],
                        "test_tasks": cfg["data"].get("test_tasks"),
                        "batch_context": ctx and ctx.to_dict(),
                        "tau_spread": pred.tau_spread})
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
