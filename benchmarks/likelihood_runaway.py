"""Does the consistent likelihood change the fits and the allocations? (DESIGN.md section 4)

    python benchmarks/likelihood_runaway.py [--data "[default,benchmark]"] [--splits 5]

DESIGN.md's likelihood scores a finished wrong answer ``1 - p`` and a cut-off ``1 - p G``: not
a normalised model, and a cut-off counts against solvability. The consistent form gives an
unsolvable response a run-away rate ``c`` (finished wrong ``(1 - p)(1 - c)``, cut off
``p (1 - G) + (1 - p) c``; ``FitPrior(runaway=c)``). On the real rollouts this prints:

1. the global ``c`` of highest likelihood (a grid), and each family's;
2. how the per-query fits move from DESIGN's form to the consistent one at that ``c``: mean
   ``p``, the median and 90th percentile of ``|logit p|`` moved, the rank correlation of the
   two ``p`` and of the two ``tau``, and the families whose mean ``p`` moves most;
3. the allocations: CLEAR's accuracy on oracle curves fitted each way (on the same rollout
   halvings, scored on the other halves), per budget, beside uniform and the exact optimum.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's clear_learn, not an installed one

from clear_learn import evaluation  # noqa: E402
from clear_learn.fitting import FitPrior, fit_curves  # noqa: E402
from clear_learn.rollouts import to_arrays  # noqa: E402

GRID = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9)
BUDGETS = (48, 64, 96, 128, 192, 256, 384)


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def main(argv=None) -> int:
    from scipy.stats import spearmanr

    from clear_learn.predictor.data import load_records
    from clear_learn.training.recipe import parse_value

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="[default,benchmark]")
    ap.add_argument("--splits", type=int, default=5)
    args = ap.parse_args(argv)
    records = load_records(parse_value(args.data))
    arr = to_arrays(records)
    fam = np.array([r["task"] for r in records])
    n = arr.counts.astype(float)
    print(f"{len(records)} queries, {int(n.sum())} rollouts, {len(set(fam))} families; "
          f"cut-offs {arr.flat_cutoff.mean():.3f} of the rollouts")

    ll = {c: -(fit_curves(arr, prior=FitPrior(runaway=c)).nll * n) for c in GRID}
    total = {c: float(v.sum()) for c, v in ll.items()}
    best = max(total, key=total.get)
    print("\n1. log-likelihood of every rollout against c: "
          + ", ".join(f"{c:g}: {v:.1f}" for c, v in total.items()) + f"; best c = {best:g}")
    per_family = {f: max(GRID, key=lambda c: ll[c][fam == f].sum()) for f in sorted(set(fam))}
    print("   each family's best c: " + ", ".join(f"{f} {c:g}" for f, c in per_family.items()))

    design = fit_curves(arr).curves
    cons = fit_curves(arr, prior=FitPrior(runaway=best)).curves
    moved = np.abs(logit(cons.p) - logit(design.p))
    rho_p = spearmanr(design.p, cons.p).statistic
    rho_tau = spearmanr(design.tau, cons.tau).statistic
    print(f"\n2. fits, DESIGN -> consistent (c = {best:g}): mean p {design.p.mean():.3f} -> "
          f"{cons.p.mean():.3f}; |logit p| moved: median {np.median(moved):.3f}, 90th "
          f"percentile {np.quantile(moved, 0.9):.3f}; Spearman p {rho_p:.3f}, tau "
          f"{rho_tau:.3f}")
    shift = {f: float(cons.p[fam == f].mean() - design.p[fam == f].mean())
             for f in set(fam)}
    top = sorted(shift, key=lambda f: -abs(shift[f]))[:6]
    cut = {f: float(arr.flat_cutoff[np.isin(arr.query_index, np.flatnonzero(fam == f))].mean())
           for f in top}
    print("   largest moves of a family's mean p: " + ", ".join(
        f"{f} {shift[f]:+.3f} (cut-offs {cut[f]:.2f})" for f in top))

    rows = {}
    for name, prior in (("DESIGN", None), (f"consistent c={best:g}", FitPrior(runaway=best))):
        orig = evaluation.fit_curves
        evaluation.fit_curves = partial(fit_curves, prior=prior)  # the oracle's fits
        try:
            rep = evaluation.evaluate_policies(records, {}, BUDGETS, splits=args.splits)
        finally:
            evaluation.fit_curves = orig
        rows[name] = rep
    print("\n3. mean accuracy on the scoring halves, CLEAR on oracle curves fitted each way")
    names = list(rows)
    print("| tokens/query | uniform | " + " | ".join(f"oracle ({n})" for n in names)
          + " | optimum |")
    print("|---:|---:|" + "---:|" * (len(names) + 1))
    first = rows[names[0]]
    for j, b in enumerate(BUDGETS):
        cells = [f"{rows[n].rows['oracle'][j]['mean_accuracy']:.4f}" for n in names]
        print(f"| {b} | {first.rows['uniform'][j]['mean_accuracy']:.4f} | " + " | ".join(cells)
              + f" | {first.rows['optimum'][j]['mean_accuracy']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
