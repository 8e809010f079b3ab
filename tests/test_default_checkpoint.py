"""The committed checkpoints/default keeps giving the results recorded before the predictor
pipeline was refactored (issue 17): tests/fixtures/default_predictions.json holds its curves
and allocations on 64 embedded texts, made by the code of the commit it names."""

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("peft")

ROOT = Path(__file__).resolve().parents[1]
CKPT = ROOT / "checkpoints" / "default"
FIXTURE = json.loads((ROOT / "tests" / "fixtures" / "default_predictions.json").read_text())
TOL = 1e-6


@pytest.fixture(scope="module")
def pred():
    from clear_learn.predictor.export import ClearPredictor

    if not (CKPT / "config.json").is_file():
        pytest.skip("no committed default checkpoint")
    return ClearPredictor.from_pretrained(CKPT)


def _same(curves, want: dict) -> None:
    for name in ("tau", "p", "k"):
        np.testing.assert_allclose(getattr(curves, name), want[name], rtol=TOL, atol=TOL,
                                   err_msg=name)


def test_predict_matches_the_recorded_curves(pred):
    texts = FIXTURE["texts"]
    _same(pred.predict(texts), FIXTURE["predict"])
    _same(pred.predict(texts, use_batch_context=False), FIXTURE["predict_no_context"])
    _same(pred.predict(texts, tau_k_source="encoder"), FIXTURE["predict_encoder_source"])
    _same(pred.predict(texts, use_batch_context=False, tau_spread=0,
                       tau_k_source="encoder"),
          FIXTURE["predict_network"])


def test_allocate_matches_the_recorded_budgets(pred):
    texts = FIXTURE["texts"]
    for key, want in FIXTURE["allocate"].items():
        total, cap = key.split("/")
        res = pred.allocate(texts, int(total), max_tokens=None if cap == "None" else int(cap))
        np.testing.assert_array_equal(res.budgets, want["budgets"])
        assert abs(res.expected_correct - want["expected_correct"]) <= TOL


def test_predict_raw_is_the_networks_own_curve(pred):
    _same(pred.predict_raw(FIXTURE["texts"]), FIXTURE["predict_network"])


def test_it_records_the_texts_it_was_trained_on(pred):
    """The checkpoint's 520 training texts (data commit da92f80: the first 400 default
    records and the 120 benchmark ones) are recorded by hash: of the fixture's texts (every
    11th default record, every 5th benchmark one) only default records 407, 418 and 429,
    added after it was trained, are new to it."""
    seen = pred.trained_on(FIXTURE["texts"])
    assert [i for i, x in enumerate(seen) if not x] == [37, 38, 39]
    assert pred.config.format_version == 2 and pred.config.training.n_train == 520


def test_its_format_1_export_still_loads_to_the_same_curves(tmp_path):
    """The checkpoint as it was exported (format 1, tests/fixtures/config-format1.json) loads
    through the migration and predicts what it always did."""
    import shutil

    from clear_learn.predictor import ClearPredictor

    old = tmp_path / "old"
    shutil.copytree(CKPT, old)
    shutil.copy(ROOT / "tests" / "fixtures" / "config-format1.json", old / "config.json")
    pred = ClearPredictor.from_pretrained(old)
    assert pred.trained_on(["anything"]) is None  # format 1 did not record its texts
    _same(pred.predict(FIXTURE["texts"]), FIXTURE["predict"])
