"""Held-out evaluation of predictors: likelihood of the test rollouts and allocation frontiers.

Every predictor is fed to the same allocator and scored on the same held-out rollouts
(docs/METHOD.md, "Evaluation"), beside uniform, the oracle and the exact optimum.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..curves import Curves
from ..evaluation import EvalReport, evaluate_policies
from ..fitting import rollout_nll

__all__ = ["evaluate_predictors"]


def evaluate_predictors(test: list[dict], predicted: Mapping[str, Curves],
                        budgets_per_query: Sequence[float], *, seed: int = 0,
                        splits: int = 1) -> tuple[EvalReport, dict[str, float]]:
    """Frontiers of CLEAR on each predictor's curves (averaged over ``splits`` rollout
    halvings, see :func:`~clear_learn.evaluation.evaluate_policies`), and each one's mean NLL
    per rollout.

    Returns ``(report, nll)``; ``nll`` is measured on all test rollouts with the flat floor of
    :mod:`clear_learn.fitting` (lower is better).
    """
    counts = np.array([len(r["rollouts"]) for r in test], dtype=float)
    nll = {name: float((rollout_nll(c, test) * counts).sum() / counts.sum())
           for name, c in predicted.items()}
    report = evaluate_policies(test, dict(predicted), budgets_per_query, seed=seed,
                               splits=splits)
    report.meta["nll_per_rollout"] = nll
    return report, nll
