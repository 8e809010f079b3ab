import json

import numpy as np
import pytest

from clear_learn.evaluation import (MIN_GAP, evaluate_policies, gap_closed, mean_gap_closed,
                                    plot_frontier, split_rollouts, task_prior_curves)
from clear_learn.rollouts import to_arrays
from clear_learn.simulate import simulated_dataset
from clear_learn.streams import (burst_stream, draw_spread, mixture_stream, preset_streams,
                                 task_difficulty)


@pytest.fixture(scope="module")
def data():
    recs = simulated_dataset(n_per_task=60, seed=1)
    order = np.random.default_rng(0).permutation(len(recs))
    return [recs[i] for i in order[:90]], [recs[i] for i in order[90:]]


def test_split_halves_are_disjoint_and_balanced(data):
    a = to_arrays(data[1])
    fit, score = split_rollouts(a, seed=3)
    assert fit.shape == score.shape == (a.n_rollouts,)
    assert not np.any(fit & score) and np.all(fit | score)
    assert np.all(a.per_query_sum(fit) == a.counts // 2)
    assert np.all(a.with_mask(fit).counts == a.counts // 2)


def test_report_orders_policies_sensibly(data, tmp_path):
    train, test = data
    prior = task_prior_curves(train, [r["task"] for r in test])
    rep = evaluate_policies(test, {"clear-task-prior": prior}, [32, 128, 512])
    rows = rep.rows
    assert list(rows) == ["uniform", "clear-task-prior", "oracle", "optimum"]
    for j, b in enumerate([32, 128, 512]):
        best = rows["optimum"][j]["mean_accuracy"]
        for name in rows:
            r = rows[name][j]
            assert r["mean_accuracy"] <= best + 1e-12  # the exact optimum is a ceiling
            assert r["allocated_tokens"] <= b * len(test)
            assert r["consumed_tokens"] <= r["allocated_tokens"] + 1e-9
        assert rows["oracle"][j]["gap_closed"] in (1.0,) or np.isnan(
            rows["oracle"][j]["gap_closed"])
    assert rows["oracle"][0]["mean_accuracy"] > 2 * rows["uniform"][0]["mean_accuracy"]
    rep.rows["uniform"][0]["gap_closed"] = float("nan")  # as where oracle == uniform
    path = rep.save(tmp_path / "r.json")

    def no_constants(name):
        raise AssertionError(f"report.json holds {name}: not strict JSON")

    saved = json.loads(path.read_text(), parse_constant=no_constants)
    assert saved["policies"]["uniform"][0]["budget_per_query"] == 32
    assert saved["policies"]["uniform"][0]["gap_closed"] is None
    png = plot_frontier(rep, tmp_path / "f.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert "| 128 |" in rep.table()


def test_function_policies_and_budget_checks(data):
    test = data[1]
    rep = evaluate_policies(test, {"zero": lambda idx, B: np.zeros(idx.size, int)}, [64],
                            oracle=False, optimum=False)
    assert rep.rows["zero"][0]["mean_accuracy"] == 0
    with pytest.raises(AssertionError, match="broke the budget"):
        evaluate_policies(test, {"greedy": lambda idx, B: np.full(idx.size, B)}, [64],
                          oracle=False, optimum=False)
    with pytest.raises(ValueError, match="curves for"):
        from clear_learn.simulate import random_curves
        evaluate_policies(test, {"bad": random_curves(3)}, [64])


def test_streams(data):
    recs = data[0] + data[1]
    tasks = [r["task"] for r in recs]
    s = mixture_stream(tasks, {"sim-easy": 3, "sim-hard": 1}, 4000, seed=1)
    got = np.array(tasks)[s]
    assert s.size == 4000 and 0.7 < np.mean(got == "sim-easy") < 0.8
    assert np.array_equal(s, mixture_stream(tasks, {"sim-easy": 3, "sim-hard": 1}, 4000, 1))
    with pytest.raises(ValueError, match="unknown task"):
        mixture_stream(tasks, {"nope": 1}, 10)
    b = burst_stream(tasks, 256, burst=64, seed=2)
    assert all(len(set(np.array(tasks)[b[i:i + 64]])) == 1 for i in range(0, 256, 64))
    diff = task_difficulty(recs)
    assert list(diff)[0] == "sim-hard" and list(diff)[-1] == "sim-easy"
    streams = preset_streams(recs, 300)
    assert {"balanced", "easy-heavy", "hard-heavy", "bimodal", "bursts"} <= set(streams)
    hard = np.array(tasks)[streams["hard-heavy"]]
    easy = np.array(tasks)[streams["easy-heavy"]]
    assert np.mean(hard == "sim-hard") > np.mean(easy == "sim-hard")
    rep = evaluate_policies(recs, {}, [128], stream=streams["bursts"], batch_size=64)
    assert rep.n_queries == 300 and rep.meta["n_batches"] == 5


def test_a_task_supplies_each_query_once_before_any_twice(data):
    """A task asked for more queries than it has repeats none before all were drawn (a batch
    of a small family holds as few copies of one text as the stream allows)."""
    recs = data[0] + data[1]
    tasks = np.array([r["task"] for r in recs])
    n = int(np.sum(tasks == "sim-hard"))
    for size in (n - 1, n, 2 * n + 3):
        s = mixture_stream(tasks, {"sim-hard": 1}, size, seed=3)
        counts = np.bincount(s, minlength=tasks.size)[tasks == "sim-hard"]
        assert s.size == size and counts.max() - counts.min() <= 1, size
    b = burst_stream(tasks, 3 * n, burst=2 * n, seed=4)
    for i in range(0, b.size, 2 * n):
        counts = np.bincount(b[i:i + 2 * n], minlength=tasks.size)
        run = counts[tasks == tasks[b[i]]]
        assert run.max() - run.min() <= 1
    with pytest.raises(ValueError, match="empty pool"):
        draw_spread(np.array([], int), 3, np.random.default_rng(0))


def test_explicit_batches_of_any_size(data):
    """``batches=``: each batch allocated on its own; the pooled accuracy is the size-weighted
    mean of evaluating each batch alone."""
    recs = data[1]
    tasks = np.array([r["task"] for r in recs])
    batches = [np.where(tasks == t)[0] for t in sorted(set(tasks))]
    assert len({b.size for b in batches}) == len(batches) > 1  # unequal sizes
    seen = []

    def spy(idx, B):
        seen.append(idx.size)
        return np.zeros(idx.size, int)

    rep = evaluate_policies(recs, {"spy": spy}, [128], batches=batches, oracle=False,
                            optimum=False)
    assert sorted(set(seen)) == sorted(b.size for b in batches)
    assert rep.meta["n_batches"] == len(batches)
    alone = [evaluate_policies([recs[i] for i in b], {}, [128], oracle=False, optimum=False)
             for b in batches]
    want = sum(a.rows["uniform"][0]["mean_accuracy"] * b.size
               for a, b in zip(alone, batches)) / len(recs)
    assert rep.rows["uniform"][0]["mean_accuracy"] == pytest.approx(want)
    with pytest.raises(ValueError, match="not both"):
        evaluate_policies(recs, {}, [128], batches=batches, batch_size=8)
    with pytest.raises(ValueError, match="non-empty"):
        evaluate_policies(recs, {}, [128], batches=[batches[0], []])
    with pytest.raises(ValueError, match=r"lie in \[0, "):
        evaluate_policies(recs, {}, [128], batches=[[0, len(recs)]])


def test_gap_closed():
    assert gap_closed(0.5, 0.2, 0.8) == pytest.approx(0.5)
    assert np.isnan(gap_closed(0.5, 0.5, 0.5))


def small_report(uni, orc, pol):
    """A report of three policies (uniform, oracle, ``p``) with the given mean accuracies."""
    from clear_learn.evaluation import EvalReport

    def row(acc, uni, orc):
        return {"mean_accuracy": acc, "gap_closed": gap_closed(acc, uni, orc)}

    rows = {"uniform": [row(u, u, o) for u, o in zip(uni, orc)],
            "oracle": [row(o, u, o) for u, o in zip(uni, orc)],
            "p": [row(a, u, o) for a, u, o in zip(pol, uni, orc)]}
    budgets = [64.0 * 2 ** i for i in range(len(uni))]
    return EvalReport(rows=rows, budgets_per_query=budgets, n_queries=1, meta={})


def test_mean_gap_closed_skips_budgets_near_saturation():
    rep = small_report([0.0, 0.2, 0.50], [0.4, 0.6, 0.51], [0.2, 0.5, 0.40])
    # the third budget (oracle - uniform = 0.01, ratio -10) is left out
    assert mean_gap_closed(rep)["p"] == pytest.approx((0.5 + 0.75) / 2)
    assert mean_gap_closed(rep, min_gap=0.0)["p"] == pytest.approx((0.5 + 0.75 - 10) / 3)


def test_report_save_load_round_trip(tmp_path):
    from clear_learn.evaluation import EvalReport

    rep = small_report([0.0, 0.3], [0.4, 0.3], [0.2, 0.3])  # no gap at 128: NaN, saved as null
    rep.meta["nll_per_rollout"] = {"p": 1.5}
    back = EvalReport.load(rep.save(tmp_path / "r.json"))
    assert back.budgets_per_query == rep.budgets_per_query and back.meta == rep.meta
    assert np.isnan(back.rows["p"][1]["gap_closed"])
    assert mean_gap_closed(back) == mean_gap_closed(rep)
    (tmp_path / "bad.json").write_text('{"policies": {}}')
    with pytest.raises(ValueError, match="not an evaluation report"):
        EvalReport.load(tmp_path / "bad.json")


def test_splits_average_the_halvings(data, tmp_path):
    """``splits=n`` is the mean of the single-halving reports of seeds ``seed .. seed+n-1``,
    with each halving's gap kept; one halving is the plain report."""
    from clear_learn.evaluation import EvalReport, mean_gap_closed_sd

    train, test = data
    prior = {"clear-task-prior": task_prior_curves(train, [r["task"] for r in test])}
    budgets = [32, 128, 256]
    one = [evaluate_policies(test, prior, budgets, seed=s) for s in (4, 5, 6)]
    rep = evaluate_policies(test, prior, budgets, seed=4, splits=3)
    assert rep.meta["splits"] == 3
    assert evaluate_policies(test, prior, budgets, seed=4, splits=1).rows == one[0].rows
    for name in ("uniform", "clear-task-prior", "oracle", "optimum"):
        for j in range(len(budgets)):
            accs = [r.rows[name][j]["mean_accuracy"] for r in one]
            assert rep.rows[name][j]["mean_accuracy"] == pytest.approx(np.mean(accs))
            by = rep.rows[name][j]["gap_closed_by_split"]
            gaps = [r.rows["oracle"][j]["mean_accuracy"] - r.rows["uniform"][j]["mean_accuracy"]
                    for r in one]
            assert by == pytest.approx([r.rows[name][j]["gap_closed"] if g >= MIN_GAP
                                        else np.nan for r, g in zip(one, gaps)], nan_ok=True)
            fin = [g for g in by if np.isfinite(g)]
            if len(fin) >= 2:
                assert rep.rows[name][j]["gap_closed_sd"] == pytest.approx(np.std(fin, ddof=1))
    # the oracle really is refitted per halving: its accuracy moves between them
    assert len({r.rows["oracle"][1]["mean_accuracy"] for r in one}) > 1
    sd = mean_gap_closed_sd(EvalReport.load(rep.save(tmp_path / "r.json")))
    assert sd["oracle"] == pytest.approx(0.0) and sd["clear-task-prior"] > 0
    assert np.isnan(mean_gap_closed_sd(one[0])["clear-task-prior"])
    with pytest.raises(ValueError, match="positive integer"):
        evaluate_policies(test, prior, budgets, splits=0)
    with pytest.raises(ValueError, match="needs oracle"):
        evaluate_policies(test, prior, budgets, splits=2, oracle=False)
    with pytest.raises(ValueError, match="reserved"):
        evaluate_policies(test, {"oracle": prior["clear-task-prior"]}, budgets)


def test_a_halving_whose_gap_is_noise_does_not_blow_up_the_sd(tmp_path):
    """A budget where one halving's oracle barely beats uniform: that halving's ratio there is
    left out (saved as null), not averaged in as a huge number."""
    from clear_learn.evaluation import EvalReport, mean_gap_closed_sd

    def row(by):
        return {"budget_per_query": 64.0, "mean_accuracy": 0.3, "gap_closed": 0.5,
                "gap_closed_by_split": by}

    rows = {"uniform": [row([0.0, 0.0, 0.0]), row([0.0, 0.0, 0.0])],
            "oracle": [row([1.0, 1.0, 1.0]), row([1.0, 1.0, 1.0])],
            "p": [row([0.4, 0.6, 0.5]), row([0.5, 0.7, float("nan")])]}
    for r, acc in zip(rows["oracle"], (0.5, 0.4)):
        r["mean_accuracy"] = acc
    rep = EvalReport(rows=rows, budgets_per_query=[64.0, 128.0], n_queries=10)
    sd = mean_gap_closed_sd(EvalReport.load(rep.save(tmp_path / "r.json")))["p"]
    assert sd == pytest.approx(np.std([0.45, 0.65, 0.5], ddof=1))


def test_abandoned_counts_queries_at_the_fallback(data):
    """Issue 18 item 14: with fallback_tokens=1 the abandoned queries hold 1 token and were
    counted as not abandoned (only budgets of 0 were); the optimum ignored the fallback."""
    from clear_learn.allocation import allocate

    test = data[1]
    prior = task_prior_curves(data[0], [r["task"] for r in test])
    bpq = [8, 32, 512]
    rep = evaluate_policies(test, {"prior": prior}, bpq, fallback_tokens=1)
    rows = rep.rows
    caps = np.array([r["max_new_tokens"] for r in test])
    for j, b in enumerate(bpq):
        want = allocate(prior, b * len(test), max_tokens=caps, fallback_tokens=1).n_abandoned
        assert rows["prior"][j]["abandoned"] == want
        assert rows["uniform"][j]["abandoned"] == (len(test) if b <= 1 else 0)
        for name in rows:  # every row gives every query at least the fallback
            assert rows[name][j]["allocated_tokens"] >= len(test)
            assert rows[name][j]["mean_accuracy"] <= rows["optimum"][j]["mean_accuracy"] + 1e-12
    assert rows["prior"][0]["abandoned"] > 0 and rows["oracle"][0]["abandoned"] > 0
    assert rows["optimum"][0]["abandoned"] > 0
    assert rep.meta["fallback_tokens"] == 1


def test_optimum_with_a_fallback_gives_every_query_at_least_it():
    from clear_learn.optimum import empirical_optimum

    lengths = [np.array([1, 5, 9]), np.array([3, 40]), np.array([2])]
    correct = [np.array([True, True, False]), np.array([True, True]), np.array([False])]
    fr = empirical_optimum(lengths, correct, 20, fallback_tokens=2)
    assert fr.budgets(8).tolist() == [2, 3, 2] and fr.best(8) == pytest.approx(1 / 3 + 1 / 2)
    assert fr.budgets(11).tolist() == [5, 3, 2] and fr.best(11) == pytest.approx(2 / 3 + 1 / 2)
    assert fr.budgets(6).tolist() == [2, 2, 2] and fr.best(6) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="fallback_tokens=2"):
        fr.budgets(5)
    with pytest.raises(ValueError, match="fallback_tokens=2"):
        empirical_optimum(lengths, correct, 5, fallback_tokens=2)


def test_queries_with_one_rollout_are_left_out_with_a_warning(data):
    """Issue 18 item 15: a query with a single rollout made the oracle fit fail."""
    test = [dict(r) for r in data[1][:20]]
    test[4] = dict(test[4], rollouts=test[4]["rollouts"][:1])
    test[9] = dict(test[9], rollouts=test[9]["rollouts"][:1])
    with pytest.warns(UserWarning, match=r"2 queries have fewer than 2 rollouts.*"
                                         + repr(test[4]["id"]) + ", " + repr(test[9]["id"])):
        rep = evaluate_policies(test, {}, [64, 256])
    assert rep.n_queries == 18 and rep.meta["skipped"] == [test[4]["id"], test[9]["id"]]
    for name in ("uniform", "oracle", "optimum"):
        for row, bpq in zip(rep.rows[name], [64, 256]):
            assert 0 <= row["mean_accuracy"] <= 1 and row["allocated_tokens"] <= 18 * bpq
    assert rep.rows["uniform"][0]["allocated_tokens"] == 18 * 64
    without = evaluate_policies(test, {}, [64], oracle=False)  # nothing to split: all kept
    assert without.n_queries == 20
    with pytest.raises(ValueError, match="fewer than 2 rollouts.*oracle=False"):
        evaluate_policies([dict(r, rollouts=r["rollouts"][:1]) for r in test], {}, [64])


def _report(names, gap):
    from clear_learn.evaluation import EvalReport

    rows = {n: [{"mean_accuracy": 0.1 * (i + 1), "gap_closed": gap, "allocated_tokens": 100.0}]
            for i, n in enumerate(names)}
    return EvalReport(rows=rows, budgets_per_query=[384.0], n_queries=4)


def test_table_prints_a_dash_for_an_undefined_gap():
    rep = _report(["uniform", "oracle", "clear-learned"], float("nan"))
    text = rep.table("gap_closed")
    assert "nan" not in text.lower()
    assert "| 384 | - | - | - |" in text and "oracle does not beat uniform" in text
    assert "undefined" not in _report(["uniform"], 0.5).table("gap_closed")


def test_frontier_gives_each_policy_its_own_style(tmp_path, monkeypatch):
    import matplotlib.axes

    from clear_learn.evaluation import plot_frontier

    seen = []
    real = matplotlib.axes.Axes.plot

    def spy(self, *args, **kw):
        seen.append((kw["label"], args[2], kw["color"]))
        return real(self, *args, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", spy)
    names = ["uniform", "oracle", "optimum"] + [f"clear-{i}" for i in range(5)]
    plot_frontier(_report(names, 0.5), tmp_path / "f.png")
    styles = {(dash, tuple(c) if not isinstance(c, str) else c) for _, dash, c in seen}
    assert len(styles) == len(names)  # no two policies look alike
    assert all(c == "black" for n, _, c in seen if n in ("uniform", "oracle", "optimum"))
    assert all(c != "black" for n, _, c in seen if n.startswith("clear"))


def _step_records(steps: dict[str, int], cap: int = 128, n: int = 8) -> list[dict]:
    """One query per ``name: length``: every rollout right, and exactly ``length`` tokens long
    (its empirical curve is a step from 0 to 1 at ``length``)."""
    return [{"id": name, "task": "steps", "text": name, "max_new_tokens": cap,
             "rollouts": [{"tokens": length, "correct": True, "finished": True}] * n}
            for name, length in steps.items()]


def test_two_step_queries_have_known_answers():
    """Two queries whose answers appear at exactly 10 and 100 tokens: every figure of the
    report is known by hand."""
    recs = _step_records({"easy": 10, "hard": 100})
    def knows(idx, total):  # the right split when it fits, else an even one
        return np.array([10, 100])[idx] if total >= 110 else np.full(idx.size, total // 2)

    rep = evaluate_policies(recs, {"both": knows}, [5, 20, 55], oracle=False)
    uni, opt, pol = rep.rows["uniform"], rep.rows["optimum"], rep.rows["both"]
    # 5 tokens each: nothing is reached; the optimum spends 10 on the easy one
    assert uni[0]["mean_accuracy"] == 0.0 and opt[0]["mean_accuracy"] == 0.5
    assert opt[0]["ratio_to_uniform"] == float("inf")
    assert uni[0]["ratio_to_uniform"] is None  # 0 / 0: undefined, not infinitely better
    # 20 each: uniform reaches the easy one; 40 tokens cannot reach the hard one at all
    assert uni[1]["mean_accuracy"] == 0.5 and opt[1]["mean_accuracy"] == 0.5
    assert uni[1]["consumed_tokens"] == 10 + 20  # the easy one stops at 10, the hard is cut
    # 55 each: uniform 0.5; the optimum (and the policy that knows) splits 10 / 100: both right
    assert uni[2]["mean_accuracy"] == 0.5
    assert opt[2]["mean_accuracy"] == 1.0 and pol[2]["mean_accuracy"] == 1.0
    assert opt[2]["ratio_to_uniform"] == 2.0 and opt[2]["allocated_tokens"] == 110
    assert uni[2]["consumed_tokens"] == 10 + 55 and opt[2]["consumed_tokens"] == 110
    assert uni[2]["abandoned"] == 0


def test_broken_policies_are_named():
    recs = _step_records({"easy": 10, "hard": 100})
    bad = {"short": lambda idx, total: np.zeros(idx.size + 1),
           "negative": lambda idx, total: np.full(idx.size, -50),
           "fractional": lambda idx, total: np.full(idx.size, 2.5)}
    for name, policy in bad.items():
        with pytest.raises(ValueError, match=f"policy '{name}' returned"):
            evaluate_policies(recs, {name: policy}, [20], oracle=False)


def test_step_queries_with_an_oracle_and_clear():
    """With an oracle fitted on half the rollouts (all alike here), CLEAR on the oracle's
    curves funds the easy query before the hard one and never beats the exact optimum; the gap
    closed is 0 for uniform and 1 for the oracle by definition."""
    recs = _step_records({"easy": 10, "hard": 100, "never": 500}, cap=512)
    recs[2]["rollouts"] = [{"tokens": 512, "correct": False, "finished": False}] * 8
    rep = evaluate_policies(recs, {}, [20, 60, 200], splits=2)
    for j in range(3):
        uni, orc, opt = (rep.rows[n][j]["mean_accuracy"] for n in ("uniform", "oracle",
                                                                    "optimum"))
        assert orc <= opt + 1e-12 and uni <= opt + 1e-12
        if orc > uni:
            assert rep.rows["uniform"][j]["gap_closed"] == 0.0
            assert rep.rows["oracle"][j]["gap_closed"] == 1.0
    # 60 per query (180 in all): the optimum takes easy (10) and hard (100) and abandons never
    assert rep.rows["optimum"][1]["mean_accuracy"] == pytest.approx(2 / 3)
    assert rep.rows["uniform"][1]["mean_accuracy"] == pytest.approx(1 / 3)
    # the oracle abandons the query that is never right
    assert rep.rows["oracle"][1]["abandoned"] >= 1
