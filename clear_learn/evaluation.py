"""Evaluation on held-out queries (docs/METHOD.md, *Evaluation*): Pareto frontiers of policies.

Every allocation is scored with the queries' empirical accuracy curves, never with the
curves that made it. When oracle curves are fitted on one half of each query's rollouts, every
policy is scored on the other half, so that all are judged on the same rollouts.
"""

from __future__ import annotations

import itertools
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from .allocation import allocate, uniform_budgets
from .curves import Curves
from .fitting import fit_curves
from .optimum import empirical_optimum
from .rollouts import RolloutArrays, to_arrays

__all__ = ["split_rollouts", "evaluate_policies", "EvalReport", "plot_frontier",
           "task_prior_curves", "gap_closed", "mean_gap_closed", "mean_gap_closed_sd"]

Policy = Curves | Callable[[np.ndarray, int], np.ndarray]


def split_rollouts(data: RolloutArrays, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random disjoint halves of each query's rollouts: flat masks ``(fit_mask, score_mask)``.

    Each is (R,) over :attr:`RolloutArrays.flat_tokens`. A query with an odd count gives the
    extra rollout to the scoring half. Every rollout draws one uniform key, in flat order, and
    the ``counts // 2`` lowest keys of a query form its fit half.
    """
    rng = np.random.default_rng(seed)
    keys = rng.random(data.n_rollouts)
    qi = data.query_index
    order = np.lexsort((keys, qi))  # by query, then by key
    rank = np.empty(data.n_rollouts, dtype=np.int64)
    rank[order] = np.arange(data.n_rollouts) - data.offsets[qi[order]]
    fit = rank < (data.counts // 2)[qi]
    return fit, ~fit


def gap_closed(acc: float, uniform: float, oracle: float) -> float:
    """Share of the uniform-to-oracle gap closed: ``(acc - uniform) / (oracle - uniform)``."""
    gap = oracle - uniform
    return float((acc - uniform) / gap) if gap > 1e-12 else float("nan")


#: the least oracle-over-uniform mean accuracy at which a budget's gap closed is a figure, not
#: noise (near saturation, or where neither solves anything, the ratio is a quotient of noise)
MIN_GAP = 0.02


def _informative_budgets(report: "EvalReport", min_gap: float) -> list[int]:
    rows = report.rows
    return [j for j in range(len(report.budgets_per_query))
            if rows["oracle"][j]["mean_accuracy"] - rows["uniform"][j]["mean_accuracy"]
            >= min_gap]


def mean_gap_closed(report: "EvalReport", min_gap: float = MIN_GAP) -> dict[str, float]:
    """Each policy's share of the gap closed, averaged over the budgets where the oracle beats
    uniform by at least ``min_gap`` mean accuracy (near saturation the ratio is noise)."""
    keep = _informative_budgets(report, min_gap)
    return {name: float(np.mean([rs[j]["gap_closed"] for j in keep])) if keep
            else float("nan") for name, rs in report.rows.items()}


def mean_gap_closed_sd(report: "EvalReport", min_gap: float = MIN_GAP) -> dict[str, float]:
    """The standard deviation over the report's rollout halvings (``splits``) of each policy's
    mean gap closed, on the budgets :func:`mean_gap_closed` keeps (a halving averages those
    where its own gap reached :data:`MIN_GAP`; a halving with none is left out); NaN with
    fewer than two halvings."""
    keep = _informative_budgets(report, min_gap)
    out = {}
    for name, rs in report.rows.items():
        per = [rs[j].get("gap_closed_by_split") for j in keep]
        if not keep or any(p is None or len(p) < 2 for p in per):
            out[name] = float("nan")
            continue
        by_split = np.array(per, dtype=float)  # (budgets, halvings); None (saved NaN) -> NaN
        seen = np.isfinite(by_split).any(axis=0)
        means = np.array([np.nanmean(col) for col in by_split.T[seen]])
        out[name] = float(np.std(means, ddof=1)) if means.size >= 2 else float("nan")
    return out


def _strict(obj):
    """``obj`` with every non-finite float replaced by ``None`` (strict JSON has no NaN)."""
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


@dataclass
class EvalReport:
    """Per policy, one row per average budget; serialisable to JSON."""

    rows: dict[str, list[dict]]
    budgets_per_query: list[float]
    n_queries: int
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"n_queries": self.n_queries, "budgets_per_query": self.budgets_per_query,
                "meta": self.meta, "policies": self.rows}

    def save(self, path: str | Path) -> Path:
        from .atomic import write_text

        return write_text(path, json.dumps(_strict(self.to_dict()), indent=2,
                                           allow_nan=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "EvalReport":
        """A report written by :meth:`save` (its ``None`` cells read back as NaN)."""
        d = json.loads(Path(path).read_text())
        missing = {"policies", "budgets_per_query", "n_queries"} - set(d)
        if missing:
            raise ValueError(f"{path}: not an evaluation report (no {sorted(missing)})")
        rows = {name: [{k: float("nan") if v is None else v for k, v in row.items()}
                       for row in rs] for name, rs in d["policies"].items()}
        return cls(rows=rows, budgets_per_query=d["budgets_per_query"],
                   n_queries=int(d["n_queries"]), meta=d.get("meta", {}))

    def table(self, metric: str = "mean_accuracy") -> str:
        """A plain-text table: one row per budget, one column per policy. An undefined value
        (``gap_closed`` where the oracle does not beat uniform) is a dash, explained below."""
        names = list(self.rows)
        head = "| tokens/query | " + " | ".join(names) + " |"
        sep = "|---:|" + "---:|" * len(names)
        lines = [head, sep]
        undefined = False
        for i, b in enumerate(self.budgets_per_query):
            vals = [self.rows[n][i][metric] for n in names]
            undefined |= any(not np.isfinite(v) for v in vals)
            cells = [f"{v:.3f}" if np.isfinite(v) else "-" for v in vals]
            lines.append(f"| {b:g} | " + " | ".join(cells) + " |")
        if undefined:
            lines.append("(-: undefined" + (", the oracle does not beat uniform at that budget)"
                                            if metric.startswith("gap_closed") else ")"))
        return "\n".join(lines)


def task_prior_curves(train: list[dict], test_tasks: Sequence[str]) -> Curves:
    """A text-free predictor: each test query gets the median fitted curve of its task.

    Tasks absent from ``train`` get the median over all training queries.
    """
    fit = fit_curves(train).curves
    tasks = np.array([r["task"] for r in train])
    overall = (np.median(fit.tau), np.median(fit.p), np.exp(np.median(np.log(fit.k))))
    per_task = {}
    for t in np.unique(tasks):
        m = tasks == t
        per_task[t] = (np.median(fit.tau[m]), np.median(fit.p[m]),
                       np.exp(np.median(np.log(fit.k[m]))))
    rows = [per_task.get(t, overall) for t in test_tasks]
    return Curves(*(np.array(col) for col in zip(*rows)))


def evaluate_policies(records: list[dict], policies: Mapping[str, Policy],
                      budgets_per_query: Sequence[float], *, oracle: bool = True,
                      optimum: bool = True, seed: int = 0, fallback_tokens: int = 0,
                      stream: Sequence[int] | None = None, batch_size: int | None = None,
                      batches: Sequence[Sequence[int]] | None = None,
                      splits: int = 1, progress: bool = False) -> EvalReport:
    """Score allocation policies on held-out queries over a sweep of average budgets.

    Parameters
    ----------
    records : held-out queries with rollouts.
    policies : name -> :class:`Curves` (one per record, allocated by CLEAR) or a function
        ``f(indices, total_budget) -> budgets``. ``uniform`` is always added.
    budgets_per_query : average budgets ``B / N`` to sweep.
    oracle : add ``oracle``: CLEAR on curves fitted to one half of each query's rollouts; all
        policies are then scored on the other half. A query with fewer than 2 rollouts has
        no fit half: it is left out of the whole evaluation (every policy, so that all are
        scored on the same queries) with a warning naming it, and listed in
        ``meta["skipped"]``.
    optimum : add ``optimum``: the exact optimum of the (scoring) empirical curves, under the
        same rule as CLEAR: every query holds at least ``fallback_tokens``.
    fallback_tokens : what CLEAR gives a query it abandons (see :func:`allocate`).
    stream, batch_size : evaluate on a traffic stream (indices into ``records``, repeats
        allowed) cut into consecutive batches, each allocated on its own with
        ``budget_per_query * len(batch)`` tokens. Default: all records as one batch.
    batches : instead of ``stream`` and ``batch_size``, the batches themselves (index arrays
        of any sizes, for example one per task family).
    splits : with ``oracle``, repeat the evaluation over this many random halvings (seeds
        ``seed, seed + 1, ...``) and average: with 8 rollouts per query one halving moves the
        figures by a few hundredths. Each row then also holds ``gap_closed_by_split`` and
        its standard deviation ``gap_closed_sd``.

    Returns
    -------
    EvalReport
        For each policy and budget: ``mean_accuracy``, ``allocated_tokens``,
        ``consumed_tokens``, ``abandoned``, ``ratio_to_uniform`` (``inf`` where only uniform
        is at 0, ``None`` where both are) and (with ``oracle``)
        ``gap_closed``. ``abandoned`` counts the queries a policy gave up on, whatever
        fallback they then hold: CLEAR's ``AllocationResult.abandoned``, the optimum's queries
        left at the fallback, and for a function policy (``uniform`` included) the budgets of
        at most ``fallback_tokens``.
    """
    data = to_arrays(records)
    if len(data) == 0:
        raise ValueError("no queries to evaluate")
    if batches is not None:
        if stream is not None or batch_size is not None:
            raise ValueError("pass batches, or stream and batch_size, not both")
        batches = [np.asarray(b, dtype=np.int64) for b in batches]
        if not batches or any(b.size == 0 for b in batches):
            raise ValueError("batches must be non-empty index arrays")
        stream = np.concatenate(batches)
        batch_size = max(b.size for b in batches)
    else:
        stream = (np.arange(len(data)) if stream is None
                  else np.asarray(stream, dtype=np.int64))
        batch_size = batch_size or stream.size
        batches = [stream[i:i + batch_size] for i in range(0, stream.size, batch_size)]
    if stream.size and (stream.min() < 0 or stream.max() >= len(data)):
        raise ValueError(f"batch indices must lie in [0, {len(data)})")
    skipped: list = []
    if oracle:
        batches, skipped = _without_unsplittable(records, data, batches)
        stream = np.concatenate(batches)
    if isinstance(splits, bool) or not isinstance(splits, (int, np.integer)) or splits < 1:
        raise ValueError(f"splits must be a positive integer, got {splits!r}")
    if splits > 1 and not oracle:
        raise ValueError("splits > 1 needs oracle=True: without an oracle nothing is split")
    caps = data.max_new_tokens
    curves: dict[str, Policy] = {"uniform": lambda idx, B: uniform_budgets(idx.size, B,
                                                                             caps[idx])}
    reserved = {"uniform"} | {n for n, on in (("oracle", oracle), ("optimum", optimum)) if on}
    if reserved & set(policies):
        raise ValueError(f"policy names {sorted(reserved & set(policies))} are reserved for "
                         "the evaluation's own rows")
    curves.update(policies)
    for name, pol in curves.items():
        if isinstance(pol, Curves) and len(pol) != len(data):
            raise ValueError(f"policy {name!r} has {len(pol)} curves for {len(data)} queries")
    meta: dict = {"seed": seed, "scored_on": "all rollouts", "n_batches": len(batches),
                  "batch_size": int(batch_size), "fallback_tokens": int(fallback_tokens)}
    if oracle:
        meta["scored_on"] = "the half of each query's rollouts not used for oracle fits"
        meta["splits"] = int(splits)
        meta["skipped"] = skipped
    names = list(curves) + (["oracle"] if oracle else []) + (["optimum"] if optimum else [])
    sums = np.zeros((splits, len(names), len(budgets_per_query), 4))
    halves = []  # per halving: (the scoring rollouts, the oracle's curves)
    for s in range(splits):
        if oracle:
            fit_mask, score_mask = split_rollouts(data, seed + s)
            fit_half = data.with_mask(fit_mask)
            kept = np.flatnonzero(fit_half.counts > 0)  # the skipped ones get no curve
            curves_kept = fit_curves(fit_half.select(kept)).curves
            full = [np.zeros(len(data)), np.zeros(len(data)), np.ones(len(data))]
            for col, vals in zip(full, (curves_kept.tau, curves_kept.p, curves_kept.k)):
                col[kept] = vals
            halves.append((data.with_mask(score_mask), Curves(*full)))
        else:
            halves.append((data, None))
    it = batches
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(batches, desc="evaluating", unit="batch")
    for idx in it:
        totals = [int(round(b * idx.size)) for b in budgets_per_query]
        # the policies' allocations do not depend on the halving: made once per batch
        fixed = {name: [_budgets(name, pol, idx, B, caps[idx], fallback_tokens)
                        for B in totals] for name, pol in curves.items()}
        for s, (score, orc) in enumerate(halves):
            sub, got = score.select(idx), dict(fixed)
            if oracle:
                got["oracle"] = [_budgets("oracle", orc, idx, B, caps[idx], fallback_tokens)
                                 for B in totals]
            if optimum:
                opt = empirical_optimum(sub.split(sub.flat_tokens), sub.split(sub.flat_correct),
                                        max(totals), max_tokens=caps[idx],
                                        fallback_tokens=fallback_tokens)
                got["optimum"] = []
                for B in totals:
                    b = opt.budgets(B)
                    got["optimum"].append((b, b == fallback_tokens))
            for i, name in enumerate(names):
                for j, (b, gave_up) in enumerate(got[name]):
                    sums[s, i, j] += (sub.accuracy_at(b).sum(), b.sum(),
                                      sub.consumed_at(b).sum(), np.count_nonzero(gave_up))
    n = stream.size
    mean = sums.mean(axis=0)
    rows: dict[str, list[dict]] = {}
    for i, name in enumerate(names):
        rows[name] = [{"budget_per_query": float(bpq), "mean_accuracy": float(s[0] / n),
                       "allocated_tokens": int(round(s[1])), "consumed_tokens": float(s[2]),
                       "abandoned": int(round(s[3]))}
                      for bpq, s in zip(budgets_per_query, mean[i])]
    acc = sums[..., 0] / n  # (splits, policies, budgets)
    for j in range(len(budgets_per_query)):
        uni = rows["uniform"][j]["mean_accuracy"]
        orc = rows["oracle"][j]["mean_accuracy"] if oracle else None
        for i, name in enumerate(names):
            r = rows[name][j]
            r["ratio_to_uniform"] = (r["mean_accuracy"] / uni if uni > 0 else float("inf")
                                     if r["mean_accuracy"] > 0 else None)  # 0/0: undefined
            if orc is not None:
                r["gap_closed"] = gap_closed(r["mean_accuracy"], uni, orc)
            if splits > 1:
                u, o = acc[:, names.index("uniform"), j], acc[:, names.index("oracle"), j]
                per = [gap_closed(a, b, c) if c - b >= MIN_GAP else float("nan")
                       for a, b, c in zip(acc[:, i, j], u, o)]
                r["gap_closed_by_split"] = per
                fin = np.array([g for g in per if np.isfinite(g)])
                r["gap_closed_sd"] = float(np.std(fin, ddof=1)) if fin.size >= 2 else float("nan")
    return EvalReport(rows=rows, budgets_per_query=[float(b) for b in budgets_per_query],
                      n_queries=int(n), meta=meta)


def _budgets(name: str, policy: Policy, idx: np.ndarray, total: int, caps: np.ndarray,
             fallback_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """``policy``'s budgets for the batch ``idx`` under ``total``, and which queries it gave
    up on (see :func:`evaluate_policies`); refuses a broken budget."""
    if isinstance(policy, Curves):
        res = allocate(policy[idx], total, max_tokens=caps, fallback_tokens=fallback_tokens)
        b, gave_up = res.budgets, res.abandoned
    else:
        raw = np.asarray(policy(idx, total))
        if raw.shape != idx.shape:
            raise ValueError(f"policy {name!r} returned budgets of shape {raw.shape} for a "
                             f"batch of {idx.size} queries")
        if raw.size and not (np.all(np.isfinite(raw)) and np.all(raw == np.floor(raw))
                             and raw.min() >= 0):
            raise ValueError(f"policy {name!r} returned budgets that are not whole numbers "
                             f">= 0 (e.g. {raw.flat[0]!r})")
        b = raw.astype(np.int64)
        gave_up = b <= fallback_tokens
    if b.sum() > total or np.any(b > caps):
        raise AssertionError(f"policy {name!r} broke the budget at B={total}")
    return b, gave_up


def _without_unsplittable(records: list[dict], data: RolloutArrays, batches: list[np.ndarray]
                          ) -> tuple[list[np.ndarray], list]:
    """``batches`` without the queries of fewer than 2 rollouts (no oracle fit half), and
    their ids; warns naming them, and refuses when nothing is left."""
    short = data.counts < 2
    if not np.any(short):
        return batches, []
    ids = [records[i].get("id", i) for i in np.flatnonzero(short)]
    shown = ", ".join(repr(x) for x in ids[:10]) + (f" and {len(ids) - 10} more"
                                                   if len(ids) > 10 else "")
    kept = [b[~short[b]] for b in batches]
    kept = [b for b in kept if b.size]
    if not kept:
        raise ValueError(f"every query has fewer than 2 rollouts (ids {shown}): the oracle needs "
                         "2 or more, one half to fit and one to score; pass oracle=False")
    warnings.warn(f"{len(ids)} queries have fewer than 2 rollouts, so no half to fit an oracle "
                  f"curve on: left out of the evaluation (every policy): ids {shown}",
                  UserWarning, stacklevel=3)
    return kept, ids


def plot_frontier(report: EvalReport, path: str | Path, *, title: str = "") -> Path:
    """Mean accuracy against total allocated tokens, one line per policy, saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    # the reference lines in black, each its own dash; every other policy its own colour
    reference = {"uniform": "--", "oracle": "-.", "optimum": ":"}
    colours = itertools.cycle(plt.get_cmap("tab10").colors)
    for name, rows in report.rows.items():
        x = [r["allocated_tokens"] for r in rows]
        y = [r["mean_accuracy"] for r in rows]
        if name in reference:
            ax.plot(x, y, reference[name], color="black", marker="o", ms=3, label=name)
        else:
            ax.plot(x, y, "-", color=next(colours), marker="o", ms=3, label=name)
    ax.set_xlabel(f"total tokens allocated ({report.n_queries} queries)")
    ax.set_ylabel("mean accuracy (empirical, held-out rollouts)")
    ax.set_title(title or "Accuracy against total tokens")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    from .atomic import atomic_write

    path = Path(path)
    try:
        with atomic_write(path) as fh:
            fig.savefig(fh, format="png")
    finally:
        plt.close(fig)
    return path
