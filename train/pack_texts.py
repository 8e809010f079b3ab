"""Pack the default set's response texts (the generator's side file) into committed chunks.

    python train/pack_texts.py            # runs/texts/rollouts-default.texts.jsonl ->
                                          # clear_learn/data/texts/default-AAAA-BBBB.jsonl.gz

Texts already packed stay; only chunks that change are rewritten (atomically). The benchmark's
texts are never packed: its responses quote the benchmark problems.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from clear_learn.generation.problems import read_problems
from clear_learn.generation.texts import pack_texts
from clear_learn.rollouts import read_rollouts

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", default=str(ROOT / "runs/texts/rollouts-default.texts.jsonl"))
    ap.add_argument("--problems", default=str(ROOT / "clear_learn/data/problems-default.jsonl"))
    ap.add_argument("--out", default=str(ROOT / "clear_learn/data/texts"))
    args = ap.parse_args(argv)
    # checked: a bad line skipped would shift every later problem's position, and chunk
    ids = [str(p["id"]) for p in read_problems(args.problems)]
    # the pilot rows of dropped families: their texts were packed while they were in the file
    pilot = [str(r["id"]) for r in read_rollouts(ROOT / "clear_learn/data/"
                                                 "rollouts-pilot-dropped.jsonl")]
    written = pack_texts([args.side], ids, args.out, stem="default", skip=pilot)
    for name, n in written.items():
        size = (Path(args.out) / name).stat().st_size
        print(f"{name}: {n} problems, {size / 1e6:.2f} MB")
    if not written:
        print("nothing new to pack")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
