"""What an exported predictor does with texts longer than any it was trained on.

    python benchmarks/long_texts.py [PREDICTOR_DIR] [--threads 1]

One question (a reasoning-gym chain sum from the embedded problem file) behind a neutral
preamble of 0 to 8,000 characters, as a router sees with long system or context text. For
each length it prints the predicted curve of the text alone (tau, p, 1/k; no batch context,
no widening) and the budget it gets when allocated, at 256 tokens per query, beside three
short questions of the same file: with the predictor's length bounds (``n_tokens_range``,
the batch context's ``max_offset``) and without them, as a
predictor exported before they were recorded would behave.
"""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREAMBLE = "Context: the following question comes from a routine arithmetic worksheet. "


def unbounded(pred):
    """A copy of ``pred`` without its length bounds (an older export)."""
    cfg, st = pred.config, pred.config.stages
    old = copy.copy(pred)
    old.config = replace(cfg, head=replace(cfg.head, n_tokens_range=None), stages=replace(
        st, batch_context=st.batch_context and replace(st.batch_context, max_offset=None)))
    return old


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("predictor", nargs="?", default=str(ROOT / "checkpoints" / "default"))
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from clear_learn.predictor import ClearPredictor

    pred = ClearPredictor.from_pretrained(args.predictor)
    rows = [json.loads(x) for x in
            (ROOT / "clear_learn" / "data" / "problems-default.jsonl").read_text().splitlines()]
    chain = [r["text"] for r in rows if r["task"] == "chain_sum"]
    question, others = chain[0], chain[1:4]
    print(f"predictor {args.predictor}: trained on texts of "
          f"{pred.n_tokens_range} tokens; batch-context max_offset "
          f"{getattr(pred.batch_context, 'max_offset', '?')}")
    print("| preamble chars | text chars | tau | p | 1/k | budget | tau, unbounded | "
          "p, unbounded | budget, unbounded |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    old = unbounded(pred)
    for n in (0, 500, 1000, 2000, 4000, 8000):
        text = (PREAMBLE * (n // len(PREAMBLE) + 1))[:n] + question
        row = [n, len(text)]
        for p in (pred, old):
            c = p.predict([text], use_batch_context=False, tau_spread=0)
            b = p.allocate([text, *others], 256 * 4, fallback_tokens=1).budgets[0]
            row += ([f"{c.tau[0]:.0f}", f"{c.p[0]:.3f}", f"{1 / c.k[0]:.0f}", int(b)]
                    if p is pred else [f"{c.tau[0]:.0f}", f"{c.p[0]:.3f}", int(b)])
        print("| " + " | ".join(map(str, row)) + " |")


if __name__ == "__main__":
    main()
