"""Speed and accuracy of `fit_curves` on rollouts sampled from known curves.

    OMP_NUM_THREADS=1 python benchmarks/bench_fit.py [--queries 10000]

Prints the time to fit 10,000 queries x 16 rollouts, then the recovery error against the
number of rollouts per query (4, 8, 16, 64): median relative error of tau, mean absolute error
of p, median absolute error of log k. All data here is SIMULATED from known curves.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from clear_learn import fit_curves  # noqa: E402
from clear_learn.rollouts import to_arrays  # noqa: E402
from clear_learn.simulate import random_curves, sample_rollouts  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--queries", type=int, default=10_000)
    ap.add_argument("--recovery-queries", type=int, default=2_000)
    ap.add_argument("--max-new-tokens", type=int, default=4000)
    args = ap.parse_args()
    truth = random_curves(args.queries, seed=2)
    data = to_arrays(sample_rollouts(truth, 16, args.max_new_tokens, seed=3))
    t = time.perf_counter()
    fit = fit_curves(data)
    dt = time.perf_counter() - t
    print(f"fit {args.queries:,} queries x 16 rollouts: {dt:.2f} s "
          f"({fit.n_iter} Newton steps, {fit.message})")
    print("\nrecovery on SIMULATED rollouts (tau ~ lognormal(log 300, 0.8), p ~ Beta(2, 1.5), "
          f"1/k ~ lognormal(log 200, 0.5), cap {args.max_new_tokens}), "
          f"{args.recovery_queries} queries")
    print("| rollouts/query | tau: median rel. error | p: mean abs. error | "
          "log k: median abs. error |")
    print("|---:|---:|---:|---:|")
    truth = random_curves(args.recovery_queries, seed=4)
    for n in (4, 8, 16, 64):
        f = fit_curves(sample_rollouts(truth, n, args.max_new_tokens, seed=n)).curves
        print(f"| {n} | {np.median(np.abs(f.tau - truth.tau) / truth.tau):.3f} | "
              f"{np.mean(np.abs(f.p - truth.p)):.3f} | "
              f"{np.median(np.abs(np.log(f.k / truth.k))):.3f} |")


if __name__ == "__main__":
    main()
