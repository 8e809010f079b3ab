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
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch_context_rules import measure_dir_arg, unseen_family_curves  # noqa: E402

GRID = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
BUDGETS = [48, 64, 96, 128, 160, 192, 256, 384]


def main(argv=None) -> int:
    args = measure_dir_arg(argv, __doc__)
    out, splits = args.measure_dir, args.splits
    from clear_learn.evaluation import evaluate_policies
    from clear_learn.fitting import rollout_nll
    from clear_learn.predictor.batch_context import (clip_offsets, relative_log_length,
                                                     shift_by_length)
    from clear_learn.predictor.calibration import tau_spread_by_group

    _, test, curves, slopes = unseen_family_curves(out)
    fam = np.array([r["task"] for r in test])
    if slopes:
        ctx = next(iter(slopes.values()))
        d = clip_offsets(relative_log_length([r["text"] for r in test], ctx["neighbours"],
                                             ctx["min_similarity"]),
                         [slopes[f].get("max_offset") for f in fam])
        curves = shift_by_length(curves, d, np.array([slopes[f]["tau_slope"] for f in fam]),
                                 np.array([slopes[f]["p_slope"] for f in fam]))
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
