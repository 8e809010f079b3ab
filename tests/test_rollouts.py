import gzip
import json

import numpy as np
import pytest

from clear_learn.rollouts import (RolloutValidationError, read_rollouts, to_arrays, to_dataset,
                                  validate_rollouts, write_jsonl, write_rollouts)


def rec(i, **kw):
    r = {"id": f"q{i}", "text": f"question {i}", "task": "t", "max_new_tokens": 100,
         "rollouts": [{"tokens": 40, "correct": True}, {"tokens": 100, "correct": False}]}
    r.update(kw)
    return r


def test_round_trip_plain_and_gzip(tmp_path):
    recs = [rec(i) for i in range(5)]
    for name in ("a.jsonl", "a.jsonl.gz"):
        path = write_rollouts(recs, tmp_path / name)
        assert read_rollouts(path) == recs
    with open(tmp_path / "a.jsonl.gz", "rb") as fh:
        assert fh.read(2) == b"\x1f\x8b"
    # gzip is recognised by content, whatever the name
    raw = tmp_path / "b.jsonl"
    raw.write_bytes(gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in recs)))
    assert read_rollouts(raw) == recs


@pytest.mark.parametrize("bad, field, words", [
    (rec(0, text=""), "text", "non-empty"),
    ({k: v for k, v in rec(0).items() if k != "text"}, "text", "missing"),
    ({k: v for k, v in rec(0).items() if k != "task"}, "task", "missing"),
    (rec(0, max_new_tokens=0), "max_new_tokens", "integer > 0"),
    (rec(0, rollouts=[]), "rollouts", "empty"),
    (rec(0, rollouts="x"), "rollouts", "must be a list"),
    (rec(0, rollouts=[{"tokens": -3, "correct": True}]), "rollouts[0].tokens", "negative"),
    (rec(0, rollouts=[{"tokens": 101, "correct": False}]), "rollouts[0].tokens",
     "exceeds max_new_tokens 100"),
    (rec(0, rollouts=[{"tokens": 1.5, "correct": False}]), "rollouts[0].tokens", "integer"),
    (rec(0, rollouts=[{"tokens": 5}]), "rollouts[0].correct", "missing"),
    (rec(0, rollouts=[{"tokens": 5, "correct": "yes"}]), "rollouts[0].correct", "true or false"),
    (rec(0, rollouts=[{"tokens": 5, "correct": True, "finished": 1}]), "rollouts[0].finished",
     "true or false"),
    (rec(0, id=None), "id", "non-empty"),
    (rec(0, generator="qwen"), "generator", "must be an object"),
    (rec(0, generator={"model": 3}), "generator", "model a string"),
])
def test_validator_names_line_and_field(tmp_path, bad, field, words):
    path = tmp_path / "bad.jsonl"
    write_jsonl([rec(1), bad, rec(2)], path)
    problems = validate_rollouts(path)
    assert len(problems) == 1
    p = problems[0]
    assert p.line == 2 and p.field == field and words in p.message
    assert "line 2" in str(p) and field in str(p)
    with pytest.raises(RolloutValidationError, match=f"field '{field.replace('[', '.')}"):
        read_rollouts(path)


def test_duplicates_and_non_json_lines(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(rec(1)) + "\n{not json\n" + json.dumps(rec(1)) + "\n[1, 2]\n")
    problems = validate_rollouts(path)
    msgs = [str(p) for p in problems]
    assert any("line 2" in m and "not JSON" in m for m in msgs)
    assert any("line 3" in m and "duplicate of line 1" in m for m in msgs)
    assert any("line 4" in m and "JSON object" in m for m in msgs)
    with pytest.raises(RolloutValidationError) as err:
        read_rollouts(path)
    assert len(err.value.problems) == 3


def test_empty_file_and_missing_file(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(RolloutValidationError, match="no records"):
        read_rollouts(tmp_path / "e.jsonl")
    with pytest.raises(FileNotFoundError):
        read_rollouts(tmp_path / "nope.jsonl")


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "data.jsonl"
    write_rollouts([rec(0)], path)
    before = path.read_bytes()

    def rows():
        yield rec(1)
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        write_jsonl(rows(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["data.jsonl"]  # no temp file left
    with pytest.raises(RolloutValidationError):
        write_rollouts([rec(0, text="")], path)
    assert path.read_bytes() == before


def test_arrays_and_empirical_curves():
    recs = [rec(0, rollouts=[{"tokens": 30, "correct": True}, {"tokens": 60, "correct": True},
                             {"tokens": 100, "correct": False}]),
            rec(1, rollouts=[{"tokens": 100, "correct": False, "finished": True}])]
    a = to_arrays(recs)
    assert a.tokens.shape == (2, 3) and a.counts.tolist() == [3, 1]
    assert a.cutoff[0].tolist() == [False, False, True] and not a.cutoff[1, 0]
    assert np.allclose(a.accuracy_at(np.array([59, 100])), [1 / 3, 0])
    assert np.allclose(a.accuracy_at(np.array([60, 100])), [2 / 3, 0])
    assert np.allclose(a.consumed_at(np.array([50, 10])), [(30 + 50 + 50) / 3, 10])


def test_to_dataset():
    pytest.importorskip("datasets")
    ds = to_dataset([rec(0), rec(1)])
    assert ds.num_rows == 2 and ds[0]["tokens"] == [40, 100]


def test_no_line_is_dropped_silently(tmp_path):
    """Issue 18 item 1: read_rollouts(validate=False), which regrade used, dropped a line
    that was not JSON."""
    from clear_learn.errors import DataError
    from clear_learn.rollouts import read_objects

    path = tmp_path / "r.jsonl"
    path.write_text(json.dumps(rec(1)) + "\n" + json.dumps(rec(2)) + ",\n" + json.dumps(rec(3))
                    + "\n")
    with pytest.raises(DataError, match="line 2: not JSON") as err:
        read_rollouts(path, validate=False)
    assert err.value.path == str(path) and err.value.line == 2
    with pytest.raises(DataError, match=r"r.jsonl, line 2: not JSON"):
        read_objects(path)
    path.write_text(json.dumps(rec(1)) + "\n7\n")
    with pytest.raises(DataError, match="line 2: expected a JSON object, got int"):
        read_rollouts(path, validate=False)


def test_huge_numbers_and_empty_records_are_problems(tmp_path):
    big = rec(1, max_new_tokens=2**80, rollouts=[{"tokens": 2**70, "correct": True}])
    msgs = [str(p) for p in validate_rollouts([big, rec(2, id=2**90)])]
    assert any("field 'max_new_tokens': must be an integer > 0" in m for m in msgs)
    assert any("field 'rollouts[0].tokens': is too large" in m for m in msgs)
    assert any("line 2: field 'id'" in m for m in msgs)
    assert [str(p) for p in validate_rollouts([])] == ["file: holds no records"]
    with pytest.raises(RolloutValidationError):  # nothing written that no reader accepts
        write_rollouts([], tmp_path / "empty.jsonl")
    assert not (tmp_path / "empty.jsonl").exists()
