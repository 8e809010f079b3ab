"""Warnings for in-sample evaluations: curves that already saw the queries they are scored on.

- a predictor evaluated on texts it was trained on (its config records their hashes:
  ``training.text_sha256``);
- ``--curves`` that are a fit of the evaluated queries' own rollouts (``clear-learn fit`` on the
  same file): recognised by fitting those rollouts again and comparing.
"""

from __future__ import annotations

import sys
from typing import Sequence

import numpy as np

__all__ = ["trained_share", "fitted_share", "warn_trained_on", "warn_fitted_on"]


def trained_share(pred, records: Sequence[dict]) -> tuple[int, int] | None:
    """``(how many of records' texts pred was trained on, len(records))``; None where the
    predictor does not record its training texts (format 1 exports)."""
    seen = pred.trained_on([r["text"] for r in records])
    return None if seen is None else (int(sum(seen)), len(records))


def fitted_share(rows: Sequence[dict], records: Sequence[dict], rtol: float = 1e-3
                 ) -> tuple[int, int]:
    """``(how many curve rows equal a fit of their record's own rollouts, len(records))``:
    rows[i] is the curve given for records[i]. Only queries with a correct rollout count: a
    query never solved fits to the prior's curve whatever its rollouts, so equal curves
    there say nothing."""
    from ..curves import Curves
    from ..fitting import fit_curves

    given = Curves.from_records(rows)
    fit = fit_curves(list(records)).curves
    same = np.array([any(o["correct"] for o in r["rollouts"]) for r in records], dtype=bool)
    for name in ("tau", "p", "k"):
        a, b = getattr(given, name), getattr(fit, name)
        same &= np.abs(a - b) <= rtol * np.maximum(np.abs(b), 1e-9) + 1e-9
    return int(same.sum()), len(records)


def warn_trained_on(pred, records: Sequence[dict], where: str) -> None:
    """A warning on stderr when ``pred`` (from ``where``) was trained on some of ``records``,
    or cannot tell."""
    share = trained_share(pred, records)
    if share is None:
        t = pred.config.training
        data = "?" if t is None else (" + ".join(t.data) if isinstance(t.data, tuple)
                                      else t.data)
        split = "?" if t is None else t.split
        print(f"warning: {where} does not record which texts it was trained on (data {data}, "
              f"split {split}): if these queries are among them, the figures are in-sample",
              file=sys.stderr)
    elif share[0]:
        print(f"warning: {where} was trained on {share[0]} of the {share[1]} evaluated "
              "queries: its figures on them are in-sample (evaluate it on queries it has not "
              "seen, e.g. --test-tasks of families it was not trained on)", file=sys.stderr)


def warn_fitted_on(rows: Sequence[dict], records: Sequence[dict], where: str) -> None:
    """A warning on stderr when the curves of ``where`` are fits of ``records``' own
    rollouts (``clear-learn fit`` on the evaluated file)."""
    n, total = fitted_share(rows, records)
    if n:
        print(f"warning: {n} of the {total} evaluated queries' curves in {where} are fits of "
              "their own rollouts (clear-learn fit on this file?): they saw the rollouts they "
              "are scored on, so their figures are in-sample", file=sys.stderr)
