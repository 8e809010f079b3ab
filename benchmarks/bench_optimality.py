"""Allocator quality against a 10-token grid optimum and the uniform split.

    python benchmarks/bench_optimality.py

200 random curves (numpy seed 0: tau ~ lognormal(log 300, 0.8), p ~ Beta(2, 1.5),
1/k ~ lognormal(log 200, 0.5)), cap 4,000 tokens. Prints expected mean accuracy of CLEAR,
the grid optimum (dynamic programme) and uniform at several average budgets. Then small
batches, where one query's entry cost is a large share of the budget: 240 random batches of
2 to 16 queries (seeds 0-239; caps 512, 1,000 or 4,000; 50 to 600 tokens/query) against the
exact integer optimum (a 1-token grid): the worst and mean share of it that CLEAR reaches.
"""

from __future__ import annotations

import numpy as np

from clear_learn import allocate, uniform_budgets
from clear_learn.optimum import grid_optimum
from clear_learn.simulate import random_curves


def main() -> None:
    n, cap = 200, 4000
    c = random_curves(n, seed=0)
    budgets = (50, 150, 300, 600, 1200)
    frontier = grid_optimum(c, max(budgets) * n, grid=10, max_tokens=cap)
    print("| tokens/query | CLEAR | grid optimum | CLEAR / grid | uniform | CLEAR / uniform |")
    print("|---:|---:|---:|---:|---:|---:|")
    for avg in budgets:
        res = allocate(c, avg * n, max_tokens=cap)
        grid = frontier.best(avg * n) / n
        uni = c.utility(uniform_budgets(n, avg * n, cap)).mean()
        print(f"| {avg} | {res.expected_accuracy:.4f} | {grid:.4f} | "
              f"{res.expected_accuracy / grid:.5f} | {uni:.4f} | "
              f"{res.expected_accuracy / uni:.1f}x |")
    shares = []
    for seed in range(240):
        rng = np.random.default_rng(seed)
        m = int(rng.integers(2, 17))
        c = random_curves(m, seed=seed)
        cap, total = int(rng.choice([512, 1000, 4000])), int(rng.choice([50, 100, 200, 400,
                                                                        600])) * m
        best = grid_optimum(c, total, grid=1, max_tokens=cap).best(total)
        if best > 0:
            shares.append(allocate(c, total, max_tokens=cap).expected_correct / best)
    a = np.array(shares)
    print(f"\nsmall batches (2-16 queries, {a.size} with a positive optimum): CLEAR reaches "
          f"{a.min():.4f} of the exact optimum at worst, {a.mean():.5f} on average; "
          f"{(a < 0.99).sum()} below 0.99")


if __name__ == "__main__":
    main()
