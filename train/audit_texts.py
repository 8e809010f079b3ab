"""Print graded responses of the broad families so that a person can check verdicts by hand.

    python train/audit_texts.py                         # every broad family with texts, 10 each
    python train/audit_texts.py --family caesar_cipher --per-family 4 --seed 1

For each broad family (those of ``BROAD_SETTINGS``) that has response texts, a seeded mix of
right and wrong verdicts among the finished responses (alternating while both last) is printed:
the problem, its reference answer, the last boxed answer as written and as handed to
reasoning-gym (unwrapped), the grader's verdict now, the stored label (flagged when a regrade
would change it) and the response's tail. A response whose rollout row is not in the rollout
file yet (the side file runs ahead of it) counts as finished when it has a boxed answer.
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clear_learn.generation.graders import grade, last_boxed, scientific_to_e, unwrap  # noqa: E402
from clear_learn.generation.problems import BROAD_SETTINGS, read_problems  # noqa: E402
from clear_learn.generation.texts import load_texts  # noqa: E402
from clear_learn.rollouts import iter_jsonl  # noqa: E402

SIDE = Path("/work/main/runs/texts/rollouts-default.texts.jsonl")


def default_texts() -> list[str]:
    out = [str(ROOT / "clear_learn/data/texts")]
    for side in (ROOT / "runs/texts/rollouts-default.texts.jsonl", SIDE):
        if side.is_file():
            out.append(str(side))
    return out


def load_rollouts(path: str) -> dict[str, list[dict]]:
    rows = {}
    for _, obj, err in iter_jsonl(path):
        if err is None and isinstance(obj, dict):
            rows[str(obj["id"])] = obj.get("rollouts", [])
    return rows


def sample(right: list, wrong: list, n: int, rng: random.Random) -> list:
    """Up to ``n`` items, alternating right and wrong while both last (seeded order)."""
    right, wrong = right[:], wrong[:]
    rng.shuffle(right)
    rng.shuffle(wrong)
    out = []
    pools = [right, wrong] if rng.random() < 0.5 else [wrong, right]
    while len(out) < n and (right or wrong):
        for pool in pools:
            if pool and len(out) < n:
                out.append(pool.pop())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", default=str(ROOT / "clear_learn/data/problems-default.jsonl"))
    ap.add_argument("--rollouts", default=str(ROOT / "clear_learn/data/rollouts-default.jsonl"))
    ap.add_argument("--texts", nargs="+", default=None,
                    help="texts files or folders (default: the packed chunks and side files)")
    ap.add_argument("--family", action="append", default=None,
                    help="a broad family to print (repeatable; default all with texts)")
    ap.add_argument("--per-family", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tail", type=int, default=700, help="characters of each response's tail")
    args = ap.parse_args(argv)

    broad = list(dict.fromkeys(s.family for s in BROAD_SETTINGS))
    families = args.family or broad
    unknown = [f for f in families if f not in broad]
    if unknown:
        ap.error(f"not broad families: {', '.join(unknown)}")
    problems = [p for p in read_problems(args.problems) if p["task"] in families]
    texts = load_texts(args.texts or default_texts())
    rollouts = load_rollouts(args.rollouts)

    by_family: dict[str, list[tuple[dict, int, str, bool, bool | None]]] = defaultdict(list)
    for p in problems:
        pid = str(p["id"])
        if pid not in texts:
            continue
        rows = rollouts.get(pid)
        for i, text in enumerate(texts[pid]):
            row = rows[i] if rows is not None and i < len(rows) else None
            finished = row["finished"] if row is not None else last_boxed(text) is not None
            if not finished:
                continue
            by_family[p["task"]].append((p, i, text, grade(text, p),
                                         None if row is None else bool(row["correct"])))

    rng = random.Random(args.seed)
    missing = [f for f in families if f not in by_family]
    for fam in families:
        if fam not in by_family:
            continue
        items = by_family[fam]
        right = [x for x in items if x[3]]
        wrong = [x for x in items if not x[3]]
        chosen = sample(right, wrong, args.per_family, rng)
        n_probs = len({x[0]["id"] for x in items})
        print("=" * 100)
        print(f"FAMILY {fam}: {len(items)} finished responses of {n_probs} problems "
              f"({len(right)} graded right, {len(wrong)} wrong); showing {len(chosen)}")
        for k, (p, i, text, verdict, stored) in enumerate(chosen, 1):
            boxed = last_boxed(text)
            sent = None if boxed is None else scientific_to_e(unwrap(boxed))
            flag = "" if stored is None or stored == verdict else "   <-- STORED LABEL DIFFERS"
            print("-" * 100)
            print(f"[{fam} {k}/{len(chosen)}] {p['id']} response {i} "
                  f"(difficulty {p.get('difficulty')})")
            print(f"QUESTION: {p['text']}")
            print(f"REFERENCE: {p['answer']!r}")
            print(f"BOXED:     {boxed!r}")
            print(f"SENT:      {sent!r}")
            print(f"VERDICT:   {'RIGHT' if verdict else 'WRONG'}"
                  f"   (stored: {'?' if stored is None else stored}){flag}")
            print(f"TAIL: ...{text[-args.tail:]}")
    if missing:
        print("=" * 100)
        print(f"no finished responses with texts yet: {', '.join(missing)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
