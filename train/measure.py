"""Every predictor figure of the README from one command, on the data as it stands.

    python train/measure.py [--data "[default,benchmark]"] [--unseen gsm8k,math500]
                            [--out runs/measure] [--set key=value ...] [--skip-families]

Runs, each into its own folder under ``OUT`` (a step whose report exists is reused, so an
interrupted run resumes; ``OUT`` belongs to one state of the data, of
``configs/default.yaml`` and of the options, and another is refused):

1. ``queries``: ``train.py`` on a random query split (held-out queries of seen families);
2. ``unseen``: ``train.py`` with the ``--unseen`` families held out (trained without them);
   skipped when the data lacks one of them;
3. ``families``: ``cross_family.py`` (every family predicted by a model trained without it),
   evaluated as one batch of all families and with each family its own batch
   (``--skip-families``: left out, as when ``train/study.py``'s group folds stand in for it
   in ``train/report.py``; with LoRA, one fold per family takes hours on 2 cores).

then writes ``OUT/SUMMARY.md``: the data (sources, queries per family, git commit), and per
protocol the share of the uniform-to-oracle gap closed at every budget, its mean
(:func:`clear_learn.evaluation.mean_gap_closed`), the NLL per rollout, and mean accuracies at a
scarce budget; and the folds' median best epoch with the command that ships a predictor
trained for unseen families. It never writes ``checkpoints/``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from clear_learn.atomic import write_text
from clear_learn.training.lofo import median_epochs
from clear_learn.training.recipe import ROOT, parse_value, resolve
from clear_learn.training.runs import cell

TITLES = {"queries": "Held-out queries (random query split)",
          "unseen": "Held-out families, trained without them",
          "families": "Unseen task families (leave-one-family-out, pooled)",
          "family-batches": "Unseen task families, each family its own batch"}


def data_state(sources: list[str]) -> dict:
    """What the measurement depends on: each source's rollout file and its sha256."""
    from clear_learn.datasets import data_path

    state = {}
    for src in sources:
        path = data_path(src) if src in ("default", "benchmark") else Path(src)
        state[src] = {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return state


def git_commit() -> str:
    """The repository's HEAD commit (``+ uncommitted changes`` where tracked files of the
    code or configs differ from it), or ``unknown`` outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, text=True, capture_output=True,
                              check=True).stdout.strip()

    try:
        head = git("rev-parse", "--short", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", "clear_learn",
                      "configs", "train")
        return head + (" + uncommitted changes" if changed else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def step_commands(out: Path, data: str, unseen: list[str], sets: list[str]
                  ) -> dict[str, tuple[list[str], Path]]:
    """``{step: (argv, report path)}`` for the three protocols."""
    py = [sys.executable]
    common = [f"data.data={data}", *sets]

    def train(name: str, extra: list[str]) -> tuple[list[str], Path]:
        d = out / name
        opts = common + [f"run_dir={d}", f"export.dir={d / 'predictor'}",
                         f"evaluate.out={d / 'eval'}", *extra]
        return (py + [str(ROOT / "train" / "train.py")]
                + [x for o in opts for x in ("--set", o)], d / "eval" / "report.json")

    steps = {"queries": train("queries", ["data.split=query"])}
    if unseen:
        steps["unseen"] = train("unseen", ["data.split=task",
                                           f"data.test_tasks=[{','.join(unseen)}]"])
    steps["families"] = (py + [str(ROOT / "train" / "cross_family.py"), "--out",
                               str(out / "families")]
                         + [x for o in common for x in ("--set", o)],
                         out / "families" / "report.json")
    return steps


def summarize(reports: dict[str, Path], header: list[str]) -> str:
    """The markdown summary of the saved reports ``{step: report.json}``."""
    from clear_learn.evaluation import EvalReport, mean_gap_closed, mean_gap_closed_sd

    lines = list(header)
    for step, path in reports.items():
        rep = EvalReport.load(path)
        budgets = rep.budgets_per_query
        means, sds = mean_gap_closed(rep), mean_gap_closed_sd(rep)
        splits = int(rep.meta.get("splits", 1))
        nll = rep.meta.get("nll_per_rollout", {})
        held = rep.meta.get("test_tasks") if rep.meta.get("split") == "task" else None
        title = TITLES.get(step, step) + (f" ({', '.join(held)})" if held else "")
        lines += ["", f"## {title}", "",
                  f"{rep.n_queries} test queries; "
                  + (f"averaged over {splits} halvings of each query's rollouts (mean: "
                     "± its sd over the halvings); " if splits > 1 else "")
                  + f"`{path}`", "",
                  "| gap closed at tokens/query | " + " | ".join(f"{b:g}" for b in budgets)
                  + " | mean | NLL/rollout |",
                  "|---" + "|---:" * (len(budgets) + 2) + "|"]
        for name in (p for p in rep.rows if p.startswith("clear-")):
            gaps = [row["gap_closed"] for row in rep.rows[name]]
            lines.append(f"| {name} | " + " | ".join(cell(g) for g in gaps)
                         + f" | **{cell(means[name])}**"
                         + (f" ±{cell(sds[name])}" if np.isfinite(sds[name]) else "")
                         + f" | {cell(nll.get(name))} |")
        j = int(np.argmin([abs(b - 128) for b in budgets]))
        accs = ", ".join(f"{name} {rep.rows[name][j]['mean_accuracy']:.3f}"
                         for name in rep.rows)
        lines += ["", f"Mean accuracy at {budgets[j]:g} tokens/query: {accs}."]
        spread = rep.meta.get("tau_spread")
        if isinstance(spread, dict):  # cross_family.py's fit (train.py stores the number used)
            lines += ["", "Threshold spread of each family, fitted on the other families' "
                      f"learned curves: {spread['per_family']['clear-learned']}; fitted on "
                      f"every family: {spread['ship']} (ship it: `--set "
                      f"calibration.tau_spread={spread['ship']}`)."]
        epochs = rep.meta.get("fold_best_epochs")
        if epochs:
            med = median_epochs(epochs)
            lines += ["", f"Best epochs per fold (early stopping on an unseen family): "
                      f"{epochs}; median {med}. A predictor for unseen traffic: "
                      f"`python train/train.py --set export.refit_all=true "
                      f"--set export.refit_epochs={med}` (with the same `data.data`)."]
    return "\n".join(lines) + "\n"


def check_state(out: Path, want: dict) -> None:
    """Record ``want`` in ``OUT/state.json``; refuse an ``OUT`` measured on another state."""
    path = out / "state.json"
    if path.is_file():
        have = json.loads(path.read_text())
        if have != want:
            changed = sorted(k for k in set(have) | set(want) if have.get(k) != want.get(k))
            raise SystemExit(f"{out} was measured on other data or options (differs in "
                             f"{changed}; {path}): pass another --out, or delete it")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(want, indent=1) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="[default,benchmark]",
                    help="data.data for every step (default: both embedded files)")
    ap.add_argument("--unseen", default="gsm8k,math500",
                    help="families held out in the 'unseen' step ('' to skip it)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override passed to every step")
    ap.add_argument("--out", default="runs/measure")
    ap.add_argument("--skip-families", action="store_true",
                    help="leave out the leave-one-family-out step")
    args = ap.parse_args(argv)

    from clear_learn.predictor.data import load_records

    sources = parse_value(args.data)
    sources = [str(s) for s in (sources if isinstance(sources, list) else [sources])]
    records = load_records(sources if len(sources) > 1 else sources[0])
    tasks = Counter(r["task"] for r in records)
    unseen = [t for t in args.unseen.split(",") if t]
    if unseen and not set(unseen) <= set(tasks):
        print(f"--unseen: {sorted(set(unseen) - set(tasks))} not in the data; "
              "skipping the 'unseen' step")
        unseen = []
    out = resolve(args.out)
    config = ROOT / "configs" / "default.yaml"  # every step's config (with --set on top)
    check_state(out, {"data": data_state(sources), "unseen": unseen, "set": args.set,
                      "config": hashlib.sha256(config.read_bytes()).hexdigest()})
    steps = step_commands(out, args.data, unseen, args.set)
    if args.skip_families:
        del steps["families"]
    for step, (cmd, report) in steps.items():
        if report.is_file():
            print(f"[{step}] reusing {report}")
            continue
        print(f"[{step}] {' '.join(cmd)}", flush=True)
        subprocess.run(cmd, check=True)
    header = [f"# Predictor measurements ({git_commit()})", "",
              f"Data: {', '.join(sources)}: {len(records)} queries; per family "
              + ", ".join(f"{t} {n}" for t, n in sorted(tasks.items())) + ".",
              f"Command: `python train/measure.py --data \"{args.data}\" --unseen "
              f"\"{','.join(unseen)}\"" + "".join(f" --set {s}" for s in args.set)
              + f" --out {args.out}" + (" --skip-families" if args.skip_families else "")
              + "`. \"mean\": over the budgets where the oracle beats "
              "uniform by at least 0.02 mean accuracy."]
    reports = {s: r for s, (_, r) in steps.items()}
    if "families" in steps:
        reports["family-batches"] = out / "families" / "report-family-batches.json"
    text = summarize({s: r for s, r in reports.items() if r.is_file()}, header)
    write_text(out / "SUMMARY.md", text)
    print("\n" + text + f"\nwrote {out / 'SUMMARY.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
