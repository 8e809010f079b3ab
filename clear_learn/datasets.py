"""The project's embedded rollout data sets (real rollouts of a real LLM).

- ``default``: reasoning-gym problems (texts included), ``clear_learn/data/rollouts-default.jsonl``;
- ``benchmark``: GSM8K test and MATH-500 problems (levels 1-3, then 40 of levels 4-5), whose texts are not in the
  repository: records are keyed by the shared file's name and line and the loader joins the
  texts from ``../shared`` (or ``$CLEAR_LEARN_SHARED``).

See ``clear_learn/data/DATACARD.md`` for the model, settings, sources, licenses and statistics.
"""

from __future__ import annotations

from pathlib import Path

from .rollouts import RolloutValidationError, read_objects, read_rollouts, validate_rollouts

__all__ = ["DATA_DIR", "data_path", "load_rollouts"]

DATA_DIR = Path(__file__).resolve().parent / "data"
_FILES = {"default": "rollouts-default.jsonl", "benchmark": "rollouts-benchmark.jsonl"}


def data_path(name: str) -> Path:
    """Path of an embedded rollout file (``default`` or ``benchmark``)."""
    if name not in _FILES:
        raise ValueError(f"unknown data set {name!r}; known: {sorted(_FILES)}")
    return DATA_DIR / _FILES[name]


def load_rollouts(name: str = "default", path: str | Path | None = None) -> list[dict]:
    """Records of an embedded data set, validated (benchmark texts joined from ../shared);
    ``path``: that set's file from elsewhere (e.g. a copy of an earlier commit's) instead of
    the embedded one."""
    path = data_path(name) if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"embedded data set {name!r} is not there yet: {path}")
    if name == "default":
        return read_rollouts(path)
    from .generation.problems import join_shared_texts

    records, _ = read_objects(path, "records")  # a bad line is an error, never skipped
    records = join_shared_texts(records)
    problems = validate_rollouts(records)
    if problems:
        raise RolloutValidationError(str(path), problems)
    return records
