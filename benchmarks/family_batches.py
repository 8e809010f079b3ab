"""Unseen families one at a time: which curves allocate best within a family?

    python benchmarks/family_batches.py runs/measure-163

On a `train/measure.py` run's leave-one-family-out fold curves, rebuilt as measured, with
each fold's batch-context slopes and a threshold spread per family fitted on the other
families (as `train/cross_family.py` does), prints the mean share of the uniform-to-oracle gap
closed over 48-256 tokens/query and at 384, (a) with all families as one batch and (b) with
each family its own batch, for:

- the learned, TF-IDF and length curves of the folds (the length baseline won (b) on the
  245-query run);
- the learned curves averaged among look-alikes (each curve's log tau, logit p and log k
  replaced by their mean over its 10 most similar texts of the batch, weighted by TF-IDF
  cosine: the batch context's neighbours), so that within a group of similar texts only the
  length context varies them;
- the learned and length curves blended half and half in those coordinates;
- the learned curves with the context's p slope doubled;
- the length baseline's tau and k with the learned p (``benchmarks/curve_sources.py`` checks
  this one on held-out queries and on the held-out benchmark families too);
- the same with p from *frozen* all-MiniLM-L6-v2 embeddings (mean-pooled, no LoRA) and the
  log text length, by ridge regression onto the other families' per-query fitted logit p:
  what the LoRA fine-tuning adds over the frozen encoder;
- with ``--more-folds DIR ...`` (``cross_family.py --out DIR --set seed=N`` on the same
  data), each other seed's learned p, and the seeds' mean logit p (an ensemble): how much
  the figures move with the training seed alone.

An experiment for the next step of the predictor, not part of the shipped recipe: the
variants are chosen on the queries they are measured on.
"""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np

from clear_learn.predictor.pipeline import BATCH_CONTEXT, LEARNED, LENGTH, TFIDF, postprocess
from clear_learn.training.runs import (BUDGETS, fold_curves_of, measure_dir_arg,
                                     unseen_family_curves)



def length_tau_k(network, length):
    """``length``'s tau and k with ``network``'s p."""
    from clear_learn.curves import Curves

    return Curves(length.tau, network.p, length.k)


def to_theta(c) -> np.ndarray:
    p = np.clip(c.p, 1e-6, 1 - 1e-6)
    return np.stack([np.log(np.maximum(c.tau, 1e-9)), np.log(p / (1 - p)), np.log(c.k)], 1)


def from_theta(t: np.ndarray):
    from clear_learn.curves import Curves

    return Curves(np.exp(t[:, 0]), 1 / (1 + np.exp(-t[:, 1])), np.exp(t[:, 2]))


def frozen_embedding_p(records: list[dict], test: list[dict], alpha: float = 1.0
                       ) -> np.ndarray:
    """Each ``test`` query's p, predicted without its family: ridge regression from frozen
    all-MiniLM-L6-v2 embeddings (mean-pooled, unit length) and the log text length onto the
    per-query fitted logit p of ``records`` of the other families."""
    import torch
    from sklearn.linear_model import Ridge
    from transformers import AutoModel, AutoTokenizer

    from clear_learn.predictor.baselines import _targets
    from clear_learn.predictor.model import DEFAULT_BASE, resolve_base_model

    path = resolve_base_model(DEFAULT_BASE)
    tok, enc = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path).eval()
    texts = [r["text"] for r in records]
    parts = []
    with torch.no_grad():
        for i in range(0, len(texts), 32):
            b = tok(texts[i:i + 32], padding=True, truncation=True, max_length=128,
                    return_tensors="pt")
            m = b["attention_mask"].unsqueeze(-1).float()
            e = (enc(**b).last_hidden_state * m).sum(1) / m.sum(1)
            parts.append(torch.nn.functional.normalize(e, dim=-1).numpy())
    X = np.hstack([np.concatenate(parts), np.log([[len(t)] for t in texts])])
    y = _targets(records)[0][:, 2]  # logit p of each query's own fit
    fam = np.array([r["task"] for r in records])
    row = {str(r["id"]): i for i, r in enumerate(records)}
    out = np.empty(len(test))
    for f in sorted({r["task"] for r in test}):
        which = [j for j, r in enumerate(test) if r["task"] == f]
        z = Ridge(alpha=alpha).fit(X[fam != f], y[fam != f]).predict(
            X[[row[str(test[j]["id"])] for j in which]])
        out[which] = 1 / (1 + np.exp(-z))
    return out


def main(argv=None) -> int:
    args = measure_dir_arg(argv, __doc__, more_folds=True)
    out, splits = args.measure_dir, args.splits
    from clear_learn.allocation import allocate
    from clear_learn.curves import Curves
    from clear_learn.evaluation import evaluate_policies
    from clear_learn.predictor.batch_context import BatchContext, neighbour_mean
    from clear_learn.predictor.calibration import tau_spread_by_group
    from clear_learn.predictor.config import Stages

    records, test, learned, slopes = unseen_family_curves(out)
    raw = {"learned": learned, "tfidf": unseen_family_curves(out, TFIDF)[2],
           "length": unseen_family_curves(out, LENGTH)[2]}
    raw["blend learned+length"] = from_theta((to_theta(learned) + to_theta(raw["length"])) / 2)
    raw["length tau and k, learned p"] = length_tau_k(learned, raw["length"])
    raw["length tau and k, frozen-embedding p"] = Curves(
        raw["length"].tau, frozen_embedding_p(records, test), raw["length"].k)
    seeds = [learned] + [fold_curves_of(d, LEARNED, test) for d in args.more_folds]
    for i, c in enumerate(seeds[1:], 1):
        raw[f"length tau and k, learned p of --more-folds {i}"] = length_tau_k(c, raw["length"])
    if len(seeds) > 1:  # the encoders' mean logit p: an ensemble of the seeds' folds
        mean = from_theta(np.mean([to_theta(c) for c in seeds], axis=0))
        raw[f"length tau and k, mean learned p of {len(seeds)} seeds"] = length_tau_k(
            mean, raw["length"])
    fam = np.array([r["task"] for r in test])
    texts = [r["text"] for r in test]
    caps = np.array([int(r["max_new_tokens"]) for r in test])
    ctx = {f: BatchContext.from_dict(d) for f, d in slopes.items()}
    per_query = [ctx[f] for f in fam]  # each query's own fold's slopes
    doubled = [replace(c, p_slope=2 * c.p_slope) for c in per_query]
    stages = Stages(batch_context=BatchContext(0.0, 0.0))  # the shipped neighbourhood
    names = list(raw) + ["learned, averaged among look-alikes", "learned, p slope x2"]

    def shipped(name: str, idx: np.ndarray, spread=None):
        """``name``'s curves of ``test[idx]`` with ``idx`` as one batch: batch context, then
        (``spread``, one per query) the threshold spread; before it without one."""
        sub = [texts[i] for i in idx]
        c = raw["learned" if name not in raw else name][idx]
        if name == "learned, averaged among look-alikes":
            c = from_theta(neighbour_mean(sub, to_theta(c)))
        slopes = doubled if "x2" in name else per_query
        return postprocess(c, sub, stages, contexts=[slopes[i] for i in idx], spreads=spread,
                           until=BATCH_CONTEXT if spread is None else None)

    every = np.arange(len(test))
    spreads = {}
    for name in names:  # each family's spread fitted on the others, as cross_family.py does
        per = tau_spread_by_group(shipped(name, every), test, fam)
        spreads[name] = np.array([per[f] for f in fam])

    def final(name: str, idx: np.ndarray):
        return shipped(name, idx, spreads[name][idx])

    def per_batch(name: str):
        cache: dict[int, object] = {}

        def f(idx: np.ndarray, total: int) -> np.ndarray:
            if int(idx[0]) not in cache:
                cache[int(idx[0])] = final(name, idx)
            return allocate(cache[int(idx[0])], int(total), max_tokens=caps[idx]).budgets
        return f

    pooled = evaluate_policies(test, {n: final(n, every) for n in names}, BUDGETS, seed=0,
                               splits=splits)
    batches = [np.where(fam == f)[0] for f in sorted(set(fam))]
    alone = evaluate_policies(test, {n: per_batch(n) for n in names}, BUDGETS, seed=0,
                              batches=batches, splits=splits)
    print(f"{len(test)} unseen-family queries of {out}, {len(batches)} families; mean gap "
          f"closed over 48-256 tokens/query, ± its sd over {splits} rollout halvings (at 384)")
    print("| curves | (a) one batch | (b) each family its own batch |")
    print("|---|---:|---:|")
    for n in names:
        cells = []
        for rep in (pooled, alone):
            g = [r["gap_closed"] for r in rep.rows[n]]
            sd = (np.std(np.mean([r["gap_closed_by_split"] for r in rep.rows[n][:-1]], 0),
                          ddof=1) if splits > 1 else float("nan"))
            sd384 = rep.rows[n][-1].get("gap_closed_sd", float("nan"))
            cells.append(f"{np.mean(g[:-1]):.3f} ±{sd:.3f} ({g[-1]:+.2f} ±{sd384:.2f})")
        print(f"| {n} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
