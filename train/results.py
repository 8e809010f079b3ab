"""Regenerate docs/RESULTS.md: the project's measured figures, from what recorded them.

    python train/results.py [--measure runs/measure|runs/study|runs/recal-curve/CASE ...]
                            [--predictor checkpoints/default]
                            [--out docs/RESULTS.md]

Sections, in order: the shipped predictor's figures as recorded in its ``config.json`` at
export (its held-out run: gap closed per budget and policy, mean gap, NLL); then the recorded
runs in ``docs/measured/`` (one file per run folder, in name order), each a
``train/measure.py`` run's ``SUMMARY.md``, a ``train/study.py`` run's ``STUDY.md`` or a
recalibration curve's ``summary.md`` (which name their data, command and commit); then the
archived measurement history (``docs/results-history.md``, the record kept before this
document was generated). ``--measure DIR`` first records DIR's summary there, replacing that
folder's earlier record, so a rerun of one measurement regenerates the document without the
others' folders (``runs/`` is not kept between machines); a record that no longer describes
the code is moved to the history by hand, with a dated note. Nothing here is typed by hand
but the history.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from clear_learn.atomic import write_text
from clear_learn.training.recipe import ROOT

HISTORY = ROOT / "docs" / "results-history.md"
MEASURED = ROOT / "docs" / "measured"
SUMMARIES = ("SUMMARY.md", "STUDY.md", "summary.md")  # measure.py, study.py, a curve's case


def predictor_section(path: Path) -> list[str]:
    """The exported predictor's recorded held-out figures as Markdown."""
    from clear_learn.predictor.config import PredictorConfig

    cfg = PredictorConfig.from_json_file(path / "config.json")
    m, t = cfg.metrics, cfg.training
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    out = [f"## The shipped predictor: `{shown}`", ""]
    if t is not None:
        data = " + ".join(t.data) if isinstance(t.data, tuple) else t.data
        out.append(f"Trained on {data} ({t.n_train} queries, split {t.split}"
                   + (f", refitted on every query for {m.get('refit_epochs')} epochs after a "
                      f"held-out run on the {t.held_out_split} split" if t.refit_all else "")
                   + f"); stages: batch context "
                   + (f"on (pool {cfg.stages.batch_context.pool:g})" if cfg.stages.batch_context
                      else "off") + f", threshold spread {cfg.stages.tau_spread:g}.")
        out.append("")
    budgets, gaps = m.get("budgets_per_query"), m.get("gap_closed")
    if not budgets or not gaps:
        return out + ["No held-out figures were recorded at export.", ""]
    names = list(gaps)
    out += [f"Held-out run ({m.get('test_queries', '?')} test queries, averaged over "
            f"{m.get('eval_splits', 1)} rollout halvings): share of the uniform-to-oracle gap "
            "closed.", "",
            "| policy | " + " | ".join(f"{b:g}" for b in budgets) + " | mean | NLL/rollout |",
            "|---|" + "---:|" * (len(budgets) + 2)]
    means, nll = m.get("mean_gap_closed", {}), m.get("nll_per_rollout", {})

    def cell(x, fmt="{:.2f}"):
        return "-" if x is None else fmt.format(x)

    for name in names:
        out.append(f"| {name} | " + " | ".join(cell(x) for x in gaps[name]) + " | "
                   + cell(means.get(name), "{:.3f}") + " | " + cell(nll.get(name), "{:.2f}")
                   + " |")
    out += ["", "A dash: no value (a policy without curves has no NLL; a share is undefined "
            "where the oracle does not beat uniform).", ""]
    return out


def measure_section(run: Path, shown: Path | None = None) -> list[str]:
    """A ``train/measure.py`` folder's SUMMARY.md, a ``train/study.py`` folder's STUDY.md, or
    a ``train/recalibration_curve.py`` case folder's summary.md, its headings one level
    down, headed by ``shown`` (default: ``run``)."""
    summary = next((run / n for n in SUMMARIES if (run / n).is_file()), None)
    if summary is None:
        raise SystemExit(f"{run}: no SUMMARY.md, STUDY.md or summary.md (run python "
                         f"train/measure.py --out {run}, python train/study.py --out {run}, "
                         "or python train/recalibration_curve.py)")
    text = summary.read_text().strip().splitlines()
    body = [("#" + line if line.startswith("#") else line) for line in text]
    return [f"## Measured: `{shown or run}`", "", *body, ""]


def record(run: Path, folder: Path = MEASURED) -> Path:
    """Write ``run``'s summary as a section into ``folder`` (one file per run folder,
    replacing its earlier record; named so that protocols come first, then studies, then
    recalibration curves); returns the file."""
    full = run.resolve()
    shown = full.relative_to(ROOT) if full.is_relative_to(ROOT) else full
    section = measure_section(run, shown)
    kind = next(i for i, n in enumerate(SUMMARIES) if (run / n).is_file())
    name = f"{kind}-" + "-".join(p for p in shown.parts if p != "/") + ".md"
    return write_text(folder / name, "\n".join(section).rstrip() + "\n")


def build(predictor: Path, folder: Path = MEASURED) -> str:
    """The document: the predictor's section, the recorded runs, then the history."""
    lines = ["# Results", "",
             "Generated by `python train/results.py` from the runs recorded in "
             "`docs/measured/` (each section names its command and data; `--measure DIR` "
             "records a rerun); do not edit by hand (the history at the end is the archived "
             "record).", ""]
    lines += predictor_section(predictor)
    records = sorted(folder.glob("*.md")) if folder.is_dir() else []
    for path in records:
        lines += [*path.read_text().rstrip().splitlines(), ""]
    if not records:
        lines += ["No run is recorded: the current protocols' figures are those of the "
                  "history below until one is (`python train/measure.py --out runs/measure`, "
                  "then `python train/results.py --measure runs/measure`).", ""]
    if HISTORY.is_file():
        lines += ["", *("#" + x if x.startswith("#") else x
                        for x in HISTORY.read_text().splitlines())]
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--measure", type=Path, action="append", default=[])
    ap.add_argument("--predictor", type=Path, default=ROOT / "checkpoints" / "default")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "RESULTS.md")
    args = ap.parse_args(argv)
    for run in args.measure:  # every folder checked before any record is replaced
        measure_section(run)
    for run in args.measure:
        print(f"recorded {run} -> {record(run, MEASURED)}")
    text = build(args.predictor, MEASURED)
    write_text(args.out, text)
    print(f"wrote {args.out} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
