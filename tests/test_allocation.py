import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import clear_learn.allocation as alloc_mod
from clear_learn import Curves, allocate, uniform_budgets
from clear_learn.optimum import grid_optimum
from clear_learn.simulate import random_curves


def curves_strategy(max_n=25):
    n = st.integers(1, max_n)
    return n.flatmap(lambda m: st.tuples(
        st.lists(st.floats(0, 3000), min_size=m, max_size=m),
        st.lists(st.floats(0, 1), min_size=m, max_size=m),
        st.lists(st.floats(1e-4, 2.0), min_size=m, max_size=m),
    )).map(lambda t: Curves(*t))


@settings(max_examples=100, deadline=None)
@given(curves_strategy(), st.integers(0, 60000), st.one_of(st.none(), st.integers(0, 4000)),
       st.integers(0, 2))
def test_budgets_are_feasible(curves, total, cap, fallback):
    n = len(curves)
    if fallback and (n * fallback > total or (cap is not None and cap < fallback)):
        with pytest.raises(ValueError):
            allocate(curves, total, max_tokens=cap, fallback_tokens=fallback)
        return
    res = allocate(curves, total, max_tokens=cap, fallback_tokens=fallback)
    b = res.budgets
    assert b.dtype == np.int64 and b.shape == (n,)
    assert b.sum() <= total
    assert np.all(b >= fallback)
    if cap is not None:
        assert np.all(b <= cap)
    assert np.all(b[res.abandoned] == fallback)
    assert res.allocated == b.sum()
    assert np.isclose(res.expected_correct, curves.utility(b).sum())
    if not fallback:
        assert res.upper_bound >= res.expected_correct - 1e-9


@settings(max_examples=100, deadline=None)
@given(curves_strategy(), st.integers(0, 40000), st.integers(1, 20000),
       st.one_of(st.none(), st.integers(1, 4000)))
def test_more_budget_never_costs_more_than_one_query(curves, total, extra, cap):
    """Expected correct answers with B + extra >= those with B, minus one query's worth.

    The greedy solution is within max_i U_i of the concave-envelope (LP) bound, which is
    non-decreasing in B: so the guarantee is a drop of at most max_i p_i expected answers
    (a mean-accuracy drop of at most max_i p_i / N); in practice it is far smaller.
    """
    a = allocate(curves, total, max_tokens=cap).expected_correct
    b = allocate(curves, total + extra, max_tokens=cap).expected_correct
    assert b >= a - curves.p.max() - 1e-9


def test_matches_grid_optimum_and_beats_uniform():
    curves = random_curves(200, seed=0)
    n = 200
    frontier = grid_optimum(curves, 1200 * n, grid=10, max_tokens=4000)
    for avg in (50, 150, 300, 600, 1200):
        res = allocate(curves, avg * n, max_tokens=4000)
        assert res.expected_correct >= 0.99 * frontier.best(avg * n)
        # the duality bound holds for every allocation, the grid optimum's included
        assert res.upper_bound >= frontier.best(avg * n) - 1e-9
        assert res.optimality_gap < 0.01
    res = allocate(curves, 150 * n, max_tokens=4000)
    uni = curves.utility(uniform_budgets(n, 150 * n, 4000)).sum()
    assert res.expected_correct >= 10 * uni


def test_small_batches_reach_the_exact_optimum():
    # At the price where both budgets would fit, the first query is insolvent: the
    # Lagrangian funds it alone at its cap and revives the second with the rest, [1000, 200]
    # (0.774 expected correct answers); the optimum funds both, [694, 506] (0.925).
    curves = Curves([324.0, 117.5], [0.80, 0.892], [1 / 160.8, 1 / 261.8])
    res = allocate(curves, 1200, max_tokens=1000)
    assert res.expected_correct >= 0.999 * grid_optimum(curves, 1200, grid=1,
                                                        max_tokens=1000).best(1200)
    # random batches of 2 to 11 queries against the exact integer optimum
    worst = 1.0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(2, 12))
        curves = random_curves(n, seed=seed)
        cap, total = int(rng.choice([512, 1000, 4000])), int(rng.choice([100, 200, 400])) * n
        best = grid_optimum(curves, total, grid=1, max_tokens=cap).best(total)
        got = allocate(curves, total, max_tokens=cap).expected_correct
        worst = min(worst, got / best if best > 0 else 1.0)
    assert worst >= 0.99


def test_greedy_fill_revives_an_abandoned_query():
    # Two identical hard queries: at B=1500 the Lagrangian funds one; the leftover is too
    # small for the second at its stationary budget, the jump fill spends it.
    c = Curves([100.0, 100.0, 600.0], [0.9, 0.9, 0.9], [0.02, 0.02, 0.02])
    res = allocate(c, 1000)
    assert res.budgets.sum() >= 990
    assert np.count_nonzero(res.budgets) >= 2


def test_fallback_tokens_go_to_abandoned_queries():
    c = Curves([50.0, 5000.0], [0.9, 0.9], [0.05, 0.05])
    res = allocate(c, 300, fallback_tokens=1)
    assert res.abandoned.tolist() == [False, True]
    assert res.budgets[1] == 1 and res.budgets.sum() <= 300
    assert res.budgets[0] > 50


def test_ample_budget_gives_every_useful_query_its_cap():
    c = Curves([10.0, 10.0, 10.0], [0.5, 0.0, 1.0], [0.1, 0.1, 0.1])
    res = allocate(c, 10_000, max_tokens=[100, 100, 50])
    assert res.budgets.tolist() == [100, 0, 50]


def test_no_budget_and_empty_input():
    c = random_curves(10)
    assert allocate(c, 0).budgets.sum() == 0
    assert allocate(Curves([], [], []), 100).budgets.size == 0


def test_large_inputs_take_the_subsampled_path(monkeypatch):
    curves = random_curves(80_000, seed=3)
    fast = allocate(curves, 300 * 80_000, max_tokens=4000)
    assert fast.budgets.sum() <= 300 * 80_000
    assert fast.budgets.sum() >= 300 * 80_000 - 4000
    monkeypatch.setattr(alloc_mod, "SUBSAMPLE_ABOVE", 10**9)
    exact = allocate(curves, 300 * 80_000, max_tokens=4000)
    assert fast.expected_correct >= exact.expected_correct * (1 - 1e-5)
    assert abs(np.log(fast.price / exact.price)) < 1e-3


@pytest.mark.parametrize("kwargs, match", [
    (dict(total_budget=-1), "total_budget"),
    (dict(total_budget=10.5), "total_budget"),
    (dict(total_budget="x"), "total_budget"),
    (dict(total_budget=100, max_tokens=[1, 2]), "max_tokens"),
    (dict(total_budget=100, max_tokens=-3), "max_tokens"),
    (dict(total_budget=100, max_tokens=2.5), "max_tokens"),
    (dict(total_budget=5, fallback_tokens=1), "fallback_tokens"),
])
def test_bad_arguments_get_clear_errors(kwargs, match):
    c = random_curves(10)
    with pytest.raises((ValueError, TypeError), match=match):
        allocate(c, **kwargs)


def test_curves_type_is_checked():
    with pytest.raises(TypeError, match="Curves"):
        allocate([1, 2, 3], 100)


def test_result_prints_and_serialises():
    res = allocate(random_curves(5), 1000)
    d = res.to_dict()
    assert len(d["budgets"]) == 5 and "price" in d and "n_abandoned" in d
    assert "AllocationResult(n=5" in repr(res)
    import json
    json.loads(res.to_json())


def test_both_price_searches_agree_at_the_threshold(monkeypatch):
    """Just above SUBSAMPLE_ABOVE the subsampled search runs; it matches the exact one."""
    n = alloc_mod.SUBSAMPLE_ABOVE + 1
    curves = random_curves(n, seed=5)
    calls = []
    real = alloc_mod.search_subsampled

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(alloc_mod, "search_subsampled", counted)
    total = 200 * n
    fast = allocate(curves, total, max_tokens=4000)
    assert calls == [1]
    allocate(curves[:n - 1], 200 * (n - 1), max_tokens=4000)  # at the threshold: exact
    assert calls == [1]
    monkeypatch.setattr(alloc_mod, "SUBSAMPLE_ABOVE", 10**9)
    exact = allocate(curves, total, max_tokens=4000)
    assert calls == [1]
    assert total - 4000 <= fast.budgets.sum() <= total
    assert abs(fast.expected_correct / exact.expected_correct - 1) < 1e-5
    assert abs(np.log(fast.price / exact.price)) < 1e-3
    assert fast.upper_bound >= fast.expected_correct and exact.upper_bound >= fast.expected_correct


def test_bound_holds_for_a_huge_surge_rate():
    """Issue 18 item 9: with k = 1e20 the bound rounded to about lambda B, below the result."""
    res = allocate(Curves(tau=[120, 400, 30], p=[0.9, 0.6, 0.95], k=[1e20] * 3), 600,
                   max_tokens=512)
    assert res.expected_correct == pytest.approx(2.45)
    assert res.upper_bound >= res.expected_correct - 1e-12
    assert res.upper_bound == pytest.approx(2.45)


def test_bound_with_a_fallback_is_a_bound_for_the_problem_itself():
    """With fallback_tokens the bound covers every allocation giving each query >= fallback
    (it was NaN); here it is checked against the exact optimum on a grid of 1 token."""
    c = Curves([3.0, 8.0, 20.0], [0.9, 0.5, 0.8], [0.5, 0.3, 0.2])
    for total in (6, 15, 30, 60):
        res = allocate(c, total, max_tokens=40, fallback_tokens=2)
        best = 0.0
        for b0 in range(2, 41):
            for b1 in range(2, 41):
                b2 = min(total - b0 - b1, 40)
                if b2 >= 2:
                    best = max(best, float(c.utility(np.array([b0, b1, b2])).sum()))
        assert res.expected_correct <= best + 1e-12
        assert best <= res.upper_bound + 1e-12
        assert 0 <= res.optimality_gap <= 1


_extreme = st.one_of(st.floats(-300, 300).map(lambda e: 10.0 ** e),
                     st.sampled_from([5e-324, 1e-308, 1e308, np.finfo(float).max]))


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 5).flatmap(lambda m: st.tuples(
           st.lists(st.one_of(st.just(0.0), st.floats(0, 1e12), _extreme.filter(
               lambda x: x <= 1e15)), min_size=m, max_size=m),
           st.lists(st.one_of(st.floats(0, 1), st.sampled_from([0.0, 5e-324, 1e-300, 1.0])),
                    min_size=m, max_size=m),
           st.lists(_extreme, min_size=m, max_size=m))),
       st.one_of(st.integers(0, 10_000), st.integers(0, 10**15)),
       st.one_of(st.none(), st.integers(0, 10**9)), st.integers(0, 3))
def test_bound_holds_for_extreme_curves_and_budgets(params, total, cap, fallback):
    """upper_bound >= expected_correct and 0 <= gap <= 1 for any finite input."""
    curves = Curves(*params)
    n = len(curves)
    if fallback and (n * fallback > total or (cap is not None and cap < fallback)):
        return
    res = allocate(curves, total, max_tokens=cap, fallback_tokens=fallback, max_fill_rounds=50)
    assert res.budgets.sum() <= total and np.all(res.budgets >= fallback)
    assert np.isfinite(res.expected_correct) and np.isfinite(res.upper_bound)
    assert res.upper_bound >= res.expected_correct - 1e-12 * max(1.0, res.expected_correct)
    assert 0.0 <= res.optimality_gap <= 1.0


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 50), st.integers(0, 400)), min_size=1, max_size=30),
       st.integers(0, 5000))
@example(rows=[(1.0, 69), (1.0, 67), (0.0, 0), (5e-324, 12), (5e-324, 12)], total=159)
def test_proportional_budgets_share_by_weight_within_caps(rows, total):
    from clear_learn.allocation import proportional_budgets

    w = np.array([r[0] for r in rows])
    caps = np.array([r[1] for r in rows])
    b = proportional_budgets(w, total, caps)
    assert b.dtype == np.int64 and b.sum() <= total
    assert np.all(b >= 0) and np.all(b <= caps) and np.all(b[w == 0] == 0)
    live = (w > 0) & (caps > 0)
    if total >= caps[live].sum():  # enough for every capped query: all at their caps
        assert np.array_equal(b[live], caps[live])
    else:  # nothing useful left unspent (at most one token per query lost to rounding)
        assert b.sum() >= total - w.size
        uncapped = live & (b < caps)
        # the same proportion for all below their cap (weights scaled: subnormal ones too)
        if uncapped.sum() > 1 and np.all(b[uncapped] > 10):
            ratio = b[uncapped] / (w[uncapped] / w[uncapped].max())
            assert ratio.max() / ratio.min() < 1.2


def test_proportional_budgets_examples_and_bad_weights():
    from clear_learn.allocation import proportional_budgets

    assert proportional_budgets([1, 2, 3], 60).tolist() == [10, 20, 30]
    assert proportional_budgets([1, 2, 3], 60, [100, 15, 100]).tolist() == [11, 15, 33]
    with pytest.raises(ValueError, match="weights must be"):
        proportional_budgets([1, -1], 10)
