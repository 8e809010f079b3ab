"""The learned predictor: text -> shifted-surge curve (tau, p, k), then CLEAR allocation.

``ClearPredictor`` (an exported, self-describing directory) is the product; the Lightning
module and data module train it; ``baselines`` holds the cheap predictors it must beat. Torch
and transformers are imported only here, never by the core.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_LAZY = {
    "ClearPredictor": "clear_learn.predictor.export",
    "CurveModel": "clear_learn.predictor.model",
    "CurveLightningModule": "clear_learn.predictor.lightning",
    "RolloutDataModule": "clear_learn.predictor.data",
    "TfidfCurvePredictor": "clear_learn.predictor.baselines",
    "LengthCurvePredictor": "clear_learn.predictor.baselines",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clear_learn.predictor' has no attribute {name!r}")
