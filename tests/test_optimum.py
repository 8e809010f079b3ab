import itertools

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from clear_learn import Curves, allocate
from clear_learn.optimum import empirical_optimum, grid_optimum, knapsack_frontier


def brute_force(costs, values, total):
    best = -np.inf
    for pick in itertools.product(*[range(len(c)) for c in costs]):
        c = sum(costs[i][j] for i, j in enumerate(pick))
        if c <= total:
            best = max(best, sum(values[i][j] for i, j in enumerate(pick)))
    return best


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.tuples(st.integers(1, 12), st.floats(0, 1)), max_size=3),
                min_size=1, max_size=4), st.integers(0, 30))
def test_knapsack_matches_brute_force(items, total):
    costs = [np.array([0] + [c for c, _ in it]) for it in items]
    values = [np.array([0.0] + [v for _, v in it]) for it in items]
    fr = knapsack_frontier(costs, values, 30)
    assert np.isclose(fr.best(total), brute_force(costs, values, total))
    b = fr.budgets(total)
    assert b.sum() <= total
    got = sum(values[i][costs[i] == b[i]].max() for i in range(len(items)))
    assert np.isclose(got, fr.best(total))
    assert np.all(np.diff(fr.value) >= -1e-12)


def test_empirical_optimum_is_exact_on_small_cases(rng):
    for _ in range(20):
        n = 3
        lengths = [rng.integers(1, 16, size=3) for _ in range(n)]
        correct = [rng.random(3) < 0.6 for _ in range(n)]
        total = int(rng.integers(0, 40))
        fr = empirical_optimum(lengths, correct, 45)
        # acc[i][b] for every integer budget b, then every combination
        acc = [[((lengths[i] <= b) & correct[i]).mean() for b in range(16)] for i in range(n)]
        best = max(sum(acc[i][b[i]] for i in range(n))
                   for b in itertools.product(range(16), repeat=n) if sum(b) <= total)
        assert np.isclose(fr.best(total), best)


def test_empirical_optimum_respects_caps():
    fr = empirical_optimum([np.array([50, 10])], [np.array([True, True])], 100,
                           max_tokens=[20])
    assert fr.budgets(100).tolist() == [10]


def test_grid_optimum_bounds_grid_allocations():
    c = Curves([100.0, 300.0, 50.0], [0.9, 0.5, 0.7], [0.01, 0.02, 0.05])
    fr = grid_optimum(c, 1000, grid=10, max_tokens=800)
    b = fr.budgets(1000)
    assert b.sum() <= 1000 and np.all(b % 10 == 0) and np.all(b <= 800)
    assert np.isclose(c.utility(b).sum(), fr.best(1000))
    # the free-integer allocator may beat the grid slightly but never by much
    assert allocate(c, 1000, max_tokens=800).expected_correct >= 0.99 * fr.best(1000)
