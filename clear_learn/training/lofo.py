"""Leave-one-family-out folds: every query's curve from a model that never saw its family.

A fold (:class:`Fold`, made by :func:`make_folds`) holds out one family, or one of a few fixed,
seeded groups of families; it trains the recipe without them (and without its validation
family, which early stopping watches: an unseen family too), optionally on a seeded subsample
of the remaining families (a learning curve over the number of training families), and saves
the held-out families' curves: the network's own
(:meth:`ClearPredictor.predict_raw`) and the TF-IDF and length baselines fitted on the same
training queries (:data:`POLICIES`). Every post-network stage acts afterwards, once, on the
pooled curves (:func:`pooled_curves`, which calls :func:`~clear_learn.predictor.pipeline.
policy_curves`): so changing the batch context or the spread re-pools without training.
``train/cross_family.py`` is the command line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Sequence

import numpy as np

from ..atomic import write_text
from ..predictor.pipeline import LEARNED, LEARNED_RAW, LENGTH, TFIDF
from .recipe import train_predictor

__all__ = ["POLICIES", "FOLD_CONTENTS", "POOLING_ONLY", "Fold", "make_folds", "val_family",
           "unsolved_families", "folds_of", "fold_contexts", "fold_curves", "median_epochs",
           "check_same_config", "fold_design", "load_fold", "pool_stages", "pooled_curves",
           "fit_spreads", "PooledFolds", "family_batches_report", "run_folds",
           "evaluate_folds", "load_run", "saved_folds", "held_out", "ensemble_curves"]

POLICIES = (LEARNED, TFIDF, LENGTH)  # saved per fold, before every post-network stage
# what the saved folds hold; folds written before it (clear-learned saved by predict() with the
# fold predictor's length line, batch context and spread, then pooled with them again) are
# refused by check_same_config
FOLD_CONTENTS = "network curves: clear-learned = ClearPredictor.predict_raw"
POOLING_ONLY = ("batch_context", "calibration", "evaluate")  # sections the folds do not use


@dataclass(frozen=True)
class Fold:
    """One fold: ``test`` families held out, ``val`` the early-stopping family (None: random
    training queries), ``train`` the families that train (None: every other one)."""

    name: str
    test: tuple[str, ...]
    val: str | None
    train: tuple[str, ...] | None = None

    def trains_on(self, task: str) -> bool:
        """Whether queries of ``task`` train this fold's model."""
        if self.train is not None:
            return task in self.train
        return task not in self.test and task != self.val


def val_family(candidates: Sequence[str], unsolved: Collection[str] = ()) -> str | None:
    """The fold's early-stopping family: the first of ``candidates`` (in the order given) that
    is solved at least once. A never-solved family cannot stop training: its loss only falls
    as ``p`` falls towards 0 (a fold validated on one ran 26 epochs, the others 6-10)."""
    return next((t for t in candidates if t not in unsolved), None)


def unsolved_families(records: list[dict]) -> set[str]:
    """The tasks of ``records`` without one correct rollout."""
    solved = {r["task"] for r in records if any(x.get("correct") for x in r["rollouts"])}
    return {r["task"] for r in records} - solved


def make_folds(tasks: list[str], *, groups: int | None = None, group_seed: int = 0,
               random_val: bool = False, train_families: int | None = None,
               unsolved: Collection[str] = ()) -> list[Fold]:
    """The study's folds over ``tasks``: one per family (``groups`` None), else ``groups``
    groups of near-equal size drawn by a permutation seeded by ``group_seed``, each held out
    once. Each is validated on the next family in sorted order (groups: the first family,
    sorted, of the next group, then of the one after) that is not in ``unsolved`` (families
    never solved: :func:`unsolved_families`); ``random_val``: on random training queries.
    ``train_families``: each fold trains on that many of its other families, drawn with seed
    ``(group_seed, fold index)`` (the same draw for every training seed)."""
    tasks = sorted(tasks)
    if groups is None:
        parts = [[t] for t in tasks]
    else:
        if not 2 <= groups <= len(tasks):
            raise ValueError(f"groups must be between 2 and the {len(tasks)} families, got "
                             f"{groups}")
        order = np.random.default_rng(group_seed).permutation(len(tasks))
        parts = [sorted(tasks[i] for i in part) for part in np.array_split(order, groups)]
    n = len(parts)
    folds = [Fold(part[0] if groups is None else f"group-{g}", tuple(part),
                  None if random_val else val_family(
                      [t for h in range(g + 1, g + n) for t in parts[h % n]], unsolved))
             for g, part in enumerate(parts)]
    for fold in folds:
        if not any(fold.trains_on(t) for t in tasks):
            raise ValueError(f"fold {fold.name} holds out {list(fold.test)} and validates on "
                             f"{fold.val}: no family is left to train on")
    if train_families is None:
        return folds
    out = []
    for i, fold in enumerate(folds):
        rest = [t for t in tasks if fold.trains_on(t)]
        if not 1 <= train_families <= len(rest):
            raise ValueError(f"train_families must be between 1 and {len(rest)} (fold "
                             f"{fold.name}), got {train_families}")
        pick = np.random.default_rng([group_seed, i]).choice(len(rest), train_families,
                                                             replace=False)
        out.append(Fold(fold.name, fold.test, fold.val, tuple(sorted(rest[j] for j in pick))))
    return out


def folds_of(records: list[dict], **design) -> list[Fold]:
    """:func:`make_folds` over the tasks of ``records``, passing over the families they never
    solve for validation; ``design``: ``make_folds``'s keywords (groups, seeds, ...)."""
    return make_folds(sorted({r["task"] for r in records}), unsolved=unsolved_families(records),
                      **design)


def fold_contexts(cfg: dict, records: list[dict], folds: list[Fold]) -> dict | None:
    """``{family: BatchContext}``: each held-out family's batch context with the slopes of
    its own fold's training families; None when the config has no batch context."""
    from ..predictor.batch_context import within_task_slopes
    from .recipe import context_settings

    settings = context_settings(cfg)
    if settings is None:
        return None
    ctxs = {}
    for fold in folds:
        train = [r for r in records if fold.trains_on(r["task"])]
        if not train:
            return None
        ctx = within_task_slopes(train, **settings)
        ctxs.update({fam: ctx for fam in fold.test})
    return ctxs


def fold_curves(cfg: dict, fold: Fold) -> tuple[dict[str, list[dict]], dict]:
    """Out-of-family curves of one fold, ``{policy: [{id, tau, p, k}, ...]}``, and the fold's
    training metrics (``best_epochs``: chosen by validation on an unseen family)."""
    from ..predictor.baselines import LengthCurvePredictor, TfidfCurvePredictor

    cfg = json.loads(json.dumps(cfg))  # a private copy
    cfg["data"].update(split="task", test_tasks=list(fold.test),
                       val_tasks=[fold.val] if fold.val else [],
                       train_tasks=list(fold.train or []))
    cfg["run_dir"] = str(Path(cfg["run_dir"]) / "folds" / fold.name)
    pred, dm, metrics = train_predictor(cfg)
    train, test = dm.split_records("train"), dm.split_records("test")
    texts = [r["text"] for r in test]
    curves = {LEARNED: pred.predict_raw(texts),  # the pooling adds every stage once
              TFIDF: TfidfCurvePredictor().fit(train).predict(texts),
              LENGTH: LengthCurvePredictor().fit(train).predict(texts)}
    print(f"fold {fold.name}: {len(train)} train, {len(test)} test, {metrics}")
    return {name: [{"id": r["id"], "tau": float(t), "p": float(q), "k": float(k)}
                   for r, t, q, k in zip(test, c.tau, c.p, c.k)]
            for name, c in curves.items()}, metrics


def median_epochs(fold_epochs: dict[str, int]) -> int:
    """The folds' median best epoch count, rounded up: the epochs to ship for unseen traffic."""
    return int(np.ceil(np.median(list(fold_epochs.values()))))


def check_same_config(out: Path, cfg: dict, random_val: bool, folds: dict | None = None
                      ) -> None:
    """Record the run's config in ``OUT/config.json``; refuse to mix folds of another one
    (the sections in ``POOLING_ONLY`` act after the folds, so they may differ; a null setting
    counts as absent). ``folds``:
    how the folds were drawn (groups, seeds, training families), recorded with it."""
    want = {"config": {k: v for k, v in cfg.items() if k not in POOLING_ONLY},
            "random_val": bool(random_val), "folds": FOLD_CONTENTS}
    if folds:
        want["fold_design"] = folds
    path = out / "config.json"
    if path.is_file():
        have = json.loads(path.read_text())
        if have.get("folds") != FOLD_CONTENTS:
            raise SystemExit(f"{out} holds folds written before the fix of their contents "
                             "(their clear-learned curves already had the batch context and "
                             "spread that pooling adds again): pass another --out, or delete "
                             "it to start over")
        if _set_only(_no_speed(have)) != _set_only(_no_speed(json.loads(json.dumps(want)))):
            raise SystemExit(f"{out} holds folds of another config ({path}): pass another "
                             "--out, or delete it to start over")
        return
    out.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(want, indent=1))


#: settings that change how fast a fold trains, not what it learns
SPEED_ONLY = ("threads",)


def _no_speed(recorded: dict) -> dict:
    """A recorded ``config.json`` without its :data:`SPEED_ONLY` settings."""
    return {**recorded, "config": {k: v for k, v in recorded.get("config", {}).items()
                                   if k not in SPEED_ONLY}}


def _set_only(d):
    """``d`` without its null settings, at every depth: an option added later with a null
    default (off) matches folds recorded before it existed."""
    if isinstance(d, dict):
        return {k: _set_only(v) for k, v in d.items() if v is not None}
    return d


def fold_design(fold: Fold) -> dict:
    """What a saved fold records of how it was trained: its validation and training families."""
    return {"val": fold.val, "train": None if fold.train is None else list(fold.train)}


def load_fold(path: Path, ids: set[str], fold: Fold) -> dict[str, list[dict]] | None:
    """A saved fold's curves if it covers exactly its held-out queries ``ids`` and its
    metrics file records ``fold``'s validation and training families (else the data or the
    fold design has changed since it was written, and it is trained again)."""
    if not path.is_file():
        return None
    mpath = path.with_suffix(".metrics.json")
    have = json.loads(mpath.read_text()) if mpath.is_file() else {}
    if {k: have.get(k, "unrecorded") for k in ("val", "train")} != fold_design(fold):
        print(f"{path}: written for another validation or training set of families "
              f"({have.get('val', 'unrecorded')}, not {fold.val}); training it again")
        return None
    rows = [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
    got = {name: [r for r in rows if r["policy"] == name] for name in POLICIES}
    if any({str(r["id"]) for r in got[name]} != ids for name in POLICIES):
        print(f"{path}: written for other queries of this fold; training it again")
        return None
    return got


def pool_stages(cfg: dict, contexts: dict | None):
    """The :class:`~clear_learn.predictor.config.Stages` the pooled folds go through: the
    config's spread, and (for its neighbourhood) a fold's batch context."""
    from ..predictor.config import Stages
    from .recipe import spread_from_config

    return Stages(batch_context=next(iter(contexts.values())) if contexts else None,
                  tau_spread=spread_from_config(cfg))


def pooled_curves(curves: dict, test: list[dict], idx: np.ndarray, stages,
                  contexts: dict | None, spreads: dict | None = None) -> dict:
    """The policies' curves of the queries ``test[idx]`` as a router would see them with
    ``idx`` as one batch: :func:`~clear_learn.predictor.pipeline.policy_curves` with each
    query's own fold's batch context and (``spreads``: ``{policy: {family: spread}}``) its
    family's spread; without ``spreads``, none (the curves the spreads are fitted on)."""
    from ..predictor.pipeline import policy_curves

    sub = [test[i] for i in idx]
    texts = [r["text"] for r in sub]
    per_query = [contexts[r["task"]] for r in sub] if contexts else None
    if spreads is None:
        spread = {name: 0.0 for name in POLICIES}
    else:
        spread = {name: np.array([per[r["task"]] for r in sub]) for name, per in
                  spreads.items()}
    return policy_curves(curves[LEARNED][idx], {TFIDF: curves[TFIDF][idx],
                                                LENGTH: curves[LENGTH][idx]},
                         texts, stages, contexts=per_query, spreads=spread)


def fit_spreads(test: list[dict], curves: dict) -> dict:
    """``{"per_family": {policy: {family: spread}}, "ship": spread}``: for every policy but
    ``clear-learned-raw``, each family's threshold spread fitted on the likelihood of the
    *other* families' ``curves``; ``ship`` is the learned curves' spread fitted on every
    family (the value to export, whatever the config's ``calibration.tau_spread``)."""
    from ..predictor.calibration import fit_tau_spread, tau_spread_by_group

    fam = [r["task"] for r in test]
    per_family = {name: tau_spread_by_group(c, test, fam) for name, c in curves.items()
                  if name != LEARNED_RAW}
    return {"per_family": per_family, "ship": fit_tau_spread(curves[LEARNED], test)}


class PooledFolds:
    """The folds' pooled held-out curves as a router would see them, batch by batch: each
    batch's curves through the config's stages with that batch as the batch context's batch
    (each query's own fold's context slopes, each family's spread fitted on the other
    families: :func:`fit_spreads`), cached per batch; :meth:`clear` allocates by them."""

    def __init__(self, cfg: dict, records: list[dict], folds: list[Fold], curves: dict):
        self.test = held_out(records, folds)
        self.curves = curves
        self.contexts = fold_contexts(cfg, records, folds)
        self.stages = pool_stages(cfg, self.contexts)
        every = np.arange(len(self.test))
        self.spreads = fit_spreads(self.test, pooled_curves(curves, self.test, every,
                                                            self.stages, self.contexts))
        self.caps = np.array([int(r["max_new_tokens"]) for r in self.test])
        self._cache: dict[bytes, dict] = {}

    def batch(self, idx) -> dict:
        """``{policy: Curves}`` of the queries ``test[idx]`` allocated as one batch."""
        idx = np.asarray(idx)
        key = idx.tobytes()
        if key not in self._cache:
            self._cache[key] = pooled_curves(self.curves, self.test, idx, self.stages,
                                             self.contexts, self.spreads["per_family"])
        return self._cache[key]

    def clear(self, name: str):
        """CLEAR on policy ``name``'s curves of each batch, a policy for
        :func:`~clear_learn.evaluation.evaluate_policies`."""
        from ..allocation import allocate

        return lambda idx, total: allocate(self.batch(idx)[name], int(total),
                                           max_tokens=self.caps[idx]).budgets


def family_batches_report(pool: PooledFolds, budgets, seed: int, splits: int = 1):
    """Every family allocated as its own batch (batch context within it), accuracies pooled
    over the families: what a router sees when unseen traffic arrives one kind at a time."""
    from ..evaluation import evaluate_policies

    fam = np.array([r["task"] for r in pool.test])
    batches = [np.where(fam == f)[0] for f in sorted(set(fam))]
    names = list(pool.batch(batches[0]))
    return evaluate_policies(pool.test, {n: pool.clear(n) for n in names}, budgets,
                             seed=seed, batches=batches, splits=splits)


def run_folds(cfg: dict, records: list[dict], folds: list[Fold], out: Path
              ) -> tuple[dict, dict[str, int]]:
    """Every fold's held-out curves, trained where ``out/folds/NAME.jsonl`` does not already
    hold them (each written as it finishes, so an interrupted study resumes). Returns
    ``({policy: Curves}`` of the held-out queries in ``records`` order, ``{fold: best
    epochs})``."""
    from ..curves import Curves
    from ..rollouts import write_jsonl

    by_id: dict[str, dict[str, dict]] = {name: {} for name in POLICIES}
    fold_epochs: dict[str, int] = {}
    for fold in folds:
        path = out / "folds" / f"{fold.name}.jsonl"
        mpath = path.with_suffix(".metrics.json")
        ids = {str(r["id"]) for r in records if r["task"] in set(fold.test)}
        got = load_fold(path, ids, fold)
        if got is not None:
            print(f"fold {fold.name}: reusing {path}")
        else:
            got, metrics = fold_curves(cfg, fold)
            mpath.parent.mkdir(parents=True, exist_ok=True)
            write_text(mpath, json.dumps({**metrics, **fold_design(fold)}) + "\n")
            write_jsonl([{"policy": name, **r} for name, rs in got.items() for r in rs], path)
        if mpath.is_file():
            fold_epochs[fold.name] = int(json.loads(mpath.read_text())["best_epochs"])
        for name in POLICIES:
            by_id[name].update({str(r["id"]): r for r in got[name]})
    test = held_out(records, folds)
    return {name: Curves.from_records([by_id[name][str(r["id"])] for r in test])
            for name in POLICIES}, fold_epochs


def load_run(out: Path) -> tuple[dict, list[dict], list[Fold], dict]:
    """A ``train/cross_family.py`` run folder read back: ``(cfg, records, folds, curves)``,
    the config as recorded in ``out/config.json`` with the pooling sections
    (``POOLING_ONLY``) of ``configs/default.yaml``, the folds of its recorded design, their
    curves (:func:`run_folds`: a missing fold is trained)."""
    from ..predictor.data import load_records
    from .recipe import DEFAULT_CONFIG, load_config

    saved = json.loads((out / "config.json").read_text())
    cfg = {**load_config(DEFAULT_CONFIG), **saved["config"]}
    records = load_records(cfg["data"]["data"])
    folds = saved_folds(out, records)
    return cfg, records, folds, run_folds(cfg, records, folds, out)[0]


def saved_folds(out: Path, records: list[dict]) -> list[Fold]:
    """The folds over ``records`` of the design recorded in ``out/config.json``."""
    saved = json.loads((out / "config.json").read_text())
    design = saved.get("fold_design") or {}
    return folds_of(records, groups=design.get("groups"),
                    group_seed=design.get("group_seed", 0), random_val=saved["random_val"],
                    train_families=design.get("train_families"))


def held_out(records: list[dict], folds: list[Fold]) -> list[dict]:
    """The records the folds hold out, in ``records`` order."""
    held = {fam for fold in folds for fam in fold.test}
    return [r for r in records if r["task"] in held]


def evaluate_folds(cfg: dict, records: list[dict], folds: list[Fold], curves: dict):
    """The pooled held-out ``curves`` (:func:`run_folds`) through the config's post-network
    stages, evaluated as one batch and with each family its own batch. Returns ``(report,
    family_batches_report, spreads)`` (:func:`fit_spreads`); both reports carry the NLL per
    rollout in ``meta``. Only the ``POOLING_ONLY`` sections of ``cfg`` matter here, so an
    ablation of the stages re-evaluates the same folds."""
    from ..predictor.report import evaluate_predictors
    from .recipe import eval_splits

    pool = PooledFolds(cfg, records, folds, curves)
    pooled = pool.batch(np.arange(len(pool.test)))
    budgets = cfg.get("evaluate", {}).get("budgets_per_query", [64, 128, 256, 512])
    seed, splits = int(cfg.get("seed", 0)), eval_splits(cfg)
    report, nll = evaluate_predictors(pool.test, pooled, budgets, seed=seed, splits=splits)
    by_family = family_batches_report(pool, budgets, seed, splits)
    by_family.meta["nll_per_rollout"] = nll
    return report, by_family, pool.spreads


def ensemble_curves(runs: list[dict]) -> dict:
    """Several runs' ``{policy: Curves}`` of the same folds as one: the learned curves
    averaged (geometric means of tau and k, the mean of logit p; an ensemble over training
    seeds), the baselines the first run's (fitted on the same training queries, they do not
    depend on the seed)."""
    from ..curves import Curves

    if len(runs) == 1:
        return runs[0]
    nets = [c[LEARNED] for c in runs]
    p = np.clip(np.array([c.p for c in nets]), 1e-6, 1 - 1e-6)
    mean = Curves(np.exp(np.mean([np.log(c.tau) for c in nets], 0)),
                  1 / (1 + np.exp(-np.mean(np.log(p / (1 - p)), 0))),
                  np.exp(np.mean([np.log(c.k) for c in nets], 0)))
    return {**runs[0], LEARNED: mean}
