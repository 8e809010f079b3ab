import numpy as np
import pytest

from clear_learn import Curves, fit_curves
from clear_learn.fitting import _FitData, _init, _terms, rollout_nll
from clear_learn.rollouts import to_arrays
from clear_learn.simulate import random_curves, sample_rollouts


def test_gradient_matches_finite_differences():
    c = random_curves(15, seed=1)
    d = _FitData(to_arrays(sample_rollouts(c, 8, 1000, seed=1)))
    th = _init(d) + np.random.default_rng(0).normal(0, 0.3, (15, 3))
    _, g = _terms(th, d, 1e-3, True)
    for j in range(3):
        e = np.zeros_like(th)
        e[:, j] = 1e-6
        num = (_terms(th + e, d, 1e-3, False)[0] - _terms(th - e, d, 1e-3, False)[0]) / 2e-6
        assert np.allclose(num, g[:, j], rtol=1e-4, atol=1e-6)


def test_recovers_known_curves_and_improves_with_more_rollouts():
    truth = random_curves(400, seed=2)
    errs = []
    for n in (4, 16, 64):
        fit = fit_curves(sample_rollouts(truth, n, 4000, seed=n))
        assert fit.converged
        f = fit.curves
        errs.append((np.median(np.abs(f.tau - truth.tau) / truth.tau),
                     np.mean(np.abs(f.p - truth.p)),
                     np.median(np.abs(np.log(f.k / truth.k)))))
    errs = np.array(errs)
    assert np.all(np.diff(errs, axis=0) < 0)  # every error shrinks with more rollouts
    assert errs[-1, 0] < 0.1 and errs[-1, 1] < 0.07 and errs[-1, 2] < 0.2


def test_never_solved_queries_get_p_near_zero():
    recs = [{"id": "a", "text": "t", "task": "x", "max_new_tokens": 512,
             "rollouts": [{"tokens": 300, "correct": False}] * 8},
            {"id": "b", "text": "t", "task": "x", "max_new_tokens": 512,
             "rollouts": [{"tokens": 512, "correct": False}] * 8},
            {"id": "c", "text": "t", "task": "x", "max_new_tokens": 512,
             "rollouts": [{"tokens": 120 + i, "correct": True} for i in range(8)]}]
    f = fit_curves(recs).curves
    assert f.p[0] < 0.05
    # all cut off: nothing is reachable within the cap
    assert f.utility(512)[1] < 0.05
    assert f.p[2] > 0.9 and 60 < f.tau[2] < 121
    assert np.all(np.isfinite(f.tau)) and np.all(f.k > 0)


def test_finished_flag_separates_cutoffs_from_wrong_answers():
    base = {"text": "t", "task": "x", "max_new_tokens": 100}
    solved = [{"tokens": t, "correct": True} for t in (40, 60, 80, 95)]
    cut = {**base, "id": "1", "rollouts": [{"tokens": 100, "correct": False}] * 4 + solved}
    wrong = {**base, "id": "2", "rollouts": [{"tokens": 100, "correct": False,
                                               "finished": True}] * 4 + solved}
    f = fit_curves([cut, wrong]).curves
    # cut-offs may be slow solvable answers: higher saturation than finished wrong answers
    assert f.p[0] > f.p[1] + 0.1


def test_rollout_nll_prefers_the_true_curves():
    truth = random_curves(300, seed=4)
    recs = sample_rollouts(truth, 16, 4000, seed=5)
    wrong = Curves(truth.tau * 2, truth.p, truth.k)
    assert rollout_nll(truth, recs).mean() < rollout_nll(wrong, recs).mean()


def test_fit_rejects_queries_without_rollouts():
    d = to_arrays([{"id": "a", "text": "t", "task": "x", "max_new_tokens": 5,
                    "rollouts": [{"tokens": 1, "correct": True}]}])
    d = d.with_mask(np.zeros_like(d.mask))
    with pytest.raises(ValueError, match="no rollouts"):
        fit_curves(d)
