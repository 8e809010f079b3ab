"""The model card (``README.md``) of an exported predictor, generated from its config.

Every figure and every claim about how well it allocates comes from ``config.metrics``, the
measurements recorded at export (``train/train.py``'s held-out evaluation); where none were
recorded the card says so instead of asserting anything.
"""

from __future__ import annotations

import math

from .config import PredictorConfig
from .pipeline import LEARNED

__all__ = ["model_card"]

UNIFORM, ORACLE = "uniform", "oracle"  # the reference rows of the evaluation tables
MIN_GAP = 0.02  # as clear_learn.evaluation.mean_gap_closed: below it the share is noise


def model_card(cfg: PredictorConfig) -> str:
    """A README for an exported predictor from its config."""
    g, m, t = cfg.generator, cfg.metrics, cfg.training
    lora = cfg.encoder.lora
    lines = [
        "# clear-learn predictor",
        "",
        "Predicts, from a query's text alone, its accuracy-versus-budget curve (a shifted surge:",
        "threshold tau, saturation p, surge rate k) for one generating model, and feeds the curves",
        "to the CLEAR shadow-price allocator (`ClearPredictor.allocate`).",
        "",
        "## Use",
        "",
        "```python",
        "from clear_learn import ClearPredictor",
        "pred = ClearPredictor.from_pretrained(PATH)   # offline, CPU",
        "res = pred.allocate(texts, total_budget=256 * len(texts))",
        "res.budgets  # max_new_tokens per query",
        "```",
        "",
        "## What its curves belong to",
        "",
        f"- generating model: {g.model}",
        f"- tokenizer counting the tokens: {g.tokenizer or '?'}",
        f"- sampling: temperature {_or(g.temperature)}, top_p {_or(g.top_p)}, "
        f"{_or(g.n)} samples per problem",
        f"- generation cap (max_new_tokens): {g.max_new_tokens}; allocations default to "
        "it and nothing is known beyond it",
        "",
        "Curves are specific to that model, its tokenizer, its sampling settings and its cap. For",
        "another model, recalibrate or train on rollouts of your own model (`clear-learn rollouts`,",
        "then `clear-learn recalibrate` or `python train/train.py`).",
        "",
        "## Model",
        "",
        f"- base encoder: {cfg.encoder.base_model} (weights: {cfg.encoder.weights}), max "
        f"{cfg.encoder.max_length} text tokens"
        + (f", its first {cfg.encoder.layers} layers" if cfg.encoder.layers is not None
           else ""),
        "- LoRA: " + (f"r {lora.r}, alpha {lora.alpha}, dropout {lora.dropout}, targets "
                      f"{list(lora.targets)}" if lora else "none"),
        f"- head: mean pooling"
        f"{' + log text length' if cfg.head.length_feature else ''}"
        f"{' + surface features' if cfg.head.surface_features else ''}"
        f" -> {cfg.head.hidden} -> 3 (tau, p and k)",
        *_range_lines(cfg),
        _context_line(cfg),
        f"- threshold spread: {_spread_line(cfg.stages.tau_spread)}",
        "",
        "## Training data and metrics",
        "",
    ]
    if t is None:
        lines.append("- training data: not recorded (an export of format 1)")
    else:
        data = " + ".join(t.data) if isinstance(t.data, tuple) else t.data
        lines += [f"- data: {data}",
                  f"- split: {t.split}, {t.n_train} training queries"
                  + (" (their texts recorded by hash: `clear-learn evaluate` warns when "
                     "evaluated on them)" if t.text_sha256 is not None else ""),
                  f"- task families trained on: {', '.join(t.tasks) or '?'}"]
        if t.runaway is not None:
            lines.append(f"- loss: the consistent likelihood, an unsolvable response running "
                         f"to the cap at rate {t.runaway:g} (docs/METHOD.md)")
        if t.init_from:
            lines.append(f"- started from the predictor {t.init_from} (recalibration)")
        if t.refit_all:
            epochs = m.get("refit_epochs", m.get("best_epochs", "?"))
            lines.append(f"- these weights: the same recipe refitted on every query for "
                         f"{epochs} epochs; the metrics below are the held-out run's")
    lines += _metric_lines({k: v for k, v in m.items() if k != "unseen_families"})
    lines += _unseen_lines(m.get("unseen_families"))
    lines += ["", "## Intended use", "",
              "Routing token budgets across batches of reasoning queries for the model above. "
              "Not a correctness predictor for any single query; scored only on the task "
              "families listed in its training data. Pass each query's own problem text, as "
              "in training (no system prompt, few-shot examples or retrieved context): the "
              "encoder reads only the first max_length tokens.", "",
              _measured_claim(m, t), ""]
    return "\n".join(lines)


def _unseen_lines(u: dict | None) -> list[str]:
    """The card's section on task families the recipe never saw (``train/study.py``)."""
    if not u:
        return []
    seeds = u.get("seeds") or []
    columns = list(next(iter(u["gap_closed"].values())))  # learned and the baselines
    lines = ["", "## On task families it never saw", "",
             f"The same recipe (study variant `{u.get('variant')}`), measured by "
             f"`python train/study.py` on {u.get('groups')} groups of task families, each held "
             f"out once, over {len(seeds)} training seed{'s' * (len(seeds) != 1)} (data: "
             f"{u.get('data')}): the share of the uniform-to-oracle gap closed"
             + (", mean +- sd over seeds." if len(seeds) > 1 else "."), "",
             "| protocol | " + " | ".join(columns) + " |", "|---|" + "---:|" * len(columns)]
    for proto, row in u["gap_closed"].items():
        lines.append(f"| {proto} | " + " | ".join(
            f"{m:.2f}" + ("" if s is None else f" +- {s:.2f}") for m, s in row.values()) + " |")
    return lines


def _or(v) -> str:
    return "?" if v is None else str(v)


def _measured_claim(m: dict, t=None) -> str:
    """What the recorded held-out figures say about where to trust the allocations
    (``t``: the training record, which says what was held out and what the weights are)."""
    gaps, budgets = m.get("gap_closed", {}).get(LEARNED), m.get("budgets_per_query")
    if not gaps or not budgets:
        return ("No allocation figures were recorded at export; measure them before relying "
                "on it (`python train/measure.py`, results in docs/RESULTS.md).")
    acc = m.get("mean_accuracy", {})
    uni, ora, own = acc.get(UNIFORM, []), acc.get(ORACLE, []), acc.get(LEARNED, [])
    rows = list(zip(budgets, gaps, uni or [None] * len(budgets), ora or [None] * len(budgets),
                    own or [None] * len(budgets)))
    # the share of the gap is noise where the oracle barely beats uniform (as in the means)
    shown = [(b, x) for b, x, u, o, _ in rows if x is not None and math.isfinite(x)
             and (u is None or o is None or o - u >= MIN_GAP)]
    noisy = [b for b, x, u, o, _ in rows if u is not None and o is not None and o - u < MIN_GAP]
    worse = [b for b, _, u, _, a in rows if a is not None and u is not None and a < u]
    split = (getattr(t, "held_out_split", None) or getattr(t, "split", None)) if t else None
    where = {"task": "families it never saw", "query": "families seen in training"}.get(
        split, "see the training section")
    whose = ("the held-out run's curves (these weights are the same recipe refitted on every "
             "query)" if t is not None and getattr(t, "refit_all", False) else "these curves")
    text = (f"On its {m.get('test_queries', '?')} held-out queries ({where}), CLEAR on "
            f"{whose} closed "
            + ", ".join(f"{x:.2f} at {b:g}" for b, x in shown)
            + " tokens per query of the gap between an even split and CLEAR on oracle curves.")
    if noisy:
        text += (" At " + ", ".join(f"{b:g}" for b in noisy) + " tokens per query even oracle "
                 f"curves gain less than {MIN_GAP} mean accuracy over the even split: expect "
                 "its accuracy there.")
    if worse:
        text += (" It fell below the even split at " + ", ".join(f"{b:g}" for b in worse)
                 + " tokens per query: with budgets there, split evenly.")
    return text + (" Families it never saw are harder: see the leave-one-family-out figures "
                   "(`train/cross_family.py`, docs/RESULTS.md).")


def _context_line(cfg: PredictorConfig) -> str:
    ctx = cfg.stages.batch_context
    if ctx is None:
        return "- batch context: none (each text's curve depends on that text alone)"
    pooled = (f"each curve moves {ctx.pool:g} of the way towards the similarity-weighted mean "
              "curve of itself and its look-alikes (log tau, logit p, log k); then "
              if ctx.pool > 0 else "")
    return (f"- batch context: {pooled}a text d = log(len) above the mean of its look-alikes in "
            f"the same call (its {ctx.neighbours} most similar texts by TF-IDF cosine"
            + (f", those >= {ctx.min_similarity}" if ctx.min_similarity > 0 else "")
            + f") gets tau x exp({ctx.tau_slope:.3f} d) and "
            f"logit p {ctx.p_slope:+.3f} d (within-family slopes of its training data"
            + (f"; |d| clipped to {ctx.max_offset:.2f}, the largest within a training "
               "family" if ctx.max_offset is not None else "")
            + "); `predict(texts, use_batch_context=False)` turns it off")


def _range_lines(cfg: PredictorConfig) -> list[str]:
    """Card lines for the text lengths it was trained on (no extrapolation beyond them)."""
    toks = cfg.head.n_tokens_range
    if toks is None:
        return []
    return [f"- trained on texts of {toks[0]:.0f}-{toks[1]:.0f} tokens: a longer (or shorter) "
            "text is read as the nearest trained length (no extrapolation)"]


def _spread_line(spread: float) -> str:
    if not spread:
        return "none (curves as predicted)"
    return (f"curves widened by a threshold uncertainty of sd {spread:g} x tau "
            "(calibration.tau_spread of the training config); "
            "`predict(texts, tau_spread=0)` turns it off")


def _metric_lines(m: dict) -> list[str]:
    """Card lines for training metrics: scalars and per-policy values as bullets, per-budget
    figures (``{policy: [value per budget]}``) as one table each."""
    budgets = m.get("budgets_per_query")

    def fmt(v, table: bool = False) -> str:
        if v is None:
            return "n/a"
        if isinstance(v, float):
            return f"{v:.3f}" if table else f"{v:.4g}"
        return str(v)

    lines, tables = [], []
    for key, v in m.items():
        if key == "budgets_per_query":
            continue
        per_budget = (isinstance(v, dict) and budgets and v
                      and all(isinstance(x, list) and len(x) == len(budgets) for x in v.values()))
        if per_budget:
            names = list(v)
            tables += ["", f"{key.replace('_', ' ')} on the held-out queries:", "",
                       "| tokens/query | " + " | ".join(names) + " |",
                       "|---:|" + "---:|" * len(names)]
            tables += [f"| {b} | " + " | ".join(fmt(v[n][j], True) for n in names) + " |"
                       for j, b in enumerate(budgets)]
        elif isinstance(v, dict):
            lines.append(f"- {key}: " + ", ".join(f"{a} {fmt(x)}" for a, x in v.items()))
        else:
            lines.append(f"- {key}: {fmt(v)}")
    return lines + tables
