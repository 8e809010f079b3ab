import numpy as np
import pytest

from clear_learn import Curves, fit_curves
from clear_learn.fitting import _FitData, _init, _terms, rollout_nll
from clear_learn.rollouts import read_rollouts, to_arrays
from clear_learn.simulate import random_curves, sample_rollouts


@pytest.mark.parametrize("runaway", [None, 0.2, 0.9])
def test_gradient_matches_finite_differences(runaway):
    c = random_curves(15, seed=1)
    d = _FitData(to_arrays(sample_rollouts(c, 8, 300, seed=1)))  # cap 300: cut-offs happen
    assert d.n_cut.sum() > 0
    th = _init(d) + np.random.default_rng(0).normal(0, 0.3, (15, 3))
    _, g = _terms(th, d, 1e-3, True, runaway)
    for j in range(3):
        e = np.zeros_like(th)
        e[:, j] = 1e-6
        num = (_terms(th + e, d, 1e-3, False, runaway)[0]
               - _terms(th - e, d, 1e-3, False, runaway)[0]) / 2e-6
        assert np.allclose(num, g[:, j], rtol=1e-4, atol=1e-6)


def test_consistent_likelihood_sums_to_one_and_lifts_p_of_long_runners():
    """With a run-away rate the three outcomes are a distribution (the DESIGN form sums to
    2 - p); unsolvable responses that run to the cap no longer count against p."""
    from clear_learn.fitting import FitPrior

    p, h, c = 0.3, 0.6, 0.25  # h: P(a solvable response ends correct within the cap)
    correct, wrong, cut = p * h, (1 - p) * (1 - c), p * (1 - h) + (1 - p) * c
    assert correct + wrong + cut == pytest.approx(1.0)
    # a query that runs long: correct answers near the cap, many cut-offs, a few finished
    # wrong; with a small run-away rate its cut-offs are mostly solvable responses cut short
    recs = [{"id": "q", "text": "x", "max_new_tokens": 512,
             "rollouts": [{"tokens": 470, "correct": True}, {"tokens": 500, "correct": True}]
             + [{"tokens": 90, "correct": False}] * 2 + [{"tokens": 512, "correct": False}] * 4}]
    design = fit_curves(recs).curves.p
    consistent = fit_curves(recs, prior=FitPrior(runaway=0.1)).curves.p
    assert consistent[0] > design[0] + 0.1
    with pytest.raises(ValueError, match="runaway must be"):
        FitPrior(runaway=1.0)


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
    with pytest.raises(ValueError, match="1 curves for 300 queries"):
        rollout_nll(truth[:1], recs)


def test_fit_rejects_queries_without_rollouts():
    d = to_arrays([{"id": "a", "text": "t", "task": "x", "max_new_tokens": 5,
                    "rollouts": [{"tokens": 1, "correct": True}]}])
    d = d.with_mask(np.zeros_like(d.mask))
    with pytest.raises(ValueError, match="no rollouts"):
        fit_curves(d)


@pytest.fixture(scope="module")
def default_records():
    """The embedded default rollouts, its first 432 records (the file grows as data comes)."""
    from clear_learn.datasets import data_path

    return read_rollouts(data_path("default"))[:432]


def _dense_terms(theta, data, eps):
    """The likelihood as computed before the rollouts went flat (issue 18 item 11): on
    (Q, n_max) arrays padded to the largest query. Kept here as a reference."""
    tokens, correct, mask = data.tokens, data.correct, data.mask
    corr = correct & mask
    M = data.max_new_tokens.astype(np.float64)
    n_c = corr.sum(1).astype(np.float64)
    n_w = (mask & ~correct & ~data.cutoff).sum(1).astype(np.float64)
    n_cut = (mask & ~correct & data.cutoff).sum(1).astype(np.float64)
    width = max(int(n_c.max(initial=0)), 1)
    order = np.argsort(~corr, axis=1, kind="stable")[:, :width]
    L = np.take_along_axis(tokens, order, 1).astype(np.float64)
    mask_c = np.take_along_axis(corr, order, 1)
    a, w, v = theta[:, 0], theta[:, 1], theta[:, 2]
    tau, k = M * np.exp(a), np.exp(-w) / M
    x = L - tau[:, None]
    pos = (x > 0) & mask_c
    kcol = k[:, None]
    kx = np.where(pos, kcol * x, 0.0)
    ekx = np.exp(-kx)
    f = np.where(pos, kcol * kx * ekx, 0.0)
    qd = (1.0 - eps) * f + eps / M[:, None]
    y = np.maximum(k * (M - tau), 0.0)
    ey = np.exp(-y)
    h = (1.0 - eps) * (1.0 - (1.0 + y) * ey) + eps
    p = 1.0 / (1.0 + np.exp(-v))
    one_ph = 1.0 - p * h
    ll = (n_c * -np.logaddexp(0.0, -v) + np.where(mask_c, np.log(qd), 0.0).sum(1)
          + n_w * -np.logaddexp(0.0, v) + n_cut * np.log(one_ph))
    r = np.where(mask_c, (1.0 - eps) / qd, 0.0)
    d_tau = -(r * kcol * kcol * ekx * (1.0 - kx) * pos).sum(1)
    d_k = (r * f * (2.0 / kcol - np.where(pos, x, 0.0))).sum(1)
    live = (M - tau) > 0
    gp = (1.0 - eps) * y * ey * (-n_cut * p / one_ph)
    d_tau += np.where(live, -gp * k, 0.0)
    d_k += np.where(live, gp * (M - tau), 0.0)
    d_v = n_c * (1.0 - p) - n_w * p - n_cut * h * p * (1.0 - p) / one_ph
    return ll, np.stack([d_tau * tau, -d_k * k, d_v], axis=1)


def _ragged_records(seed=0):
    """Rollout counts from 1 to 300 and one query never solved, some cut off."""
    rng = np.random.default_rng(seed)
    truth = random_curves(40, seed=seed)
    recs = []
    for i, n in enumerate(rng.choice([1, 2, 3, 5, 8, 13, 300], size=40)):
        recs += sample_rollouts(truth[i], int(n), 600, seed=seed + i, ids=[f"q{i}"])
    recs[3]["rollouts"] = [{"tokens": 600, "correct": False, "finished": False}] * 4
    return recs


def test_flat_likelihood_matches_the_padded_one(default_records):
    """The flat layout computes the padded layout's likelihood and gradient, on the real
    file and on a ragged case (they differ only in the order of additions)."""
    for recs in (default_records, _ragged_records()):
        data = to_arrays(recs)
        d = _FitData(data)
        th = _init(d) + np.random.default_rng(1).normal(0, 0.3, (len(recs), 3))
        ll, g = _terms(th, d, 1e-3, True)
        ll0, g0 = _dense_terms(th, data, 1e-3)
        assert np.allclose(ll, ll0, rtol=1e-12, atol=1e-12)
        assert np.allclose(g, g0, rtol=1e-12, atol=1e-12)


def test_fit_matches_the_padded_implementation(monkeypatch, default_records):
    """``fit_curves`` with the padded likelihood swapped in gives the same curves.

    The fit accepts a step by comparing objective values, which locates a mode to about
    sqrt(machine eps) in a flat direction: changing the prior's ``logit_p_sd`` by one ulp
    moves the padded fit's ``k`` by 5e-8 (relative) on the real file. So the curves are
    compared at 1e-7 and the likelihood at 1e-9 (the two fits differ by at most 1.1e-8 in
    ``p``, 1.3e-10 in ``tau``, 1.2e-9 in ``k``, 3.8e-10 in nll, relative, on 432 records).
    """
    import clear_learn.fitting as fitting

    for recs in (default_records, _ragged_records()):
        flat = fit_curves(recs)
        data = to_arrays(recs)
        with monkeypatch.context() as m:
            m.setattr(fitting, "_terms", lambda th, d, eps, need, runaway=None: (
                _dense_terms(th, data, eps) if need else (_dense_terms(th, data, eps)[0], None)))
            padded = fit_curves(recs)
        assert flat.converged and padded.converged
        assert np.allclose(flat.nll, padded.nll, rtol=1e-9, atol=0)
        for name in ("tau", "p", "k"):
            a, b = getattr(flat.curves, name), getattr(padded.curves, name)
            assert np.allclose(a, b, rtol=1e-7, atol=1e-9), name


def test_each_query_fits_alone_as_in_a_batch():
    """A query's curve does not depend on its neighbours, however many rollouts they have
    (each query's Newton iteration is its own)."""
    recs = _ragged_records(seed=3)
    big = sample_rollouts(random_curves(1, seed=9), 20_000, 600, seed=9, ids=["big"])
    together = fit_curves(recs + big).curves
    n_correct = sum(x["correct"] for r in recs + big for x in r["rollouts"])
    assert _FitData(to_arrays(recs + big)).L.shape == (n_correct,)  # flat, never padded
    for i in (0, 3, 7, 20):
        alone = fit_curves([recs[i]]).curves
        assert (alone.tau[0], alone.p[0], alone.k[0]) == (
            together.tau[i], together.p[i], together.k[i])


def test_rollout_arrays_are_flat_and_select_and_mask():
    recs = _ragged_records(seed=4)
    a = to_arrays(recs)
    counts = [len(r["rollouts"]) for r in recs]
    assert a.counts.tolist() == counts and a.n_rollouts == sum(counts)
    assert a.flat_tokens.shape == (sum(counts),)
    assert a.tokens.shape == (len(recs), max(counts))  # the padded view, on demand
    assert a.tokens[5][a.mask[5]].tolist() == [x["tokens"] for x in recs[5]["rollouts"]]
    s = a.select(np.array([5, 5, 0]))
    assert s.counts.tolist() == [counts[5], counts[5], counts[0]]
    assert s.split(s.flat_tokens)[1].tolist() == [x["tokens"] for x in recs[5]["rollouts"]]
    keep = a.flat_tokens > 200
    m = a.with_mask(keep)
    assert m.counts.tolist() == [int(np.sum(np.array([x["tokens"] for x in r["rollouts"]]) > 200))
                                 for r in recs]
    assert np.array_equal(m.flat_tokens, a.flat_tokens[keep])
    assert np.array_equal(a.with_mask(a.mask & (a.tokens > 200)).flat_tokens, m.flat_tokens)


@pytest.mark.parametrize("runaway", [None, 0.01, 0.3])
def test_training_nll_is_the_fitting_likelihood(runaway):
    """The torch loss (flat floor) equals :func:`clear_learn.fitting.rollout_nll` per query,
    in DESIGN's form and the consistent one."""
    torch = pytest.importorskip("torch")
    from clear_learn.predictor.nll import rollout_nll as torch_nll
    from clear_learn.rollouts import to_arrays
    from clear_learn.simulate import simulated_dataset

    recs = simulated_dataset(n_per_task=6, seed=2)
    arr = to_arrays(recs)
    rng = np.random.default_rng(0)
    q = len(recs)
    curves = Curves(rng.uniform(20, 300, q), rng.uniform(0.05, 0.95, q), rng.uniform(0.005, 0.1, q))
    want = rollout_nll(curves, arr, runaway=runaway)
    t = lambda x: torch.as_tensor(np.array(x))  # noqa: E731 (a writable copy)
    got = torch_nll(t(curves.tau), t(np.log(curves.p / (1 - curves.p))), t(curves.k),
                    t(arr.tokens), t(arr.correct), t(arr.cutoff), t(arr.mask),
                    t(arr.max_new_tokens), smooth_floor=False, runaway=runaway).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_training_nll_has_finite_gradients_far_past_the_cap():
    """A threshold far past the cap (the smooth floor underflows in float32 there) leaves a
    finite loss and finite gradients, for correct, wrong, cut-off and padded rollouts; a
    correct rollout below tau still pulls tau down."""
    torch = pytest.importorskip("torch")
    from clear_learn.predictor.nll import rollout_nll as torch_nll

    tokens = torch.tensor([[100, 512, 40, 0]])
    cutoff = torch.tensor([[False, True, False, False]])
    mask = torch.tensor([[True, True, True, False]])
    for correct in ([False, False, False, False], [True, False, False, False]):
        tau = torch.tensor([7680.0], requires_grad=True)
        p_logit = torch.tensor([0.0], requires_grad=True)
        k = torch.tensor([1 / 512], requires_grad=True)
        loss = torch_nll(tau, p_logit, k, tokens, torch.tensor([correct]), cutoff, mask,
                         torch.tensor([512])).sum()
        loss.backward()
        grads = torch.cat([tau.grad, p_logit.grad, k.grad])
        assert torch.isfinite(loss) and torch.all(torch.isfinite(grads))
    assert tau.grad.item() > 0  # lowering tau raises the likelihood of the correct one
