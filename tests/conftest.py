import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CLEAR_LEARN_SHARED", ROOT.parent / "shared"))
ROLLOUTS = SHARED / "data" / "rollouts"


@pytest.fixture
def shared_rollouts() -> Path:
    if not ROLLOUTS.is_dir():
        pytest.skip(f"shared rollouts not found at {ROLLOUTS} (set CLEAR_LEARN_SHARED)")
    return ROLLOUTS


@pytest.fixture
def rng():
    return np.random.default_rng(12345)
