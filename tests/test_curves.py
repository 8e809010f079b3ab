import numpy as np
import pytest
from scipy.special import lambertw

from clear_learn import Curves
from clear_learn.curves import (marginal_utility, stationary_budget, surge_cdf, tangent_point,
                                utility)
from clear_learn.lambertw import lambertw_m1, solve_y_minus_log_y


def test_lambert_w_matches_scipy_over_the_branch():
    # scipy loses digits within ~1e-6 of the branch point -1/e; the residual test below
    # covers that region
    x = -np.concatenate([np.logspace(-300, -1, 3000),
                         np.linspace(0.01, np.exp(-1) * (1 - 1e-5), 3000)])
    ref = lambertw(x, -1).real
    got = lambertw_m1(x)
    assert np.max(np.abs(got - ref) / np.abs(ref)) < 1e-9
    # near the branch point: W = -1 - sqrt(2 (1 + e x)) + ...
    d = 1e-10
    assert np.isclose(lambertw_m1(np.array([-np.exp(-1) * (1 - d)]))[0], -1 - np.sqrt(2 * d),
                      rtol=1e-9)


def test_y_minus_log_y_solves_its_equation():
    L = np.concatenate([1 + np.logspace(-12, 0, 500), np.linspace(1, 80, 5000),
                        np.logspace(2, 9, 500)])
    y = solve_y_minus_log_y(L)
    assert np.all(y >= 1)
    t = y - 1
    # residual of t - log1p(t) = L - 1, relative to L
    assert np.max(np.abs(t - np.log1p(t) - (L - 1)) / L) < 1e-14
    assert np.all(np.isnan(lambertw_m1(np.array([0.1, -0.5]))))


def test_surge_cdf_is_accurate_for_tiny_and_huge_arguments():
    x = np.array([0.0, 1e-12, 1e-6, 1e-3, 0.5, 1.0, 50.0, 1e6, 1e300])
    exact = np.array([0.0, 5e-25, 5e-13 - 1e-18 / 3, None, None, None, None, 1.0, 1.0],
                     dtype=object)
    g = surge_cdf(x)
    assert g[0] == 0 and abs(g[1] - 5e-25) / 5e-25 < 1e-9
    assert abs(g[2] - exact[2]) / exact[2] < 1e-9
    assert abs(g[5] - (1 - 2 * np.exp(-1))) < 1e-15
    assert g[-1] == 1.0 and g[-2] == 1.0
    assert np.all(np.diff(g) >= 0)
    assert surge_cdf(np.array([-5.0]))[0] == 0


def test_utility_shape_and_marginal():
    tau, p, k = 100.0, 0.8, 0.02
    b = np.linspace(0, 2000, 20001)
    u = utility(b, tau, p, k)
    assert np.all(u[b <= tau] == 0)
    assert np.all(np.diff(u) >= 0) and abs(u[-1] - p) < 1e-6
    h = 1e-4
    num = (utility(b[1:-1] + h, tau, p, k) - utility(b[1:-1] - h, tau, p, k)) / (2 * h)
    assert np.allclose(num, marginal_utility(b[1:-1], tau, p, k), atol=1e-8)
    c = Curves([tau], [p], [k])
    peak = marginal_utility(tau + 1 / k, tau, p, k)
    assert np.isclose(peak, c.peak_marginal_utility()[0])
    assert np.all(marginal_utility(b, tau, p, k) <= peak + 1e-15)


@pytest.mark.parametrize("k", [1e-6, 1e-3, 0.05, 10.0, 1e4])
def test_stationary_budget_is_on_the_decaying_side(k):
    tau, p = 250.0, 0.7
    peak = p * k / np.e
    prices = peak * np.array([1e-12, 1e-6, 0.01, 0.5, 0.999999, 1.0])
    b = stationary_budget(prices, tau, p, k)
    assert np.all(b >= tau + 1 / k - 1e-6 / k)
    assert np.allclose(marginal_utility(b, tau, p, k), prices, rtol=1e-6)
    assert np.isnan(stationary_budget(1.01 * peak, tau, p, k))
    assert np.isinf(stationary_budget(0.0, tau, p, k))


def test_stationary_budget_with_p_zero_is_nan():
    assert np.isnan(stationary_budget(1e-9, np.array([10.0]), np.array([0.0]),
                                      np.array([0.1]))[0])


def test_tangent_point_is_the_best_average_gain(rng):
    n = 30
    tau = rng.lognormal(np.log(300), 1.0, n)
    p = rng.uniform(0.05, 1, n)
    k = 1 / rng.lognormal(np.log(200), 1.0, n)
    b_star, rate = tangent_point(tau, p, k)
    grid = np.linspace(1e-3, 30000, 300001)
    for i in range(n):
        avg = utility(grid, tau[i], p[i], k[i]) / grid
        assert rate[i] >= avg.max() * (1 - 1e-9)
        assert np.isclose(utility(b_star[i], tau[i], p[i], k[i]) / b_star[i], rate[i])
    # with a cap below the tangent point, the cap is best
    b_c, r_c = tangent_point(tau, p, k, cap=tau + 0.5 / k)
    assert np.allclose(b_c, tau + 0.5 / k)
    assert np.all(r_c <= rate)


def test_tangent_point_of_scalars_with_a_cap():
    b, r = tangent_point(100.0, 0.5, 0.01, cap=50.0)  # a cap below tau: nothing pays
    assert b.shape == () and float(b) == 50.0 and float(r) == 0.0
    b, r = tangent_point(100.0, 0.5, 0.01, cap=250.0)
    bb, rr = tangent_point(np.array([100.0]), np.array([0.5]), np.array([0.01]), cap=250.0)
    assert float(b) == bb[0] and float(r) == rr[0]


def test_tangent_point_extremes_stay_finite():
    b, r = tangent_point(np.array([0.0, 0.0, 1e6]), np.array([1.0, 1.0, 1.0]),
                         np.array([1e6, 1e-9, 1e-9]))
    assert np.all(np.isfinite(b)) and np.all(np.isfinite(r)) and np.all(r > 0)


@pytest.mark.parametrize("kwargs, field", [
    (dict(tau=[-1.0], p=[0.5], k=[0.1]), "tau"),
    (dict(tau=[np.nan], p=[0.5], k=[0.1]), "tau"),
    (dict(tau=[1.0], p=[1.5], k=[0.1]), "p"),
    (dict(tau=[1.0], p=[-0.1], k=[0.1]), "p"),
    (dict(tau=[1.0], p=[0.5], k=[0.0]), "k"),
    (dict(tau=[1.0], p=[0.5], k=[np.inf]), "k"),
])
def test_curves_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"Curves.{field}"):
        Curves(**kwargs)


def test_curves_length_mismatch_and_broadcast():
    with pytest.raises(ValueError, match="differ in length"):
        Curves([1.0, 2.0], [0.5, 0.5, 0.5], [0.1])
    c = Curves([1.0, 2.0, 3.0], 0.5, 0.1)
    assert len(c) == 3 and np.all(c.p == 0.5)
    with pytest.raises(ValueError):
        c.tau[0] = 5  # read-only


def test_curves_records_round_trip_and_errors():
    c = Curves([10.0, 20.0], [0.1, 0.9], [0.01, 0.5])
    rows = c.to_records(["a", "b"])
    c2 = Curves.from_records(rows)
    assert np.array_equal(c.tau, c2.tau) and np.array_equal(c.k, c2.k)
    # rows count from 1, like every other message (issue 18 item 5; they counted from 0)
    with pytest.raises(ValueError, match="row 2: field 'k': missing"):
        Curves.from_records([rows[0], {"tau": 1, "p": 0.5}])
    with pytest.raises(ValueError, match="row 1: field 'p': is not a number: 'x'"):
        Curves.from_records([{"tau": 1, "p": "x", "k": 1}])
    with pytest.raises(ValueError, match="row 2: field 'p': is not a number: True"):
        Curves.from_records([rows[0], {"tau": 1, "p": True, "k": 1}])
    with pytest.raises(ValueError, match="row 2: expected an object .* got int"):
        Curves.from_records([rows[0], 3])
    with pytest.raises(ValueError, match=r"row 2: field 'k': must be finite and > 0, got -1"):
        Curves.from_records([rows[0], {"tau": 1, "p": 0.5, "k": -1}])
    assert "Curves(n=2" in repr(c)
