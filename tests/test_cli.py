import json
import subprocess
import sys

import pytest

from clear_learn.cli import main


def test_cli_end_to_end(tmp_path, capsys):
    sim = tmp_path / "sim.jsonl"
    assert main(["simulate", "-o", str(sim), "--per-task", "20"]) == 0
    assert main(["validate", str(sim)]) == 0
    assert "OK (60 queries)" in capsys.readouterr().out
    curves = tmp_path / "curves.jsonl"
    assert main(["fit", str(sim), "-o", str(curves)]) == 0
    rows = [json.loads(line) for line in curves.read_text().splitlines()]
    assert len(rows) == 60 and {"id", "tau", "p", "k", "nll"} <= set(rows[0])
    capsys.readouterr()
    out = tmp_path / "budgets.jsonl"
    assert main(["allocate", str(curves), "--per-query", "100", "--max-tokens", "512",
                 "-o", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["allocated"] <= 6000
    budgets = [json.loads(line) for line in out.read_text().splitlines()]
    assert sum(b["budget"] for b in budgets) == summary["allocated"]
    assert main(["evaluate", str(sim), "--budgets", "64,256", "--out",
                 str(tmp_path / "ev"), "--curves", str(curves), "--streams",
                 "--stream-size", "128", "--batch-size", "32", "--splits", "2"]) == 0
    rep = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert rep["meta"]["splits"] == 2
    assert {"uniform", "clear-task-prior", "clear-given", "oracle", "optimum"} == set(
        rep["policies"])
    assert (tmp_path / "ev" / "frontier.png").exists()
    assert "bursts" in rep["meta"]["streams"]
    # the curves were fitted on the very rollouts they are scored on: said (issue 18, 16)
    assert "are fits of their own rollouts" in capsys.readouterr().err
    other = tmp_path / "other.jsonl"  # the same queries, other rollouts: no warning
    assert main(["simulate", "-o", str(other), "--per-task", "20", "--seed", "9"]) == 0
    assert main(["fit", str(other), "-o", str(tmp_path / "oc.jsonl")]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(sim), "--budgets", "64", "--out", str(tmp_path / "ev2"),
                 "--curves", str(tmp_path / "oc.jsonl")]) == 0
    assert "are fits of their own rollouts" not in capsys.readouterr().err


def test_cli_reports_bad_input(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n')
    assert main(["validate", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "line 1" in out and "field 'text': missing" in out
    assert main(["fit", str(bad), "-o", str(tmp_path / "c.jsonl")]) == 2
    assert "error" in capsys.readouterr().err
    assert not (tmp_path / "c.jsonl").exists()
    assert main(["validate", str(tmp_path / "missing.jsonl")]) == 1
    with pytest.raises(SystemExit):
        main(["evaluate", "--splits", "0"])
    assert "--splits: must be a positive integer: '0'" in capsys.readouterr().err


def test_cli_help_lists_subcommands():
    res = subprocess.run([sys.executable, "-m", "clear_learn.cli", "--help"],
                         capture_output=True, text=True)
    assert res.returncode == 0
    for cmd in ("validate", "fit", "allocate", "evaluate", "simulate", "import"):
        assert cmd in res.stdout


def test_import_is_light():
    code = ("import sys, clear_learn; c = clear_learn.Curves([1.0], [0.5], [0.1]); "
            "clear_learn.allocate(c, 10); "
            "print(any(m in sys.modules for m in ('torch', 'transformers', 'datasets')))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.stdout.strip() == "False", res.stderr


# Issue 18: bad input and interruptions. Each test below failed on the code before the fix.

def _run(argv, capsys):
    """``main(argv)`` -> (status, stdout, stderr); argparse's refusals give status 2."""
    try:
        status = main(argv)
    except SystemExit as exc:
        status = exc.code
    out = capsys.readouterr()
    return status, out.out, out.err


def _toy_rollouts(tmp_path):
    """Three rollout records with saved texts and a problem file, for regrade."""
    import gzip

    probs = [{"id": f"p{i}", "text": f"compute = {i}", "task": "toy", "answer": str(i),
              "grader": "numeric"} for i in range(3)]
    recs = [{"id": f"p{i}", "text": f"compute = {i}", "task": "toy", "max_new_tokens": 40,
             "rollouts": [{"tokens": 10, "correct": True, "finished": True},
                          {"tokens": 12, "correct": True, "finished": True}]}
            for i in range(3)]
    texts = [{"id": f"p{i}", "texts": [f"\\boxed{{{i}}}", "\\boxed{99}"]} for i in range(3)]
    (tmp_path / "probs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in probs))
    with gzip.open(tmp_path / "texts.jsonl.gz", "wt") as fh:
        fh.write("".join(json.dumps(t) + "\n" for t in texts))
    return recs


def test_regrade_refuses_a_bad_line_and_keeps_the_file(tmp_path, capsys):
    """Item 1: a record on a line that is not JSON was dropped silently and the file rewritten."""
    recs = _toy_rollouts(tmp_path)
    path = tmp_path / "r.jsonl"
    lines = [json.dumps(r) for r in recs]
    lines[1] += ","  # a stray comma
    path.write_text("\n".join(lines) + "\n")
    before = path.read_bytes()
    argv = ["regrade", str(path), "--texts", str(tmp_path / "texts.jsonl.gz"),
            "--problems", str(tmp_path / "probs.jsonl")]
    status, out, err = _run(argv, capsys)
    assert status == 2 and out == ""
    assert f"{path}" in err and "line 2: not JSON" in err
    assert path.read_bytes() == before
    # a field-level problem is refused too (it was read without validation)
    lines[1] = json.dumps({**recs[1], "max_new_tokens": "40"})
    path.write_text("\n".join(lines) + "\n")
    status, _, err = _run(argv, capsys)
    assert status == 2 and "line 2 (id 'p1'): field 'max_new_tokens'" in err
    # a rollout without 'finished' named by file, line and field (was a KeyError)
    lines[1] = json.dumps({**recs[1], "rollouts": [{"tokens": 3, "correct": True}] * 2})
    path.write_text("\n".join(lines) + "\n")
    status, _, err = _run(argv, capsys)
    assert status == 2 and "line 2: field 'rollouts[0].finished'" in err
    # the good file regrades: the wrong second answers lose their label
    lines[1] = json.dumps(recs[1])
    path.write_text("\n".join(lines) + "\n")
    status, out, _ = _run(argv, capsys)
    assert status == 0 and json.loads(out)["labels_changed"] == 3
    assert [json.loads(x)["rollouts"][1]["correct"] for x in path.read_text().splitlines()] \
        == [False] * 3


def test_regrade_names_bad_problem_and_texts_files(tmp_path, capsys):
    recs = _toy_rollouts(tmp_path)
    path = tmp_path / "r.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    probs = tmp_path / "probs.jsonl"
    rows = probs.read_text().splitlines()
    probs.write_text("\n".join([rows[0], json.dumps({"id": "p1", "task": "toy"}), rows[2]]))
    texts = tmp_path / "texts.jsonl.gz"
    argv = ["regrade", str(path), "--texts", str(texts), "--problems", str(probs)]
    status, _, err = _run(argv, capsys)
    assert status == 2 and f"{probs}, line 2: field 'text'" in err
    probs.write_text("\n".join(rows) + "\n")
    texts.write_bytes(texts.read_bytes()[:-9])  # a truncated gzip chunk
    status, _, err = _run(argv, capsys)
    assert status == 2 and f"{texts}, line" in err and "truncated or corrupt" in err


def test_validate_reports_unreadable_files_and_goes_on(tmp_path, capsys):
    """Item 4: tracebacks (EOFError, BadGzipFile, IsADirectoryError, a bare codec error)."""
    import gzip

    good = tmp_path / "good.jsonl"
    assert main(["simulate", "-o", str(good), "--per-task", "2"]) == 0
    data = good.read_bytes()
    trunc = tmp_path / "trunc.jsonl.gz"
    trunc.write_bytes(gzip.compress(data)[:-30])
    junk = tmp_path / "junk.jsonl.gz"
    junk.write_bytes(b"\x1f\x8b" + bytes(range(256)) * 4)
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    latin = tmp_path / "latin.jsonl"
    rows = data.splitlines(keepends=True)
    latin.write_bytes(rows[0] + rows[1].replace(b'"text": "', b'"text": "\xff\xfe', 1) + rows[2])
    capsys.readouterr()
    files = [trunc, junk, folder, latin, good]
    status, out, err = _run(["validate", *map(str, files)], capsys)
    assert status == 1
    assert f"{trunc}: 1 problem(s)" in out and "gzip data is truncated or corrupt" in out
    assert f"{junk}: 1 problem(s)" in out and "line 1: gzip data" in out
    assert f"{folder}: 1 problem(s)" in out and "is a folder" in out
    assert f"{latin}: 1 problem(s)" in out and "line 2: not UTF-8 text (byte 0xff" in out
    assert f"{good}: OK (6 queries)" in out  # validation went on to the last file
    # every reader names them the same way
    for path in (trunc, junk, folder, latin):
        status, _, err = _run(["fit", str(path), "-o", str(tmp_path / "c.jsonl")], capsys)
        assert status == 2 and f"{path}" in err and "Traceback" not in err


def test_validate_refuses_an_empty_file(tmp_path, capsys):
    """Item 10: 'OK (0 queries)' for a file that fit and read_rollouts reject."""
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    status, out, _ = _run(["validate", str(empty)], capsys)
    assert status == 1 and "holds no records" in out
    status, _, err = _run(["fit", str(empty), "-o", str(tmp_path / "c.jsonl")], capsys)
    assert status == 2 and "holds no records" in err


def test_allocate_refuses_bad_curves_and_budgets(tmp_path, capsys):
    """Item 5: TypeError for a bare-number row, OverflowError for inf, 'got -100' for -5,
    a NaN conversion error for nan, rows counted from 0, and "p": true read as 1.0."""
    curves = tmp_path / "curves.jsonl"
    good = {"id": "a", "tau": 10.0, "p": 0.5, "k": 0.1}

    def alloc(rows, *extra):
        curves.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n"
                                  for r in rows))
        return _run(["allocate", str(curves), *(extra or ("--per-query", "50"))], capsys)

    status, _, err = alloc([good, "3"])
    assert status == 2 and f"{curves}, line 2: expected a JSON object, got int" in err
    status, _, err = alloc([good, good, {**good, "p": 1.5}])
    assert status == 2 and f"{curves}, line 3: field 'p': must be finite and in [0, 1]" in err
    status, _, err = alloc([good, {**good, "p": True}])
    assert status == 2 and "line 2: field 'p': is not a number: True" in err
    status, _, err = alloc([good, {"id": "b", "tau": 1, "p": 0.5}])
    assert status == 2 and "line 2: field 'k': missing" in err
    status, _, err = alloc([])
    assert status == 2 and "holds no curve rows" in err
    for value in ("inf", "-5", "nan", "1e400", "x"):
        status, _, err = alloc([good], "--per-query", value)
        assert status == 2 and f"--per-query: must be a finite number >= 0: '{value}'" in err
    status, _, err = alloc([good], "--total-budget", "-5")
    assert status == 2 and "--total-budget: must be an integer >= 0: '-5'" in err
    status, out, _ = alloc([good, {**good, "id": "b"}], "--per-query", "50")
    assert status == 0 and json.loads(out)["allocated"] <= 100


def test_output_paths_are_checked_before_the_work(tmp_path, capsys):
    """Item 6: 'fit -o DIR' failed with IsADirectoryError after the whole fit, 'FILE/x' with
    FileExistsError."""
    sim = tmp_path / "sim.jsonl"
    assert main(["simulate", "-o", str(sim), "--per-task", "2"]) == 0
    folder = tmp_path / "out"
    folder.mkdir()
    capsys.readouterr()
    for argv in (["fit", str(sim), "-o", str(folder)],
                 ["fit", str(sim), "-o", str(sim / "x")],
                 ["allocate", str(sim), "--per-query", "5", "-o", str(folder)],
                 ["simulate", "-o", str(folder)],
                 ["regrade", str(sim), "--texts", "t", "--problems", "p", "-o", str(folder)],
                 ["evaluate", str(sim), "--out", str(sim)]):
        status, out, err = _run(argv, capsys)
        assert status == 2 and out == "", argv
        assert ("is a folder" in err or "is a file" in err), (argv, err)


def test_numbers_out_of_range_are_refused(tmp_path, capsys):
    """Item 10: 'evaluate --test-fraction 1.5' ran; 'simulate --per-task 0' wrote an empty
    file and exited 0."""
    for value in ("1.5", "0", "1", "-0.2", "nan"):
        status, _, err = _run(["evaluate", "--test-fraction", value], capsys)
        assert status == 2 and "--test-fraction: must be a number strictly between 0 and 1" \
            in err
    out = tmp_path / "sim.jsonl"
    status, _, err = _run(["simulate", "-o", str(out), "--per-task", "0"], capsys)
    assert status == 2 and "--per-task: must be a positive integer: '0'" in err
    assert not out.exists()


def test_version(capsys):
    """Item 13: no --version."""
    from clear_learn import __version__

    status, out, _ = _run(["--version"], capsys)
    assert status == 0 and out.strip() == f"clear-learn {__version__}"


def test_cli_modules_stay_small():
    """Issue 17 item 7: the generation commands live apart from the core ones."""
    from pathlib import Path

    import clear_learn.cli as cli
    import clear_learn.generation.commands as gen

    for mod in (cli, gen):
        assert len(Path(mod.__file__).read_text().splitlines()) <= 450
    assert not hasattr(cli, "cmd_regrade") and hasattr(gen, "cmd_regrade")
