import json
import math
import pickle

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clear_learn import Curves, allocate
from clear_learn.controller import (StreamController, batch_price, budgets_at_price,
                                    demand_elasticity)

CAP = 512
WINDOW = 200  # the window over which the rate guarantee is stated
RATE_TOL = 0.20  # every window of WINDOW queries from query 50 on: |mean / target - 1| <= this
LONG_TOL = 0.03  # the mean over everything from query 50 on
RECOVERY = 120  # queries after a change of mix until the price is within exp(0.3) of the new


def family(n, seed, tau_median, beta, width_median):
    rng = np.random.default_rng(seed)
    return Curves(rng.lognormal(np.log(tau_median), 0.4, n), rng.beta(*beta, n),
                  1.0 / rng.lognormal(np.log(width_median), 0.4, n))


def concat(*cs):
    return Curves(*(np.concatenate([getattr(c, f) for c in cs]) for f in ("tau", "p", "k")))


def shuffled(c, seed):
    return c[np.random.default_rng(seed).permutation(len(c))]


EASY = family(1200, 1, 60, (6, 1.5), 40)
MEDIUM = family(1200, 2, 180, (3, 2), 80)
HARD = family(1200, 3, 380, (1.5, 3), 120)
MIX = shuffled(concat(EASY[:300], MEDIUM[:300], HARD[:300]), 0)


def window_errors(budgets, target, start=50, window=WINDOW, stride=10):
    return np.array([abs(budgets[i:i + window].mean() / target - 1)
                     for i in range(start, budgets.size - window + 1, stride)])


@pytest.mark.parametrize("target", [48, 128])
@pytest.mark.parametrize("warm", ["reference", "bootstrap"])
def test_rate_within_tolerance_from_a_cold_start(target, warm):
    ref, stream = MIX[:300], MIX[300:]
    if warm == "reference":
        ctl = StreamController.from_reference(ref, tokens_per_query=target, max_tokens=CAP)
    else:
        ctl = StreamController(tokens_per_query=target, max_tokens=CAP)
    g = ctl.grant_curves(stream)
    b = g.budgets
    assert window_errors(b, target).max() <= RATE_TOL
    assert abs(b[50:].mean() / target - 1) <= LONG_TOL
    # from query 50 on the price stays near the stream's own batch price
    assert np.all(np.abs(np.log(g.prices[50:] / batch_price(stream, target, CAP))) < 0.6)


def test_the_rate_identity_holds_exactly():
    """granted - target * queries == target * h * eps * (log price change), without clamping."""
    ctl = StreamController(tokens_per_query=100, price=1e-3, elasticity=1.5,
                           adapt_elasticity=False, horizon=25, max_tokens=CAP)
    lp0 = ctl.log_price_
    b = ctl.grant_curves(MIX[:500]).budgets
    assert b.sum() - 100 * 500 == pytest.approx(100 * 25 * 1.5 * (ctl.log_price_ - lp0),
                                                rel=1e-9, abs=1e-6)


def test_the_rate_identity_counts_copies():
    """A query of n copies is granted n times its budget, in granted_ and in the feedback."""
    ctl = StreamController(tokens_per_query=100, price=1e-3, elasticity=1.5, horizon=25,
                           max_tokens=CAP)
    lp0 = ctl.log_price_
    copies = np.random.default_rng(4).integers(1, 4, 300)
    b = np.array([ctl.grant(MIX.tau[i], MIX.p[i], MIX.k[i], copies=int(n)).budget
                  for i, n in enumerate(copies)])
    assert ctl.granted_ == int((b * copies).sum())
    assert ctl.granted_ - 100 * 300 == pytest.approx(100 * 25 * 1.5 * (ctl.log_price_ - lp0),
                                                     rel=1e-9, abs=1e-6)
    # the budget per copy is the one-copy budget at the same price
    one = StreamController(tokens_per_query=100, price=1e-3, horizon=1e12, max_tokens=CAP)
    three = StreamController(tokens_per_query=100, price=1e-3, horizon=1e12, max_tokens=CAP)
    g1, g3 = one.grant(60, 0.9, 0.05), three.grant(60, 0.9, 0.05, copies=3)
    assert g1.budget == g3.budget > 0 and three.granted_ == 3 * one.granted_


def test_the_bootstrap_price_counts_copies():
    """Bootstrapping on queries of 4 copies each at 100 tokens a query prices them as queries
    of one copy at 25: the sample's demand counts every copy."""
    four = StreamController(tokens_per_query=100, bootstrap=8, max_tokens=CAP)
    one = StreamController(tokens_per_query=25, bootstrap=8, max_tokens=CAP)
    for i in range(8):
        four.grant(MIX.tau[i], MIX.p[i], MIX.k[i], copies=4)
        one.grant(MIX.tau[i], MIX.p[i], MIX.k[i])
        assert four.price_ == pytest.approx(one.price_)
    # a state saved before the buffer held copies loads as one copy each
    ctl = StreamController(tokens_per_query=100, bootstrap=8, max_tokens=CAP)
    ctl.grant(MIX.tau[0], MIX.p[0], MIX.k[0])
    state = ctl.state_dict()
    state["boot"] = [row[:4] for row in state["boot"]]
    ctl.load_state_dict(state)
    ctl.grant(MIX.tau[1], MIX.p[1], MIX.k[1])
    assert ctl._boot.shape == (8, 5) and ctl._boot[1, 4] == 1


def test_from_reference_starts_at_a_given_price():
    ctl = StreamController.from_reference(MIX[:300], tokens_per_query=64, max_tokens=CAP,
                                          price=2e-3)
    assert ctl.price_ == pytest.approx(2e-3)
    assert ctl.elasticity_ == pytest.approx(demand_elasticity(MIX[:300], 2e-3, CAP))
    # a rate target needs no arrival rate when the price is given
    ctl = StreamController.from_reference(MIX[:300], tokens_per_second=500, price=2e-3,
                                          max_tokens=CAP)
    assert ctl.price_ == pytest.approx(2e-3)


@pytest.mark.parametrize("target", [48, 128])
def test_recovers_after_a_sudden_change_of_mix(target):
    easy_heavy = shuffled(concat(EASY[400:1100], MEDIUM[400:600]), 1)
    hard_heavy = shuffled(concat(HARD[400:1100], MEDIUM[600:800]), 2)
    ctl = StreamController.from_reference(easy_heavy[:300], tokens_per_query=target,
                                          max_tokens=CAP)
    ctl.grant_curves(easy_heavy[300:])  # settled on the easy-heavy mix
    after = hard_heavy[:800]
    new_price = batch_price(after, target, CAP)
    assert abs(math.log(ctl.price_ / new_price)) > 1.0  # the change is large
    g = ctl.grant_curves(after)
    assert np.all(np.abs(np.log(g.prices[RECOVERY:] / new_price)) < 0.6)
    assert abs(math.log(g.prices[RECOVERY] / new_price)) < 0.3 or \
        np.any(np.abs(np.log(g.prices[:RECOVERY] / new_price)) < 0.3)
    assert window_errors(g.budgets, target, start=RECOVERY).max() <= RATE_TOL


def test_near_batch_accuracy_at_equal_spend_and_beats_uniform():
    stream = MIX[300:]
    for target in (48, 128):
        ctl = StreamController.from_reference(MIX[:300], tokens_per_query=target,
                                              max_tokens=CAP)
        b = ctl.grant_curves(stream).budgets
        for i in range(0, len(stream), WINDOW):
            w, bw = stream[i:i + WINDOW], b[i:i + WINDOW]
            spend = int(bw.sum())
            batch = allocate(w, spend, max_tokens=CAP).expected_correct
            uniform = w.utility(min(spend // len(w), CAP)).sum()
            assert w.utility(bw).sum() >= 0.95 * batch
            assert w.utility(bw).sum() > 1.2 * uniform


def test_tokens_per_second_target():
    rng = np.random.default_rng(5)
    times = np.cumsum(rng.exponential(0.5, 600))  # about 2 queries per second
    ctl = StreamController.from_reference(MIX[:300], tokens_per_second=200,
                                          queries_per_second=2.0, max_tokens=CAP,
                                          horizon=12.5)
    g = ctl.grant_curves(MIX[300:900], times=times)
    late = times >= times[50]
    rate = g.budgets[late].sum() / (times[-1] - times[50])
    assert abs(rate / 200 - 1) <= 0.05


def test_consumed_target_steers_consumed_tokens():
    ctl = StreamController.from_reference(MIX[:300], tokens_per_query=64, max_tokens=CAP,
                                          target="consumed")
    rng = np.random.default_rng(3)
    stream = MIX[300:]
    used = []
    for i in range(len(stream)):
        g = ctl.grant(stream.tau[i], stream.p[i], stream.k[i])
        # a response of length tau + Gamma(2, k), cut at its budget
        n = int(min(stream.tau[i] + rng.gamma(2.0, 1.0 / stream.k[i]), g.budget))
        used.append(n)
        ctl.report_consumed(n)
    assert abs(np.mean(used[50:]) / 64 - 1) <= 0.05
    assert ctl.granted_ > ctl.consumed_ == sum(used)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 80), st.integers(0, 3000), st.integers(1, 30), st.integers(0, 8),
       st.sampled_from([16, 64, 256]), st.integers(0, 10_000))
def test_hard_cap_over_queries_is_never_exceeded(n, cap, window, fallback, target, seed):
    if fallback >= target:
        fallback = 0
    c = MIX[np.random.default_rng(seed).integers(0, len(MIX), n)]
    ctl = StreamController(tokens_per_query=target, price=1e-4, cap_tokens=cap,
                           cap_window=window, fallback_tokens=fallback, max_tokens=CAP)
    g = ctl.grant_curves(c)
    b = g.budgets
    sums = np.convolve(b, np.ones(window, dtype=np.int64))  # every window of that many
    assert sums.max(initial=0) <= cap
    assert np.all(b <= CAP) and np.all(b >= 0)
    assert np.all(b[g.abandoned] <= fallback)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=60), st.integers(0, 3000),
       st.integers(1, 20), st.integers(0, 8), st.sampled_from(["granted", "consumed"]),
       st.integers(0, 10_000))
def test_hard_cap_with_copies_is_never_exceeded(copies, cap, window, fallback, target, seed):
    """A query of n copies generates n times its budget: the cap counts all of them."""
    n = len(copies)
    c = MIX[np.random.default_rng(seed).integers(0, len(MIX), n)]
    ctl = StreamController(tokens_per_query=64, price=1e-4, cap_tokens=cap, cap_window=window,
                           fallback_tokens=fallback, max_tokens=CAP, target=target)
    b = np.array([ctl.grant(c.tau[i], c.p[i], c.k[i], copies=copies[i]).budget
                  for i in range(n)])
    spent = b * np.array(copies)
    assert np.convolve(spent, np.ones(window, dtype=np.int64)).max(initial=0) <= cap
    assert ctl.granted_ == spent.sum()
    assert np.all(b <= CAP) and np.all(b >= 0)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 3.0), min_size=1, max_size=80), st.integers(0, 3000),
       st.floats(0.1, 20.0), st.integers(1, 8), st.integers(0, 10_000))
def test_hard_cap_over_seconds_is_never_exceeded(gaps, cap, window, buckets, seed):
    times = 1000.0 + np.cumsum(gaps)
    n = times.size
    c = MIX[np.random.default_rng(seed).integers(0, len(MIX), n)]
    ctl = StreamController(tokens_per_second=300.0, price=1e-4, cap_tokens=cap,
                           cap_window=window, cap_buckets=buckets, max_tokens=CAP)
    b = ctl.grant_curves(c, times=times).budgets
    for i in range(n):  # every interval [t_i, t_i + window) of the stream
        assert b[(times >= times[i]) & (times < times[i] + window)].sum() <= cap


def test_cap_trims_and_the_price_does_not_wind_up():
    ctl = StreamController(tokens_per_query=128, price=1e-3, cap_tokens=20 * 64,
                           cap_window=20, max_tokens=CAP)
    g = ctl.grant_curves(MIX[:600])
    assert g.trimmed.any()
    assert np.all(g.budgets <= g.demands)
    # demand, not the trimmed grant, is fed back: the price stays near the uncapped one
    free = StreamController(tokens_per_query=128, price=1e-3, max_tokens=CAP)
    free.grant_curves(MIX[:600])
    assert abs(math.log(ctl.price_ / free.price_)) < 1.0


def test_state_is_of_constant_size():
    ctl = StreamController(tokens_per_query=64, max_tokens=CAP, cap_tokens=5000,
                           cap_window=50)
    stream = concat(MIX, MIX)
    ctl.grant_curves(stream[:100])
    s1, size1, attrs1 = ctl.state_dict(), len(pickle.dumps(ctl)), set(vars(ctl))
    ctl.grant_curves(stream[100:])
    s2, size2 = ctl.state_dict(), len(pickle.dumps(ctl))
    assert s1.keys() == s2.keys() and attrs1 == set(vars(ctl))
    shape = {k: len(v) for k, v in s1.items() if isinstance(v, list)}
    assert shape == {k: len(v) for k, v in s2.items() if isinstance(v, list)}
    # 18 times the queries; only the counters' integers may take a few more bytes
    assert abs(size2 - size1) < 64
    json.dumps(s2)  # JSON-ready


def test_state_round_trip_continues_identically():
    a = StreamController(tokens_per_query=64, max_tokens=CAP, cap_tokens=4000, cap_window=40)
    a.grant_curves(MIX[:120])
    b = StreamController(tokens_per_query=64, max_tokens=CAP, cap_tokens=4000, cap_window=40)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    ga, gb = a.grant_curves(MIX[120:300]), b.grant_curves(MIX[120:300])
    assert np.array_equal(ga.budgets, gb.budgets) and np.allclose(ga.prices, gb.prices)


def test_grant_is_the_batch_lagrangian_at_the_price():
    price = batch_price(MIX[:400], 96, CAP)
    expected = budgets_at_price(MIX[:400], price, CAP)
    ctl = StreamController(tokens_per_query=96, price=price, horizon=1e12,
                           adapt_elasticity=False, max_tokens=CAP)
    got = ctl.grant_curves(MIX[:400]).budgets
    assert np.array_equal(got, expected)
    # and that price is the allocator's: its Lagrangian demand fits the total
    assert expected.sum() <= 96 * 400
    assert 0.25 <= demand_elasticity(MIX[:400], price, CAP) <= 4.0


def test_bootstrap_buffer_is_dropped():
    ctl = StreamController(tokens_per_query=64, max_tokens=CAP, bootstrap=16)
    ctl.grant_curves(MIX[:15])
    assert ctl.bootstrapping
    ctl.grant_curves(MIX[15:16])
    assert not ctl.bootstrapping and ctl.state_dict()["boot"] is None


@pytest.mark.parametrize("kwargs, word", [
    ({}, "exactly one"),
    ({"tokens_per_query": 10, "tokens_per_second": 5}, "exactly one"),
    ({"tokens_per_query": -3}, "tokens_per_query"),
    ({"tokens_per_second": 100}, "starting price"),
    ({"tokens_per_query": 10, "price": 0}, "price"),
    ({"tokens_per_query": 10, "horizon": float("nan")}, "horizon"),
    ({"tokens_per_query": 10, "target": "spent"}, "target"),
    ({"tokens_per_query": 10, "cap_tokens": 100}, "cap_window"),
    ({"tokens_per_query": 10, "cap_tokens": 100, "cap_window": 2.5}, "cap_window"),
    ({"tokens_per_query": 10, "fallback_tokens": 10}, "fallback_tokens"),
    ({"tokens_per_query": 10, "max_tokens": 1.5}, "max_tokens"),
    ({"tokens_per_query": 10, "price_bounds": (1.0, 0.1)}, "price_bounds"),
])
def test_bad_arguments_are_named(kwargs, word):
    with pytest.raises(ValueError, match=word):
        StreamController(**kwargs)


def test_bad_calls_are_named():
    ctl = StreamController(tokens_per_second=100, price=1e-3)
    with pytest.raises(ValueError, match="now"):
        ctl.grant(100, 0.5, 0.01)
    ctl.grant(100, 0.5, 0.01, now=5.0)
    with pytest.raises(ValueError, match="backwards"):
        ctl.grant(100, 0.5, 0.01, now=4.0)
    with pytest.raises(ValueError, match="p must"):
        ctl.grant(100, 1.5, 0.01, now=6.0)
    with pytest.raises(ValueError, match="tokens"):
        ctl.report_consumed(-1)
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="copies"):
            ctl.grant(100, 0.5, 0.01, now=7.0, copies=bad)


def test_adaptive_elasticity_tracks_the_stream_and_keeps_the_rate():
    stream = MIX[300:]
    ctl = StreamController.from_reference(MIX[:300], tokens_per_query=96, max_tokens=CAP,
                                          elasticity=4.0, adapt_elasticity=True)
    b = ctl.grant_curves(stream).budgets
    true = demand_elasticity(stream, batch_price(stream, 96, CAP), CAP)
    assert abs(math.log(ctl.elasticity_ / true)) < abs(math.log(4.0 / true))
    assert window_errors(b, 96).max() <= RATE_TOL
