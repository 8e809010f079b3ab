"""Are the learned curves too narrow on unseen families? Widen them and measure.

    python benchmarks/curve_width.py runs/measure-f3b1

On a `train/measure.py` run's leave-one-family-out curves (with the run's batch context),
add an uncertainty of standard deviation ``s * tau`` to each curve's threshold and
moment-match it back into a shifted surge (same mean length ``tau + 2/k``, variance
``2/k^2 + (s tau)^2``; ``tau`` floored at 0), for a grid of ``s``. Prints, per ``s``, the NLL
per rollout, the mean gap closed over 48-256 tokens/query and the gap at 384; then the honest
version: each family widened by the ``s`` that minimises the NLL of the *other* families'
curves. The experiment behind the shipped threshold spread (``calibration.tau_spread``,
:mod:`clear_learn.predictor.calibration`; ``train/cross_family.py`` fits it per family the same
way on a finer grid).
"""

from __future__ import annotations

import sys

import numpy as np

from clear_learn.training.runs import BUDGETS, measure_dir_arg, unseen_family_curves

GRID = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def main(argv=None) -> int:
    args = measure_dir_arg(argv, __doc__)
    out, splits = args.measure_dir, args.splits
    from clear_learn.evaluation import evaluate_policies
    from clear_learn.fitting import rollout_nll
    from clear_learn.predictor.batch_context import BatchContext
    from clear_learn.predictor.calibration import tau_spread_by_group
    from clear_learn.predictor.config import Stages
    from clear_learn.predictor.pipeline import BATCH_CONTEXT, postprocess

    _, test, curves, slopes = unseen_family_curves(out)
    fam = np.array([r["task"] for r in test])
    if slopes:  # each query's own fold's batch context, the spread left to the grid below
        ctx = {f: BatchContext.from_dict(d) for f, d in slopes.items()}
        curves = postprocess(curves, [r["text"] for r in test],
                             Stages(batch_context=next(iter(ctx.values()))),
                             contexts=[ctx[f] for f in fam], until=BATCH_CONTEXT)
    counts = np.array([len(r["rollouts"]) for r in test], dtype=float)
    policies = {f"s={s}": curves.widened(s) for s in GRID}
    chosen = tau_spread_by_group(curves, test, fam, GRID)
    policies["s fitted on the other families"] = curves.widened(
        np.array([chosen[f] for f in fam]))
    rep = evaluate_policies(test, policies, BUDGETS, seed=0, splits=splits)
    print(f"{len(test)} unseen-family queries of {out}; s per family (fitted on the others): "
          f"{chosen}")
    print("| curves | NLL/rollout | mean gap 48-256 | gap at 384 |")
    print("|---|---:|---:|---:|")
    for name, c in policies.items():
        nll = float((rollout_nll(c, test) * counts).sum() / counts.sum())
        gaps = [r["gap_closed"] for r in rep.rows[name]]
        print(f"| {name} | {nll:.3f} | {np.nanmean(gaps[:-1]):.3f} | {gaps[-1]:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
