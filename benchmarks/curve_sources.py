"""Where should each curve parameter come from? Held-out queries and held-out families.

    python benchmarks/curve_sources.py runs/measure-163

On a `train/measure.py` run's ``queries`` (random query split) and ``unseen`` (GSM8K and
MATH-500 held out) predictors, with the data rebuilt as measured: the learned curves, the
length baseline fitted on the same training queries, and the two mixed (the length baseline's
tau and k with the learned p), each with the predictor's batch context, narrow and widened by
a threshold spread of 0.7. Prints the mean share of the uniform-to-oracle gap closed over
48-256 tokens/query (at 384) and the NLL per rollout. ``benchmarks/family_batches.py`` does
the same comparison on the leave-one-family-out folds.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from clear_learn.curves import Curves
from clear_learn.predictor.pipeline import postprocess
from clear_learn.training.recipe import DEFAULT_CONFIG, load_config
from clear_learn.training.runs import BUDGETS, measure_dir_arg, measured_records


UNSEEN = ("gsm8k", "math500")


def main(argv=None) -> int:
    args = measure_dir_arg(argv, __doc__)
    out, halvings = args.measure_dir, args.splits
    from clear_learn.evaluation import evaluate_policies
    from clear_learn.fitting import rollout_nll
    from clear_learn.predictor.baselines import LengthCurvePredictor
    from clear_learn.predictor.data import split_records
    from clear_learn.predictor import ClearPredictor

    state = json.loads((out / "state.json").read_text())
    records = measured_records(state)
    d = load_config(DEFAULT_CONFIG, state.get("set", []))["data"]
    train, _, test = split_records(records, split="query", val_fraction=d["val_fraction"],
                                   test_fraction=d["test_fraction"], seed=0)
    held = [i for i, r in enumerate(records) if r["task"] in UNSEEN]
    splits = {f"held-out queries ({len(test)})": ("queries", train, test),
              f"GSM8K + MATH-500 unseen ({len(held)})":
                  ("unseen", sorted(set(range(len(records))) - set(held)), held)}
    print(f"{out}: mean gap closed over 48-256 tokens/query (at 384); NLL per rollout")
    print("| protocol | curves | narrow | NLL | widened 0.7 | NLL |")
    print("|---|---|---:|---:|---:|---:|")
    for label, (step, tr, te) in splits.items():
        q = [records[i] for i in te]
        texts = [r["text"] for r in q]
        pred = ClearPredictor.from_pretrained(out / step / "predictor")
        learned = pred.predict_raw(texts)
        length = LengthCurvePredictor().fit([records[i] for i in tr]).predict(texts)
        raw = {"learned": learned, "length": length,
               "length tau and k, learned p": Curves(length.tau, learned.p, length.k)}
        counts = np.array([len(r["rollouts"]) for r in q], dtype=float)
        cells = {name: [] for name in raw}
        for spread in (0.0, 0.7):
            stages = pred.stages_for(tau_spread=spread)
            curves = {n: postprocess(c, texts, stages)
                      for n, c in raw.items()}  # each as composed here, then context, spread
            rep = evaluate_policies(q, curves, BUDGETS, seed=0, splits=halvings)
            for n, c in curves.items():
                g = [r["gap_closed"] for r in rep.rows[n]]
                nll = float((rollout_nll(c, q) * counts).sum() / counts.sum())
                cells[n] += [f"{np.mean(g[:-1]):.3f} ({g[-1]:+.2f})", f"{nll:.3f}"]
        for n, c in cells.items():
            print(f"| {label} | {n} | " + " | ".join(c) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
