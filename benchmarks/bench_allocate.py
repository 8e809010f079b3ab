"""Speed of `allocate` on many queries, against the floor of reading the arrays once.

    OMP_NUM_THREADS=1 python benchmarks/bench_allocate.py [--n 1000000] [--repeats 5]

Prints the best and median wall time per call at several average budgets, and the floor:
one pass that reads tau, p and k (their sum).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from clear_learn import allocate  # noqa: E402
from clear_learn.simulate import random_curves  # noqa: E402


def timed(fn, repeats):
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        res = fn()
        out.append(time.perf_counter() - t)
    return np.array(out), res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=4000)
    args = ap.parse_args()
    c = random_curves(args.n, seed=1)
    floor, _ = timed(lambda: float(c.tau.sum() + c.p.sum() + c.k.sum()), args.repeats)
    print(f"n = {args.n:,} queries, max_tokens {args.max_tokens}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    print(f"floor (read tau, p, k once): {floor.min() * 1e3:.1f} ms")
    for avg in (50, 150, 300, 600, 1200):
        t, res = timed(lambda: allocate(c, avg * args.n, max_tokens=args.max_tokens),
                       args.repeats)
        print(f"avg {avg:5d} tok/query: best {t.min():.3f} s, median {np.median(t):.3f} s "
              f"({t.min() / floor.min():.0f}x floor); expected acc {res.expected_accuracy:.4f},"
              f" {res.n_abandoned:,} abandoned, unspent {res.total_budget - res.allocated}")


if __name__ == "__main__":
    main()
