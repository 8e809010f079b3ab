"""The learned predictor: text -> shifted-surge curve (tau, p, k), then CLEAR allocation.

``ClearPredictor`` (:mod:`.inference`; an exported, self-describing directory, saved and
loaded by :mod:`.storage`, described by :mod:`.config` and :mod:`.card`) is the product; its
post-network stages are :mod:`.pipeline`; the Lightning module and data module train it;
``baselines`` holds the cheap predictors it must beat. Torch and transformers are imported
only here, never by the core, and only when a name that needs them is first used.
"""

from __future__ import annotations

from .._lazy import lazy_getattr


_LAZY = {
    "ClearPredictor": "clear_learn.predictor.inference",
    "PredictorLoadError": "clear_learn.predictor.storage",
    "PredictorConfig": "clear_learn.predictor.config",
    "postprocess": "clear_learn.predictor.pipeline",
    "CurveModel": "clear_learn.predictor.model",
    "CurveLightningModule": "clear_learn.predictor.lightning",
    "RolloutDataModule": "clear_learn.predictor.data",
    "TfidfCurvePredictor": "clear_learn.predictor.baselines",
    "LengthCurvePredictor": "clear_learn.predictor.baselines",
}

__all__ = list(_LAZY)


__getattr__ = lazy_getattr(__name__, _LAZY)
