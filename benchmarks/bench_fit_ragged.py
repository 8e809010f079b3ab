"""Cost of `clear-learn fit` when one query has far more rollouts than the others.

    OMP_NUM_THREADS=1 python benchmarks/bench_fit_ragged.py [--big 100000] [--input FILE]

Copies the rollout file (default: the embedded default file, which a generator may be
appending to) to a temporary file, appends one SIMULATED record with ``--big`` rollouts
(sampled from a known curve, seed 0), and runs ``python -m clear_learn.cli fit`` on the copy
in a subprocess, with and without the big record. Prints, for each, the wall time and the
subprocess's peak resident memory (``ru_maxrss`` from ``os.wait4``), and the fitted curve of
the big record against the curve it was sampled from.

Measured on this project's 2-core machine (432 default records, shared with other jobs):
with rollouts padded to the largest record, 918 s and 2,499 MiB with the big record (0.58 s,
71 MiB without); with flat rollouts (issue 18 item 11), 1.5 s and 72 MiB (0.46 s, 72 MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from clear_learn.curves import Curves  # noqa: E402
from clear_learn.simulate import sample_rollouts  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "clear_learn" / "data" / "rollouts-default.jsonl"
TRUE_CURVE = dict(tau=150.0, p=0.6, k=1.0 / 60.0)


def run_fit(path: Path, out: Path) -> tuple[float, float, str]:
    """``(wall seconds, peak RSS in MiB, last output line)`` of one ``fit`` subprocess."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "clear_learn.cli", "fit", str(path), "-o",
                             str(out)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    text = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"fit failed on {path}:\n{text}")
    return wall, usage.ru_maxrss / 1024.0, text.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", type=Path, default=DEFAULT)
    ap.add_argument("--big", type=int, default=100_000, help="rollouts of the added record")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = tmp / "base.jsonl"
        shutil.copyfile(args.input, base)  # a snapshot: the original may be growing
        n_base = sum(1 for line in base.read_text().splitlines() if line.strip())
        big = sample_rollouts(Curves(**{k: [v] for k, v in TRUE_CURVE.items()}), args.big,
                              512, seed=0, ids=["synthetic-big"])[0]
        ragged = tmp / "ragged.jsonl"
        shutil.copyfile(base, ragged)
        with open(ragged, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(big) + "\n")
        print(f"input: {n_base} records from {args.input} (snapshot), plus one SIMULATED "
              f"record of {args.big:,} rollouts (true curve {TRUE_CURVE})")
        print("| file | wall s | peak RSS MiB |")
        print("|---|---:|---:|")
        for name, path in ((f"{n_base} records", base),
                           (f"{n_base} records + 1 x {args.big:,} rollouts", ragged)):
            out = tmp / f"{path.stem}-curves.jsonl"
            wall, rss, last = run_fit(path, out)
            print(f"| {name} | {wall:.2f} | {rss:.0f} |")
        rows = [json.loads(x) for x in out.read_text().splitlines()]
        fitted = next(r for r in rows if r["id"] == "synthetic-big")
        print(f"\nlast fit: {last}")
        print(f"big record fitted: tau {fitted['tau']:.1f}, p {fitted['p']:.3f}, "
              f"1/k {1 / fitted['k']:.1f} (true: tau {TRUE_CURVE['tau']}, p {TRUE_CURVE['p']}, "
              f"1/k {1 / TRUE_CURVE['k']:.1f})")


if __name__ == "__main__":
    main()
