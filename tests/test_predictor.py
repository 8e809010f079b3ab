"""The learned predictor: training lowers the loss, export/load round trip, bad checkpoints,
offline loading, DDP on two CPU processes."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("lightning")

from clear_learn.rollouts import write_rollouts  # noqa: E402
from predictor_support import requires_base_encoder  # noqa: E402
from clear_learn.simulate import simulated_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


pytestmark = requires_base_encoder


@pytest.fixture(scope="module")
def sim_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "sim.jsonl"
    write_rollouts(simulated_dataset(n_per_task=60, seed=3), path)
    return path


def _dm(sim_file, **kw):
    from clear_learn.predictor.data import RolloutDataModule

    args = dict(data=str(sim_file), max_length=32, batch_size=16, val_fraction=0.2,
                test_fraction=0.2)
    args.update(kw)
    return RolloutDataModule(**args)


def _trainer(tmp, steps):
    import lightning as L

    return L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False,
                     enable_checkpointing=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=str(tmp),
                     num_sanity_val_steps=0, limit_val_batches=1.0)


@pytest.fixture(scope="module")
def trained(sim_file, tmp_path_factory):
    import lightning as L

    from clear_learn.predictor.lightning import CurveLightningModule

    torch.set_num_threads(2)
    L.seed_everything(0)
    tmp = tmp_path_factory.mktemp("run")
    dm = _dm(sim_file)
    module = CurveLightningModule(lora_r=4, head_hidden=32, lr=1e-3, head_lr=1e-2)
    module.model.train()
    trainer = _trainer(tmp, 40)
    before = trainer.validate(module, datamodule=dm, verbose=False)[0]["val_nll"]
    trainer.fit(module, datamodule=dm)
    after = trainer.validate(module, datamodule=dm, verbose=False)[0]["val_nll"]
    return module, dm, before, after


def test_short_training_lowers_validation_loss(trained):
    _, _, before, after = trained
    assert np.isfinite(before) and after < before - 0.05


def test_checkpoints_are_slim_and_reload_and_resume(sim_file, tmp_path):
    """Lightning checkpoints hold LoRA and head only; reload is exact; fit resumes from one."""
    from clear_learn.predictor.lightning import CurveLightningModule

    dm = _dm(sim_file)
    module = CurveLightningModule(lora_r=4, head_hidden=16)
    module.model.train()
    trainer = _trainer(tmp_path, 2)
    trainer.fit(module, datamodule=dm)
    ckpt = tmp_path / "m.ckpt"
    trainer.save_checkpoint(ckpt)
    assert ckpt.stat().st_size < 5e6  # the 90 MB base is not in it
    saved = torch.load(ckpt, weights_only=False)["state_dict"]
    assert any("lora_" in k for k in saved) and any(k.startswith("model.head") for k in saved)
    again = CurveLightningModule.load_from_checkpoint(ckpt)
    batch = next(iter(dm.val_dataloader()))
    module.train(False)
    again.train(False)
    with torch.no_grad():
        args = (batch["input_ids"], batch["attention_mask"], batch["cap"], batch["n_tokens"])
        for a, b in zip(module(*args), again(*args)):
            assert torch.equal(a, b)
    resumed = _trainer(tmp_path, 4)
    resumed.fit(CurveLightningModule(lora_r=4, head_hidden=16), datamodule=dm,
                ckpt_path=str(ckpt))
    assert resumed.global_step == 4


def _default_config() -> dict:
    return yaml.safe_load((ROOT / "configs" / "default.yaml").read_text())


def _export(trained, path, extra=()):
    from clear_learn.training.recipe import load_config, predictor_from_run

    module, dm, _, _ = trained
    cfg = load_config(ROOT / "configs" / "default.yaml",
                      ["model.head_hidden=32", "model.lora_r=4", "data.max_length=32", *extra])
    pred = predictor_from_run(module, dm, cfg, {"note": "test"})
    pred.save_pretrained(path)
    return pred


def test_save_load_round_trip_is_identical(trained, tmp_path):
    from clear_learn.predictor.export import ClearPredictor

    pred = _export(trained, tmp_path / "p")
    texts = [r["text"] for r in trained[1].split_records("test")][:20]
    a = pred.predict(texts)
    loaded = ClearPredictor.from_pretrained(tmp_path / "p")
    b = loaded.predict(texts)
    assert np.array_equal(a.tau, b.tau) and np.array_equal(a.p, b.p) and np.array_equal(a.k, b.k)
    res = loaded.allocate(texts, 100 * len(texts))
    assert res.budgets.sum() <= 100 * len(texts) and res.budgets.max() <= 512
    # the batch context travels with it and is what separates predict from its raw curves
    assert loaded.batch_context is not None and loaded.batch_context == pred.batch_context
    raw = loaded.predict(texts, use_batch_context=False, tau_spread=0)
    from clear_learn.predictor.batch_context import apply_batch_context
    again = apply_batch_context(raw, texts, loaded.batch_context)
    # then the threshold spread of the config, which widens the curves
    assert loaded.tau_spread == pred.tau_spread == _default_config()["calibration"]["tau_spread"]
    assert loaded.tau_spread > 0
    assert np.allclose(again.p, b.p) and not np.allclose(again.tau, b.tau)
    again = again.widened(loaded.tau_spread)
    assert np.allclose(again.tau, b.tau) and np.allclose(again.k, b.k)
    from clear_learn.predictor.pipeline import postprocess

    assert np.allclose(postprocess(raw, texts, loaded.stages).tau, b.tau)
    assert np.allclose(postprocess(loaded.predict_raw(texts), texts, loaded.stages).p, b.p)
    with pytest.raises(ValueError, match="tau_spread must be a number >= 0"):
        loaded.predict(texts, tau_spread=-1)
    cfg = json.loads((tmp_path / "p" / "config.json").read_text())
    assert cfg["format_version"] == 2 and cfg["encoder"]["base_model"].startswith("pkg:")
    assert "/" not in cfg["encoder"]["base_model"]  # no absolute path of the training machine
    for f in (tmp_path / "p").rglob("*"):
        if f.is_file() and f.suffix in (".json", ".md"):
            assert "site-packages" not in f.read_text() and str(ROOT) not in f.read_text(), f
    assert (tmp_path / "p" / "README.md").read_text().startswith("# clear-learn predictor")
    # merged weights load to the same predictions
    pred.save_pretrained(tmp_path / "m", merged=True)
    c = ClearPredictor.from_pretrained(tmp_path / "m").predict(texts)
    assert np.allclose(a.tau, c.tau, rtol=1e-4) and np.allclose(a.p, c.p, atol=1e-5)


def test_no_extrapolation_beyond_the_trained_lengths(trained, tmp_path):
    """A text longer than every training text is read as the longest one by the head's length
    feature (a long preamble must not push tau past what training saw)."""
    from clear_learn.predictor.export import ClearPredictor, PredictorLoadError

    _export(trained, tmp_path / "p")
    pred = ClearPredictor.from_pretrained(tmp_path / "p")
    train = [r["text"] for r in trained[1].split_records("train")]
    n_tok = [len(x) for x in pred.tokenizer(train, truncation=False)["input_ids"]]
    assert pred.n_tokens_range == (min(n_tok), max(n_tok))
    assert pred.batch_context.max_offset > 0
    card = (tmp_path / "p" / "README.md").read_text()
    assert f"trained on texts of {min(n_tok)}-{max(n_tok)} tokens" in card

    longest = max(train, key=len)
    texts = [train[0], longest, longest + " and so on" * 400]
    seen = []
    head = pred.model.from_pooled  # (pooled, n_tokens, surface): what the head is fed
    pred.model.from_pooled = lambda *a: seen.append(a[1].clone()) or head(*a)
    bare = dict(use_batch_context=False, tau_spread=0)
    got = pred.predict(texts, **bare)
    fed = torch.cat(seen).tolist()
    assert max(fed) == max(n_tok) and sorted(fed)[0] == n_tok[0]

    # a predictor exported before the range was recorded extrapolates, as it did then
    cfg = json.loads((tmp_path / "p" / "config.json").read_text())
    (tmp_path / "p" / "config.json").write_text(json.dumps(
        dict(cfg, head=dict(cfg["head"], n_tokens_range=None))))
    assert ClearPredictor.from_pretrained(tmp_path / "p").predict(texts, **bare).tau[2] != \
        pytest.approx(got.tau[2])
    for bad in ([5], [9, 3], ["a", 1], [0, float("inf")]):
        (tmp_path / "p" / "config.json").write_text(json.dumps(
            dict(cfg, head=dict(cfg["head"], n_tokens_range=bad))))
        with pytest.raises(PredictorLoadError, match="head.n_tokens_range must be"):
            ClearPredictor.from_pretrained(tmp_path / "p")


def test_training_can_start_from_an_exported_predictor(trained, sim_file, tmp_path):
    """model.init_from (recalibration): fitting starts at the exported weights, not at a fresh
    head; a predictor of another architecture is refused, naming the field."""
    from clear_learn.predictor.export import PredictorLoadError, load_into
    from clear_learn.predictor.lightning import CurveLightningModule

    pred = _export(trained, tmp_path / "p")
    dm = _dm(sim_file, max_length=32)
    module = CurveLightningModule(lora_r=4, head_hidden=32, max_length=32, lr=0.0, head_lr=0.0,
                                  weight_decay=0.0, init_from=str(tmp_path / "p"))
    module.model.train()
    _trainer(tmp_path, 1).fit(module, datamodule=dm)  # lr 0: the weights stay as loaded
    module.model.train(False)
    texts = [r["text"] for r in dm.split_records("test")][:8]
    enc = pred.tokenizer(texts, padding=True, truncation=True, max_length=32,
                         return_tensors="pt")
    n = torch.tensor([float(len(pred.tokenizer(t)["input_ids"])) for t in texts])
    with torch.no_grad():
        got = module.model(enc["input_ids"], enc["attention_mask"], n)
        want = pred.model(enc["input_ids"], enc["attention_mask"], n)
    assert torch.allclose(got, want, atol=1e-5)
    other = CurveLightningModule(lora_r=2, head_hidden=32)
    with pytest.raises(PredictorLoadError, match="lora_r: 2 here, 4 in"):
        load_into(other.model, tmp_path / "p", other.hparams)


def test_length_feature_sees_the_untruncated_text(trained, tmp_path):
    """Texts longer than max_length still differ in length: the prefix is not the whole."""
    from clear_learn.predictor.data import encode_texts

    module, dm, _, _ = trained
    long = "Tom has " + " and ".join(f"{i} apples" for i in range(60)) + ". How many?"
    enc = encode_texts(dm.tokenizer, [long, "How many?"], 32)
    assert len(enc["input_ids"][0]) == 32 and enc["n_tokens"][0] > 150
    assert enc["n_tokens"][1] == len(enc["input_ids"][1])
    pred = _export(trained, tmp_path / "p")
    prefix = dm.tokenizer.decode(enc["input_ids"][0][1:-1])  # what the encoder sees of it
    c = pred.predict([long, prefix])
    assert c.tau[0] != c.tau[1]


def _small_predictor(sim_file, tmp_path, seed: int, **model):
    """A module of the default recipe with the ``model`` settings (head 8 wide), trained for
    3 steps, and its predictor as ``train.py`` would export it."""
    import lightning as L

    from clear_learn.predictor.lightning import CurveLightningModule
    from clear_learn.training.recipe import load_config, predictor_from_run

    L.seed_everything(seed)
    dm = _dm(sim_file)
    module = CurveLightningModule(head_hidden=8, **model)
    module.model.train()
    _trainer(tmp_path, 3).fit(module, datamodule=dm)
    cfg = load_config(ROOT / "configs" / "default.yaml",
                      ["model.head_hidden=8", "data.max_length=32",
                       *(f"model.{k}={json.dumps(v)}" for k, v in model.items())])
    return module, predictor_from_run(module, dm, cfg)


def test_surface_features():
    from clear_learn.predictor.features import SURFACE_FEATURES, surface_features

    f = surface_features(["What is 3 + 4?", "Add 12,345 and 6789 = ?", ""])
    assert f.shape == (3, len(SURFACE_FEATURES)) and f.dtype == np.float32
    names = list(SURFACE_FEATURES)
    counts = np.expm1(f * np.array(list(SURFACE_FEATURES.values())))
    assert np.allclose(counts[0, [names.index("numbers"), names.index("digits"),
                                  names.index("operators")]], [2, 2, 1], atol=1e-4)
    assert np.isclose(counts[1, names.index("longest_number")], 5, atol=1e-3)
    assert np.all(f[2] == 0)


def test_surface_feature_model_trains_exports_and_reloads(sim_file, tmp_path):
    from clear_learn.predictor.export import ClearPredictor

    _, pred = _small_predictor(sim_file, tmp_path, 1, lora_r=0, surface_features=True)
    pred.save_pretrained(tmp_path / "p")
    texts = ["What is 3 + 4?", "Add 12,345 and 6789, then divide by 7."]
    loaded = ClearPredictor.from_pretrained(tmp_path / "p")
    assert loaded.config.head.surface_features is True
    assert np.array_equal(pred.predict(texts).tau, loaded.predict(texts).tau)
    assert "surface features" in (tmp_path / "p" / "README.md").read_text()


def test_a_cut_encoder_trains_exports_and_reloads(sim_file, tmp_path):
    """``encoder_layers``: the first N layers only, kept through both exports (LoRA adapter
    on the cut encoder, merged weights) and ONNX Runtime; a depth beyond the encoder's is
    refused."""
    from clear_learn.predictor.export import ClearPredictor
    from clear_learn.predictor.model import CurveModel

    module, pred = _small_predictor(sim_file, tmp_path, 2, lora_r=2, encoder_layers=2)
    assert len(module.model.encoder.base_model.model.encoder.layer) == 2
    assert pred.config.encoder.layers == 2
    texts = ["What is 3 + 4?", "Sort these words: pear, apple, fig."]
    want = pred.predict(texts)
    for merged in (False, True):
        out = pred.save_pretrained(tmp_path / f"p{merged}", merged=merged)
        for runtime in ("torch", "onnx") if merged else ("torch",):
            got = ClearPredictor.from_pretrained(out, runtime=runtime).predict(texts)
            np.testing.assert_allclose(got.p, want.p, rtol=1e-4, atol=1e-6)
            np.testing.assert_allclose(got.tau, want.tau, rtol=1e-4)
    assert "its first 2 layers" in (tmp_path / "pFalse" / "README.md").read_text()
    with pytest.raises(ValueError, match="encoder_layers must be in 0..6"):
        CurveModel(lora_r=0, encoder_layers=7)


def test_loading_works_with_the_network_off(trained, tmp_path, monkeypatch):
    from clear_learn.predictor.export import ClearPredictor

    _export(trained, tmp_path / "p")

    def no_network(*a, **k):
        raise OSError("network is off in this test")

    monkeypatch.setattr(socket, "socket", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    pred = ClearPredictor.from_pretrained(tmp_path / "p")
    assert len(pred.predict(["What is 3 + 4?"])) == 1


def test_cli_predict_allocate_and_evaluate_with_a_predictor(trained, tmp_path, sim_file,
                                                           capsys):
    from clear_learn.cli import main
    from clear_learn.predictor.export import ClearPredictor

    _export(trained, tmp_path / "p")
    texts = tmp_path / "q.jsonl"
    texts.write_text("".join(json.dumps({"id": f"q{i}", "text": f"What is {i} + {i * 7}?"}) + "\n"
                             for i in range(12)))
    assert main(["predict", str(tmp_path / "p"), str(texts), "-o", str(tmp_path / "c.jsonl")]) == 0
    rows = [json.loads(x) for x in (tmp_path / "c.jsonl").read_text().splitlines()]
    direct = ClearPredictor.from_pretrained(tmp_path / "p").predict(
        [f"What is {i} + {i * 7}?" for i in range(12)])
    assert [r["id"] for r in rows] == [f"q{i}" for i in range(12)]
    assert np.allclose([r["tau"] for r in rows], direct.tau)
    assert main(["predict", str(tmp_path / "p"), str(texts), "-o", str(tmp_path / "r.jsonl"),
                 "--no-batch-context"]) == 0
    raw = [json.loads(x)["tau"] for x in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert np.allclose(raw, ClearPredictor.from_pretrained(tmp_path / "p").predict(
        [f"What is {i} + {i * 7}?" for i in range(12)], use_batch_context=False).tau)
    assert main(["predict", str(tmp_path / "p"), str(texts), "-o", str(tmp_path / "n.jsonl"),
                 "--tau-spread", "0"]) == 0
    narrow = [json.loads(x)["k"] for x in (tmp_path / "n.jsonl").read_text().splitlines()]
    assert np.allclose(narrow, ClearPredictor.from_pretrained(tmp_path / "p").predict(
        [f"What is {i} + {i * 7}?" for i in range(12)], tau_spread=0).k)
    assert not np.allclose(narrow, [r["k"] for r in rows])
    with pytest.raises(SystemExit):
        main(["predict", str(tmp_path / "p"), str(texts), "-o", str(tmp_path / "n.jsonl"),
              "--tau-spread", "-2"])
    assert "--tau-spread must be a number >= 0" in capsys.readouterr().err
    assert main(["allocate", str(texts), "--predictor", str(tmp_path / "p"), "--total-budget",
                 "1200", "-o", str(tmp_path / "b.jsonl")]) == 0
    budgets = [json.loads(x)["budget"] for x in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert sum(budgets) <= 1200 and max(budgets) <= 512  # the predictor's cap by default
    assert main(["evaluate", str(sim_file), "--predictor", str(tmp_path / "p"), "--budgets",
                 "64,256", "--out", str(tmp_path / "ev"), "--streams", "--stream-size", "48",
                 "--batch-size", "16"]) == 0
    rep = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert "clear-learned" in rep["policies"]
    # the predictor was trained on part of this file: said, not silently scored in-sample
    assert "was trained on" in capsys.readouterr().err
    for rows in rep["meta"]["streams"].values():  # batch context per batch of the stream
        assert len(rows["clear-learned"]) == 2
    (tmp_path / "bad.jsonl").write_text(json.dumps({"id": "x"}) + "\n")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "p"), str(tmp_path / "bad.jsonl"), "-o",
                 str(tmp_path / "o.jsonl")]) == 2  # a DataError, like every other bad file
    assert "bad.jsonl, line 1: field 'text': missing" in capsys.readouterr().err


def test_bad_checkpoints_are_refused(trained, tmp_path):
    from clear_learn.predictor.export import ClearPredictor, PredictorLoadError

    good = tmp_path / "p"
    _export(trained, good)
    with pytest.raises(PredictorLoadError, match="not a directory"):
        ClearPredictor.from_pretrained(tmp_path / "nope")
    partial = tmp_path / "partial"
    shutil.copytree(good, partial)
    (partial / "head.safetensors").unlink()
    with pytest.raises(PredictorLoadError, match="missing.*head.safetensors"):
        ClearPredictor.from_pretrained(partial)
    no_adapter = tmp_path / "noadapter"
    shutil.copytree(good, no_adapter)
    shutil.rmtree(no_adapter / "adapter")
    with pytest.raises(PredictorLoadError, match="adapter/ is missing"):
        ClearPredictor.from_pretrained(no_adapter)
    for name in ("adapter_config.json", "adapter_model.safetensors"):  # peft's own messages
        half = tmp_path / f"half-{name}"  # were "Repo id must be a string, not PosixPath"
        shutil.copytree(good, half)
        (half / "adapter" / name).unlink()
        with pytest.raises(PredictorLoadError, match=rf"incomplete predictor, missing "
                                                     rf"\['adapter/{name}'\]"):
            ClearPredictor.from_pretrained(half)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(good, corrupt)
    (corrupt / "head.safetensors").write_bytes(b"garbage")
    with pytest.raises(PredictorLoadError, match="head.safetensors: could not load the head"):
        ClearPredictor.from_pretrained(corrupt)
    shutil.copy(good / "head.safetensors", corrupt / "head.safetensors")
    (corrupt / "adapter" / "adapter_model.safetensors").write_bytes(b"\x08garbage" * 9)
    with pytest.raises(PredictorLoadError,
                       match="adapter_model.safetensors: could not load the encoder"):
        ClearPredictor.from_pretrained(corrupt)
    badcfg = tmp_path / "badcfg"
    shutil.copytree(good, badcfg)
    cfg = json.loads((badcfg / "config.json").read_text())
    cfg["format_version"] = 99
    (badcfg / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PredictorLoadError, match="format_version 99"):
        ClearPredictor.from_pretrained(badcfg)
    cfg["format_version"] = 2
    good_ctx = cfg["stages"]["batch_context"]
    cfg["stages"]["batch_context"] = {"tau_slope": 0.3, "p_slope": -1.0, "radius": 4}
    (badcfg / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PredictorLoadError, match="stages.batch_context.*radius"):
        ClearPredictor.from_pretrained(badcfg)
    cfg["stages"]["batch_context"] = good_ctx
    cfg["stages"]["tau_spread"] = "wide"
    (badcfg / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PredictorLoadError, match="stages.tau_spread must be a finite number"):
        ClearPredictor.from_pretrained(badcfg)
    cfg["stages"]["tau_spread"] = 0.5
    cfg["head"]["colour"] = "red"  # unknown keys are refused by name, not dropped
    (badcfg / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(PredictorLoadError, match=r"config.json: head: unknown keys \['colour'\]"):
        ClearPredictor.from_pretrained(badcfg)
    (badcfg / "config.json").write_text("{not json")
    with pytest.raises(PredictorLoadError, match="config.json: not JSON"):
        ClearPredictor.from_pretrained(badcfg)
    (badcfg / "config.json").write_bytes(bytes(range(256)))
    with pytest.raises(PredictorLoadError, match="config.json: not UTF-8"):
        ClearPredictor.from_pretrained(badcfg)


def test_failed_save_keeps_the_old_predictor(trained, tmp_path, monkeypatch):
    from clear_learn.predictor import card as card_mod
    from clear_learn.predictor import storage
    from clear_learn.predictor.export import ClearPredictor

    pred = _export(trained, tmp_path / "p")
    before = sorted(p.name for p in (tmp_path / "p").rglob("*"))

    def boom(cfg):
        raise RuntimeError("disk full")

    monkeypatch.setattr(card_mod, "model_card", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        pred.save_pretrained(tmp_path / "p")
    assert sorted(p.name for p in (tmp_path / "p").rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["p"]  # no temporary directory left
    ClearPredictor.from_pretrained(tmp_path / "p")
    monkeypatch.undo()

    # the second rename fails: the old predictor is moved back, not left hidden in .p.old
    real, calls = os.replace, []

    def second_fails(a, b):
        calls.append((a, b))
        if len(calls) == 2:
            raise OSError("rename failed")
        return real(a, b)

    monkeypatch.setattr(storage.os, "replace", second_fails)
    with pytest.raises(OSError, match="rename failed"):
        pred.save_pretrained(tmp_path / "p")
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "p").rglob("*")) == before
    assert [p.name for p in tmp_path.iterdir()] == ["p"]
    ClearPredictor.from_pretrained(tmp_path / "p")

    # a replaced predictor keeps its modes; a killed save's temp directory is cleaned
    (tmp_path / "p").chmod(0o750)
    (tmp_path / "p" / "config.json").chmod(0o640)
    stale = tmp_path / ".p.999999999.abcd.tmp"  # no such process
    stale.mkdir()
    sibling = tmp_path / ".p.5.999999999.abcd.tmp"  # a save of p.5 (not p's): kept
    sibling.mkdir()
    pred.save_pretrained(tmp_path / "p")
    assert (tmp_path / "p").stat().st_mode & 0o777 == 0o750
    assert {f.stat().st_mode & 0o777 for f in (tmp_path / "p").rglob("*") if f.is_file()} \
        == {0o640}
    assert sorted(p.name for p in tmp_path.iterdir()) == [sibling.name, "p"]
    sibling.rmdir()

    # a save never replaces what is not a predictor: a folder of other files, a file
    (tmp_path / "thesis").mkdir()
    (tmp_path / "thesis" / "thesis.tex").write_text("keep me")
    (tmp_path / "notes.txt").write_text("keep me too")
    for target in ("thesis", "notes.txt"):
        with pytest.raises(ValueError, match="refusing"):
            pred.save_pretrained(tmp_path / target)
    assert (tmp_path / "thesis" / "thesis.tex").read_text() == "keep me"
    assert (tmp_path / "notes.txt").read_text() == "keep me too"
    (tmp_path / "empty").mkdir()
    pred.save_pretrained(tmp_path / "empty")  # an empty folder is fine
    ClearPredictor.from_pretrained(tmp_path / "empty")


def test_predict_rejects_bad_texts(trained, tmp_path):
    pred = _export(trained, tmp_path / "p")
    with pytest.raises(TypeError):
        pred.predict("one string")
    with pytest.raises(ValueError, match="index 1"):
        pred.predict(["fine", ""])
    with pytest.raises(TypeError, match="list of texts, got NoneType"):
        pred.predict(None)
    for unordered in ({"a": 1, "b": 2}, {"a", "b"}, frozenset({"a"})):  # keys; no order
        with pytest.raises(TypeError, match="ordered list of texts, got a"):
            pred.predict(unordered)
    ran = []
    encode = pred.model.pooled  # the encoder
    pred.model.pooled = lambda *a: ran.append(1) or encode(*a)
    for bad in (0, -1, 2.5, True):  # every argument is checked before the encoder runs
        with pytest.raises(ValueError, match="batch_size must be a whole number >= 1"):
            pred.predict(["fine"], batch_size=bad)
    with pytest.raises(ValueError, match="total_budget must be a whole number >= 0"):
        pred.allocate(["fine", "also fine"], -5)
    with pytest.raises(ValueError, match="max_tokens must be whole numbers"):
        pred.allocate(["fine"], 100, max_tokens=-1)
    with pytest.raises(TypeError, match="use_batch_context must be True or False"):
        pred.predict(["fine"], use_batch_context="no")
    assert ran == []
    pred.predict(["fine"])
    assert ran == [1]  # the patch does see the encoder run


def test_baselines_predict_curves(sim_file):
    from clear_learn.predictor.baselines import LengthCurvePredictor, TfidfCurvePredictor
    from clear_learn.rollouts import read_rollouts

    recs = read_rollouts(sim_file)
    texts = [r["text"] for r in recs[:10]]
    for cls in (LengthCurvePredictor, TfidfCurvePredictor):
        c = cls().fit(recs).predict(texts)
        assert len(c) == 10 and np.all(np.isfinite(c.tau))


def test_ddp_on_two_cpu_processes(sim_file, tmp_path):
    """The default config with strategy=ddp and 2 devices, as a standalone script."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(ROOT))
    cmd = [sys.executable, str(ROOT / "train" / "train.py"), "--no-eval",
           "--set", f"data.data={sim_file}", "--set", "data.max_length=24",
           "--set", "data.batch_size=8", "--set", "model.lora_r=2",
           "--set", "model.head_hidden=16", "--set", "trainer.strategy=ddp",
           "--set", "trainer.devices=2", "--set", "trainer.max_epochs=1",
           "--set", "trainer.limit_train_batches=3", "--set", "trainer.limit_val_batches=2",
           "--set", "threads=1", "--set", f"run_dir={tmp_path / 'run'}",
           "--set", f"export.dir={tmp_path / 'pred'}"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "ddp" in (res.stdout + res.stderr).lower()
    assert (tmp_path / "pred" / "config.json").exists()


def test_main_job_evaluates_then_refits_on_every_query(sim_file, tmp_path, capsys):
    """train.py end to end: held-out tables, then (refit_all) weights refitted on all queries
    for export.refit_epochs, with the held-out run's metrics and the study's figures on
    unseen families on the card."""
    sys.path.insert(0, str(ROOT / "train"))
    import train

    def row(pooled, fam):
        return {"pooled": {"mean": pooled, "sd_seeds": 0.01, "sd_halvings": 0.02},
                "family_batches": {"mean": fam, "sd_seeds": 0.03, "sd_halvings": 0.02}}

    study = {"groups": 6, "data": "[a,b]", "variants": {"mine": {"seeds": [0, 1], "ablation": {
        "every stage (shipped)": row(0.61, 0.71), "length line (same stages)": row(0.31, 0.69),
        "TF-IDF baseline (same stages)": row(0.32, 0.57)}}}}
    (tmp_path / "study.json").write_text(json.dumps(study))
    with pytest.raises(SystemExit, match="no figures for export.study_variant 'other'.*mine"):
        train.main(["--set", f"export.study={tmp_path / 'study.json'}",
                    "--set", "export.study_variant=other"])

    from clear_learn.predictor.export import ClearPredictor
    from clear_learn.rollouts import read_rollouts

    args = ["--set", f"data.data={sim_file}", "--set", "data.max_length=16",
            "--set", "threads=1", "--set", "trainer.max_epochs=2",
            "--set", "trainer.limit_train_batches=2", "--set", "model.lora_r=2",
            "--set", "model.head_hidden=8", "--set", "evaluate.budgets_per_query=[64,256]",
            "--set", f"evaluate.out={tmp_path / 'eval'}", "--set", f"run_dir={tmp_path / 'run'}",
            "--set", f"export.dir={tmp_path / 'pred'}", "--set", "export.refit_all=true",
            "--set", "export.refit_epochs=1", "--set", "trainer.enable_progress_bar=false",
            "--set", f"export.study={tmp_path / 'study.json'}",
            "--set", "export.study_variant=mine"]
    assert train.main(args) == 0
    out = capsys.readouterr().out
    assert "share of the uniform-to-oracle gap closed" in out and "refitting on every" in out
    assert (tmp_path / "eval" / "frontier.png").is_file()
    pred = ClearPredictor.from_pretrained(tmp_path / "pred")
    training, metrics = pred.config.training, pred.config.metrics
    assert training.refit_all and training.split == "all"
    assert training.n_train == len(read_rollouts(sim_file))
    assert len(training.text_sha256) == len({r["text"] for r in read_rollouts(sim_file)})
    assert 1 <= metrics["best_epochs"] <= 2 and "gap_closed" in metrics
    card = (tmp_path / "pred" / "README.md").read_text()
    assert "refitted on every query for 1 epochs" in card and metrics["refit_epochs"] == 1
    assert "gap closed on the held-out queries" in card and "| 64 | 0.000 |" in card
    assert "- batch context: each curve moves 0.5 of the way towards" in card  # the recipe's
    assert "then a text d = log(len) above" in card
    assert "## On task families it never saw" in card and "variant `mine`" in card
    assert "| one batch | 0.61 +- 0.01 | 0.31 +- 0.01 | 0.32 +- 0.01 |" in card
    assert "| each family its own batch | 0.71 +- 0.03 | 0.69 +- 0.03 | 0.57 +- 0.03 |" in card
    assert metrics["unseen_families"]["groups"] == 6
    spread = _default_config()["calibration"]["tau_spread"]
    assert f"- threshold spread: curves widened by a threshold uncertainty of sd {spread:g}" in card
    assert pred.tau_spread == spread
    assert set(pred.batch_context.to_dict()) == {"tau_slope", "p_slope", "neighbours",
                                                 "min_similarity", "max_offset", "pool"}
    assert pred.batch_context.pool == _default_config()["batch_context"]["pool"]
    assert {"clear-learned-raw", "clear-learned-narrow"} <= set(metrics["gap_closed"])


def test_regression_loss_trains_from_the_config(sim_file, tmp_path):
    """model.loss=regression through build_modules: targets are attached, steps run."""
    from clear_learn.training import recipe as train

    cfg = train.load_config(ROOT / "configs" / "default.yaml", [
        f"data.data={sim_file}", "data.max_length=16", "threads=1", "model.lora_r=2",
        "model.head_hidden=8", "model.loss=regression"])
    dm, module = train.build_modules(cfg)
    trainer = _trainer(tmp_path, 3)
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == 3 and np.isfinite(float(trainer.callback_metrics["train_loss"]))
    plain = _dm(sim_file)
    plain.setup("fit")
    with pytest.raises(ValueError, match="regression_targets"):
        module.training_step(next(iter(plain.train_dataloader())), 0)


def test_leave_one_family_out_resumes(sim_file, tmp_path, capsys):
    """Every held-out family is predicted by a model that never saw it; reruns reuse folds."""
    sys.path.insert(0, str(ROOT / "train"))
    import cross_family

    from clear_learn.training import lofo

    args = ["--families", "sim-easy,sim-hard", "--out", str(tmp_path / "cv"),
            "--set", f"data.data={sim_file}", "--set", f"run_dir={tmp_path / 'run'}",
            "--set", "threads=1", "--set", "trainer.max_epochs=1", "--set", "data.max_length=16",
            "--set", "trainer.limit_train_batches=2",
            "--set", "model.lora_r=2", "--set", "model.head_hidden=8",
            "--set", "evaluate.budgets_per_query=[64,256]", "--set", "evaluate.splits=2",
            "--set", "trainer.enable_progress_bar=false"]
    assert cross_family.main(args) == 0
    rep = json.loads((tmp_path / "cv" / "report.json").read_text())
    assert rep["meta"]["splits"] == 2
    assert len(rep["policies"]["clear-learned"][0]["gap_closed_by_split"]) == 2
    assert {*lofo.POLICIES, "clear-learned-raw"} <= set(rep["policies"])
    assert rep["meta"]["families"] == ["sim-easy", "sim-hard"]
    assert set(rep["meta"]["batch_context"]) == {"sim-easy", "sim-hard"}
    assert rep["meta"]["fold_best_epochs"] == {"sim-easy": 1, "sim-hard": 1}
    out = capsys.readouterr().out
    assert "--set export.refit_epochs=1" in out
    # each family's spread is fitted on the other one; the value to ship on both
    spread = rep["meta"]["tau_spread"]
    assert set(spread["per_family"]["clear-learned"]) == {"sim-easy", "sim-hard"}
    assert f"--set calibration.tau_spread={spread['ship']}" in out
    assert "clear-learned-narrow" in rep["policies"]
    by_family = json.loads((tmp_path / "cv" / "report-family-batches.json").read_text())
    assert by_family["meta"]["n_batches"] == 2 and by_family["n_queries"] == rep["n_queries"]
    assert by_family["meta"]["splits"] == 2
    assert set(by_family["policies"]) == set(rep["policies"])
    assert "each family its own batch" in out
    rows = [json.loads(x) for x in (tmp_path / "cv" / "folds" / "sim-hard.jsonl").read_text()
            .splitlines()]
    assert {r["policy"] for r in rows} == set(lofo.POLICIES)
    capsys.readouterr()
    assert cross_family.main(args) == 0
    assert capsys.readouterr().out.count("reusing") == 2
    with pytest.raises(SystemExit, match="another config"):
        cross_family.main(args + ["--set", "model.lora_r=3"])
    capsys.readouterr()  # batch context acts after the folds: another one reuses them
    assert cross_family.main(args + ["--set", "batch_context.min_similarity=0.5",
                                     "--set", "calibration.tau_spread=0"]) == 0
    out = capsys.readouterr().out  # the spread is fitted whatever the config ships
    assert out.count("reusing") == 2 and "calibration.tau_spread=" in out
    rep = json.loads((tmp_path / "cv" / "report.json").read_text())
    assert set(rep["meta"]["tau_spread"]["per_family"]["clear-learned"]) == {"sim-easy",
                                                                             "sim-hard"}
    fold = tmp_path / "cv" / "folds" / "sim-easy.jsonl"
    fold.write_text("".join(x + "\n" for x in fold.read_text().splitlines()[1:]))
    assert cross_family.main(args) == 0  # a fold that no longer covers its family is redone
    assert capsys.readouterr().out.count("reusing") == 1
    groups = [a for a in args if a not in ("--families", "sim-easy,sim-hard")]
    groups[groups.index("--out") + 1] = str(tmp_path / "groups")
    assert cross_family.main(groups + ["--groups", "3", "--group-seed", "1"]) == 0
    rep = json.loads((tmp_path / "groups" / "report.json").read_text())
    folds = rep["meta"]["folds"]
    assert sorted(folds) == ["group-0", "group-1", "group-2"]
    assert sorted(f for fold in folds.values() for f in fold["test"]) == sorted(
        rep["meta"]["families"])
    assert rep["meta"]["fold_design"] == {"groups": 3, "group_seed": 1, "train_families": None}
    assert (tmp_path / "groups" / "folds" / "group-0.jsonl").is_file()
    with pytest.raises(SystemExit, match="another config"):  # the fold design is recorded
        cross_family.main(groups + ["--groups", "3", "--group-seed", "2"])
    import report  # the evidence from these folds, end to end, small

    rdir = tmp_path / "report"
    assert report.main(["--folds", str(tmp_path / "groups"), "--out", str(rdir),
                        "--splits", "2", "--stream-size", "64"]) == 0
    res = json.loads((rdir / "report.json").read_text())
    assert set(res["protocols"]) == {"unseen families", "unseen families, each its own batch"}
    assert res["n_queries"] == rep["n_queries"] and set(res["streams"]) == set(report.STREAMS)
    assert set(res["streams"]["balanced"]) == {"8", "64", "1024"} or set(
        res["streams"]["balanced"]) == {8, 64, 1024}
    one = res["protocols"]["unseen families"]["gap_closed"]
    assert {"clear-learned", "proportional-length", "oracle", "optimum"} <= set(one)
    for name in ("s-curves.png", "calibration.png", "queries.png", "report.md"):
        assert (rdir / name).stat().st_size > 0
    assert "the paper's 3x" in (rdir / "report.md").read_text()


def test_saved_fold_curves_are_the_networks_own(trained, tmp_path, monkeypatch):
    """A fold's saved clear-learned curves are the network's own (tau, p and k from the
    encoder, no batch context, no spread): cross_family.py's pooling applies the batch context
    and the spread once, after the folds. (They were saved by predict() with the fold
    predictor's defaults, which already include both, and then got them a second time.)"""
    sys.path.insert(0, str(ROOT / "train"))
    import cross_family

    pred = _export(trained, tmp_path / "p")
    assert pred.batch_context is not None and pred.tau_spread > 0
    module, dm, _, _ = trained
    from clear_learn.training import lofo

    monkeypatch.setattr(lofo, "train_predictor", lambda cfg: (pred, dm, {"x": 1}))
    cfg = cross_family.load_config(ROOT / "configs" / "default.yaml",
                                   [f"run_dir={tmp_path / 'run'}"])
    rows, _ = lofo.fold_curves(cfg, lofo.Fold("sim-hard", ("sim-hard",), None))
    test = dm.split_records("test")
    texts = [r["text"] for r in test]
    from clear_learn.curves import Curves

    saved = Curves.from_records(rows["clear-learned"])
    assert [r["id"] for r in rows["clear-learned"]] == [r["id"] for r in test]
    own = pred.predict_raw(texts)
    assert np.allclose(saved.tau, own.tau) and np.allclose(saved.p, own.p)
    assert np.allclose(saved.k, own.k)
    shipped = pred.predict(texts)
    assert not np.allclose(saved.p, shipped.p) and not np.allclose(saved.tau, shipped.tau)
    # an --out of folds written before the fix is refused, not pooled
    old = tmp_path / "cv"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"config": {}, "random_val": False}))
    with pytest.raises(SystemExit, match="written before the fix"):
        cross_family.check_same_config(old, cfg, False)


def test_bad_evaluate_splits_is_refused_before_training(tmp_path):
    sys.path.insert(0, str(ROOT / "train"))
    import cross_family
    import train

    args = ["--set", "evaluate.splits=0", "--set", f"data.data={tmp_path / 'none.jsonl'}"]
    for main in (train.main, cross_family.main):  # the data would fail later; this first
        with pytest.raises(SystemExit, match="evaluate.splits must be a positive integer"):
            main(args)


def test_splits_by_query_and_by_task():
    from clear_learn.predictor.data import split_records

    recs = simulated_dataset(n_per_task=20, seed=1)
    tr, va, te = split_records(recs, split="query", val_fraction=0.2, test_fraction=0.2)
    assert len(tr) + len(va) + len(te) == 60 and not (set(tr) & set(te)) and len(te) == 12
    tr, va, te = split_records(recs, split="task", test_tasks=["sim-hard"])
    assert {recs[i]["task"] for i in te} == {"sim-hard"}
    assert "sim-hard" not in {recs[i]["task"] for i in tr + va}
    tr, va, te = split_records(recs, split="task", test_tasks=["sim-hard"],
                               val_tasks=["sim-easy"])
    assert {recs[i]["task"] for i in va} == {"sim-easy"}
    assert {recs[i]["task"] for i in tr} == {"sim-medium"}
    with pytest.raises(ValueError, match="overlap"):
        split_records(recs, split="task", test_tasks=["sim-hard"], val_tasks=["sim-hard"])
    with pytest.raises(ValueError, match="not in the data"):
        split_records(recs, split="task", test_tasks=["nope"])
    assert split_records(recs, split="all") == (list(range(60)), [], [])
    with pytest.raises(ValueError, match="'query', 'task' or 'all'"):
        split_records(recs, split="families")


def test_several_data_sources_train_together(tmp_path):
    from clear_learn.predictor.data import load_records

    a, b = simulated_dataset(n_per_task=3, seed=1), simulated_dataset(n_per_task=2, seed=2)
    for r in b:
        r["id"] = "b-" + r["id"]
    write_rollouts(a, tmp_path / "a.jsonl")
    write_rollouts(b, tmp_path / "b.jsonl")
    both = load_records([str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")])
    assert [r["id"] for r in both] == [r["id"] for r in a + b]
    with pytest.raises(ValueError, match="must not overlap"):
        load_records([str(tmp_path / "a.jsonl"), str(tmp_path / "a.jsonl")])


def test_committed_default_checkpoint_loads_and_allocates():
    """The shipped predictor stays loadable by this code, offline, and allocates under its cap."""
    from clear_learn.predictor.export import ClearPredictor

    path = ROOT / "checkpoints" / "default"
    if not (path / "config.json").is_file():
        pytest.skip("no committed default checkpoint")
    pred = ClearPredictor.from_pretrained(path)
    assert pred.max_new_tokens == 512
    texts = ["What is 3 + 4?", "Compute -831.3627^3 to 3 significant figures.",
             'How many times does the letter "e" appear in the text: "seventeen sheep"?']
    curves = pred.predict(texts)
    assert np.all(np.isfinite(curves.tau)) and np.all((curves.p >= 0) & (curves.p <= 1))
    res = pred.allocate(texts, 600)
    assert res.budgets.sum() <= 600 and res.budgets.max() <= 512


def test_loading_a_predictor_with_batch_context_imports_its_vectorizer():
    """The first routed batch must not pay scikit-learn's import: loading does (fresh process,
    since other tests import scikit-learn)."""
    path = ROOT / "checkpoints" / "default"
    if not (path / "config.json").is_file():
        pytest.skip("no committed default checkpoint")
    code = ("import sys; from clear_learn.predictor.export import ClearPredictor; "
            f"p = ClearPredictor.from_pretrained({str(path)!r}); "
            "assert p.batch_context is not None; "
            "print('sklearn.feature_extraction.text' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "True"


def test_measure_summarizes_and_refuses_another_state(sim_file, tmp_path, capsys):
    """train/measure.py: one folder per protocol, reused when its report exists; the summary
    has every protocol's gap table; an OUT measured on other options is refused."""
    sys.path.insert(0, str(ROOT / "train"))
    import measure
    from clear_learn.evaluation import EvalReport

    out = tmp_path / "m"
    steps = measure.step_commands(out, str(sim_file), ["sim-hard"], ["threads=1"])
    assert list(steps) == ["queries", "unseen", "families"]
    assert "data.test_tasks=[sim-hard]" in steps["unseen"][0]
    assert all(str(report).startswith(str(out)) for _, report in steps.values())
    gap = {"mean_accuracy": 0.5, "gap_closed": 0.5}
    rows = {"uniform": [dict(gap, mean_accuracy=0.2, gap_closed=0.0)],
            "oracle": [dict(gap, mean_accuracy=0.8, gap_closed=1.0)],
            **{name: [dict(gap)] for name in ("clear-learned", "clear-tfidf", "clear-length")}}
    for step, (_, report) in steps.items():
        meta = {"split": "task", "test_tasks": ["sim-hard"]} if step == "unseen" else {}
        EvalReport(rows=rows, budgets_per_query=[128.0], n_queries=3, meta=meta).save(report)
    split_rows = {name: [dict(r[0], gap_closed_by_split=[r[0]["gap_closed"] - 0.1,
                                                        r[0]["gap_closed"] + 0.1])]
                  for name, r in rows.items()}
    EvalReport(rows=split_rows, budgets_per_query=[128.0], n_queries=3,
               meta={"splits": 2}).save(
        out / "families" / "report-family-batches.json")  # cross_family.py's second report
    args = ["--data", str(sim_file), "--unseen", "sim-hard", "--out", str(out),
            "--set", "threads=1"]
    assert measure.main(args) == 0  # every report exists: nothing is trained
    text = (out / "SUMMARY.md").read_text()
    for title in measure.TITLES.values():
        assert title in text
    assert "(sim-hard)" in text and text.count("| clear-learned | 0.50 | **0.50** |") == 3
    assert "| clear-learned | 0.50 | **0.50** ±0.14 |" in text  # sd over the 2 halvings
    assert text.count("averaged over 2 halvings") == 1
    assert "reusing" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="other data or options"):
        measure.main(args[:-1] + ["threads=2"])
    # --skip-families: the other protocols only (no leave-one-family-out is run or summarised)
    lean = tmp_path / "lean"
    for step in ("queries", "unseen"):
        report = steps[step][1]
        target = lean / report.relative_to(out)
        target.parent.mkdir(parents=True)
        target.write_bytes(report.read_bytes())
    lean_args = [*args[:args.index("--out")], "--out", str(lean), "--set", "threads=1"]
    assert measure.main([*lean_args, "--skip-families"]) == 0  # would fail if it trained
    text = (lean / "SUMMARY.md").read_text()
    assert measure.TITLES["queries"] in text and measure.TITLES["families"] not in text
    assert "--skip-families" in text and not (lean / "families").exists()


def test_onnx_runtime_gives_the_torch_curves_and_exports_once(trained, tmp_path, monkeypatch):
    """runtime="onnx": the same raw curves as torch (tau, p and k from the encoder), the model
    itself untouched, the graph exported once into the cache and reused."""
    pytest.importorskip("onnxruntime")
    from clear_learn.predictor.export import ClearPredictor
    from clear_learn.predictor import runtime

    monkeypatch.setenv("CLEAR_LEARN_CACHE", str(tmp_path / "cache"))
    _export(trained, tmp_path / "p")
    texts = [r["text"] for r in trained[1].split_records("test")][:24] + ["What is 2 + 2?"]
    ref = ClearPredictor.from_pretrained(tmp_path / "p")
    want = ref.predict_raw(texts)
    fast = ClearPredictor.from_pretrained(tmp_path / "p", runtime="onnx")
    got = fast.predict_raw(texts)
    assert np.allclose(got.p, want.p, atol=1e-5)
    assert np.allclose(got.tau, want.tau, rtol=1e-5) and np.allclose(got.k, want.k, rtol=1e-5)
    # the exported copy merged the LoRA weights; the predictor's own model still has them
    assert hasattr(fast.model.encoder, "peft_config")
    assert np.allclose(fast.predict_raw(texts[:3]).p, got.p[:3], atol=1e-6)
    exported = list((tmp_path / "cache" / "onnx").glob("encoder-*.onnx"))
    assert len(exported) == 1 and "runtime onnx" in repr(fast)

    def no_export(*a, **k):
        raise AssertionError("exported again")

    monkeypatch.setattr(runtime, "_export", no_export)
    again = ClearPredictor.from_pretrained(tmp_path / "p", runtime="onnx")
    assert np.allclose(again.predict(texts).p, fast.predict(texts).p, atol=1e-6)
    assert not list((tmp_path / "cache" / "onnx").glob(".export-*"))


def test_bad_runtime_is_refused(trained, tmp_path):
    from clear_learn.predictor.export import ClearPredictor

    _export(trained, tmp_path / "p")
    with pytest.raises(ValueError, match="runtime must be one of torch, onnx"):
        ClearPredictor.from_pretrained(tmp_path / "p", runtime="tensorrt")
    with pytest.raises(ValueError, match="runs on the CPU"):
        ClearPredictor.from_pretrained(tmp_path / "p", device="cuda", runtime="onnx")


def test_pass_size_changes_no_curve(trained, tmp_path):
    """Texts sorted by length and run in passes of any size give the same curves: padding is
    masked out."""
    pred = _export(trained, tmp_path / "p")
    texts = [r["text"] for r in trained[1].split_records("test")][:40]
    a, b = pred.predict_raw(texts, batch_size=64), pred.predict_raw(texts, batch_size=3)
    assert np.allclose(a.p, b.p, atol=1e-5) and np.allclose(a.tau, b.tau, rtol=1e-5)


def test_resume_refuses_other_settings_than_the_run_was_trained_with(tmp_path):
    """--resume: other data, split, seed or model would put test queries into weights
    already trained (or not load); more epochs may be asked for."""
    from clear_learn.training.recipe import check_resumable

    cfg = {"seed": 0, "data": {"data": "default", "split": "query"}, "model": {"lora_r": 8},
           "early_stopping": {"patience": 5}, "trainer": {"max_epochs": 3}}
    check_resumable(cfg, tmp_path, resuming=False)
    assert (tmp_path / "recipe.json").is_file()
    check_resumable({**cfg, "trainer": {"max_epochs": 9}}, tmp_path, resuming=True)
    for other, named in (({"seed": 1}, r"\(seed\)"),
                         ({"data": {"data": "default", "split": "task"}}, r"\(data\.split\)"),
                         ({"model": {"lora_r": 4}}, r"\(model\.lora_r\)")):
        with pytest.raises(SystemExit, match=named):
            check_resumable({**cfg, **other}, tmp_path, resuming=True)


def test_the_cards_claim_says_what_was_held_out_and_whose_curves():
    from types import SimpleNamespace

    from clear_learn.predictor.card import ORACLE, UNIFORM, _measured_claim
    from clear_learn.predictor.pipeline import LEARNED

    m = {"gap_closed": {LEARNED: [0.5]}, "budgets_per_query": [64], "test_queries": 9,
         "mean_accuracy": {UNIFORM: [0.1], ORACLE: [0.3], LEARNED: [0.2]}}
    seen = _measured_claim(m, SimpleNamespace(split="query", held_out_split=None,
                                              refit_all=False))
    assert "9 held-out queries (families seen in training), CLEAR on these curves" in seen
    unseen = _measured_claim(m, SimpleNamespace(split="task", held_out_split=None,
                                                refit_all=False))
    assert "(families it never saw)" in unseen
    refit = _measured_claim(m, SimpleNamespace(split="all", held_out_split="task",
                                               refit_all=True))
    assert "(families it never saw), CLEAR on the held-out run's curves" in refit


def test_measure_names_its_commit_and_whether_the_tree_differs(tmp_path, monkeypatch):
    """SUMMARY.md's commit says so when tracked code or configs differ from it (a config
    edited before it is committed, say); untracked files and docs do not count."""
    import subprocess

    sys.path.insert(0, str(ROOT / "train"))
    import measure

    git = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True,
                                    capture_output=True, text=True).stdout.strip()
    git("init", "-q")
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "a.yaml").write_text("x: 1\n")
    (tmp_path / "README.md").write_text("docs\n")
    git("add", "configs", "README.md")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "a")
    monkeypatch.setattr(measure, "ROOT", tmp_path)
    head = git("rev-parse", "--short", "HEAD")
    (tmp_path / "new.txt").write_text("untracked\n")
    (tmp_path / "README.md").write_text("docs edited\n")
    assert measure.git_commit() == head
    (tmp_path / "configs" / "a.yaml").write_text("x: 2\n")
    assert measure.git_commit() == f"{head} + uncommitted changes"
    monkeypatch.setattr(measure, "ROOT", tmp_path / "nowhere")
    assert measure.git_commit() == "unknown"
