"""Reading a ``train/measure.py`` run back, for the scripts of ``benchmarks/``: its data as it
was measured, its leave-one-family-out fold curves, and the common arguments."""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

BUDGETS = [48, 64, 96, 128, 160, 192, 256, 384]  # tokens per query of the benchmark tables

__all__ = ["BUDGETS", "cell", "measured_records", "measure_dir_arg", "fold_rows",
           "fold_curves_of", "unseen_family_curves"]


def cell(x) -> str:
    """A figure of a Markdown table: two decimals, ``-`` for a missing or non-finite one."""
    import math

    return "-" if x is None or not math.isfinite(x) else f"{x:.2f}"


def measured_records(state: dict) -> list[dict]:
    """The records of each source as the run saw them: the prefix of its (append-only) file
    whose sha256 is the one recorded; exits if no prefix matches."""
    from ..datasets import data_path
    from ..predictor.data import load_records

    out = []
    for src, info in state["data"].items():
        path = data_path(src) if src in ("default", "benchmark") else Path(info["path"])
        lines = path.read_bytes().splitlines(keepends=True)
        h, n = hashlib.sha256(), None
        for i, line in enumerate(lines):
            h.update(line)
            if h.hexdigest() == info["sha256"]:
                n = i + 1
                break
        if n is None:
            raise SystemExit(f"{path}: no prefix matches the measured sha256; check "
                             "out the data of the measured commit")
        out += load_records(src)[:n]
    return out


def measure_dir_arg(argv, doc: str, *, more_folds: bool = False) -> argparse.Namespace:
    """The arguments of the benchmark scripts: ``measure_dir``, an ``--out`` folder of
    ``train/measure.py``; ``splits``, the rollout halvings to average the figures over; with
    ``more_folds``, also ``more_folds``, ``cross_family.py --out`` folders of other seeds."""
    ap = argparse.ArgumentParser(description=doc,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("measure_dir", type=Path, help="an --out folder of train/measure.py")
    ap.add_argument("--splits", type=int, default=5,
                    help="random halvings of each query's rollouts (oracle half, scoring "
                         "half) to average over (default 5)")
    if more_folds:
        ap.add_argument("--more-folds", type=Path, nargs="*", default=[], metavar="DIR",
                        help="cross_family.py --out folders trained on the same data with "
                             "other seeds (--set seed=N)")
    args = ap.parse_args(argv)
    if args.splits < 1:
        ap.error(f"--splits must be a positive integer, got {args.splits}")
    return args


def fold_rows(fam_dir: Path, policy: str) -> dict[str, dict]:
    """``{id: curve row}`` of ``policy`` in the folds of a ``cross_family.py --out`` folder;
    exits on folds written before their contents were fixed (see
    :data:`~clear_learn.training.lofo.FOLD_CONTENTS`)."""
    from .lofo import FOLD_CONTENTS

    cfg = fam_dir / "config.json"
    if cfg.is_file() and json.loads(cfg.read_text()).get("folds") != FOLD_CONTENTS:
        raise SystemExit(f"{fam_dir}: folds written before the fix of their contents (their "
                         "learned curves already include batch context and spread); "
                         "measure again")
    rows = [json.loads(x) for f in sorted((fam_dir / "folds").glob("*.jsonl"))
            for x in f.read_text().splitlines() if x.strip()]
    return {str(r["id"]): r for r in rows if r["policy"] == policy}


def fold_curves_of(fam_dir: Path, policy: str, test: list[dict]):
    """``policy``'s fold curves of the ``test`` queries, in their order; exits naming a
    query the folds lack (another data state)."""
    from ..curves import Curves

    rows = fold_rows(fam_dir, policy)
    missing = [r["id"] for r in test if str(r["id"]) not in rows]
    if missing:
        raise SystemExit(f"{fam_dir}: no {policy} curve for {len(missing)} queries, e.g. "
                         f"{missing[0]!r} (folds of other data?)")
    return Curves.from_records([rows[str(r["id"])] for r in test])


def unseen_family_curves(out: Path, policy: str = "clear-learned"):
    """``(records as measured, the unseen-family test records in cross_family.py's order,
    their ``policy`` fold curves (before every post-network stage), the per-family
    batch-context slopes as saved in the report)`` of a measure run ``out``."""
    from ..curves import Curves

    records = measured_records(json.loads((out / "state.json").read_text()))
    fam_dir = out / "families"
    slopes = json.loads((fam_dir / "report.json").read_text())["meta"]["batch_context"]
    learned = fold_rows(fam_dir, policy)
    test = [r for r in records if str(r["id"]) in learned]  # cross_family.py's order
    return records, test, Curves.from_records([learned[str(r["id"])] for r in test]), slopes
