"""Prediction throughput and peak memory of an exported predictor on this CPU.

    python benchmarks/bench_predict.py [PREDICTOR_DIR] [--threads 2] [--batch-size 64]

Texts are the embedded problem file's (reasoning-gym questions). Prints queries per second at
the given batch size (dynamic padding, texts sorted by length inside ``predict``), the time of
``allocate`` on the same batch, and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("predictor", nargs="?", default=str(ROOT / "checkpoints" / "default"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--queries", type=int, default=512)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from clear_learn.predictor import ClearPredictor

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()
    pred = ClearPredictor.from_pretrained(args.predictor)
    load_s = time.perf_counter() - t
    rows = [json.loads(x) for x in
            (ROOT / "clear_learn" / "data" / "problems-default.jsonl").read_text().splitlines()]
    texts = [r["text"] for r in rows]
    texts = (texts * (args.queries // len(texts) + 1))[: args.queries]
    t = time.perf_counter()
    pred.predict(texts[: args.batch_size], batch_size=args.batch_size)  # warm-up
    first_s = time.perf_counter() - t
    t = time.perf_counter()
    pred.predict(texts, batch_size=args.batch_size)
    dt = time.perf_counter() - t
    batch = texts[: args.batch_size]
    t = time.perf_counter()
    res = pred.allocate(batch, 256 * len(batch))
    alloc_s = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"predictor {args.predictor}: load {load_s:.2f} s; first predict call (batch "
          f"{args.batch_size}) {first_s:.2f} s")
    print(f"predict: {len(texts)} queries, batch {args.batch_size}, {args.threads} threads: "
          f"{len(texts) / dt:.1f} queries/s")
    print(f"allocate one batch of {len(batch)} (predict + CLEAR): {alloc_s * 1e3:.0f} ms "
          f"({res.n_abandoned} abandoned)")
    print(f"peak resident memory: {rss:.0f} MiB (python + imports before loading: "
          f"{rss0:.0f} MiB)")


if __name__ == "__main__":
    main()
