"""train/results.py: runs recorded into docs/measured/ and the document built from them."""

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "train"))
import results  # noqa: E402


def _run(folder: Path, summary: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / summary).write_text(text)
    return folder


def test_a_rerun_replaces_its_record_and_kinds_come_in_order(tmp_path):
    measured = tmp_path / "measured"
    curve = _run(tmp_path / "runs" / "recal-curve" / "unseen", "summary.md", "# Curve\n\nold\n")
    study = _run(tmp_path / "runs" / "study", "STUDY.md", "# Study\n\n## zzlora\n\nzzfirstzz\n")
    results.record(curve, measured)
    results.record(study, measured)
    _run(study, "STUDY.md", "# Study\n\nzzsecondzz\n")
    results.record(study, measured)
    assert len(list(measured.iterdir())) == 2  # one record per run folder
    doc = results.build(ROOT / "checkpoints" / "default", measured)
    assert "zzsecondzz" in doc and "zzfirstzz" not in doc
    assert doc.index("## Study") < doc.index("## Curve")  # a study before a curve
    assert "### zzlora" not in doc  # the replaced record's headings are gone
    assert doc.index("## The shipped predictor") < doc.index("## Study")


def test_headings_go_one_level_down_under_the_run(tmp_path):
    run = _run(tmp_path / "m", "SUMMARY.md", "# Protocols\n\n## Held-out queries\n\n| a |\n")
    text = results.record(run, tmp_path / "measured").read_text()
    assert text.splitlines()[0].startswith("## Measured: `")
    assert "## Protocols" in text and "### Held-out queries" in text and "| a |" in text


def test_a_folder_without_a_summary_is_named(tmp_path):
    with pytest.raises(SystemExit, match="empty.*no SUMMARY.md"):
        results.record(tmp_path / "empty", tmp_path / "measured")
    assert not (tmp_path / "measured").exists()


def test_nothing_recorded_says_so(tmp_path):
    doc = results.build(ROOT / "checkpoints" / "default", tmp_path / "none")
    assert "No run is recorded" in doc


def test_one_bad_folder_replaces_no_record(tmp_path, monkeypatch):
    measured = tmp_path / "measured"
    monkeypatch.setattr(results, "MEASURED", measured)
    good = _run(tmp_path / "good", "STUDY.md", "# Study\n\nzzold\n")
    rec = results.record(good, measured)
    _run(good, "STUDY.md", "# Study\n\nzznew\n")
    with pytest.raises(SystemExit, match="missing"):
        results.main(["--measure", str(good), "--measure", str(tmp_path / "missing"),
                      "--out", str(tmp_path / "R.md")])
    assert "zzold" in rec.read_text() and not (tmp_path / "R.md").exists()
