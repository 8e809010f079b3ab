"""Batch context: within-family length slopes and the shift by relative length."""

import numpy as np
import pytest

from clear_learn.curves import Curves
from clear_learn.predictor.batch_context import (BatchContext, apply_batch_context,
                                                 clip_offsets, neighbour_log_length,
                                                 neighbour_mean, pool_look_alikes,
                                                 relative_log_length, shift_by_length,
                                                 within_task_slopes)


def _record(task, text, lengths, correct):
    return {"id": f"{task}-{len(text)}", "task": task, "text": text,
            "rollouts": [{"tokens": int(t), "correct": bool(c)} for t, c in zip(lengths, correct)]}


def _families():
    """Two families: within each, a longer text needs longer answers and is solved less often;
    the family with the longer texts is the easier one, so the pooled slopes have the wrong
    sign."""
    recs = []
    for task, base, words, solved in (("short-hard", 400, 4, 0), ("long-easy", 100, 40, 4)):
        for i in range(6):
            text = " ".join(["word"] * (words + 4 * i))
            n_ok = max(0, min(8, solved + 4 - i))
            recs.append(_record(task, text, [base * (1 + 0.3 * i)] * 8,
                                [j < n_ok for j in range(8)]))
    return recs


def test_within_task_slopes_remove_the_family_confound():
    ctx = within_task_slopes(_families())
    assert ctx.tau_slope > 0.3 and ctx.p_slope < -0.5
    # one family only: the within slope is the pooled slope of that family
    one = within_task_slopes([r for r in _families() if r["task"] == "long-easy"])
    assert one.tau_slope > 0.3
    with pytest.raises(ValueError, match="no records"):
        within_task_slopes([])


def test_slopes_are_fitted_on_the_offsets_the_stage_applies():
    """A family whose log answer length rises exactly by 1 per unit of the stage's offset d:
    the fitted tau slope is 1, so the shifted curves of that family as a batch reproduce its
    answer lengths. (Fitted on log length less its family mean, it came out well below 1:
    the centre holds the text itself and look-alikes of about its length, so d spans less.)"""
    # look-alikes by one shared word only: low similarities, so each text's own length
    # weighs heavily in its centre (as in real families, whose texts differ in their numbers)
    texts = [" ".join(["letters"] + [f"w{i}x{j}" for j in range(2 + 3 * i)]) for i in range(8)]
    d = relative_log_length(texts)
    recs = [_record("letters", t, [round(100 * np.exp(x))] * 4, [True] * 4)
            for t, x in zip(texts, d)]
    ctx = within_task_slopes(recs)
    assert ctx.tau_slope == pytest.approx(1.0, abs=0.02)
    assert ctx.max_offset == pytest.approx(np.abs(d).max())
    logs = np.log([len(t) for t in texts])
    assert np.ptp(d) < 0.5 * np.ptp(logs - logs.mean())  # d does span less
    curves = Curves(np.full(8, 100.0), np.full(8, 0.5), np.full(8, 0.02))
    shifted = apply_batch_context(curves, texts, ctx)
    assert np.allclose(np.log(shifted.tau), np.log(100) + d, atol=0.05)


def test_neighbour_centre_uses_look_alikes_only():
    texts = ["add the numbers 1 and 2", "add the numbers 10 and 20 and 30 and 40",
             "add the numbers 3 and 4 and 5", "zebra crossing colour?"]
    centre = neighbour_log_length(texts, neighbours=5)
    logs = np.log([len(t) for t in texts])
    assert centre[3] == logs[3]  # unlike every other text: its own centre
    # look-alikes pull each other's centres together: the shortest up, the longest down
    assert logs[0] < centre[0] < logs[1] and logs[0] < centre[1] < logs[1]
    assert np.ptp(centre[:3]) < np.ptp(logs[:3])
    assert np.allclose(neighbour_log_length(texts[:1]), logs[:1])
    # a threshold above every similarity leaves each text alone
    assert np.array_equal(neighbour_log_length(texts, min_similarity=0.99), logs)
    # one neighbour each: a text's centre moves toward its most similar text only
    one = neighbour_log_length(texts, neighbours=1)
    assert not np.allclose(one, centre) and one[3] == logs[3]


def test_neighbour_mean_averages_rows_over_look_alikes():
    texts = ["what is 2 + 2", "what is 3 + 3 now", "spell the word banana",
             "spell the word apple"]
    v = np.arange(8.0).reshape(4, 2)
    m = neighbour_mean(texts, v)
    # each pair of look-alikes pulls together, the two groups stay apart
    assert m[0, 0] > v[0, 0] and m[1, 0] < v[1, 0] and m[2, 0] > v[2, 0]
    assert m[1, 0] < m[2, 0]
    assert np.allclose(m[:, 1] - m[:, 0], 1.0)  # columns are averaged alike
    assert np.allclose(neighbour_mean(texts, v[:, 0]), m[:, 0])
    with pytest.raises(ValueError, match="3 values for 4 texts"):
        neighbour_mean(texts, v[:3])


def test_copies_of_a_text_count_as_one():
    """A stream that resamples a small family repeats texts: the copies must not be each
    other's neighbours at similarity 1 (they would pull the centre to the copied text)."""
    texts = ["add the numbers 1 and 2", "add the numbers 10 and 20 and 30 and 40",
             "add the numbers 3 and 4 and 5", "zebra crossing colour?"]
    once = neighbour_log_length(texts, neighbours=5)
    tripled = texts + [texts[0], texts[0], texts[3]]
    again = neighbour_log_length(tripled, neighbours=5)
    assert np.allclose(again[:4], once) and np.allclose(again[4:], once[[0, 0, 3]])
    assert np.allclose(neighbour_log_length([texts[0]] * 3), np.log(len(texts[0])))
    v = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 9.0, 4.0])  # copies with unlike values: their mean
    m = neighbour_mean(tripled, v)
    assert m[0] == m[4] == m[5] and m[3] == m[6] == 4.0


def test_longer_than_its_look_alikes_gets_a_later_lower_curve():
    texts = ["count the letters in apple", "count the letters in the word banana split please",
             "what is the capital of peru"]
    curves = Curves(np.full(3, 100.0), np.full(3, 0.5), np.full(3, 0.02))
    ctx = BatchContext(tau_slope=0.5, p_slope=-1.0, neighbours=4, min_similarity=0.2)
    out = apply_batch_context(curves, texts, ctx)
    assert out.tau[1] > 100 > out.tau[0] and out.p[1] < 0.5 < out.p[0]
    assert out.tau[2] == 100 and out.p[2] == 0.5 and np.array_equal(out.k, curves.k)
    with pytest.raises(ValueError, match="2 texts for 3 curves"):
        apply_batch_context(curves, texts[:2], ctx)
    # per-curve slopes broadcast
    d = np.array([1.0, 0.0, -1.0])
    s = shift_by_length(curves, d, np.array([0.0, 1.0, 1.0]), 0.0)
    assert np.allclose(s.tau, [100, 100, 100 / np.e])


def test_pooling_pulls_look_alikes_together_and_leaves_the_unlike_alone():
    """pool 1: two look-alike texts with unlike curves end level with each other, a third text
    unlike both keeps its own curve; pool 0 changes nothing; the length shift acts after it."""
    texts = ["count the letters r in the word strawberry",
             "count the letters r in the word raspberry",
             "capital city of peru?"]
    curves = Curves(np.array([50.0, 200.0, 80.0]), np.array([0.9, 0.3, 0.6]),
                    np.array([0.01, 0.04, 0.02]))
    same = pool_look_alikes(curves, texts, 0.0)
    assert same is curves
    full = pool_look_alikes(curves, texts, 1.0)
    half = pool_look_alikes(curves, texts, 0.5)
    logit = lambda q: np.log(q / (1 - q))  # noqa: E731
    assert abs(logit(full.p[0]) - logit(full.p[1])) < 0.3 * abs(logit(0.9) - logit(0.3))
    assert np.isclose(np.log(half.tau[0]), (np.log(50.0) + np.log(full.tau[0])) / 2)
    assert 50 < full.tau[0] < 200 and 0.01 < full.k[0] < 0.04
    assert np.isclose(full.tau[2], 80.0) and np.isclose(full.p[2], 0.6)
    per_curve = pool_look_alikes(curves, texts, np.array([1.0, 0.0, 1.0]))
    assert np.isclose(per_curve.tau[1], 200.0) and np.isclose(per_curve.tau[0], full.tau[0])
    ctx = BatchContext(tau_slope=0.5, p_slope=-1.0, pool=1.0)
    assert np.allclose(apply_batch_context(curves, texts, ctx).tau,
                       shift_by_length(full, ctx.offsets(texts), 0.5, -1.0).tau)
    with pytest.raises(ValueError, match="pool must be a number in"):
        BatchContext(0.1, -1.0, pool=1.5)
    # leave-one-family-out's per-query contexts act as the shared one
    from clear_learn.predictor.config import Stages
    from clear_learn.predictor.pipeline import postprocess

    stages = Stages(batch_context=ctx)
    shared = postprocess(curves, texts, stages)
    per_query = postprocess(curves, texts, stages, contexts=[ctx] * 3)
    assert np.allclose(shared.tau, per_query.tau) and np.allclose(shared.p, per_query.p)
    assert np.allclose(shared.tau, apply_batch_context(curves, texts, ctx).tau)


def test_bad_context_is_refused_by_name():
    with pytest.raises(ValueError, match="tau_slope must be finite"):
        BatchContext(tau_slope=float("nan"), p_slope=0.0)
    with pytest.raises(ValueError, match="neighbours must be >= 1"):
        BatchContext(0.1, -1.0, neighbours=0)
    with pytest.raises(ValueError, match="unknown keys"):
        BatchContext.from_dict({"tau_slope": 0.1, "p_slope": 0.0, "radius": 3})
    with pytest.raises(ValueError, match="max_offset must be a finite number >= 0"):
        BatchContext(0.1, -1.0, max_offset=-0.5)
    with pytest.raises(ValueError, match="max_offset must be a finite number >= 0"):
        BatchContext.from_dict({"tau_slope": 0.1, "p_slope": 0.0, "max_offset": "1"})
    for ctx in (BatchContext(0.1, -1.0), BatchContext(0.1, -1.0, max_offset=0.7)):
        assert BatchContext.from_dict(ctx.to_dict()) == ctx


def test_offsets_are_clipped_to_the_largest_seen_in_training():
    recs = _families()
    ctx = within_task_slopes(recs)
    within = [np.abs(relative_log_length([r["text"] for r in recs if r["task"] == t])).max()
              for t in ("short-hard", "long-easy")]
    assert ctx.max_offset == pytest.approx(max(within))
    # a text with a long preamble, among its short look-alikes: d is far beyond the bound
    texts = ["count the letters in apple", "count the letters in pear",
             "background " * 300 + "count the letters in plum"]
    d = relative_log_length(texts)
    assert d[2] > 0.8
    bounded = BatchContext(0.5, -1.0, max_offset=0.4)
    curves = Curves(np.full(3, 100.0), np.full(3, 0.5), np.full(3, 0.02))
    out = apply_batch_context(curves, texts, bounded)
    want = shift_by_length(curves, np.clip(d, -0.4, 0.4), 0.5, -1.0)
    assert np.allclose(out.tau, want.tau) and np.allclose(out.p, want.p)
    assert out.tau[2] == pytest.approx(100 * np.exp(0.5 * 0.4))
    free = apply_batch_context(curves, texts, BatchContext(0.5, -1.0))  # older exports
    assert free.tau[2] == pytest.approx(100 * np.exp(0.5 * d[2]))
    # one bound per offset; None entries leave theirs alone
    assert np.array_equal(clip_offsets(np.array([2.0, -2.0, 2.0]), [1.0, 0.5, None]),
                          [1.0, -0.5, 2.0])
    assert np.array_equal(clip_offsets(np.array([3.0]), None), [3.0])


def test_stream_policy_gives_each_batch_its_own_context():
    from clear_learn.allocation import allocate
    from clear_learn.predictor.config import Stages
    from clear_learn.predictor.pipeline import stream_policy

    texts = ["count the letters in apple", "count the letters in the word banana split please",
             "what is the capital of peru", "count the letters in the long word strawberries"]
    raw = Curves(np.array([80.0, 90, 100, 110]), np.array([0.6, 0.5, 0.4, 0.5]),
                 np.full(4, 0.03))
    ctx = BatchContext(tau_slope=0.5, p_slope=-1.0)
    caps = np.array([512, 512, 256, 512])
    policy = stream_policy(raw, texts, Stages(batch_context=ctx), caps)
    for idx in (np.array([0, 1, 2]), np.array([1, 3, 3])):
        got = policy(idx, 300)
        want = allocate(apply_batch_context(raw[idx], [texts[i] for i in idx], ctx), 300,
                        max_tokens=caps[idx]).budgets
        assert np.array_equal(got, want) and got.sum() <= 300 and np.all(got <= caps[idx])
    # the same query in another batch gets another centre, hence another curve
    a = apply_batch_context(raw[[1, 0]], [texts[1], texts[0]], ctx)
    b = apply_batch_context(raw[[1, 3]], [texts[1], texts[3]], ctx)
    assert a.tau[0] != b.tau[0]
