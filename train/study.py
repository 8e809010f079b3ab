"""The generalisation study: recipes measured on task families they never saw, over seeds.

    python train/study.py [--out runs/study] [--variants frozen,frozen-surface,lora@0]
                          [--seeds 0,1,2] [--groups 6] [--data "[default,benchmark]"]
                          [--set key=value ...]

Each variant (:data:`VARIANTS`) x seed is one ``train/cross_family.py`` run over ``--groups``
fixed groups of families (drawn once, group seed 0, the same for every variant and seed) into
``OUT/VARIANT-sSEED`` (resumable fold by fold; a finished run is only re-pooled). Then, per run,
the stages' ablation re-pools the same folds without training (batch context off), and the
diagnostic compares the held-out curves with what the rollouts show. Writes ``OUT/study.json``
and ``OUT/STUDY.md`` (keeping the variants measured by earlier runs on the same groups, data
and ``--set``; the command at its top reads all of them back):

- the share of the uniform-to-oracle gap closed on unseen families, pooled as one batch and
  with each family its own batch: mean and sd over seeds, and the mean sd over rollout
  halvings (the noise a difference must beat);
- the ablation of the post-network stages (each on and off), on every variant;
- with several seeds, their ensemble (the seeds' learned curves averaged) measured the same way;
- the diagnostic: Spearman rank correlations of the predicted ``p`` with each query's observed
  accuracy (pooled, and across family means) and of the predicted ``tau`` with its mean
  correct length, beside the text's length alone.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from clear_learn.atomic import write_text
from clear_learn.predictor.pipeline import (LEARNED, LEARNED_NARROW, LEARNED_RAW,
                                            LENGTH, TFIDF)
from clear_learn.training.lofo import SPEED_ONLY
from clear_learn.training.recipe import DEFAULT_CONFIG, load_config, resolve

sys.path.insert(0, str(Path(__file__).resolve().parent))
import cross_family  # noqa: E402  (train/ is a folder of scripts)

#: variant -> (``--set`` overrides, extra cross_family arguments)
FROZEN = ["model.lora_r=0", "model.surface_features=false"]
FROZEN_SURFACE = ["model.lora_r=0", "model.surface_features=true"]
LORA = ["model.lora_r=8", "model.surface_features=false"]  # r=8 on query, value
VARIANTS = {  # each names its encoder and head, whatever configs/default.yaml says
    "lora": (LORA, []),
    "frozen": (FROZEN, []),
    "frozen-surface": (FROZEN_SURFACE, []),
    "frozen-surface-runaway": ([*FROZEN_SURFACE, "model.runaway=0.01"], []),  # consistent NLL
    "frozen-surface-l3": ([*FROZEN_SURFACE, "model.encoder_layers=3"], []),
    "frozen-surface-l1": ([*FROZEN_SURFACE, "model.encoder_layers=1"], []),
    "frozen-surface-l0": ([*FROZEN_SURFACE, "model.encoder_layers=0"], []),
    "lora-surface": (["model.lora_r=8", "model.surface_features=true"], []),
    "lora-runaway": ([*LORA, "model.runaway=0.01"], []),  # the consistent NLL, fine-tuned
    "lora-l1": ([*LORA, "model.encoder_layers=1"], []),  # fast encoders, fine-tuned
    "lora-l2": ([*LORA, "model.encoder_layers=2"], []),
    "lora-n5": (LORA, ["--train-families", "5"]),  # the learning curve of the shipped recipe
    "lora-n10": (LORA, ["--train-families", "10"]),
    "lora-n20": (LORA, ["--train-families", "20"]),
    "frozen-n5": (FROZEN, ["--train-families", "5"]),
    "frozen-n10": (FROZEN, ["--train-families", "10"]),
    "frozen-n20": (FROZEN, ["--train-families", "20"]),
}
#: encoders whose ``BASE-nN`` variants make a learning curve (:func:`learning_curve`)
CURVE_BASES = {"lora": "LoRA, the shipped recipe", "frozen": "frozen encoder"}
#: ablation rows: (name, pooling overrides, policy read from that pooling)
ABLATION = [
    ("every stage (shipped)", [], LEARNED),
    ("without the threshold spread", [], LEARNED_NARROW),
    ("without the look-alike pooling", ["batch_context.pool=0"], LEARNED),
    ("without the batch context", ["batch_context.enabled=false"], LEARNED),
    ("without context and spread", [], LEARNED_RAW),
    ("TF-IDF baseline (same stages)", [], TFIDF),
    ("length line (same stages)", [], LENGTH),
]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN below 3 points."""
    from scipy.stats import spearmanr

    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    return float(spearmanr(x[ok], y[ok]).statistic) if ok.sum() >= 3 else float("nan")


def diagnostic(test: list[dict], curves) -> dict[str, float]:
    """Rank correlations of the held-out curves with the rollouts (see the module doc)."""
    from clear_learn.rollouts import to_arrays

    arr = to_arrays(test)
    right = arr.correct & arr.mask
    acc = right.sum(1) / arr.mask.sum(1)
    with np.errstate(invalid="ignore"):  # NaN where no rollout is right
        correct_len = (arr.tokens * right).sum(1) / right.sum(1)
    fam = np.array([r["task"] for r in test])
    length = np.array([len(r["text"]) for r in test], float)
    fams = sorted(set(fam))

    def fam_mean(v):
        return np.array([np.mean(v[fam == f]) for f in fams])

    out = {}
    for name, p, tau in (("predicted", curves[LEARNED].p, curves[LEARNED].tau),
                         ("text length", -length, length)):
        out[f"p ~ accuracy ({name})"] = spearman(p, acc)
        out[f"p ~ accuracy, family means ({name})"] = spearman(fam_mean(p), fam_mean(acc))
        out[f"tau ~ correct length ({name})"] = spearman(tau, correct_len)
    return out


def run(variant: str, seed: int, args, base_sets: list[str]):
    """One variant x seed: its folds, trained where missing (``cross_family.py`` also writes
    the run's own reports; a run already measured with these settings and folds is only read
    back). Returns ``(sets, records, folds, curves)``."""
    from clear_learn.training.lofo import load_run

    sets, extra = VARIANTS[variant]
    sets = [*base_sets, *sets, f"seed={seed}", f"run_dir={args.out}/train-{variant}-s{seed}"]
    out = resolve(args.out) / f"{variant}-s{seed}"
    argv = ["--groups", str(args.groups), "--out", str(out), *extra]
    for s in sets:
        argv += ["--set", s]
    if not measured(out, sets):
        cross_family.main(argv)
    _, records, folds, curves = load_run(out)
    return sets, records, folds, curves


def results_sets(sets: list[str]) -> list[str]:
    """The ``KEY=VALUE`` settings of ``sets`` that change results (``SPEED_ONLY`` left out)."""
    return [x for x in sets if x.split("=")[0] not in SPEED_ONLY]


def measure_key(runs: list[Path], sets: list[str], folds) -> str:
    """What a cached measurement depends on: the settings, the pooling sections of the config
    they resolve to (``configs/default.yaml`` edited counts), the ablation rows and the saved
    folds of ``runs`` (one run, or the seeds of an ensemble)."""
    import hashlib

    from clear_learn.training.lofo import POOLING_ONLY

    cfg = load_config(DEFAULT_CONFIG, sets)
    pooling = {k: cfg.get(k) for k in POOLING_ONLY}
    h = hashlib.sha256(json.dumps([results_sets(sets), pooling, [a[:2] for a in ABLATION]],
                                  default=str).encode())
    for out in runs:
        for fold in folds:
            h.update((out / "folds" / f"{fold.name}.jsonl").read_bytes())
    return h.hexdigest()


def measured(out: Path, sets: list[str]) -> bool:
    """Whether ``out`` holds every fold and the reports, measured with ``sets`` (then
    ``cross_family.py`` has nothing to add)."""
    from clear_learn.predictor.data import load_records
    from clear_learn.training.lofo import check_same_config, saved_folds

    path = out / "measure.json"
    if not (path.is_file() and (out / "report.json").is_file()
            and (out / "report-family-batches.json").is_file()):
        return False
    saved = json.loads((out / "config.json").read_text())
    cfg = load_config(DEFAULT_CONFIG, sets)
    check_same_config(out, cfg, saved["random_val"], saved.get("fold_design"))  # or exit
    folds = saved_folds(out, load_records(cfg["data"]["data"]))
    if not all((out / "folds" / f"{f.name}.jsonl").is_file() for f in folds):
        return False
    return json.loads(path.read_text()).get("key") == measure_key([out], sets, folds)


def measure(sets: list[str], records: list[dict], folds, curves: dict,
            run_dir: Path | None = None) -> dict:
    """The ablation of the stages (re-pooled folds) and the diagnostic of ``curves``; the
    shipped pooling's reports are ``run_dir``'s, which ``cross_family.py`` has just written
    for the same config, where given."""
    from clear_learn.evaluation import EvalReport, mean_gap_closed, mean_gap_closed_sd
    from clear_learn.training.lofo import evaluate_folds, held_out

    result = {"ablation": {}, "diagnostic": diagnostic(held_out(records, folds), curves)}
    reports = {}  # one evaluation per pooling
    if run_dir is not None:
        reports[()] = (EvalReport.load(run_dir / "report.json"),
                       EvalReport.load(run_dir / "report-family-batches.json"))
    for name, pooling, policy in ABLATION:
        if tuple(pooling) not in reports:
            reports[tuple(pooling)] = evaluate_folds(
                load_config(DEFAULT_CONFIG, sets + pooling), records, folds, curves)[:2]
        rep, fam = reports[tuple(pooling)]
        result["ablation"][name] = {
            "pooled": mean_gap_closed(rep).get(policy), "family_batches":
            mean_gap_closed(fam).get(policy), "pooled_sd_halvings":
            mean_gap_closed_sd(rep).get(policy), "family_batches_sd_halvings":
            mean_gap_closed_sd(fam).get(policy)}
    return result


def cached_measure(out: Path, sets: list[str], records: list[dict], folds, curves: dict,
                   runs: list[Path] | None = None) -> dict:
    """:func:`measure` of one run (``out``), or of the ensemble of ``runs`` (kept in ``out``,
    measured without run reports), kept in ``out/measure.json`` for as long as the folds,
    the settings and the ablation rows are the same."""
    key = measure_key(runs or [out], sets, folds)
    path = out / "measure.json"
    if path.is_file():
        have = json.loads(path.read_text())
        if have.get("key") == key:
            return have["result"]
    result = measure(sets, records, folds, curves, None if runs else out)
    write_text(path, json.dumps({"key": key, "result": result}) + "\n")
    return result


def summarise(results: dict) -> dict:
    """Mean and sd over seeds of every figure, per variant (and ensemble)."""
    summary = {}
    for variant, by_seed in results.items():
        seeds = sorted(by_seed)
        rows = {}
        for name, _, _ in ABLATION:
            cell = {}
            for key in ("pooled", "family_batches"):
                v = np.array([by_seed[s]["ablation"][name][key] for s in seeds], float)
                h = np.array([by_seed[s]["ablation"][name][f"{key}_sd_halvings"]
                              for s in seeds], float)
                cell[key] = {"mean": float(np.mean(v)),
                             "sd_seeds": float(np.std(v, ddof=1)) if len(v) > 1 else None,
                             "sd_halvings": float(np.nanmean(h)) if np.isfinite(h).any()
                             else None}
            rows[name] = cell
        diag = {k: float(np.mean([by_seed[s]["diagnostic"][k] for s in seeds]))
                for k in by_seed[seeds[0]]["diagnostic"]}
        summary[variant] = {"seeds": seeds, "ablation": rows, "diagnostic": diag}
    return summary


def tables(summary: dict) -> list[str]:
    """The Markdown tables of a :func:`summarise` summary."""
    def fmt(c):
        sd = f" ± {c['sd_seeds']:.3f}" if c["sd_seeds"] is not None else ""
        return f"{c['mean']:.3f}{sd}"

    lines = []
    for variant, entry in summary.items():
        seeds, rows = entry["seeds"], entry["ablation"]
        named = "" if seeds == ["all"] else f" (seeds {', '.join(map(str, seeds))})"
        lines += [f"### {variant}{named}", "",
                  "| stages | gap closed, one batch | each family its own batch |",
                  "|---|---:|---:|"]
        lines += [f"| {name} | {fmt(c['pooled'])} | {fmt(c['family_batches'])} |"
                  for name, c in rows.items()]
        halv = rows[ABLATION[0][0]]
        lines += ["", "Mean ± sd over seeds; the sd over rollout halvings within a seed is "
                  f"{halv['pooled']['sd_halvings'] or float('nan'):.3f} (one batch) and "
                  f"{halv['family_batches']['sd_halvings'] or float('nan'):.3f} (family "
                  "batches).", "", "| diagnostic (Spearman) | value |", "|---|---:|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in entry["diagnostic"].items()]
        lines.append("")
    return lines


def learning_curve(summary: dict) -> list[str]:
    """The gap closed by the shipped stages against the number of training families, one
    Markdown table per encoder (:data:`CURVE_BASES`) with the ``BASE-nN`` variants beside
    ``BASE`` itself (all of a fold's other families); nothing for a base unless it and at
    least one ``BASE-nN`` were measured."""
    import re

    shipped = ABLATION[0][0]
    lines = []
    for base, label in CURVE_BASES.items():
        points = sorted((int(m.group(1)), v) for v in summary
                        if (m := re.fullmatch(rf"{base}-n(\d+)", v)))
        if base not in summary or not points:
            continue
        lines += [f"### Learning curve: training families ({label})", "",
                  "| training families | variant | seeds | gap closed, one batch | each family "
                  "its own batch |", "|---|---|---|---:|---:|"]
        for n, v in [*points, ("all", base)]:
            c = summary[v]["ablation"][shipped]
            lines.append(f"| {n} | {v} | {', '.join(map(str, summary[v]['seeds']))} | "
                         f"{c['pooled']['mean']:.3f} | {c['family_batches']['mean']:.3f} |")
        lines.append("")
    return lines


def merge_study(old: dict | None, new: dict) -> dict:
    """``study.json`` after a run: ``new`` (``{groups, data, set, variants}``) with the
    variants of ``old`` that it did not measure, kept where ``old`` was measured on the same
    groups, data and ``--set`` (:func:`results_sets`; else ``new`` alone). A variant measured
    again replaces its old entry and its old ensemble."""
    same = old is not None and all(old.get(k) == new[k] for k in ("groups", "data")) \
        and results_sets(old.get("set", [])) == results_sets(new["set"])
    kept = {k: v for k, v in (old["variants"].items() if same else ())
            if k.split(", ensemble of ")[0] not in new["variants"]}
    return {**new, "variants": {**kept, **new["variants"]}}


def variants_arg(summary: dict) -> str:
    """The ``--variants`` value that reads every variant of ``summary`` back (own seeds)."""
    return ",".join(f"{v}@{'+'.join(map(str, e['seeds']))}" for v, e in summary.items()
                    if ", ensemble of " not in v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/study")
    ap.add_argument("--variants", default="frozen,frozen-surface",
                    help=f"comma-separated, of {', '.join(VARIANTS)}; VARIANT@0+1: that "
                         "variant on its own seeds (here 0 and 1) instead of --seeds")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--groups", type=int, default=6)
    ap.add_argument("--data", default="[default,benchmark]",
                    help="data.data of every run (pin a copy: the folds belong to one state)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="an override for every run (e.g. threads=1)")
    args = ap.parse_args(argv)
    try:
        default_seeds = [int(s) for s in args.seeds.split(",")]
        variants = {name: [int(s) for s in own.split("+")] if own else default_seeds
                    for name, _, own in (v.partition("@") for v in args.variants.split(","))}
    except ValueError:
        raise SystemExit(f"--seeds / --variants: seeds must be whole numbers, got "
                         f"{args.seeds!r} / {args.variants!r}") from None
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"--variants: unknown {sorted(unknown)} (known: {list(VARIANTS)})")
    base = [f"data.data={args.data}", "trainer.enable_progress_bar=false", *args.set]
    from clear_learn.training.lofo import ensemble_curves

    results, folds = {}, None
    for v, seeds in variants.items():
        runs = {s: run(v, s, args, base) for s in seeds}
        folds = next(iter(runs.values()))[2] or folds
        results[v] = {s: cached_measure(resolve(args.out) / f"{v}-s{s}", *r)
                      for s, r in runs.items()}
        if len(seeds) > 1:  # the seeds' curves averaged: one predictor, measured once
            sets, records, folds, _ = runs[seeds[0]]
            ens = resolve(args.out) / f"{v}-ensemble-s{'-'.join(map(str, seeds))}"
            results[f"{v}, ensemble of {len(seeds)} seeds"] = {"all": cached_measure(
                ens, sets, records, folds, ensemble_curves([r[3] for r in runs.values()]),
                runs=[resolve(args.out) / f"{v}-s{s}" for s in seeds])}
    out = resolve(args.out)
    path = out / "study.json"
    study = merge_study(json.loads(path.read_text()) if path.is_file() else None,
                        {"groups": args.groups, "data": args.data, "set": args.set,
                         "variants": summarise(results)})
    write_text(path, json.dumps(study, indent=1) + "\n")
    sets = "".join(f" --set {s}" for s in args.set)
    head = ["# Generalisation study", "",
            f"`python train/study.py --variants {variants_arg(study['variants'])} "
            f"--groups {args.groups} --data \"{args.data}\"{sets}`: {args.groups} fixed groups "
            "of families (a permutation seeded 0), each held out once; early stopping on the "
            "first family of the next group that was solved at least once. Gap closed: the "
            "mean share of the uniform-to-oracle gap over the budgets where the oracle beats "
            "uniform by 0.02.",
            ""]
    if folds:
        head += ["Held out together: " + "; ".join(
            f"{f.name}: {', '.join(f.test)} (validated on {f.val})" for f in folds) + ".", ""]
    lines = learning_curve(study["variants"]) + tables(study["variants"])
    write_text(out / "STUDY.md", "\n".join(head + lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out / 'STUDY.md'} and {out / 'study.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
