"""Prediction speed of an exported predictor on this CPU: before and after the fast path.

    python benchmarks/bench_predict.py [PREDICTOR_DIR] [--threads 2] [--calls 8]
                                       [--scale 100000]

Texts are the embedded default problem file's (35 reasoning-gym families, 9 to 500+ tokens;
``--first 440``: its ten original families only), shuffled with a fixed seed. For each configuration it prints the queries per second of
``predict`` called on batches of 64 texts (what the proxy's micro-batches are), the median
time of ``predict`` on one text, and how far its curves are from the reference (torch, one
pass of 64, the code before the fast path): the largest change of ``p`` and of ``tau / tau``.
Configurations: ``torch`` with one pass of 64 (before), ``torch`` with passes of 16 (texts
sorted by length, :data:`clear_learn.predictor.inference.PASS_SIZE`), ``onnx`` with passes
of 16 (ONNX Runtime, :mod:`clear_learn.predictor.runtime`).

``--scale N``: predict and allocate ``N`` queries in one call (texts drawn with replacement
from the problem file, each numbered so that all differ) with the ``onnx`` runtime: seconds for the network, for the post-network
stages (batch context over all ``N``), for CLEAR's allocation, and the peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _texts(first: int | None) -> list[str]:
    rows = [json.loads(x) for x in
            (ROOT / "clear_learn" / "data" / "problems-default.jsonl").read_text().splitlines()]
    texts = [r["text"] for r in rows][:first]
    random.Random(0).shuffle(texts)
    return texts


def _speed(pred, texts: list[str], calls: int, pass_size: int):
    """(queries/s on calls of 64, median ms of one text, the curves of those calls)."""
    batches = [texts[i * 64:(i + 1) * 64] for i in range(calls)]
    pred.predict(batches[0], batch_size=pass_size)  # warm-up
    t = time.perf_counter()
    out = [pred.predict(b, batch_size=pass_size) for b in batches]
    qps = 64 * calls / (time.perf_counter() - t)
    one = []
    for text in texts[:50]:
        t = time.perf_counter()
        pred.predict([text], batch_size=pass_size)
        one.append(time.perf_counter() - t)
    tau = np.concatenate([c.tau for c in out])
    p = np.concatenate([c.p for c in out])
    return qps, 1e3 * float(np.median(one)), tau, p


def _scale(pred, texts: list[str], n: int) -> None:
    from clear_learn.allocation import allocate
    from clear_learn.predictor.pipeline import postprocess

    rng = np.random.default_rng(0)
    # numbered, so that all N texts differ (copies would count once in the batch context)
    batch = [f"{texts[i]} (query {j})" for j, i in enumerate(rng.integers(0, len(texts), n))]
    t0 = time.perf_counter()
    raw = pred.predict_raw(batch)
    t1 = time.perf_counter()
    curves = postprocess(raw, batch, pred.stages)
    t2 = time.perf_counter()
    res = allocate(curves, 128 * n, max_tokens=pred.max_new_tokens)
    t3 = time.perf_counter()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\n{n} queries in one call ({pred.runtime}): network {t1 - t0:.0f} s "
          f"({n / (t1 - t0):.0f} queries/s), post-network stages {t2 - t1:.1f} s, "
          f"allocate at 128 tokens/query {t3 - t2:.2f} s ({res.n_abandoned} abandoned); "
          f"peak resident memory {rss:.0f} MiB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("predictor", nargs="?", default=str(ROOT / "checkpoints" / "default"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calls", type=int, default=8, help="calls of 64 texts timed")
    ap.add_argument("--first", type=int, default=None, help="only the file's first N texts "
                    "(440: the ten original families, shorter texts)")
    ap.add_argument("--scale", type=int, default=0, help="also predict and allocate this "
                    "many queries in one call")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from clear_learn.predictor import ClearPredictor

    texts = _texts(args.first)
    print(f"predictor {args.predictor}; {args.threads} threads; calls of 64 texts "
          f"(mean {np.mean([len(t) for t in texts]):.0f} characters)")
    print("| runtime | texts per pass | queries/s (calls of 64) | one text (ms) "
          "| max abs change of p | max change of tau/tau |")
    print("|---|---:|---:|---:|---:|---:|")
    ref = None
    preds, load_s = {}, {}
    for runtime, pass_size in (("torch", 64), ("torch", 16), ("onnx", 16)):
        if runtime not in preds:
            t = time.perf_counter()
            preds[runtime] = ClearPredictor.from_pretrained(args.predictor, runtime=runtime)
            load_s[runtime] = time.perf_counter() - t
        qps, one_ms, tau, p = _speed(preds[runtime], texts, args.calls, pass_size)
        if ref is None:
            ref = tau, p
        dp = float(np.abs(p - ref[1]).max())
        dtau = float(np.abs(tau / ref[0] - 1).max())
        print(f"| {runtime} | {pass_size} | {qps:.0f} | {one_ms:.1f} | {dp:.1e} | {dtau:.1e} |")
    print("load: " + ", ".join(f"{k} {v:.1f} s" for k, v in load_s.items())
          + " (onnx: includes the one-time export when its cache is cold)")
    if args.scale:
        _scale(preds["onnx"], texts, args.scale)


if __name__ == "__main__":
    main()
