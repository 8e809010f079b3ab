"""train/pin_data.py: a commit's embedded data sets, texts joined, as the loaders give them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "train"))
import pin_data  # noqa: E402


def _committed_data_unchanged() -> bool:
    r = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "clear_learn/data"], cwd=ROOT)
    return r.returncode == 0


def test_pinned_head_is_what_the_embedded_loaders_give(tmp_path, shared_rollouts):
    if not _committed_data_unchanged():
        pytest.skip("clear_learn/data differs from HEAD (generation under way)")
    from clear_learn.datasets import load_rollouts

    assert pin_data.main(["HEAD", "--out", str(tmp_path)]) == 0
    for name in pin_data.NAMES:
        path = tmp_path / f"rollouts-{name}-HEAD.jsonl"
        pinned = [json.loads(line) for line in path.read_text().splitlines()]
        assert pinned == load_rollouts(name)
        assert all(r.get("text") for r in pinned)  # the benchmark's texts joined


def test_unknown_commit_is_named(tmp_path):
    with pytest.raises(SystemExit, match="no-such-commit"):
        pin_data.main(["no-such-commit", "--out", str(tmp_path)])
    assert not list(tmp_path.iterdir())  # nothing half-written
