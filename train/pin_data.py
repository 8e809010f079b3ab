"""Pin the embedded data sets as they were at one commit, for studies that must not move.

    python train/pin_data.py COMMIT [--out runs/study]

Writes ``OUT/rollouts-NAME-COMMIT.jsonl`` for ``default`` and ``benchmark`` from
``git show COMMIT:clear_learn/data/rollouts-NAME.jsonl``, with the benchmark's texts joined
from ``../shared`` (as the embedded loader does), validated, each file written atomically.
The study, the report and the recalibration curves name these files in ``--data`` so that
their folds keep belonging to one state of the data while generation goes on; the texts
stay out of the repository (``runs/`` is ignored).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from clear_learn.atomic import write_text
from clear_learn.datasets import load_rollouts
from clear_learn.training.recipe import ROOT

NAMES = ("default", "benchmark")


def pinned_records(commit: str, name: str) -> list[dict]:
    """The records of embedded data set ``name`` at ``commit``, read as the embedded loader
    reads them (texts joined, validated)."""
    rel = f"clear_learn/data/rollouts-{name}.jsonl"
    try:
        data = subprocess.run(["git", "show", f"{commit}:{rel}"], cwd=ROOT, check=True,
                              capture_output=True).stdout
    except subprocess.CalledProcessError as e:
        raise SystemExit(f"git show {commit}:{rel}: {e.stderr.decode().strip()}") from None
    with tempfile.TemporaryDirectory(prefix="clear-learn-pin-") as tmp:
        path = Path(tmp) / f"{commit.replace('/', '_')}-{Path(rel).name}"  # errors name it
        path.write_bytes(data)
        return load_rollouts(name, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("commit", help="a commit of this repository (e.g. d7ab634)")
    ap.add_argument("--out", type=Path, default=Path("runs/study"))
    args = ap.parse_args(argv)
    for name in NAMES:
        records = pinned_records(args.commit, name)
        path = args.out / f"rollouts-{name}-{args.commit}.jsonl"
        write_text(path, "".join(json.dumps(r) + "\n" for r in records))
        print(f"wrote {path} ({len(records)} queries)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
