"""Importers: other rollout formats converted into the rollout format (docs/METHOD.md, "File
format").

Token counts come from a tokenizer the caller names (:func:`load_token_counter`): a
``tokenizer.json`` file, a directory holding one, or ``pkg:NAME`` for one shipped inside an
installed Python package. Responses longer than the cap the caller gives are cut off there
(``tokens = max_new_tokens``, incorrect, ``finished: false``): a response capped at that
length would not have reached its answer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ._paths import package_dir
from .rollouts import Problem, RolloutValidationError, iter_jsonl

__all__ = ["TokenCounter", "load_token_counter", "import_qwen25_math_eval",
           "import_gsm8k_example_solutions", "GSM8K_EXAMPLE_SYSTEMS"]


@dataclass
class TokenCounter:
    """Counts tokens of texts with a named tokenizer (special tokens not added)."""

    name: str
    encode_batch: Callable[[list[str]], list[int]]

    def __call__(self, texts: Iterable[str]) -> np.ndarray:
        texts = list(texts)
        return np.asarray(self.encode_batch(texts), dtype=np.int64) if texts else \
            np.zeros(0, dtype=np.int64)


def _find_tokenizer_json(spec: str) -> Path:
    if spec.startswith("pkg:"):
        name = spec[4:]
        root = package_dir(name, f"tokenizer {spec!r}")
        hits = sorted(root.rglob("tokenizer.json"))
        if not hits:
            raise FileNotFoundError(f"tokenizer {spec!r}: package {name} holds no tokenizer.json")
        return hits[0]
    path = Path(spec)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer {spec!r}: no tokenizer.json at {path}")
    return path


def load_token_counter(spec: str) -> TokenCounter:
    """A :class:`TokenCounter` for ``spec``: a tokenizer.json, its directory, ``pkg:NAME``, a
    GGUF model file (its embedded tokenizer, through ``transformers``), or ``default-model``
    (the project's cached generator, Qwen2.5-Coder-1.5B-Instruct: the Qwen2.5 tokenizer).

    Needs the ``tokenizers`` package (the ``tokenizers`` extra). Loads from disk only.
    """
    if spec == "default-model" or spec.endswith(".gguf"):
        return _gguf_counter(spec)
    try:
        from tokenizers import Tokenizer
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("token counting needs the 'tokenizers' package: "
                          "pip install 'clear-learn[tokenizers]'") from err
    path = _find_tokenizer_json(spec)
    tok = Tokenizer.from_file(str(path))
    tok.no_truncation()
    tok.no_padding()

    def encode(texts: list[str]) -> list[int]:
        return [len(e.ids) for e in tok.encode_batch(texts, add_special_tokens=False)]

    return TokenCounter(name=spec, encode_batch=encode)


def _gguf_counter(spec: str) -> TokenCounter:
    from transformers import AutoTokenizer

    if spec == "default-model":
        from .generation.models import DEFAULT_MODEL, cache_dir

        path = cache_dir() / "models" / DEFAULT_MODEL.filename
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer {spec!r}: {path} not fetched yet "
                                    "(run `clear-learn model`)")
    else:
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer {spec!r}: no GGUF file at {path}")
    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)

    def encode(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]

    return TokenCounter(name=f"gguf:{path.name}", encode_batch=encode)


def _cap_rollouts(counts: np.ndarray, correct: list[bool], cap: int,
                  extra: list[dict] | None = None) -> list[dict]:
    out = []
    for j, (n, ok) in enumerate(zip(counts, correct)):
        cut = int(n) > cap
        r = {"tokens": cap if cut else int(n), "correct": bool(ok) and not cut,
             "finished": not cut}
        if extra:
            r.update(extra[j])
        out.append(r)
    return out


def _source_rows(path, required: dict[str, type], progress: bool):
    """``(lineno, obj)`` of each line of a JSONL file; raises naming every bad line and field."""
    problems: list[Problem] = []
    rows = []
    it = iter_jsonl(path)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc=f"reading {Path(path).name}", unit="line")
    for lineno, obj, err in it:
        if err is not None:
            problems.append(Problem(lineno, "<line>", err))
            continue
        if not isinstance(obj, dict):
            problems.append(Problem(lineno, "<line>", "expected a JSON object"))
            continue
        for field, typ in required.items():
            if field not in obj:
                problems.append(Problem(lineno, field, "missing"))
            elif not isinstance(obj[field], typ):
                problems.append(Problem(lineno, field, f"expected {typ.__name__}, got "
                                        f"{type(obj[field]).__name__}"))
        rows.append((lineno, obj))
    if problems:
        raise RolloutValidationError(str(path), problems)
    return rows


def import_qwen25_math_eval(path: str | os.PathLike, *, counter: TokenCounter,
                            max_new_tokens: int, task: str = "math",
                            progress: bool = False) -> list[dict]:
    """Convert a Qwen2.5-Math evaluation output (``question``, ``score``, ``code``/``response``).

    One record per line: ``text`` is the question, each response a rollout whose ``tokens``
    are counted by ``counter`` and whose ``correct`` is ``score[j]``. The file's own generation
    cap is not recorded, so the caller sets ``max_new_tokens``. Each record keeps ``level``,
    ``answer``, the tokenizer's name and the source file and line.
    """
    if int(max_new_tokens) <= 0:
        raise ValueError(f"max_new_tokens must be > 0, got {max_new_tokens}")
    rows = _source_rows(path, {"question": str, "score": list}, progress)
    name = Path(path).name
    problems = []
    records = []
    for lineno, obj in rows:
        responses = obj.get("response", obj.get("code"))
        if not isinstance(responses, list):
            problems.append(Problem(lineno, "response", "missing (neither 'response' nor "
                                    "'code' is a list of texts)"))
            continue
        if len(responses) != len(obj["score"]) or not responses:
            problems.append(Problem(lineno, "score", f"{len(obj['score'])} scores for "
                                    f"{len(responses)} responses"))
            continue
        counts = counter([str(r) for r in responses])
        records.append({
            "id": f"{Path(name).stem}-{obj.get('idx', lineno - 1)}",
            "text": obj["question"],
            "task": task,
            "max_new_tokens": int(max_new_tokens),
            "level": obj.get("level"),
            "answer": obj.get("answer", obj.get("gt")),
            "tokenizer": counter.name,
            "source": {"file": name, "line": lineno},
            "rollouts": _cap_rollouts(counts, [bool(s) for s in obj["score"]],
                                      int(max_new_tokens)),
        })
    if problems:
        raise RolloutValidationError(str(path), problems)
    return records


#: The four GPT-3 systems of OpenAI's GSM8K example solutions, one solution each.
GSM8K_EXAMPLE_SYSTEMS = ("6b_finetuning", "6b_verification", "175b_finetuning",
                         "175b_verification")


def import_gsm8k_example_solutions(path: str | os.PathLike, *, counter: TokenCounter,
                                   max_new_tokens: int, task: str = "gsm8k",
                                   progress: bool = False) -> list[dict]:
    """Convert OpenAI's GSM8K ``example_model_solutions.jsonl`` into four-rollout records.

    The four rollouts of a query come from four different systems, not repeated samples of
    one model: every record is marked ``"mixed_models": true`` and each rollout names its
    ``model``. Curves fitted to them describe that mixture, not any one model.
    """
    if int(max_new_tokens) <= 0:
        raise ValueError(f"max_new_tokens must be > 0, got {max_new_tokens}")
    required = {"question": str, **{s: dict for s in GSM8K_EXAMPLE_SYSTEMS}}
    rows = _source_rows(path, required, progress)
    name = Path(path).name
    problems, records = [], []
    for lineno, obj in rows:
        sols, oks = [], []
        for s in GSM8K_EXAMPLE_SYSTEMS:
            sol = obj[s]
            if not isinstance(sol.get("solution"), str) or not isinstance(
                    sol.get("is_correct"), bool):
                problems.append(Problem(lineno, s, "needs 'solution' (text) and "
                                        "'is_correct' (bool)"))
                break
            sols.append(sol["solution"])
            oks.append(sol["is_correct"])
        else:
            counts = counter(sols)
            records.append({
                "id": f"gsm8k-example-{lineno - 1}",
                "text": obj["question"],
                "task": task,
                "max_new_tokens": int(max_new_tokens),
                "mixed_models": True,
                "tokenizer": counter.name,
                "source": {"file": name, "line": lineno},
                "rollouts": _cap_rollouts(counts, oks, int(max_new_tokens),
                                          [{"model": s} for s in GSM8K_EXAMPLE_SYSTEMS]),
            })
    if problems:
        raise RolloutValidationError(str(path), problems)
    return records
