"""The committed checkpoints/default keeps giving the results recorded when it was exported:
tests/fixtures/default_predictions.json holds its curves and allocations on 64 embedded texts,
made by the code of the commit it names (``python tests/fixtures/make_default_predictions.py``,
only with a new checkpoint or an allocator changed on purpose); the allocations by the
allocator of ``allocate_commit``."""

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
    _same(pred.predict(texts, use_batch_context=False, tau_spread=0), FIXTURE["predict_network"])


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
    """The checkpoint's 968 training texts (the 748 default records and the 220 benchmark
    ones, data commit d4d2c57) are recorded by hash: the fixture's texts (every 11th default
    record) are all among them, a new text is not."""
    assert all(pred.trained_on(FIXTURE["texts"]))
    assert pred.trained_on(["What is 1 + 1? (a text never trained on)"]) == [False]
    assert pred.config.format_version == 2 and pred.config.training.n_train == 968


def _as_format_1(d: dict) -> dict:
    """A format-2 config as the flat format-1 dict of the first exports (the inverse of
    ``migrate_v1`` on the fields format 1 had)."""
    e, h, s = d["encoder"], d["head"], d["stages"]
    training = {k: v for k, v in d["training"].items() if k != "text_sha256"}
    return {"format_version": 1, "base_model": e["base_model"], "max_length": e["max_length"],
            "weights": e["weights"], "head_hidden": h["hidden"],
            "length_feature": h["length_feature"], "surface_features": h["surface_features"],
            "n_tokens_range": h["n_tokens_range"],
            "lora": {f"lora_{k}": v for k, v in (e["lora"] or {}).items()},
            "generator": d["generator"], "training": training, "metrics": d["metrics"],
            "batch_context": s["batch_context"], "tau_spread": s["tau_spread"]}


def test_a_format_1_export_still_loads_to_the_same_curves(tmp_path):
    """The checkpoint with its config written as format 1 loads through the migration and
    predicts the same curves; the first real format-1 export (tests/fixtures/
    config-format1.json, tau and k from the removed length line) is refused by name."""
    import shutil

    from clear_learn.predictor import ClearPredictor
    from clear_learn.predictor.config import ConfigError, PredictorConfig

    old = tmp_path / "old"
    shutil.copytree(CKPT, old)
    flat = _as_format_1(json.loads((CKPT / "config.json").read_text()))
    (old / "config.json").write_text(json.dumps(flat))
    pred = ClearPredictor.from_pretrained(old)
    assert pred.trained_on(["anything"]) is None  # format 1 did not record its texts
    _same(pred.predict(FIXTURE["texts"]), FIXTURE["predict"])
    with pytest.raises(ConfigError, match="config-format1.json: stages.tau_k_source 'length'"):
        PredictorConfig.from_json_file(ROOT / "tests" / "fixtures" / "config-format1.json")
