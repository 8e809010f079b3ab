"""Traffic streams: the same queries mixed in chosen proportions, seeded.

A stream is an array of indices into a list of records, consumed in order; the evaluation cuts
it into batches. A task asked for more queries than it has supplies each of them once before
any twice (:func:`draw_spread`), so a batch holds as few copies of one text as the stream
allows. Presets rank tasks by difficulty (their mean accuracy at the generation cap) to build
easy-heavy, hard-heavy, bimodal, one-task and burst streams.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

__all__ = ["draw_spread", "mixture_stream", "burst_stream", "task_difficulty", "preset_streams"]


def draw_spread(pool: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` draws from ``pool`` in random order, each element ``size // len(pool)`` or one
    more times (whole shuffled passes, then the rest without replacement)."""
    pool = np.asarray(pool)
    if size and not pool.size:
        raise ValueError(f"cannot draw {size} queries from an empty pool")
    passes, rest = divmod(size, pool.size) if pool.size else (0, 0)
    parts = [rng.permutation(pool) for _ in range(passes)]
    parts.append(rng.choice(pool, size=rest, replace=False) if rest else pool[:0])
    return np.concatenate(parts)


def mixture_stream(tasks: Sequence[str], weights: Mapping[str, float], size: int,
                   seed: int = 0) -> np.ndarray:
    """``size`` indices whose tasks follow ``weights`` (normalised); within a task the queries
    are drawn evenly (:func:`draw_spread`), then the whole stream is shuffled."""
    tasks = np.asarray(tasks)
    unknown = set(weights) - set(tasks.tolist())
    if unknown:
        raise ValueError(f"stream weights name unknown task(s): {sorted(unknown)}")
    w = np.array([max(float(v), 0.0) for v in weights.values()])
    if w.sum() <= 0:
        raise ValueError("stream weights must have a positive sum")
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(size, w / w.sum())
    parts = []
    for (task, _), c in zip(weights.items(), counts):
        pool = np.flatnonzero(tasks == task)
        parts.append(draw_spread(pool, c, rng))
    out = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return rng.permutation(out)


def burst_stream(tasks: Sequence[str], size: int, burst: int, seed: int = 0) -> np.ndarray:
    """Runs of ``burst`` consecutive queries of one task each, the task drawn at random and its
    queries evenly within a run (:func:`draw_spread`)."""
    tasks = np.asarray(tasks)
    names = np.unique(tasks)
    rng = np.random.default_rng(seed)
    parts, total = [], 0
    while total < size:
        pool = np.flatnonzero(tasks == rng.choice(names))
        c = min(burst, size - total)
        parts.append(draw_spread(pool, c, rng))
        total += c
    return np.concatenate(parts)


def task_difficulty(records: Sequence[dict]) -> dict[str, float]:
    """Mean accuracy of each task's rollouts (at the generation cap), hardest first."""
    acc: dict[str, list[float]] = {}
    for r in records:
        rs = r["rollouts"]
        acc.setdefault(r["task"], []).append(sum(x["correct"] for x in rs) / len(rs))
    means = {t: float(np.mean(v)) for t, v in acc.items()}
    return dict(sorted(means.items(), key=lambda kv: kv[1]))


def preset_streams(records: Sequence[dict], size: int, seed: int = 0,
                   burst: int = 64) -> dict[str, np.ndarray]:
    """Named streams: ``balanced``, ``easy-heavy``, ``hard-heavy``, ``bimodal``, ``bursts``
    and ``only-<task>`` for each task."""
    tasks = [r["task"] for r in records]
    order = list(task_difficulty(records))  # hardest first
    m = len(order)
    ramp = {t: float(i + 1) for i, t in enumerate(order)}  # easier -> larger weight
    out = {
        "balanced": mixture_stream(tasks, {t: 1.0 for t in order}, size, seed),
        "easy-heavy": mixture_stream(tasks, {t: ramp[t] ** 2 for t in order}, size, seed),
        "hard-heavy": mixture_stream(tasks, {t: (m + 1 - ramp[t]) ** 2 for t in order},
                                     size, seed),
        "bimodal": mixture_stream(tasks, {order[0]: 1.0, order[-1]: 1.0}, size, seed),
        "bursts": burst_stream(tasks, size, burst, seed),
    }
    for t in order:
        out[f"only-{t}"] = mixture_stream(tasks, {t: 1.0}, size, seed)
    return out
