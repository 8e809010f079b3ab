"""clear-learn recalibrate: a tiny base predictor (trained on SIMULATED rollouts) moves towards
shifted curves, head mode leaves the encoder as it was, another cap works, bad input is
refused before any training."""

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("peft")
pytest.importorskip("lightning")

from clear_learn.cli import main  # noqa: E402
from clear_learn.curves import Curves  # noqa: E402
from clear_learn.rollouts import read_rollouts, write_rollouts  # noqa: E402
from predictor_support import requires_base_encoder  # noqa: E402
from clear_learn.simulate import sample_rollouts, simulated_dataset  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


pytestmark = requires_base_encoder


def _train_base(tmp: Path, per_task: int, seed: int, sets: list[str], epochs: int = 2):
    """A tiny predictor of the default recipe with ``sets`` trained for ``epochs`` on
    SIMULATED rollouts (``clear-learn simulate``, into ``tmp/sim.jsonl``), saved at
    ``tmp/p``; returns it."""
    from clear_learn.training.recipe import DEFAULT_CONFIG, load_config, refit_on_all

    sim = tmp / "sim.jsonl"
    assert main(["simulate", "-o", str(sim), "--per-task", str(per_task), "--seed",
                 str(seed)]) == 0
    cfg = load_config(DEFAULT_CONFIG, [
        *sets, f"data.data={sim}", "threads=1", f"run_dir={tmp / 'run'}",
        "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"])
    pred, _, _ = refit_on_all(cfg, epochs)
    pred.save_pretrained(tmp / "p")
    return pred


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A tiny exported predictor (the default recipe, small) trained on SIMULATED rollouts
    made by ``clear-learn simulate``."""
    tmp = tmp_path_factory.mktemp("base")
    _train_base(tmp, 40, 3, ["model.head_hidden=32", "model.lora_r=4", "data.max_length=32"])
    return tmp / "p"


def _shifted(n_per_task: int, *, tau_x: float = 1.0, p_x: float = 1.0, cap: int = 512,
             seed: int = 5, model: str | None = "user-model") -> list[dict]:
    """SIMULATED rollouts of the simulator's families with every curve's tau scaled by
    ``tau_x`` and p by ``p_x``, at generation cap ``cap``."""
    recs = simulated_dataset(n_per_task=n_per_task, seed=seed)
    true = [r["true_curve"] for r in recs]
    curves = Curves(np.array([t["tau"] for t in true]) * tau_x,
                    np.array([t["p"] for t in true]) * p_x, np.array([t["k"] for t in true]))
    out = sample_rollouts(curves, 8, cap, seed=seed, texts=[r["text"] for r in recs],
                          tasks=[r["task"] for r in recs], ids=[r["id"] for r in recs])
    if model is not None:
        for r in out:
            r["generator"] = {"model": model, "backend": "simulated", "n": 8}
    return out


@pytest.fixture(scope="module")
def shifted() -> list[dict]:
    return _shifted(20, tau_x=1.6, p_x=0.35)


@pytest.fixture(scope="module")
def head_run(base, shifted, tmp_path_factory):
    from clear_learn.training.recalibrate import recalibrate

    out = tmp_path_factory.mktemp("recal") / "head"
    return recalibrate(base, shifted, mode="head", threads=1, out=out), out


def test_recalibrated_curves_move_towards_the_users_rollouts(base, shifted, head_run):
    from clear_learn import ClearPredictor

    old, (new, _) = ClearPredictor.from_pretrained(base), head_run
    texts = [r["text"] for r in shifted]
    true_p = np.mean([r["true_curve"]["p"] for r in shifted])
    p_old, p_new = old.predict_raw(texts).p.mean(), new.predict_raw(texts).p.mean()
    assert abs(p_new - true_p) < 0.5 * abs(p_old - true_p)
    assert new.predict(texts).p.mean() < old.predict(texts).p.mean() - 0.1
    # tau: the network's own, raw and through the stages
    true_tau = np.mean([r["true_curve"]["tau"] for r in shifted])
    for fn in ("predict_raw", "predict"):
        tau_old = getattr(old, fn)(texts).tau.mean()
        tau_new = getattr(new, fn)(texts).tau.mean()
        assert tau_new > 1.5 * tau_old and abs(tau_new - true_tau) < abs(tau_old - true_tau), fn
    # the base's choices, the user's generator, the training record
    c = new.config
    assert c.stages.tau_spread == old.tau_spread
    assert (c.stages.batch_context is None) == (old.batch_context is None)
    assert c.generator.model == "user-model" and c.generator.max_new_tokens == 512
    assert c.training.init_from == str(base) and c.training.n_train == len(shifted)
    assert c.metrics["recalibration"]["mode"] == "head"
    assert c.metrics["recalibration"]["epochs"] == 20
    base_texts = [r["text"] for r in read_rollouts(base.parent / "sim.jsonl")]
    assert all(new.trained_on(texts)) and all(new.trained_on(base_texts))  # both recorded
    lo, hi = c.head.n_tokens_range
    olo, ohi = old.n_tokens_range
    assert lo <= olo and hi >= ohi  # the union of the base's and the user's lengths


def test_head_mode_keeps_the_encoder_and_head_lora_trains_the_adapters(base, shifted,
                                                                       head_run, tmp_path):
    from clear_learn import ClearPredictor
    from clear_learn.training.recalibrate import recalibrate

    old = ClearPredictor.from_pretrained(base)
    saved = ClearPredictor.from_pretrained(head_run[1])
    enc = old.model.encoder.state_dict()
    for model in (head_run[0].model, saved.model):
        got = model.encoder.state_dict()
        assert got.keys() == enc.keys()
        assert all(torch.equal(got[k], enc[k]) for k in enc)
        head = model.head.state_dict()
        assert any(not torch.equal(v, old.model.head.state_dict()[k]) for k, v in head.items())
    both = recalibrate(base, shifted, mode="head+lora", epochs=2, threads=1)
    got = both.model.encoder.state_dict()
    lora = [k for k in enc if "lora_" in k]
    assert lora and any(not torch.equal(got[k], enc[k]) for k in lora)
    assert all(torch.equal(got[k], enc[k]) for k in enc if "lora_" not in k)
    assert both.config.metrics["recalibration"] == {**both.config.metrics["recalibration"],
                                                    "mode": "head+lora", "epochs": 2}


def test_another_cap_through_the_cli(base, tmp_path):
    """Rollouts at max_new_tokens 1024 (the base learned 512): the new predictor's curves and
    allocations live under 1024."""
    from clear_learn import ClearPredictor

    sim = tmp_path / "sim1024.jsonl"
    assert main(["simulate", "-o", str(sim), "--per-task", "8", "--max-new-tokens", "1024",
                 "--seed", "9"]) == 0
    out = tmp_path / "out"
    assert main(["recalibrate", str(base), str(sim), "-o", str(out), "--epochs", "2",
                 "--threads", "1", "--generator-model", "sim-1024"]) == 0
    pred = ClearPredictor.from_pretrained(out)
    assert pred.max_new_tokens == 1024 and pred.config.generator.model == "sim-1024"
    assert pred.config.metrics["recalibration"]["mode"] == "head+lora"  # the default with LoRA
    assert pred.config.training.init_from == str(base)
    assert pred.config.training.data == str(sim)
    assert "1024" in (out / "README.md").read_text()
    texts = [r["text"] for r in read_rollouts(sim)]
    curves = pred.predict(texts)
    assert all(np.isfinite(v).all() for v in (curves.tau, curves.p, curves.k))
    res = pred.allocate(texts, 2000 * len(texts))
    assert res.budgets.max() <= 1024 and res.budgets.max() > 512


def test_a_smaller_cap(base):
    """Also: the caller's torch threads and random states come back as they were, and the
    batch-context slopes are the base's and the user's pooled by their query counts."""
    import random

    from clear_learn import ClearPredictor
    from clear_learn.predictor.batch_context import within_task_slopes
    from clear_learn.training.recalibrate import recalibrate

    recs = _shifted(4, cap=256, seed=11)
    torch.set_num_threads(1)
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    want = torch.rand(3), np.random.rand(3), random.random()
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    pred = recalibrate(base, recs, epochs=1, threads=2)
    assert torch.get_num_threads() == 1
    got = torch.rand(3), np.random.rand(3), random.random()
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    assert got[2] == want[2]
    old = ClearPredictor.from_pretrained(base).config
    b, c = old.stages.batch_context, pred.config.stages.batch_context
    own = within_task_slopes(recs, neighbours=b.neighbours, min_similarity=b.min_similarity)
    w = len(recs) / (len(recs) + old.training.n_train)
    assert 0 < w < 1 and own.p_slope != b.p_slope
    assert c.p_slope == pytest.approx(w * own.p_slope + (1 - w) * b.p_slope)
    assert c.tau_slope == pytest.approx(w * own.tau_slope + (1 - w) * b.tau_slope)
    assert c.max_offset == max(own.max_offset, b.max_offset)
    assert pred.max_new_tokens == 256
    texts = [r["text"] for r in recs]
    c = pred.predict(texts)
    assert np.isfinite(c.tau).all() and np.isfinite(c.k).all()
    assert pred.allocate(texts, 1000 * len(texts)).budgets.max() <= 256


def test_bad_input_is_refused_before_training(base, tmp_path, capsys):
    from clear_learn.predictor.storage import PredictorLoadError
    from clear_learn.training.recalibrate import recalibrate

    good = _shifted(4)
    with pytest.raises(PredictorLoadError, match="not a directory"):
        recalibrate(tmp_path / "nope", good)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PredictorLoadError, match="incomplete predictor"):
        recalibrate(tmp_path / "empty", good)
    mixed = _shifted(4) + [dict(r, id=r["id"] + "-b") for r in _shifted(2, cap=1024)]
    with pytest.raises(ValueError, match=r"mixes generation caps \[512, 1024\]"):
        recalibrate(base, mixed)
    two = good[:6] + [dict(r, generator={"model": "other"}) for r in good[6:]]
    with pytest.raises(ValueError, match="mixes generating models"):
        recalibrate(base, two)
    with pytest.raises(ValueError, match="7 queries; recalibration needs at least 8"):
        recalibrate(base, good[:7])
    with pytest.raises(ValueError, match="generating model 'user-model', not 'x'"):
        recalibrate(base, good, generator_model="x")
    with pytest.raises(ValueError, match="mode must be one of"):
        recalibrate(base, good, mode="lora")
    with pytest.raises(ValueError, match="epochs must be"):
        recalibrate(base, good, epochs=0)
    for out in (base, base.parent, base / "sub"):
        with pytest.raises(ValueError, match="base predictor"):
            recalibrate(base, good, out=out)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not an exported predictor .*refusing"):
        recalibrate(base, good, out=tmp_path / "full")
    # the command line: one line, exit 2, nothing written
    few = tmp_path / "few.jsonl"
    write_rollouts(good[:3], few)
    enough = tmp_path / "enough.jsonl"
    write_rollouts(good, enough)
    config = (base / "config.json").read_bytes()
    for args, msg in (([str(base), str(few), "-o", str(tmp_path / "o")], "at least 8"),
                      ([str(base), str(few), "-o", str(base)], "is the base predictor itself"),
                      ([str(tmp_path / "nope"), str(enough), "-o", str(tmp_path / "o")],
                       "not a directory"),
                      ([str(base), str(tmp_path / "missing.jsonl"), "-o",
                        str(tmp_path / "o")], "missing.jsonl")):
        assert main(["recalibrate", *args]) == 2
        err = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
        assert err.startswith("clear-learn recalibrate: error:") and msg in err
    assert not (tmp_path / "o").exists() and (base / "config.json").read_bytes() == config
    assert json.loads(config)["generator"]["max_new_tokens"] == 512


def test_a_frozen_encoder_predictor_recalibrates_its_head(tmp_path):
    """A predictor without LoRA (a frozen encoder, here cut to one layer): head mode moves its
    p towards the user's rollouts and keeps the architecture; head+lora is refused."""
    from clear_learn.predictor.storage import PredictorLoadError
    from clear_learn.training.recalibrate import recalibrate

    pred = _train_base(tmp_path, 20, 4, [
        "model.head_hidden=16", "model.lora_r=0", "model.encoder_layers=1",
        "model.surface_features=true", "data.max_length=32"])
    assert pred.config.encoder.weights == "base" and pred.config.encoder.lora is None
    shifted = _shifted(10, p_x=0.3)
    with pytest.raises(PredictorLoadError, match="no LoRA adapter.*mode 'head'"):
        recalibrate(tmp_path / "p", shifted, mode="head+lora", threads=1)
    new = recalibrate(tmp_path / "p", shifted, threads=1)
    assert new.config.metrics["recalibration"]["mode"] == "head"  # the default without LoRA
    texts = [r["text"] for r in shifted]
    true_p = np.mean([r["true_curve"]["p"] for r in shifted])
    p_old, p_new = pred.predict_raw(texts).p.mean(), new.predict_raw(texts).p.mean()
    assert abs(p_new - true_p) < 0.5 * abs(p_old - true_p)
    assert new.config.encoder == pred.config.encoder  # frozen, cut to one layer, as the base
    assert new.config.head.surface_features


def test_the_base_likelihood_and_pooling_are_recorded_and_kept(tmp_path):
    """A recipe on the consistent likelihood (``model.runaway``) records its rate in the
    export, and recalibration trains on the same likelihood and records it again; the batch
    context's ``pool`` is kept the same way."""
    from clear_learn import ClearPredictor
    from clear_learn.training.recalibrate import recalibrate, recalibration_config

    _train_base(tmp_path, 5, 6, ["model.head_hidden=8", "model.lora_r=0",
                                 "model.encoder_layers=1", "model.runaway=0.05",
                                 "batch_context.pool=0.25", "data.max_length=16"], epochs=1)
    base = ClearPredictor.from_pretrained(tmp_path / "p")
    assert base.config.training.runaway == 0.05
    assert base.batch_context.pool == 0.25
    shifted = _shifted(3)
    cfg = recalibration_config(base, tmp_path / "p", shifted)
    assert cfg["model"]["runaway"] == 0.05 and cfg["batch_context"]["pool"] == 0.25
    new = recalibrate(tmp_path / "p", shifted, epochs=1, threads=1, out=tmp_path / "new")
    assert new.config.training.runaway == 0.05 and new.batch_context.pool == 0.25
    assert "running to the cap at rate 0.05" in (tmp_path / "new" / "README.md").read_text()


def test_freeze_encoder_trains_the_head_and_checkpoints_keep_the_lora(tmp_path):
    """model.freeze_encoder (the recipe's switch behind --mode head): LoRA gets no gradient,
    and a Lightning checkpoint still holds it (it came from init_from, not from the base)."""
    import lightning as L

    from clear_learn.predictor.data import RolloutDataModule
    from clear_learn.predictor.lightning import CurveLightningModule

    torch.set_num_threads(1)
    dm = RolloutDataModule(data=_shifted(4), max_length=32, batch_size=4, split="all")
    module = CurveLightningModule(lora_r=4, head_hidden=16, freeze_encoder=True)
    module.model.train()
    enc = {k: v.clone() for k, v in module.model.encoder.state_dict().items()}
    head = {k: v.clone() for k, v in module.model.head.state_dict().items()}
    trainer = L.Trainer(max_steps=2, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=dm)
    assert not module.model.encoder.training  # no dropout in a frozen encoder
    got = module.model.encoder.state_dict()
    assert all(torch.equal(got[k], enc[k]) for k in enc)
    assert any(not torch.equal(v, head[k]) for k, v in module.model.head.state_dict().items())
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    saved = torch.load(tmp_path / "m.ckpt", weights_only=False)["state_dict"]
    assert any("lora_" in k for k in saved) and any(k.startswith("model.head") for k in saved)
    assert not any("lora_" not in k and "encoder" in k for k in saved)


def test_frozen_encoder_encodes_each_text_once_per_fit(tmp_path):
    """A frozen encoder (lora_r=0) runs once per distinct text: later epochs train the head on
    cached encodings, the same the eval-mode encoder gives (counted in forward calls)."""
    import lightning as L

    from clear_learn.predictor.data import RolloutDataModule
    from clear_learn.predictor.lightning import CurveLightningModule

    torch.set_num_threads(1)
    recs = _shifted(6)
    dm = RolloutDataModule(data=recs, max_length=32, batch_size=4, split="all")
    module = CurveLightningModule(lora_r=0, head_hidden=16)
    assert module.encoder_frozen
    module.model.train()
    seen = []
    module.model.encoder.register_forward_hook(
        lambda mod, args, kwargs, out: seen.append(kwargs["input_ids"].shape[0]),
        with_kwargs=True)
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0,
                        num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    trainer.fit(module, datamodule=dm)
    distinct = {tuple(ids) for ids in dm.datasets["train"]["input_ids"]}  # truncated texts
    assert len(distinct) > 1 and sum(seen) == len(distinct)  # the first epoch only
    batch = next(iter(dm.train_dataloader()))
    module.model.encoder.eval()
    with torch.no_grad():
        direct = module.model(batch["input_ids"], batch["attention_mask"], batch["n_tokens"])
        assert torch.allclose(module._raw(batch), direct, atol=1e-5)
    assert not CurveLightningModule(lora_r=2, head_hidden=8).encoder_frozen


def test_recalibration_curve_on_unseen_families(tmp_path, monkeypatch):
    """``train/recalibration_curve.py --case unseen``: a base per group of held-out families,
    trained without them; every variant scored on the group's other queries; a rerun trains
    and scores nothing and gives the same rows."""
    import sys

    sys.path.insert(0, str(ROOT / "train"))
    import recalibration_curve

    sim = tmp_path / "sim.jsonl"
    assert main(["simulate", "-o", str(sim), "--per-task", "20", "--seed", "6"]) == 0
    argv = ["--case", "unseen", "--data", str(sim), "--groups", "3", "--sizes", "10",
            "--draws", "1", "--variants", "base,head,scratch", "--threads", "1",
            "--out", str(tmp_path / "out"), "--set", "model.lora_r=0",
            "--set", "model.encoder_layers=0", "--set", "model.head_hidden=8",
            "--set", "data.max_length=32", "--set", "trainer.max_epochs=2",
            "--set", f"run_dir={tmp_path / 'run'}"]
    assert recalibration_curve.main(argv) == 0
    rows = [json.loads(p.read_text()) for p in sorted((tmp_path / "out" / "unseen").glob("*.json"))]
    folds = ["group-0", "group-1", "group-2"]
    assert sorted({r["fold"] for r in rows}) == folds
    assert {r["variant"] for r in rows} == {"base", "head", "scratch"} and len(rows) == 9
    tasks = {r["task"] for r in read_rollouts(sim)}
    for fold in folds:
        from clear_learn import ClearPredictor

        seen = set(ClearPredictor.from_pretrained(
            tmp_path / "out" / "unseen" / "bases" / fold).config.training.tasks)
        assert seen and seen < tasks  # its own group never trained it
    assert all(r["n_test"] > 0 for r in rows)
    # NaN only where no budget lets the oracle beat uniform: then for every variant alike
    for fold in folds:
        assert len({np.isfinite(r["gap_closed"]) for r in rows if r["fold"] == fold}) == 1
    assert sum(np.isfinite(r["gap_closed"]) for r in rows) >= 6
    text = (tmp_path / "out" / "unseen" / "summary.md").read_text()
    assert "| 10 |" in text and "draws and folds" in text and "minus base" in text
    import clear_learn.training.recipe as recipe

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was trained or scored again")

    monkeypatch.setattr(recipe, "train_predictor", refuse)
    monkeypatch.setattr(recalibration_curve, "curves_of", refuse)
    assert recalibration_curve.main(argv) == 0  # resumed: every row and base reused
    assert rows == [json.loads(p.read_text())
                    for p in sorted((tmp_path / "out" / "unseen").glob("*.json"))]
