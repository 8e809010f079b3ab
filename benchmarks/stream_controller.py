"""The streaming controller on the real rollouts: rate, recovery, accuracy against batch CLEAR.

    python benchmarks/stream_controller.py [--size 1600] [--window 200] [--predictor DIR]

On the embedded rollout files (``default`` and ``benchmark``), each query's rollouts are split
in halves: curves are fitted on one (the oracle curves, :func:`clear_learn.fitting.fit_curves`)
and every policy is scored on the other (docs/METHOD.md, *Evaluation*). With ``--predictor``
(default
``checkpoints/default``; ``--predictor none`` skips it), the shipped predictor's curves too,
each text predicted on its own as a router would (so no batch context); note that predictor
was trained on most of these queries, so its rows say how the controller copes with
predicted curves, not how well the predictor generalises.

For each traffic stream of :func:`clear_learn.streams.preset_streams` (mixes, bursts of 64,
one family at a time) and two switch streams (easy-heavy then hard-heavy, and back), and each
target budget per query, a :class:`clear_learn.controller.StreamController` warm-started on
300 queries of *balanced* reference traffic (a different draw; for the one-family streams a
deliberately wrong reference) grants every query in order. Printed per row:

- ``rate max``: the largest ``|mean granted / target - 1|`` over windows of ``--window``
  queries (stride 50) from query 50 on; ``rate all``: the same over everything from 50 on;
- ``vs batch``: the controller's mean accuracy over the stream divided by batch CLEAR's with
  hindsight, each window of ``--window`` queries allocated as one batch with exactly the
  tokens the controller granted in it (the same curves, scored on the same rollouts);
- ``vs uniform``: the controller's accuracy over uniform's at the same spend per window;
- for the switch streams, ``recovery``: queries after the switch until the price is within
  ``exp(+-0.3)`` of the new mix's batch price, and ``rate max`` over windows after that;
- the horizon's trade-off: the rate error against accuracy for horizons of 10 to 100 queries;
- a tokens-per-second target on Poisson arrivals whose rate doubles halfway.

``vs batch (model)`` compares expected accuracies under the curves that made the
allocations: the controller's own loss. ``vs batch (scored)`` uses the held-out rollouts and
adds the noise of which of several near-identical queries each policy happened to fund.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's clear_learn, not an installed one

from clear_learn.allocation import allocate, uniform_budgets  # noqa: E402
from clear_learn.controller import StreamController, batch_price  # noqa: E402
from clear_learn.curves import Curves  # noqa: E402
from clear_learn.datasets import load_rollouts  # noqa: E402
from clear_learn.evaluation import split_rollouts  # noqa: E402
from clear_learn.fitting import fit_curves  # noqa: E402
from clear_learn.rollouts import to_arrays  # noqa: E402
from clear_learn.streams import preset_streams  # noqa: E402

RECOVERED = 0.3  # |log(price / new batch price)| below this counts as recovered


def window_rate_errors(b: np.ndarray, target: float, window: int, start: int = 50,
                       stride: int = 50) -> np.ndarray:
    """``|mean / target - 1|`` of ``b`` over windows of ``window`` from ``start``."""
    return np.array([abs(b[i:i + window].mean() / target - 1)
                     for i in range(start, b.size - window + 1, stride)])


def run_stream(idx: np.ndarray, curves: Curves, scores: list, caps: np.ndarray,
               target: float, ref: np.ndarray, window: int, horizon: float = 25.0) -> dict:
    """Grant ``idx`` in order with a controller warm-started on ``ref``; compare it with
    batch CLEAR and uniform at the same spend per window, by the curves' expected accuracy
    (``model``) and by the empirical accuracy on each of ``scores`` (averaged: ``scored``)."""
    ctl = StreamController.from_reference(curves[ref], tokens_per_query=target,
                                          max_tokens=int(caps.max()), horizon=horizon)
    g = ctl.grant_curves(curves[idx], max_tokens=caps[idx])
    b = g.budgets
    model = {"stream": 0.0, "batch": 0.0}
    scored = {"stream": 0.0, "batch": 0.0, "uniform": 0.0}
    for i in range(0, idx.size, window):
        w, bw = idx[i:i + window], b[i:i + window]
        spend = int(bw.sum())
        batch = allocate(curves[w], spend, max_tokens=caps[w])
        uniform = uniform_budgets(w.size, spend, caps[w])
        model["stream"] += curves[w].utility(bw).sum()
        model["batch"] += batch.expected_correct
        for score in scores:
            sub = score.select(w)
            scored["stream"] += sub.accuracy_at(bw).sum() / len(scores)
            scored["batch"] += sub.accuracy_at(batch.budgets).sum() / len(scores)
            scored["uniform"] += sub.accuracy_at(uniform).sum() / len(scores)
    errs = window_rate_errors(b, target, window)
    return {"budgets": b, "prices": g.prices, "rate_max": float(errs.max()),
            "rate_all": float(abs(b[50:].mean() / target - 1)),
            "model": {k: v / idx.size for k, v in model.items()},
            "scored": {k: v / idx.size for k, v in scored.items()},
            "abandoned": float(g.abandoned.mean())}


def run_rate_stream(idx: np.ndarray, curves: Curves, caps: np.ndarray, per_query: float,
                    ref: np.ndarray, window_s: float, seed: int) -> dict:
    """A tokens-per-second controller on ``idx`` arriving as a Poisson stream of 2 queries/s
    that doubles to 4 queries/s halfway: target ``2 * per_query`` tokens/s, horizon 12.5 s
    (25 queries at first). Rate errors over windows of ``window_s`` seconds (from 25 s on,
    stride ``window_s / 4``), the price's recovery after the doubling, and accuracy (by the
    curves) against batch CLEAR over the same windows at the same spend."""
    rng = np.random.default_rng(seed)
    half = idx.size // 2
    gaps = np.concatenate([rng.exponential(0.5, half), rng.exponential(0.25, idx.size - half)])
    times = np.cumsum(gaps)
    rate = 2.0 * per_query
    ctl = StreamController.from_reference(curves[ref], tokens_per_second=rate,
                                          queries_per_second=2.0, max_tokens=int(caps.max()),
                                          horizon=12.5)
    g = ctl.grant_curves(curves[idx], max_tokens=caps[idx], times=times)
    b = g.budgets
    errs = []
    for t in np.arange(25.0, times[-1] - window_s, window_s / 4):
        m = (times >= t) & (times < t + window_s)
        errs.append(abs(b[m].sum() / (rate * window_s) - 1))
    stream = batch = 0.0
    for t in np.arange(0.0, times[-1], window_s):
        m = np.flatnonzero((times >= t) & (times < t + window_s))
        if m.size:
            w = idx[m]
            stream += curves[w].utility(b[m]).sum()
            batch += allocate(curves[w], int(b[m].sum()), max_tokens=caps[w]).expected_correct
    new = max(batch_price(curves[idx[half:]], per_query / 2, caps[idx[half:]]), 1e-12)
    hit = np.flatnonzero(np.abs(np.log(g.prices[half:] / new)) <= RECOVERED)
    late = times >= 25.0
    return {"rate_max": float(max(errs)),
            "rate_all": float(abs(b[late].sum() / (rate * (times[-1] - 25.0)) - 1)),
            "recovery": int(hit[0]) if hit.size else -1, "vs_batch": ratio(stream, batch),
            "duration": float(times[-1])}


def mean_rows(rows: list[dict]) -> dict:
    """Rows of :func:`run_stream` over halvings: accuracies averaged, rate errors the worst."""
    out = dict(rows[0])
    for key in ("model", "scored"):
        out[key] = {k: float(np.mean([r[key][k] for r in rows])) for k in rows[0][key]}
    out["rate_max"] = max(r["rate_max"] for r in rows)
    out["rate_all"] = max(r["rate_all"] for r in rows)
    out["abandoned"] = float(np.mean([r["abandoned"] for r in rows]))
    return out


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else float("inf") if a > 0 else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", type=int, default=1600, help="queries per stream")
    ap.add_argument("--window", type=int, default=200, help="window of the rate and batch")
    ap.add_argument("--targets", type=float, nargs="+", default=[64, 128, 256])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--splits", type=int, default=3, help="rollout halvings to average")
    ap.add_argument("--window-s", type=float, default=100.0,
                    help="window of the tokens-per-second rows, in seconds")
    ap.add_argument("--horizons", type=float, nargs="+", default=[10, 25, 50, 100])
    ap.add_argument("--predictor", default=str(ROOT / "checkpoints" / "default"),
                    help="predictor directory, or 'none'")
    args = ap.parse_args(argv)

    t0 = time.time()
    records = load_rollouts("default") + load_rollouts("benchmark")
    data = to_arrays(records)
    caps = data.max_new_tokens
    halves = []  # per halving: (oracle curves fitted on one half, the other half to score on)
    for s in range(args.splits):
        fit_mask, score_mask = split_rollouts(data, args.seed + s)
        halves.append((fit_curves(data.with_mask(fit_mask)).curves,
                       data.with_mask(score_mask)))
    predicted = None
    if args.predictor.lower() != "none":
        from clear_learn.predictor import ClearPredictor

        pred = ClearPredictor.from_pretrained(args.predictor)
        predicted = pred.predict([r["text"] for r in records], use_batch_context=False)
    sources = ["oracle"] + (["predicted"] if predicted is not None else [])
    print(f"{len(records)} queries ({len({r['task'] for r in records})} families), "
          f"{int(data.counts.sum())} rollouts, {args.splits} halvings; curves: "
          f"{', '.join(sources)}; {time.time() - t0:.0f} s to load and fit/predict")

    def run(idx, src, target, horizon=25.0):
        if src == "predicted":  # one controller run, scored on every halving
            return run_stream(idx, predicted, [h[1] for h in halves], caps, target, ref,
                              args.window, horizon)
        return mean_rows([run_stream(idx, c, [sc], caps, target, ref, args.window, horizon)
                          for c, sc in halves])

    streams = preset_streams(records, args.size, seed=args.seed)
    ref = preset_streams(records, 300, seed=args.seed + 1)["balanced"]
    half = args.size // 2
    eh, hh = streams["easy-heavy"], streams["hard-heavy"]
    switches = {"easy->hard": (np.concatenate([eh[:half], hh[half:]]), hh[half:]),
                "hard->easy": (np.concatenate([hh[:half], eh[half:]]), eh[half:])}

    print(f"\n| stream | tokens/query | curves | rate max (W={args.window}) | rate all | "
          "abandoned | vs batch (model) | acc stream | acc batch | vs batch (scored) | "
          "acc uniform | vs uniform |\n|---|---:|---|---:|---:|---:|---:|---:|---:|---:|"
          "---:|---:|")
    ratios = {s: {"model": [], "scored": []} for s in sources}
    worst = {s: (math.inf, "") for s in sources}
    rate_max: list[float] = []
    for name, idx in streams.items():
        for target in args.targets:
            for src in sources:
                r = run(idx, src, target)
                m, a = r["model"], r["scored"]
                rm, ra = ratio(m["stream"], m["batch"]), ratio(a["stream"], a["batch"])
                ratios[src]["model"].append(rm)
                ratios[src]["scored"].append(ra)
                rate_max.append(r["rate_max"])
                if rm < worst[src][0]:
                    worst[src] = (rm, f"{name} at {target:g}")
                print(f"| {name} | {target:g} | {src} | {r['rate_max']:.3f} | "
                      f"{r['rate_all']:.3f} | {r['abandoned']:.2f} | {rm:.4f} | "
                      f"{a['stream']:.4f} | {a['batch']:.4f} | {ra:.4f} | "
                      f"{a['uniform']:.4f} | {ratio(a['stream'], a['uniform']):.2f} |")

    print("\n| switch | tokens/query | curves | price change | recovery (queries) | "
          "rate max after | vs batch (model) |\n|---|---:|---|---:|---:|---:|---:|")
    recoveries = []
    curves_of = {"oracle": halves[0][0], "predicted": predicted}
    for name, (idx, after) in switches.items():
        for target in args.targets:
            for src in sources:
                curves = curves_of[src]
                r = run_stream(idx, curves, [halves[0][1]], caps, target, ref, args.window)
                new = max(batch_price(curves[after], target, caps[after]), 1e-12)
                old = max(batch_price(curves[idx[:half]], target, caps[idx[:half]]), 1e-12)
                hit = np.flatnonzero(np.abs(np.log(r["prices"][half:] / new)) <= RECOVERED)
                rec = int(hit[0]) if hit.size else -1
                recoveries.append(rec if rec >= 0 else math.inf)
                errs = window_rate_errors(r["budgets"], target, args.window,
                                          start=half + max(rec, 0))
                print(f"| {name} | {target:g} | {src} | x{new / old:.2f} | "
                      f"{rec if rec >= 0 else 'never'} | "
                      f"{errs.max() if errs.size else float('nan'):.3f} | "
                      f"{ratio(r['model']['stream'], r['model']['batch']):.4f} |")

    print("\nthe horizon's trade-off (oracle curves, first halving): rate max over windows "
          f"of {args.window} / accuracy vs batch (model)\n\n| stream | tokens/query | "
          + " | ".join(f"h={h:g}" for h in args.horizons) + " |\n|---|---:|"
          + "---:|" * len(args.horizons))
    for name in ("balanced", "bursts", "bimodal"):
        for target in args.targets:
            cells = []
            for h in args.horizons:
                r = run_stream(streams[name], halves[0][0], [halves[0][1]], caps, target,
                               ref, args.window, h)
                cells.append(f"{r['rate_max']:.3f} / "
                             f"{ratio(r['model']['stream'], r['model']['batch']):.4f}")
            print(f"| {name} | {target:g} | " + " | ".join(cells) + " |")

    print("\na tokens-per-second target (oracle curves, first halving): Poisson arrivals at "
          "2 queries/s, doubling to 4 halfway; target 2 x tokens/query per second, horizon "
          f"12.5 s; rate over windows of {args.window_s:g} s\n\n| stream | tokens/s | "
          "duration (s) | rate max | rate all | recovery after the doubling (queries) | "
          "vs batch (model) |\n|---|---:|---:|---:|---:|---:|---:|")
    for name in ("balanced", "bursts", "hard-heavy"):
        for target in args.targets:
            r = run_rate_stream(streams[name], halves[0][0], caps, target, ref,
                                args.window_s, args.seed)
            rec = r["recovery"] if r["recovery"] >= 0 else "never"
            print(f"| {name} | {2 * target:g} | {r['duration']:.0f} | {r['rate_max']:.3f} | "
                  f"{r['rate_all']:.3f} | {rec} | {r['vs_batch']:.4f} |")

    print("\nsummary (horizon 25):")
    for src in sources:
        rm, ra = np.array(ratios[src]["model"]), np.array(ratios[src]["scored"])
        print(f"  {src}: accuracy vs batch CLEAR at equal spend, by the curves: mean "
              f"{rm.mean():.4f}, min {rm.min():.4f} ({worst[src][1]}), rows >= 0.95: "
              f"{np.mean(rm >= 0.95):.0%}; on held-out rollouts: mean {ra.mean():.4f}, "
              f"min {ra.min():.4f}, rows >= 0.95: {np.mean(ra >= 0.95):.0%}")
    print(f"  rate error over windows of {args.window}: median {np.median(rate_max):.3f}, "
          f"90th percentile {np.quantile(rate_max, 0.9):.3f}, max {np.max(rate_max):.3f}")
    print(f"  recovery after a switch: median {np.median(recoveries):.0f}, "
          f"max {np.max(recoveries):.0f} queries")
    print(f"  {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
