"""The names this module held before it was split (kept for code that imports them here):
inference in :mod:`.inference`, saving and loading in :mod:`.storage`, the model card in
:mod:`.card`, the config in :mod:`.config`."""

from __future__ import annotations

from .card import model_card
from .config import FORMAT_VERSION
from .inference import ClearPredictor
from .storage import PredictorLoadError, load_into

__all__ = ["ClearPredictor", "FORMAT_VERSION", "PredictorLoadError", "load_into", "model_card"]
