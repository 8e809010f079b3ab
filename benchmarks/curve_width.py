"""Are the learned curves too narrow on unseen families? Widen them and measure.

    python benchmarks/curve_width.py runs/measure-f3b1

On a `train/measure.py` run's leave-one-family-out curves (with the run's batch context),
add an uncertainty of standard deviation ``s * tau`` to each curve's threshold and
moment-match it back into a shifted surge (same mean length ``tau + 2/k``, variance
``2/k^2 + (s tau)^2``; ``tau`` floored at 0), for a grid of ``s``. Prints, per ``s``, the NLL
per rollout, the mean gap closed over 48-256 tokens/query and the gap at 384; then the honest
version: each family widened by the ``s`` that minimises the NLL of the *other* families'
curves. An experiment for the next step of the predictor, not part of the shipped recipe.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch_context_rules import measure_dir_arg, unseen_family_curves  # noqa: E402

GRID = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
BUDGETS = [48, 64, 96, 128, 160, 192, 256, 384]


def widen(curves, s: float):
    """``curves`` with a threshold uncertainty of sd ``s * tau`` moment-matched in."""
    from clear_learn.curves import Curves

    var = 2.0 / curves.k ** 2 + (s * curves.tau) ** 2
    k = np.sqrt(2.0 / var)
    return Curves(np.maximum(curves.tau + 2.0 / curves.k - 2.0 / k, 0.0), curves.p.copy(), k)


def main(argv=None) -> int:
    out = measure_dir_arg(argv, __doc__)
    from clear_learn.curves import Curves
    from clear_learn.evaluation import evaluate_policies
    from clear_learn.fitting import rollout_nll
    from clear_learn.predictor.batch_context import relative_log_length, shift_by_length

    _, test, curves, slopes = unseen_family_curves(out)
    fam = np.array([r["task"] for r in test])
    if slopes:
        ctx = next(iter(slopes.values()))
        d = relative_log_length([r["text"] for r in test], ctx["neighbours"],
                                ctx["min_similarity"])
        curves = shift_by_length(curves, d, np.array([slopes[f]["tau_slope"] for f in fam]),
                                 np.array([slopes[f]["p_slope"] for f in fam]))
    counts = np.array([len(r["rollouts"]) for r in test], dtype=float)
    nll_q = {s: rollout_nll(widen(curves, s), test) for s in GRID}  # per query
    policies = {f"s={s}": widen(curves, s) for s in GRID}
    chosen = {}
    tau, p, k = curves.tau.copy(), curves.p.copy(), curves.k.copy()
    for f in sorted(set(fam)):
        other = fam != f
        s = min(GRID, key=lambda g: float((nll_q[g] * counts)[other].sum()))
        chosen[str(f)] = s
        w = widen(curves[np.where(fam == f)[0]], s)
        tau[fam == f], p[fam == f], k[fam == f] = w.tau, w.p, w.k
    policies["s fitted on the other families"] = Curves(tau, p, k)
    rep = evaluate_policies(test, policies, BUDGETS, seed=0)
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
