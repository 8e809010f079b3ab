"""Threshold spread: the moment-matched widening and its leave-one-group-out fit."""

from __future__ import annotations

import numpy as np
import pytest

from clear_learn.curves import Curves, widen_threshold
from clear_learn.predictor.calibration import (check_tau_spread, fit_tau_spread,
                                               spread_nll, tau_spread_by_group)
from clear_learn.simulate import sample_rollouts


def test_widening_keeps_p_and_the_mean_length_and_adds_the_threshold_variance():
    c = Curves([50.0, 120.0, 300.0], [0.2, 0.5, 0.9], [0.05, 0.02, 0.01])
    w = c.widened(0.3)
    assert np.array_equal(w.p, c.p)
    assert np.allclose(w.tau + 2 / w.k, c.tau + 2 / c.k)  # mean length of a solvable rollout
    assert np.allclose(2 / w.k ** 2, 2 / c.k ** 2 + (0.3 * c.tau) ** 2)
    assert np.all(w.tau < c.tau) and np.all(w.k < c.k)
    same = c.widened(0.0)
    assert np.array_equal(same.tau, c.tau) and np.array_equal(same.k, c.k)
    # per-curve spreads broadcast; a threshold pushed below 0 is floored there
    tau, k = widen_threshold(np.array([10.0, 10.0]), np.array([0.5, 0.5]), np.array([0.0, 5.0]))
    assert tau[0] == 10.0 and tau[1] == 0.0 and k[1] < 0.5
    with pytest.raises(ValueError, match="spread must be finite and >= 0"):
        c.widened(-0.1)


def test_check_tau_spread_names_the_field():
    assert check_tau_spread("0.5") == 0.5
    for bad in (-1, float("nan"), "wide", None):
        with pytest.raises(ValueError, match="calibration.tau_spread must be a number >= 0"):
            check_tau_spread(bad, "calibration.tau_spread")


def _jittered(n: int, jitter: float, seed: int):
    """Curves a predictor would give (``pred``) and rollouts from the truth, whose threshold
    is off by a lognormal error of sd ``jitter`` (log scale)."""
    rng = np.random.default_rng(seed)
    pred = Curves(rng.uniform(80, 250, n), rng.uniform(0.4, 0.9, n), rng.uniform(0.03, 0.08, n))
    truth = Curves(pred.tau * np.exp(jitter * rng.standard_normal(n)), pred.p, pred.k)
    return pred, sample_rollouts(truth, 16, 512, seed=seed + 1)


def test_the_fitted_spread_grows_with_the_threshold_error():
    pred, exact = _jittered(300, 0.0, 0)
    _, rough = _jittered(300, 0.5, 0)
    assert fit_tau_spread(pred, exact) <= 0.1
    s = fit_tau_spread(pred, rough)
    assert 0.3 <= s <= 0.8
    nll = spread_nll(pred, rough).sum(axis=1)
    assert nll[0] > nll.min()  # the narrow curves are less likely than the fitted ones
    with pytest.raises(ValueError, match="3 curves for 300 records"):
        spread_nll(pred[:3], rough)


def test_each_group_is_fitted_on_the_others_only():
    pred_a, rough = _jittered(200, 0.5, 1)
    pred_b, exact = _jittered(200, 0.0, 2)
    curves = Curves(np.r_[pred_a.tau, pred_b.tau], np.r_[pred_a.p, pred_b.p],
                    np.r_[pred_a.k, pred_b.k])
    groups = ["rough"] * 200 + ["exact"] * 200
    got = tau_spread_by_group(curves, rough + exact, groups)
    # the exact group's spread is the rough group's fit, and the other way round
    assert got["exact"] == fit_tau_spread(pred_a, rough)
    assert got["rough"] == fit_tau_spread(pred_b, exact)
    with pytest.raises(ValueError, match="only group"):
        tau_spread_by_group(pred_a, rough, ["x"] * 200)
