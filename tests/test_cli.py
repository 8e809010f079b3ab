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
