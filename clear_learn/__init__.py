"""clear-learn: spend a scarce token budget across many reasoning queries (CLEAR).

The core (curves, allocation, fitting, rollout files, evaluation) needs only numpy and scipy;
nothing here imports torch: ``from clear_learn import ClearPredictor`` loads the learned
predictor (and torch) only when it is asked for.
"""

from __future__ import annotations

from ._lazy import lazy_getattr
from .allocation import AllocationResult, allocate, uniform_budgets
from .curves import Curves

__version__ = "0.1.0"

_LAZY = {
    "fit_curves": "clear_learn.fitting",
    "FitResult": "clear_learn.fitting",
    "read_rollouts": "clear_learn.rollouts",
    "write_rollouts": "clear_learn.rollouts",
    "validate_rollouts": "clear_learn.rollouts",
    "RolloutValidationError": "clear_learn.rollouts",
    "DataError": "clear_learn.errors",
    "grid_optimum": "clear_learn.optimum",
    "empirical_optimum": "clear_learn.optimum",
    "StreamController": "clear_learn.controller",
    "ClearPredictor": "clear_learn.predictor.inference",  # imports torch on first use
}

__all__ = ["Curves", "allocate", "AllocationResult", "uniform_budgets", *_LAZY]


__getattr__ = lazy_getattr(__name__, _LAZY)
