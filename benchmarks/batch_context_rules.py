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

import json
import sys

import numpy as np

from clear_learn.training.recipe import DEFAULT_CONFIG, load_config
from clear_learn.training.runs import measure_dir_arg, unseen_family_curves

BUDGETS = [48, 64, 96, 128, 160, 192, 256]
RULES = {"none": None, "nearest-10": ("hard", 0.0), "nearest-10, sim>=0.2": ("hard", 0.2),
         "nearest-10, sim>=0.3": ("hard", 0.3), "weighted by sim (shipped)": ("pow", 1.0),
         "weighted by sim^2": ("pow", 2.0)}



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
    from clear_learn.predictor import ClearPredictor

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

    cfg = load_config(DEFAULT_CONFIG, state.get("set", []))
    d = cfg["data"]
    _, _, te = split_records(records, split="query", val_fraction=d["val_fraction"],
                             test_fraction=d["test_fraction"], seed=int(cfg.get("seed", 0)))
    tr = sorted(set(range(len(records))) - set(te))
    q_test = [records[i] for i in te]
    q_texts = [r["text"] for r in q_test]
    pred = ClearPredictor.from_pretrained(out / "queries" / "predictor")
    ctx = pred.batch_context or within_task_slopes([records[i] for i in tr])
    q_raw = pred.predict(q_texts, use_batch_context=False, tau_spread=0)  # the network's
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
