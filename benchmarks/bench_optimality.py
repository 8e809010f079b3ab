"""Allocator quality against a 10-token grid optimum and the uniform split.

    python benchmarks/bench_optimality.py

200 random curves (numpy seed 0: tau ~ lognormal(log 300, 0.8), p ~ Beta(2, 1.5),
1/k ~ lognormal(log 200, 0.5)), cap 4,000 tokens. Prints expected mean accuracy of CLEAR,
the grid optimum (dynamic programme) and uniform at several average budgets.
"""

from __future__ import annotations

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


if __name__ == "__main__":
    main()
