"""Recalibration's learning curve on unseen families and on another model's rollouts
(issue 20, item 2).

    python train/recalibration_curve.py [--case qwen-math|gsm8k-openai|unseen]
        [--sizes 25,50,75] [--draws 3] [--variants base,head,head+lora,scratch]
        [--out runs/recal-curve] [--predictor checkpoints/default] [--threads 2]
        [--data "[default,benchmark]" --groups 3 --set KEY=VALUE ...]   (unseen case)

For each training size ``n`` and draw ``d`` (seeded), ``n`` queries of the case's rollouts
recalibrate the predictor and the others are the test queries; every variant's curves on the
test queries are scored against uniform, oracle curves and the exact optimum
(:func:`clear_learn.evaluation.evaluate_policies`, oracle fitted on one half of each test
query's rollouts, 3 halvings), and the mean gap closed over the budgets where the oracle beats
uniform (:func:`clear_learn.evaluation.mean_gap_closed`) is recorded. Variants:

- ``base``: the predictor as shipped (its curves, in tokens of the project's model);
- ``head`` / ``head+lora``: ``clear-learn recalibrate`` with that mode;
- ``scratch``: the same recipe trained from the base encoder without ``init_from`` (LoRA and
  head, as many epochs as ``head``).

Case ``unseen`` (``--data``, ``--groups``, ``--set``): task families the base never saw.
Each of ``--groups`` seeded groups of families is held out once; a base is trained by the
recipe without it; ``n`` of the group's queries recalibrate it, its other queries test it.

Cases of another model (files read from ``../shared``, never copied): ``qwen-math``, 100 MATH problems x 8
Qwen2.5-Math-7B responses (tokens by the Qwen2.5 tokenizer of ``clear-learn model``, cap
2048); ``gsm8k-openai``, 1319 GSM8K test problems x 4 GPT-3 solutions (one model each: a
mixture; cap 512). Each run's result is written to ``OUT/CASE/n{n}-d{d}-{variant}.json`` as it
finishes and reused on a rerun (the study resumes); ``OUT/CASE/summary.md`` has the table of
mean and sd over draws.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from clear_learn.atomic import write_text
from clear_learn.evaluation import evaluate_policies, mean_gap_closed

ROOT = Path(__file__).resolve().parents[1]
CASES = {
    "qwen-math": ("qwen25-math-rm-maj-example/math_cot_100.jsonl", 2048,
                  [128, 256, 384, 512, 768, 1024]),
    "gsm8k-openai": ("gsm8k-openai-example-model-solutions/example_model_solutions.jsonl",
                     512, [48, 64, 96, 128, 192, 256]),
}
VARIANTS = ("base", "head", "head+lora", "scratch")


def load_case(case: str, shared: Path) -> tuple[list[dict], list[int]]:
    """The case's records (tokens by the Qwen2.5 tokenizer) and its budgets per query."""
    from clear_learn.importers import (import_gsm8k_example_solutions, import_qwen25_math_eval,
                                       load_token_counter)

    rel, cap, budgets = CASES[case]
    counter = load_token_counter("default-model")
    path = shared / "data" / "rollouts" / rel
    read = import_qwen25_math_eval if case == "qwen-math" else import_gsm8k_example_solutions
    records = read(path, counter=counter, max_new_tokens=cap)
    model = "Qwen2.5-Math-7B-Instruct" if case == "qwen-math" else "gpt-3 mixture (openai)"
    for r in records:
        r["generator"] = {"model": model}
    return records, budgets


def curves_of(variant: str, train: list[dict], test: list[dict], predictor: str, args,
              work: Path):
    """The variant's curves on the test queries, starting from the exported ``predictor``."""
    from clear_learn.predictor import ClearPredictor
    from clear_learn.training.recalibrate import DEFAULT_EPOCHS, recalibrate, recalibration_config
    from clear_learn.training.recipe import refit_on_all

    texts = [r["text"] for r in test]
    if variant == "base":
        return ClearPredictor.from_pretrained(predictor).predict(texts)
    if variant == "scratch":  # the same recipe, from the base encoder, LoRA and head trained
        base = ClearPredictor.from_pretrained(predictor)
        lora = base.config.encoder.lora
        cfg = recalibration_config(base, predictor, train,
                                   mode="head+lora" if lora and lora.r else "head",
                                   seed=args.seed_base, threads=args.threads, run_dir=work)
        cfg["model"].update(init_from=None, freeze_encoder=False)
        pred, _, _ = refit_on_all(cfg, DEFAULT_EPOCHS["head"])
    else:
        pred = recalibrate(predictor, train, mode=variant, seed=args.seed_base,
                           threads=args.threads)
    return pred.predict(texts)


def unseen_bases(args, out: Path) -> list[tuple[str, str, list[dict]]]:
    """The ``unseen`` case: ``(fold name, exported base predictor, held-out records)`` per
    fold of ``--groups`` seeded groups of families (:func:`clear_learn.training.lofo.
    make_folds`, group seed 0), each base trained by the recipe (``--set``) without its
    fold's families and saved once under ``OUT/unseen/bases``."""
    from clear_learn.training.lofo import folds_of
    from clear_learn.predictor.data import load_records
    from clear_learn.training.recipe import DEFAULT_CONFIG, load_config, train_predictor

    cfg = load_config(DEFAULT_CONFIG, [f"data.data={args.data}", f"threads={args.threads}",
                                       "trainer.enable_progress_bar=false", *args.set])
    records = load_records(cfg["data"]["data"])
    folds = folds_of(records, groups=args.groups)
    bases = []
    for fold in folds:
        path = out / "unseen" / "bases" / fold.name
        if not (path / "config.json").is_file():
            fcfg = json.loads(json.dumps(cfg))
            fcfg["data"].update(split="task", test_tasks=list(fold.test),
                                val_tasks=[fold.val] if fold.val else [])
            fcfg["run_dir"] = str(out / "unseen" / "runs" / fold.name)
            pred, _, _ = train_predictor(fcfg)
            pred.save_pretrained(path)
        bases.append((fold.name, str(path), [r for r in records if r["task"] in fold.test]))
    return bases


def run_one(case: str, records: list[dict], budgets: list[int], n: int, draw: int,
            variant: str, args, out: Path, predictor: str, fold: str = "") -> dict:
    stem = f"n{n}-d{draw}{'-' + fold if fold else ''}-{variant}"
    path = out / case / f"{stem}.json"
    if path.is_file():
        return json.loads(path.read_text())
    order = np.random.default_rng(1000 * draw + n).permutation(len(records))
    train = [records[i] for i in order[:n]]
    test = [records[i] for i in order[n:]][: args.max_test]
    t0 = time.perf_counter()
    curves = curves_of(variant, train, test, predictor, args, out / case / "runs" / stem)
    rep = evaluate_policies(test, {variant: curves}, budgets, splits=3, seed=draw)
    row = {"case": case, "n": n, "draw": draw, "fold": fold, "variant": variant,
           "n_test": len(test), "gap_closed": mean_gap_closed(rep)[variant],
           "seconds": round(time.perf_counter() - t0, 1)}
    write_text(path, json.dumps(row) + "\n")
    return row


def summary(rows: list[dict], case: str, command: str) -> str:
    sizes = sorted({r["n"] for r in rows})
    variants = [v for v in VARIANTS if any(r["variant"] == v for r in rows)]
    out = [f"# Recalibration learning curve: {case}", "",
           "Mean gap closed on the test queries (mean over budgets where the oracle beats "
           "uniform), mean +- sd over draws" + (" and folds" if case == "unseen" else "")
           + f" (`{command}`).", "", "| queries | " + " | ".join(variants) + " |",
           "|---:|" + "---:|" * len(variants)]
    for n in sizes:
        cells = []
        for v in variants:
            g = [r["gap_closed"] for r in rows if r["n"] == n and r["variant"] == v
                 and np.isfinite(r["gap_closed"])]  # NaN: the oracle never beats uniform
            cells.append(f"{np.mean(g):.2f} +- {np.std(g, ddof=1):.2f} ({len(g)})"
                         if len(g) > 1 else (f"{g[0]:.2f} (1)" if g else "-"))
        out.append(f"| {n} | " + " | ".join(cells) + " |")
    others = [v for v in variants if v != "base"]
    if "base" in variants and others:
        out += ["", "Each variant minus base on the same test queries (paired by draw"
                + (" and fold" if case == "unseen" else "") + "): mean +- standard error.", "",
                "| queries | " + " | ".join(others) + " |", "|---:|" + "---:|" * len(others)]
        gap = {(r["n"], r["draw"], r.get("fold", ""), r["variant"]): r["gap_closed"]
               for r in rows}
        for n in sizes:
            cells = []
            for v in others:
                d = [x - gap[(m, dr, f, "base")] for (m, dr, f, w), x in gap.items()
                     if m == n and w == v and np.isfinite(x)
                     and np.isfinite(gap.get((m, dr, f, "base"), np.nan))]
                cells.append(f"{np.mean(d):+.2f} +- {np.std(d, ddof=1) / np.sqrt(len(d)):.2f}"
                             if len(d) > 1 else "-")
            out.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", choices=sorted(CASES) + ["unseen"], default="qwen-math")
    ap.add_argument("--sizes", default="25,50,75")
    ap.add_argument("--draws", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--predictor", default=str(ROOT / "checkpoints" / "default"))
    ap.add_argument("--shared", default=str(ROOT.parent / "shared"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "recal-curve"))
    ap.add_argument("--max-test", type=int, default=400, help="test queries at most")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed-base", type=int, default=0, help="training seed of every run")
    ap.add_argument("--data", default="[default,benchmark]",
                    help="unseen case: the project's rollouts (data.data of the recipe)")
    ap.add_argument("--groups", type=int, default=3, help="unseen case: groups of families")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="unseen case: the bases' recipe (configs/default.yaml overrides)")
    args = ap.parse_args(argv)
    variants = args.variants.split(",")
    bad = set(variants) - set(VARIANTS)
    if bad:
        raise SystemExit(f"unknown variants {sorted(bad)}; choose from {VARIANTS}")
    out = Path(args.out)
    if args.case == "unseen":
        from clear_learn.training.recipe import DEFAULT_CONFIG, load_config

        budgets = load_config(DEFAULT_CONFIG)["evaluate"]["budgets_per_query"]
        sets = unseen_bases(args, out)
    else:
        records, budgets = load_case(args.case, Path(args.shared))
        sets = [("", args.predictor, records)]
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        for fold, predictor, records in sets:
            if n >= len(records):
                raise SystemExit(f"--sizes: {n} leaves no test query of {len(records)}"
                                 + (f" (fold {fold})" if fold else ""))
            for d in range(args.draws):
                for v in variants:
                    row = run_one(args.case, records, budgets, n, d, v, args, out,
                                  predictor, fold)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    command = "python train/recalibration_curve.py " + shlex.join(
        sys.argv[1:] if argv is None else argv)
    text = summary(rows, args.case, command)
    write_text(out / args.case / "summary.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
