"""Compare rules for a text's batch-context centre on the curves of a `train/measure.py` run.

    python benchmarks/batch_context_rules.py runs/measure-f3b1

Reads the run's leave-one-family-out fold curves (``families/folds``, learned model, no batch
context) and its held-out-query predictor (``queries/predictor``), rebuilds the data exactly
as measured (each rollout file's prefix whose sha256 matches the run's ``state.json``; the
files are append-only), and prints the length signal the batch context rests on (Spearman
correlations of text length with answer length and accuracy, within families and pooled),
then the mean share of the uniform-to-oracle gap closed over
48-256 tokens/query, for each rule:

- (a) unseen families, all pooled queries as one batch (slopes of each query's own fold);
- (b) the same in a random stream cut into batches of 64, each batch its own context;
- (c) the held-out queries of the random query split (families seen in training).

The rules: no shift; the 10 nearest texts by TF-IDF cosine, unweighted, above a similarity
threshold (0, 0.2, 0.3); weighted by their similarity, or by its square.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "train"))

BUDGETS = [48, 64, 96, 128, 160, 192, 256]
RULES = {"none": None, "nearest-10": ("hard", 0.0), "nearest-10, sim>=0.2": ("hard", 0.2),
         "nearest-10, sim>=0.3": ("hard", 0.3), "weighted by sim (shipped)": ("pow", 1.0),
         "weighted by sim^2": ("pow", 2.0)}


def measured_records(state: dict) -> list[dict]:
    """The records of each source as the run saw them: the prefix of its (append-only) file
    whose sha256 is the one recorded; exits if no prefix matches."""
    from clear_learn.datasets import data_path
    from clear_learn.predictor.data import load_records

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


def length_signal(records: list[dict]) -> str:
    """Spearman correlations of the log text length with the mean correct length and with the
    accuracy: pooled, and within families (weighted by size, families of 5+ queries)."""
    from scipy.stats import spearmanr

    x = np.log([len(r["text"]) for r in records])
    fam = np.array([r["task"] for r in records])
    acc = np.array([np.mean([o["correct"] for o in r["rollouts"]]) for r in records])
    lc = np.array([np.mean([o["tokens"] for o in r["rollouts"] if o["correct"]])
                   if any(o["correct"] for o in r["rollouts"]) else np.nan for r in records])

    def within(y):
        rho, w = [], []
        for f in np.unique(fam):
            m = (fam == f) & ~np.isnan(y)
            if m.sum() >= 5 and np.ptp(x[m]) > 0 and np.ptp(y[m]) > 0:
                rho.append(spearmanr(x[m], y[m])[0])
                w.append(m.sum())
        return float(np.average(rho, weights=w))

    ok = ~np.isnan(lc)
    return (f"log text length, Spearman: with the mean correct length {within(lc):+.2f} within "
            f"families, {spearmanr(x[ok], lc[ok])[0]:+.2f} pooled; with the accuracy "
            f"{within(acc):+.2f} within, {spearmanr(x, acc)[0]:+.2f} pooled ({len(records)} "
            "queries)")


def centre(texts: list[str], rule) -> np.ndarray:
    """A rule's centre of each text's log length among its 10 nearest texts of the batch."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    ll = np.log([len(t) for t in texts])
    if rule is None:
        return ll
    kind, a = rule
    X = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True).fit_transform(texts)
    S = (X @ X.T).toarray()
    np.fill_diagonal(S, -np.inf)
    top = np.argsort(-S, 1)[:, :min(10, len(texts) - 1)]
    s = np.take_along_axis(S, top, 1)
    w = (s >= a).astype(float) if kind == "hard" else np.clip(s, 0, None) ** a
    return (ll + (ll[top] * w).sum(1)) / (1 + w.sum(1))


def shifted(curves, texts, rule, tau_slope, p_slope):
    from clear_learn.predictor.batch_context import shift_by_length

    d = np.log([len(t) for t in texts]) - centre(texts, rule)
    return shift_by_length(curves, d, tau_slope, p_slope)


def measure_dir_arg(argv, doc: str, *, more_folds: bool = False) -> argparse.Namespace:
    """The arguments of these scripts: ``measure_dir``, an ``--out`` folder of
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


def unseen_family_curves(out: Path, policy: str = "clear-learned"):
    """``(records as measured, the unseen-family test records in cross_family.py's order,
    their ``policy`` curves before batch context, the per-family batch-context slopes)`` of a
    measure run ``out``."""
    from clear_learn.curves import Curves

    records = measured_records(json.loads((out / "state.json").read_text()))
    fam_dir = out / "families"
    slopes = json.loads((fam_dir / "report.json").read_text())["meta"]["batch_context"]
    learned = fold_rows(fam_dir, policy)
    test = [r for r in records if str(r["id"]) in learned]  # cross_family.py's order
    return records, test, Curves.from_records([learned[str(r["id"])] for r in test]), slopes


def fold_rows(fam_dir: Path, policy: str) -> dict[str, dict]:
    """``{id: curve row}`` of ``policy`` in the folds of a ``cross_family.py --out`` folder."""
    rows = [json.loads(x) for f in sorted((fam_dir / "folds").glob("*.jsonl"))
            for x in f.read_text().splitlines() if x.strip()]
    return {str(r["id"]): r for r in rows if r["policy"] == policy}


def fold_curves_of(fam_dir: Path, policy: str, test: list[dict]):
    """``policy``'s fold curves of the ``test`` queries, in their order; exits naming a
    query the folds lack (another data state)."""
    from clear_learn.curves import Curves

    rows = fold_rows(fam_dir, policy)
    missing = [r["id"] for r in test if str(r["id"]) not in rows]
    if missing:
        raise SystemExit(f"{fam_dir}: no {policy} curve for {len(missing)} queries, e.g. "
                         f"{missing[0]!r} (folds of other data?)")
    return Curves.from_records([rows[str(r["id"])] for r in test])


def mean_gaps(report) -> dict[str, float]:
    return {name: float(np.nanmean([r["gap_closed"] for r in rows]))
            for name, rows in report.rows.items() if name in RULES}


def main(argv=None) -> int:
    args = measure_dir_arg(argv, __doc__)
    out, splits = args.measure_dir, args.splits
    from clear_learn.allocation import allocate
    from clear_learn.evaluation import evaluate_policies
    from clear_learn.predictor.batch_context import within_task_slopes
    from clear_learn.predictor.data import split_records
    from clear_learn.predictor.export import ClearPredictor
    from train import load_config

    state = json.loads((out / "state.json").read_text())
    records, test, raw, slopes = unseen_family_curves(out)
    texts = [r["text"] for r in test]
    ts = np.array([slopes[r["task"]]["tau_slope"] for r in test])
    ps = np.array([slopes[r["task"]]["p_slope"] for r in test])
    caps = np.array([int(r["max_new_tokens"]) for r in test])
    res = {}
    rep = evaluate_policies(test, {n: shifted(raw, texts, u, ts, ps) for n, u in RULES.items()},
                            BUDGETS, seed=0, splits=splits)
    res["(a) unseen families, one batch"] = mean_gaps(rep)

    def stream_policy(rule):
        def f(idx, total):
            c = shifted(raw[idx], [texts[i] for i in idx], rule, ts[idx], ps[idx])
            return allocate(c, int(total), max_tokens=caps[idx]).budgets
        return f

    stream = np.random.default_rng(0).permutation(np.tile(np.arange(len(test)), 4))
    rep = evaluate_policies(test, {n: stream_policy(u) for n, u in RULES.items()}, BUDGETS,
                            seed=0, stream=stream, batch_size=64, splits=splits)
    res["(b) unseen families, batches of 64"] = mean_gaps(rep)

    cfg = load_config(ROOT / "configs" / "default.yaml", state.get("set", []))
    d = cfg["data"]
    _, _, te = split_records(records, split="query", val_fraction=d["val_fraction"],
                             test_fraction=d["test_fraction"], seed=int(cfg.get("seed", 0)))
    tr = sorted(set(range(len(records))) - set(te))
    q_test = [records[i] for i in te]
    q_texts = [r["text"] for r in q_test]
    pred = ClearPredictor.from_pretrained(out / "queries" / "predictor")
    ctx = pred.batch_context or within_task_slopes([records[i] for i in tr])
    q_raw = pred.predict(q_texts, batch_context=False)
    rep = evaluate_policies(q_test, {n: shifted(q_raw, q_texts, u, ctx.tau_slope, ctx.p_slope)
                                     for n, u in RULES.items()}, BUDGETS, seed=0, splits=splits)
    res[f"(c) held-out queries ({len(q_test)})"] = mean_gaps(rep)

    print(length_signal(records))
    print(f"mean gap closed over {BUDGETS[0]}-{BUDGETS[-1]} tokens/query, {out}")
    print("| rule | " + " | ".join(res) + " |")
    print("|---|" + "---:|" * len(res))
    for name in RULES:
        print(f"| {name} | " + " | ".join(f"{v[name]:.3f}" for v in res.values()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
