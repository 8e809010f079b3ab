"""The folds of the leave-one-family-out study: groups, validation families, training-family
subsamples, and the task split they configure."""

import pytest

from clear_learn.predictor.data import split_records
from clear_learn.simulate import simulated_dataset
from clear_learn.training.lofo import Fold, make_folds
from predictor_support import requires_base_encoder

TASKS = [f"t{i:02d}" for i in range(13)]


def test_one_fold_per_family_validates_on_the_next():
    folds = make_folds(TASKS)
    assert [f.test for f in folds] == [(t,) for t in TASKS]
    assert [f.val for f in folds] == TASKS[1:] + TASKS[:1]
    assert all(f.train is None for f in folds)
    assert [f.val for f in make_folds(TASKS, random_val=True)] == [None] * len(TASKS)


def test_groups_partition_the_families_and_are_fixed_by_their_seed():
    folds = make_folds(TASKS, groups=4, group_seed=7)
    held = [t for f in folds for t in f.test]
    assert sorted(held) == TASKS and len(set(held)) == len(TASKS)
    assert sorted(len(f.test) for f in folds) == [3, 3, 3, 4]
    for g, fold in enumerate(folds):  # validated on the next group's first family
        assert fold.val == folds[(g + 1) % 4].test[0] and fold.val not in fold.test
        assert not any(fold.trains_on(t) for t in (*fold.test, fold.val))
    assert make_folds(TASKS, groups=4, group_seed=7) == folds
    assert make_folds(TASKS, groups=4, group_seed=8) != folds
    with pytest.raises(ValueError, match="groups must be between 2 and the 13"):
        make_folds(TASKS, groups=1)
    with pytest.raises(ValueError, match="no family is left to train on"):
        make_folds(["a", "b", "c"], groups=2)


def test_validation_passes_over_families_never_solved():
    # t01 and t02 never solved: t00's fold validates on t03; with groups, the next group's
    # first solved family, else the one after's
    folds = make_folds(TASKS, unsolved={"t01", "t02"})
    assert folds[0].val == "t03" and folds[1].val == "t03" and folds[3].val == "t04"
    grouped = make_folds(TASKS, groups=4, group_seed=7)
    first = grouped[1].test
    unsolved = set(first) | {grouped[2].test[0]}  # all of group 1, group 2's first
    again = make_folds(TASKS, groups=4, group_seed=7, unsolved=unsolved)
    assert [f.test for f in again] == [f.test for f in grouped]  # same groups
    assert again[0].val == grouped[2].test[1] and again[1].val == grouped[2].test[1]
    assert again[2].val == grouped[2].val


def test_unsolved_families_are_those_without_a_correct_rollout():
    from clear_learn.training.lofo import unsolved_families

    rec = lambda task, *ok: {"task": task, "rollouts": [{"correct": c} for c in ok]}
    records = [rec("a", False, True), rec("b", False), rec("b", False, False), rec("c", True)]
    assert unsolved_families(records) == {"b"}
    from clear_learn.training.lofo import folds_of  # the folds of records skip them too

    assert [f.val for f in folds_of(records)] == ["c", "c", "a"]


def test_a_saved_fold_of_another_validation_family_is_trained_again(tmp_path):
    import json

    from clear_learn.training.lofo import POLICIES, fold_design, load_fold

    fold = Fold("group-0", ("a",), "b")
    path = tmp_path / "group-0.jsonl"
    path.write_text("".join(json.dumps({"policy": p, "id": "q1", "tau": 1, "p": 0.5,
                                        "k": 0.1}) + "\n" for p in POLICIES))
    mpath = tmp_path / "group-0.metrics.json"
    mpath.write_text(json.dumps({"best_epochs": 2, **fold_design(fold)}))
    assert load_fold(path, {"q1"}, fold) is not None
    assert load_fold(path, {"q1"}, Fold("group-0", ("a",), "c")) is None
    mpath.write_text(json.dumps({"best_epochs": 2}))  # written before the design was recorded
    assert load_fold(path, {"q1"}, fold) is None


def test_training_families_are_a_seeded_subsample_of_the_others():
    folds = make_folds(TASKS, groups=3, train_families=5)
    for fold in folds:
        assert len(fold.train) == 5 and len(set(fold.train)) == 5
        assert not set(fold.train) & {*fold.test, fold.val}
        assert all(fold.trains_on(t) == (t in fold.train) for t in TASKS)
    assert make_folds(TASKS, groups=3, train_families=5) == folds
    assert len({f.train for f in folds}) > 1  # each fold draws its own
    with pytest.raises(ValueError, match="train_families must be between 1 and"):
        make_folds(TASKS, groups=3, train_families=99)


def test_task_split_trains_only_on_train_tasks():
    recs = simulated_dataset(n_per_task=10, seed=1)
    tasks = sorted({r["task"] for r in recs})
    tr, va, te = split_records(recs, split="task", test_tasks=[tasks[0]],
                               val_tasks=[tasks[1]], train_tasks=[tasks[2]])
    assert {recs[i]["task"] for i in tr} == {tasks[2]}
    assert {recs[i]["task"] for i in va} == {tasks[1]}
    assert {recs[i]["task"] for i in te} == {tasks[0]}
    tr, va, te = split_records(recs, split="task", test_tasks=[tasks[0]],
                               train_tasks=[tasks[2]])  # random validation from train_tasks
    assert {recs[i]["task"] for i in tr + va} == {tasks[2]} and va
    with pytest.raises(ValueError, match="overlap"):
        split_records(recs, split="task", test_tasks=[tasks[0]], train_tasks=[tasks[0]])
    with pytest.raises(ValueError, match="not in the data"):
        split_records(recs, split="task", test_tasks=[tasks[0]], train_tasks=["nope"])
    with pytest.raises(ValueError, match="needs split='task'"):
        split_records(recs, split="query", train_tasks=[tasks[2]])


def test_copies_of_one_text_never_straddle_a_split():
    recs = simulated_dataset(n_per_task=10, seed=1)
    before = split_records(recs, seed=3)
    assert sorted(sum(before, [])) == list(range(len(recs)))
    tr, va, te = before
    for a, b in ((tr[0], te[0]), (tr[1], va[0]), (va[1], te[1]), (te[2], tr[2])):
        recs[b] = {**recs[b], "text": recs[a]["text"]}  # a copy across every pair of parts
    parts = split_records(recs, seed=3)
    assert sorted(sum(parts, [])) == list(range(len(recs)))
    texts = [{recs[i]["text"] for i in part} for part in parts]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    # the task split's random validation share, likewise
    fresh = simulated_dataset(n_per_task=10, seed=1)
    held = {"test_tasks": [fresh[0]["task"]]}
    tr, va, _ = split_records(fresh, split="task", seed=3, **held)
    recs = [dict(r) for r in fresh]
    recs[tr[0]]["text"] = recs[va[0]]["text"]
    tr, va, te = split_records(recs, split="task", seed=3, **held)
    assert not {recs[i]["text"] for i in tr} & {recs[i]["text"] for i in va}
    # without copies the split is the plain one: the same queries, part by part
    assert split_records(fresh, seed=3) == before


def test_fold_is_hashable_and_names_its_families():
    fold = Fold("group-0", ("a", "b"), "c")
    assert fold.trains_on("d") and not fold.trains_on("c") and not fold.trains_on("a")
    assert {fold: 1}[Fold("group-0", ("a", "b"), "c")] == 1


def test_ensemble_averages_the_learned_curves_and_keeps_the_baselines():
    import numpy as np

    from clear_learn.curves import Curves
    from clear_learn.training.lofo import ensemble_curves

    a = {"clear-learned": Curves(np.array([100.0]), np.array([0.2]), np.array([0.01])),
         "clear-length": Curves(np.array([50.0]), np.array([0.5]), np.array([0.02]))}
    b = {"clear-learned": Curves(np.array([400.0]), np.array([0.8]), np.array([0.04])),
         "clear-length": a["clear-length"]}
    got = ensemble_curves([a, b])
    assert got["clear-learned"].tau[0] == pytest.approx(200.0)  # geometric mean
    assert got["clear-learned"].k[0] == pytest.approx(0.02)
    assert got["clear-learned"].p[0] == pytest.approx(0.5)  # mean of logits -2 log 2, 2 log 2
    assert got["clear-length"] is a["clear-length"] and ensemble_curves([a]) is a


def test_study_diagnostic_ranks_curves_against_the_rollouts():
    """A predicted p that orders the queries as their observed accuracy does scores 1, its
    reverse -1; tau against the mean correct length likewise."""
    import sys
    from pathlib import Path

    import numpy as np

    from clear_learn.curves import Curves

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
    import study

    recs = []
    for i in range(6):  # query i: i of 8 rollouts right, each of length 100 + 50 i
        rollouts = [{"tokens": 100 + 50 * i, "correct": j < i} for j in range(8)]
        recs.append({"id": f"q{i}", "task": f"t{i % 3}", "text": "x" * (10 + i),
                     "max_new_tokens": 512, "rollouts": rollouts})
    acc = np.arange(6) / 8
    good = {"clear-learned": Curves(100.0 + 50 * np.arange(6), 0.05 + acc, np.full(6, 0.02))}
    d = study.diagnostic(recs, good)
    assert d["p ~ accuracy (predicted)"] == pytest.approx(1.0)
    assert d["tau ~ correct length (predicted)"] == pytest.approx(1.0)
    assert d["tau ~ correct length (text length)"] == pytest.approx(1.0)  # longer texts here
    bad = {"clear-learned": Curves(600.0 - 50 * np.arange(6), 0.95 - acc, np.full(6, 0.02))}
    assert study.diagnostic(recs, bad)["p ~ accuracy (predicted)"] == pytest.approx(-1.0)


def test_study_cache_key_follows_the_configs_pooling_sections(tmp_path, monkeypatch):
    """An edit of configs/default.yaml's pooling sections (the threshold spread here) is a
    new measurement, not the cached one; the folds themselves are the same."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
    import study

    from clear_learn.training.lofo import Fold

    run = tmp_path / "run"
    (run / "folds").mkdir(parents=True)
    (run / "folds" / "group-0.jsonl").write_text("{}\n")
    folds = [Fold("group-0", ("a",), "b")]
    key = study.measure_key([run], ["threads=1"], folds)
    assert study.measure_key([run], ["threads=1"], folds) == key
    edited = tmp_path / "default.yaml"
    text = study.DEFAULT_CONFIG.read_text()
    assert "tau_spread: 0.6" in text
    edited.write_text(text.replace("tau_spread: 0.6", "tau_spread: 0.3"))
    monkeypatch.setattr(study, "DEFAULT_CONFIG", edited)
    assert study.measure_key([run], ["threads=1"], folds) != key


@requires_base_encoder
def test_study_measures_once_and_reads_a_measured_run_back(tmp_path, monkeypatch):
    """train/study.py end to end on SIMULATED rollouts (a tiny frozen recipe, 3 groups, 2
    seeds): the tables and study.json; a rerun trains and pools nothing (cross_family.py is
    not called) and gives the same figures; the ensemble is measured once and cached; later
    runs of other variants add to study.json, of other settings start it afresh."""
    import json
    import sys
    from pathlib import Path

    pytest.importorskip("torch")
    from clear_learn.rollouts import write_rollouts
    from clear_learn.simulate import simulated_dataset

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
    import study

    sim = tmp_path / "sim.jsonl"
    write_rollouts(simulated_dataset(n_per_task=24, seed=5), sim)
    monkeypatch.setitem(study.VARIANTS, "tiny", (
        ["model.lora_r=0", "model.head_hidden=8", "model.encoder_layers=1",
         "data.max_length=16", "trainer.max_epochs=1", "evaluate.splits=1",
         "evaluate.budgets_per_query=[64,256]"], []))
    argv = ["--variants", "tiny@0+1", "--seeds", "7", "--groups", "3", "--data", str(sim),
            "--out", str(tmp_path / "study"), "--set", "threads=1"]
    assert study.main(argv) == 0
    first = json.loads((tmp_path / "study" / "study.json").read_text())
    rows = first["variants"]["tiny"]["ablation"]
    assert set(rows) == {name for name, _, _ in study.ABLATION}
    assert first["variants"]["tiny"]["seeds"] == [0, 1]  # its own seeds, not --seeds
    assert "tiny, ensemble of 2 seeds" in first["variants"]
    assert (tmp_path / "study" / "tiny-ensemble-s0-1" / "measure.json").is_file()
    assert "### tiny (seeds 0, 1)" in (tmp_path / "study" / "STUDY.md").read_text()
    assert "Held out together: group-0: " in (tmp_path / "study" / "STUDY.md").read_text()

    def refuse(argv):
        raise AssertionError("a measured run was trained or pooled again")

    monkeypatch.setattr(study.cross_family, "main", refuse)
    monkeypatch.setattr(study, "measure", refuse)
    assert study.main(argv) == 0
    assert json.loads((tmp_path / "study" / "study.json").read_text()) == first
    # a run of another variant keeps tiny's entries; tiny measured again replaces its own
    monkeypatch.setitem(study.VARIANTS, "other", study.VARIANTS["tiny"])
    measured = json.loads((tmp_path / "study" / "tiny-s0" / "measure.json").read_text())
    monkeypatch.setattr(study, "run", lambda v, s, a, b: (b, None, None, None))
    monkeypatch.setattr(study, "cached_measure", lambda *a, **k: measured["result"])
    assert study.main([*argv[:1], "other@3", *argv[2:]]) == 0
    merged = json.loads((tmp_path / "study" / "study.json").read_text())
    assert list(merged["variants"]) == [*first["variants"], "other"]
    assert merged["variants"]["other"]["seeds"] == [3]
    text = (tmp_path / "study" / "STUDY.md").read_text()
    assert "--variants tiny@0+1,other@3 " in text and "### tiny, ensemble of 2 seeds" in text
    assert study.main([*argv[:1], "tiny@1", *argv[2:]]) == 0
    merged = json.loads((tmp_path / "study" / "study.json").read_text())
    assert list(merged["variants"]) == ["other", "tiny"]  # its old ensemble gone
    # threads change speed only: the folds are reused and the other entries kept
    assert study.main([*argv[:1], "tiny@1", *argv[2:-1], "threads=2"]) == 0
    assert list(json.loads((tmp_path / "study" / "study.json").read_text())["variants"]) \
        == ["other", "tiny"]
    assert study.main([*argv[:1], "tiny@1", *argv[2:], "--set", "model.head_hidden=4"]) == 0
    assert list(json.loads((tmp_path / "study" / "study.json").read_text())["variants"]) \
        == ["tiny"]  # another --set that changes results: study.json starts afresh


def test_learning_curve_lists_the_training_family_counts_in_order():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
    import study

    def entry(pooled, fam, seeds=(0,)):
        cell = {"pooled": {"mean": pooled}, "family_batches": {"mean": fam}}
        return {"seeds": list(seeds), "ablation": {study.ABLATION[0][0]: cell}}

    summary = {"frozen": entry(0.5, 0.6, (0, 1)), "frozen-n10": entry(0.4, 0.55),
               "frozen-n5": entry(0.3, 0.5), "lora": entry(0.9, 0.9),
               "frozen-n10-x": entry(0.0, 0.0)}
    lines = study.learning_curve(summary)
    rows = [line for line in lines if line.startswith("| ") and "variant" not in line]
    assert rows == ["| 5 | frozen-n5 | 0 | 0.300 | 0.500 |",
                    "| 10 | frozen-n10 | 0 | 0.400 | 0.550 |",
                    "| all | frozen | 0, 1 | 0.500 | 0.600 |"]
    assert study.learning_curve({"frozen": summary["frozen"]}) == []
    assert study.learning_curve({"frozen-n5": summary["frozen-n5"]}) == []
    both = study.learning_curve({**summary, "lora-n20": entry(0.8, 0.85)})
    assert both[0] == "### Learning curve: training families (LoRA, the shipped recipe)"
    assert "| 20 | lora-n20 | 0 | 0.800 | 0.850 |" in both
    assert "| all | lora | 0 | 0.900 | 0.900 |" in both
    assert both[-len(lines):] == lines  # then the frozen encoder's


def test_fold_config_check_ignores_new_null_options_only(tmp_path):
    """Folds recorded before an option existed match a config where it is null (off), and
    are refused once it is set, or when any recorded setting changes."""
    from clear_learn.training.lofo import check_same_config

    old = {"model": {"lora_r": 0, "head_hidden": 8}, "data": {"data": "x"}, "batch_context": {}}
    check_same_config(tmp_path, old, False)
    check_same_config(tmp_path, {**old, "model": {**old["model"], "runaway": None}}, False)
    check_same_config(tmp_path, {**old, "batch_context": {"enabled": False}}, False)  # pooling
    for bad in ({**old, "model": {**old["model"], "runaway": 0.01}},
                {**old, "model": {"lora_r": 8, "head_hidden": 8}}):
        with pytest.raises(SystemExit, match="folds of another config"):
            check_same_config(tmp_path, bad, False)
