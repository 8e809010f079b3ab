"""Rollout data for training the predictor: splits, tokenization (``datasets``), batching.

A batch holds dynamically padded ``input_ids``/``attention_mask`` and the queries' rollouts as
padded ``tokens``/``correct``/``cutoff``/``mask`` tensors with their caps ``cap``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import lightning as L
import numpy as np
import torch

from ..rollouts import read_rollouts, to_arrays
from .features import surface_features
from .model import DEFAULT_BASE, resolve_base_model

__all__ = ["split_records", "RolloutDataModule", "collate_rollouts", "load_records",
           "encode_texts"]


def _is_records(data) -> bool:
    """Whether ``data`` is a list of records (rather than names or paths of rollout files)."""
    return isinstance(data, (list, tuple)) and all(isinstance(d, dict) for d in data)


def load_records(data: str | Path | Sequence) -> list[dict]:
    """Records of ``default``/``benchmark`` (embedded data sets), a rollout file, a list of
    those (concatenated; an id may appear once), or a list of records as they are."""
    if _is_records(data):
        return list(data)
    if isinstance(data, (list, tuple)):
        records, seen = [], {}
        for source in data:
            for rec in load_records(source):
                if rec["id"] in seen:
                    raise ValueError(f"id {rec['id']!r} is in both {seen[rec['id']]!r} and "
                                     f"{source!r}: data sources must not overlap")
                seen[rec["id"]] = source
                records.append(rec)
        return records
    if str(data) in ("default", "benchmark"):
        from ..datasets import load_rollouts

        return load_rollouts(str(data))
    return read_rollouts(data)


def split_records(records: list[dict], *, split: str = "query",
                  test_tasks: Sequence[str] = (), val_tasks: Sequence[str] = (),
                  train_tasks: Sequence[str] = (),
                  val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0
                  ) -> tuple[list[int], list[int], list[int]]:
    """Indices of train, validation and test queries.

    ``split="query"``: random queries held out for validation and test (copies of one text
    always on the same side, as in the task split's random validation share). ``split="task"``: the
    queries of ``test_tasks`` are the test set (families never seen in training); validation
    is a random share of the rest, or, with ``val_tasks``, those families (so that early
    stopping selects for families the model has not seen either); ``train_tasks``, where
    given, are the only families that train (a learning curve over the number of training
    families). ``split="all"``: every query trains (no validation, no test).
    """
    rng = np.random.default_rng(seed)
    n = len(records)
    if train_tasks:
        if split != "task":
            raise ValueError(f"train_tasks needs split='task', got split={split!r}")
        known = {r["task"] for r in records}
        bad = set(train_tasks) - known
        if bad:
            raise ValueError(f"train_tasks not in the data: {sorted(bad)}")
        bad = set(train_tasks) & (set(test_tasks) | set(val_tasks))
        if bad:
            raise ValueError(f"train_tasks overlap test_tasks or val_tasks: {sorted(bad)}")
        keep = set(train_tasks) | set(test_tasks) | set(val_tasks)
        sub = [i for i, r in enumerate(records) if r["task"] in keep]
        tr, va, te = split_records([records[i] for i in sub], split=split,
                                   test_tasks=test_tasks, val_tasks=val_tasks,
                                   val_fraction=val_fraction, test_fraction=test_fraction,
                                   seed=seed)
        return tuple([sub[i] for i in part] for part in (tr, va, te))
    if split == "task" and val_tasks:
        overlap = set(val_tasks) & set(test_tasks)
        if overlap:
            raise ValueError(f"val_tasks and test_tasks overlap: {sorted(overlap)}")
        known = {r["task"] for r in records}
        missing = (set(val_tasks) | set(test_tasks)) - known
        if missing or not test_tasks:
            raise ValueError(f"split='task' needs test_tasks present in the data; missing: "
                             f"{sorted(missing)}")
        test = [i for i, r in enumerate(records) if r["task"] in set(test_tasks)]
        val = [i for i, r in enumerate(records) if r["task"] in set(val_tasks)]
        held = set(test) | set(val)
        return [i for i in range(n) if i not in held], val, test
    if split == "task":
        if not test_tasks:
            raise ValueError("split='task' needs test_tasks")
        known = {r["task"] for r in records}
        missing = set(test_tasks) - known
        if missing:
            raise ValueError(f"test_tasks not in the data: {sorted(missing)}")
        test = [i for i, r in enumerate(records) if r["task"] in set(test_tasks)]
        rest = np.array([i for i in range(n) if records[i]["task"] not in set(test_tasks)])
        rest = rest[rng.permutation(rest.size)]
        n_val = int(round(val_fraction * rest.size))
        val, train = _same_text_together(records, rest, [n_val])
        return train, val, test
    if split == "all":  # the final refit of a recipe already measured on a held-out split
        return list(range(n)), [], []
    if split != "query":
        raise ValueError(f"split must be 'query', 'task' or 'all', got {split!r}")
    order = rng.permutation(n)
    n_test = int(round(test_fraction * n))
    n_val = int(round(val_fraction * n))
    test, val, train = _same_text_together(records, order, [n_test, n_test + n_val])
    return train, val, test


def _same_text_together(records: list[dict], order: np.ndarray, cuts: list[int]
                        ) -> list[list[int]]:
    """``order`` cut at ``cuts`` into parts (each sorted), with every query placed in the part
    of the first query in ``order`` with its text: two copies of one text never straddle a
    split. Without copies, plain slices of ``order``."""
    part = np.searchsorted(np.asarray(cuts), np.arange(order.size), side="right")
    first: dict[str, int] = {}
    out: list[list[int]] = [[] for _ in range(len(cuts) + 1)]
    for pos, i in enumerate(order.tolist()):
        out[first.setdefault(records[i]["text"], int(part[pos]))].append(i)
    return [sorted(x) for x in out]


def encode_texts(tokenizer, texts: list[str], max_length: int) -> dict[str, list]:
    """Token ids truncated to ``max_length``, every text's untruncated length and its
    surface features."""
    full = tokenizer(texts, truncation=False, verbose=False)["input_ids"]
    ids = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    return {"input_ids": ids, "n_tokens": [len(x) for x in full],
            "surface": surface_features(texts).tolist()}


def collate_rollouts(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a list of examples (``input_ids``, rollout lists, ``cap``) into tensors."""
    L_max = max(len(r["input_ids"]) for r in rows)
    n_max = max(len(r["tokens"]) for r in rows)
    B = len(rows)
    ids = torch.full((B, L_max), pad_id, dtype=torch.long)
    att = torch.zeros((B, L_max), dtype=torch.long)
    tok = torch.zeros((B, n_max), dtype=torch.long)
    cor = torch.zeros((B, n_max), dtype=torch.bool)
    cut = torch.zeros((B, n_max), dtype=torch.bool)
    msk = torch.zeros((B, n_max), dtype=torch.bool)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        att[i, :n] = 1
        m = len(r["tokens"])
        tok[i, :m] = torch.tensor(r["tokens"])
        cor[i, :m] = torch.tensor(r["correct"])
        cut[i, :m] = torch.tensor(r["cutoff"])
        msk[i, :m] = True
    batch = {"input_ids": ids, "attention_mask": att, "tokens": tok, "correct": cor,
             "cutoff": cut, "mask": msk,
             "cap": torch.tensor([r["cap"] for r in rows], dtype=torch.float32),
             "n_tokens": torch.tensor([r.get("n_tokens", len(r["input_ids"])) for r in rows],
                                      dtype=torch.float32)}
    if "surface" in rows[0]:
        batch["surface"] = torch.tensor([r["surface"] for r in rows], dtype=torch.float32)
    if "target" in rows[0]:
        batch["target"] = torch.tensor([r["target"] for r in rows], dtype=torch.float32)
    return batch


class RolloutDataModule(L.LightningDataModule):
    """Train/validation/test splits of labeled rollouts, tokenized for the encoder.

    Parameters
    ----------
    data : ``default`` (the embedded real data set), ``benchmark``, a rollout file, or a list
        of those (trained on together).
    base_model : encoder whose tokenizer is used (``pkg:NAME`` or a directory).
    max_length : tokens kept of each query text.
    split, test_tasks, val_tasks, train_tasks, val_fraction, test_fraction, seed : see
        :func:`split_records`.
    regression_targets : also attach per-query fitted ``(log tau/M, log kM, logit p)``
        (fitted on each query's own rollouts) for the regression loss.
    """

    def __init__(self, data: str | list = "default", base_model: str = DEFAULT_BASE,
                 max_length: int = 128, batch_size: int = 32, split: str = "query",
                 test_tasks: Sequence[str] = (), val_tasks: Sequence[str] = (),
                 train_tasks: Sequence[str] = (), val_fraction: float = 0.15,
                 test_fraction: float = 0.15, seed: int = 0,
                 regression_targets: bool = False, num_workers: int = 0):
        super().__init__()
        self.save_hyperparameters(ignore=["data"] if _is_records(data) and data else None)
        self.data = data
        self.records: list[dict] | None = None
        self.splits: dict[str, list[int]] = {}

    def prepare_data(self) -> None:  # data is local; nothing to download
        pass

    def setup(self, stage: str | None = None) -> None:
        if self.records is not None:
            return
        from transformers import AutoTokenizer

        hp = self.hparams
        self.records = load_records(self.data)
        tr, va, te = split_records(self.records, split=hp.split, test_tasks=hp.test_tasks,
                                   val_tasks=hp.val_tasks, train_tasks=hp.train_tasks,
                                   val_fraction=hp.val_fraction,
                                   test_fraction=hp.test_fraction, seed=hp.seed)
        self.splits = {"train": tr, "val": va, "test": te}
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_base_model(hp.base_model),
                                                       local_files_only=True)
        self.pad_id = self.tokenizer.pad_token_id or 0
        self.datasets = {name: self._build(idx) for name, idx in self.splits.items()}

    def _build(self, idx: list[int]):
        import datasets

        recs = [self.records[i] for i in idx]
        arr = to_arrays(recs) if recs else None
        cols = {
            "text": [r["text"] for r in recs],
            "tokens": [arr.tokens[i][arr.mask[i]].tolist() for i in range(len(recs))],
            "correct": [arr.correct[i][arr.mask[i]].tolist() for i in range(len(recs))],
            "cutoff": [arr.cutoff[i][arr.mask[i]].tolist() for i in range(len(recs))],
            "cap": [int(r["max_new_tokens"]) for r in recs],
        }
        if self.hparams.regression_targets and recs:
            from ..fitting import fit_curves

            fit = fit_curves(arr).curves
            M = arr.max_new_tokens.astype(float)
            p = np.clip(fit.p, 1e-4, 1 - 1e-4)
            cols["target"] = np.stack([np.log(fit.tau / M + 1e-6), np.log(fit.k * M),
                                       np.log(p / (1 - p))], axis=1).tolist()
        ds = datasets.Dataset.from_dict(cols)
        tok, max_len = self.tokenizer, self.hparams.max_length
        return ds.map(lambda b: encode_texts(tok, b["text"], max_len),
                      batched=True, remove_columns=["text"])

    def _loader(self, name: str, shuffle: bool):
        from torch.utils.data import DataLoader

        return DataLoader(self.datasets[name], batch_size=self.hparams.batch_size,
                          shuffle=shuffle, num_workers=self.hparams.num_workers,
                          collate_fn=lambda rows: collate_rollouts(rows, self.pad_id))

    def train_dataloader(self):
        return self._loader("train", True)

    def val_dataloader(self):
        return self._loader("val", False)

    def test_dataloader(self):
        return self._loader("test", False)

    def median_curve(self) -> tuple[float, float, float]:
        """Median per-query fitted ``(tau / M, k M, p)`` of the training split."""
        from ..fitting import fit_curves

        arr = to_arrays(self.split_records("train"))
        fit = fit_curves(arr).curves
        M = arr.max_new_tokens.astype(float)
        return (float(np.median(fit.tau / M)), float(np.exp(np.median(np.log(fit.k * M)))),
                float(np.median(fit.p)))

    def split_records(self, name: str) -> list[dict]:
        """The records of one split (after :meth:`setup`)."""
        return [self.records[i] for i in self.splits[name]]
