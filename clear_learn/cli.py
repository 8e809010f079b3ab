"""The ``clear-learn`` command line: validate, fit, allocate, predict, evaluate, simulate,
import; ``recalibrate`` is in :mod:`clear_learn.training.recalibrate`, the generation commands
(model, problems, rollouts, regrade) in :mod:`clear_learn.generation.commands`.

Bad input is refused before any work, with a message naming the file, the line (from 1) and
the field, and exit status 2 (``validate`` reports every problem of every file and exits 1).
Every file is written atomically (:mod:`clear_learn.atomic`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .cli_types import (budgets_list, fraction, nonnegative_int, nonnegative_number,
                        output_dir, output_file, positive_int)
from .predictor.runtime import RUNTIMES  # numpy only: no torch at start-up

DEFAULT_BUDGETS = "32,64,96,128,192,256,384,512"


def _rows(path: str, what: str = "rows") -> tuple[list[dict], list[int]]:
    """The JSON objects of a JSONL file and their lines (a DataError names a bad line)."""
    from .rollouts import read_objects

    return read_objects(path, what)


def cmd_validate(args) -> int:
    from .rollouts import iter_jsonl, validate_rollouts

    status = 0
    for path in args.files:
        try:
            problems = validate_rollouts(path)
        except FileNotFoundError:
            print(f"{path}: no such file", file=sys.stderr)
            status = 1
            continue
        except OSError as err:  # unreadable (permissions): say so and go on
            print(f"{path}: cannot read: {err.strerror or err}", file=sys.stderr)
            status = 1
            continue
        if problems:
            status = 1
            print(f"{path}: {len(problems)} problem(s)")
            for p in problems[: args.max_problems]:
                print(f"  {p}")
            if len(problems) > args.max_problems:
                print(f"  ... and {len(problems) - args.max_problems} more")
        else:
            print(f"{path}: OK ({sum(1 for _ in iter_jsonl(path))} queries)")
    return status


def cmd_fit(args) -> int:
    from .fitting import fit_curves
    from .rollouts import read_rollouts, write_jsonl

    records = read_rollouts(args.rollouts)
    res = fit_curves(records)
    rows = res.curves.to_records([r["id"] for r in records])
    for row, nll in zip(rows, res.nll):
        row["nll"] = float(nll)
    write_jsonl(rows, args.output)
    print(f"fitted {len(rows)} curves ({res.message}, {res.n_iter} Newton steps); "
          f"mean nll per rollout {res.nll.mean():.4f} -> {args.output}")
    return 0


def cmd_allocate(args) -> int:
    from .allocation import allocate
    from .curves import Curves
    from .rollouts import write_jsonl

    rows, lines = _rows(args.curves, "curve rows" if not args.predictor else "rows")
    max_tokens = args.max_tokens
    if args.predictor:
        texts = _texts(rows, lines, args.curves)
        pred = _load_predictor(args.predictor, args.runtime)
        curves = pred.predict(texts,
                              use_batch_context=not args.no_batch_context,
                              tau_spread=args.tau_spread)
        max_tokens = pred.max_new_tokens if max_tokens is None else max_tokens
    else:
        curves = Curves.from_records(rows, source=args.curves, lines=lines)
    n = len(curves)
    if args.total_budget is not None:
        total = args.total_budget
    else:
        total = int(args.per_query * n)
    res = allocate(curves, total, max_tokens=max_tokens,
                   fallback_tokens=args.fallback_tokens)
    out = [{"id": r.get("id", i), "budget": int(b), "abandoned": bool(a)}
           for i, (r, b, a) in enumerate(zip(rows, res.budgets, res.abandoned))]
    if args.output:
        write_jsonl(out, args.output)
    print(json.dumps(res.to_dict(arrays=False)))
    return 0


def _texts(rows: list[dict], lines: list[int], path: str) -> list[str]:
    """The ``text`` of every row; a DataError names the first row without one."""
    from .errors import DataError

    for r, n in zip(rows, lines):
        if not isinstance(r.get("text"), str) or not r["text"].strip():
            raise DataError(path, n, "missing or not a non-empty string", "text")
    return [r["text"] for r in rows]


def cmd_predict(args) -> int:
    from .rollouts import write_jsonl

    rows, lines = _rows(args.input)
    texts = _texts(rows, lines, args.input)
    curves = _load_predictor(args.predictor, args.runtime).predict(
        texts, batch_size=args.batch_size, use_batch_context=not args.no_batch_context,
        tau_spread=args.tau_spread)
    out = [{"id": r.get("id", i), "tau": float(t), "p": float(q), "k": float(k)}
           for i, (r, t, q, k) in enumerate(zip(rows, curves.tau, curves.p, curves.k))]
    write_jsonl(out, args.output)
    print(json.dumps({"queries": len(out), "written": args.output}))
    return 0


def _load_or_simulate(path: str | None):
    from .rollouts import read_rollouts
    from .simulate import simulated_dataset

    if path is None:
        return simulated_dataset(), True
    if path in ("default", "benchmark") and not Path(path).exists():
        from .datasets import load_rollouts

        return load_rollouts(path), False
    return read_rollouts(path), False


def _load_predictor(path: str, runtime: str = "torch"):
    from .predictor.export import ClearPredictor

    return ClearPredictor.from_pretrained(path, runtime=runtime)


_RUNTIME_HELP = ("how the predictor's encoder runs: torch (default) or onnx (ONNX Runtime: "
                 "the same curves, faster; pip install 'clear-learn[fast]')")


def cmd_evaluate(args) -> int:
    from .evaluation import evaluate_policies, plot_frontier, task_prior_curves

    records, simulated = _load_or_simulate(args.rollouts)
    label = "SIMULATED rollouts (sampled from known curves)" if simulated else args.rollouts
    rng = np.random.default_rng(args.seed)
    if args.test_tasks:
        held = set(args.test_tasks.split(","))
        test = [r for r in records if r["task"] in held]
        train = [r for r in records if r["task"] not in held]
    else:
        order = rng.permutation(len(records))
        cut = int(len(records) * (1 - args.test_fraction))
        train = [records[i] for i in order[:cut]]
        test = [records[i] for i in order[cut:]]
    if not test:
        raise SystemExit("no held-out queries: check --test-tasks / --test-fraction")
    policies, stream_policies = {}, {}
    if train:
        policies["clear-task-prior"] = task_prior_curves(train, [r["task"] for r in test])
    if args.curves:
        from .curves import Curves

        rows, lines = _rows(args.curves, "curve rows")
        by_id = {str(o.get("id")): (o, n) for o, n in zip(rows, lines)}
        missing = [r["id"] for r in test if str(r["id"]) not in by_id]
        if missing:
            raise SystemExit(f"{args.curves}: no curve for {len(missing)} held-out queries, "
                             f"e.g. {missing[0]!r}")
        from .predictor.overlap import warn_fitted_on

        given = [by_id[str(r["id"])] for r in test]
        warn_fitted_on([o for o, _ in given], test, args.curves)
        policies["clear-given"] = Curves.from_records([o for o, _ in given], source=args.curves,
                                                      lines=[n for _, n in given])
    if args.predictor:
        pred = _load_predictor(args.predictor, args.runtime)
        caps = {int(r["max_new_tokens"]) for r in test}
        if caps != {pred.max_new_tokens}:
            print(f"warning: the predictor learned curves under a cap of {pred.max_new_tokens} "
                  f"tokens; these rollouts have caps {sorted(caps)}", file=sys.stderr)
        from .predictor.overlap import warn_trained_on
        from .predictor.pipeline import LEARNED, postprocess, stream_policy

        warn_trained_on(pred, test, args.predictor)
        texts = [r["text"] for r in test]
        raw = pred.predict_raw(texts)
        policies[LEARNED] = postprocess(raw, texts, pred.stages)
        if pred.batch_context is not None:  # in streams, each batch is its own context
            stream_policies[LEARNED] = stream_policy(
                raw, texts, pred.stages, np.array([int(r["max_new_tokens"]) for r in test]))
    print(f"evaluating on {label}: {len(test)} held-out queries "
          f"({len(train)} for the task prior)")
    report = evaluate_policies(test, policies, args.budgets, seed=args.seed,
                               splits=args.splits, progress=True)
    report.meta.update({"data": label, "simulated": simulated, "n_train": len(train)})
    out = Path(args.out)
    if args.streams:
        from .streams import preset_streams

        report.meta["streams"] = {}
        print(f"\ntraffic streams ({args.stream_size} queries, batches of {args.batch_size}),"
              " mean accuracy")
        names = None
        for sname, idx in preset_streams(test, args.stream_size, args.seed).items():
            srep = evaluate_policies(test, {**policies, **stream_policies}, args.budgets,
                                     seed=args.seed, stream=idx, batch_size=args.batch_size,
                                     splits=args.splits)
            report.meta["streams"][sname] = srep.rows
            if names is None:
                names = list(srep.rows)
                print("| stream | tokens/query | " + " | ".join(names) + " |")
                print("|---|---:|" + "---:|" * len(names))
            for j, b in enumerate(args.budgets):
                cells = " | ".join(f"{srep.rows[n][j]['mean_accuracy']:.3f}" for n in names)
                print(f"| {sname} | {b:g} | {cells} |")
    report.save(out / "report.json")
    plot_frontier(report, out / "frontier.png",
                  title=("SIMULATED: " if simulated else "") + "accuracy vs total tokens")
    print("\nmean accuracy (scored on held-out rollouts)")
    print(report.table())
    if "oracle" in report.rows:
        print("\nshare of the uniform-to-oracle gap closed")
        print(report.table("gap_closed"))
    print(f"\nwrote {out / 'report.json'} and {out / 'frontier.png'}")
    return 0


def cmd_simulate(args) -> int:
    from .rollouts import write_rollouts
    from .simulate import simulated_dataset

    recs = simulated_dataset(args.per_task, args.rollouts_per_query, args.max_new_tokens,
                             args.seed)
    write_rollouts(recs, args.output)
    print(f"wrote {len(recs)} SIMULATED queries to {args.output}")
    return 0


def cmd_import(args) -> int:
    from .importers import (import_gsm8k_example_solutions, import_qwen25_math_eval,
                            load_token_counter)
    from .rollouts import write_rollouts

    counter = load_token_counter(args.tokenizer)
    fn = {"qwen25-math": import_qwen25_math_eval,
          "gsm8k-example": import_gsm8k_example_solutions}[args.format]
    recs = fn(args.source, counter=counter, max_new_tokens=args.max_new_tokens, progress=True)
    write_rollouts(recs, args.output)
    print(f"imported {len(recs)} queries ({args.format}, tokens by {counter.name}) "
          f"-> {args.output}")
    return 0


_SPREAD_HELP = ("widen each curve by a threshold uncertainty of sd TAU_SPREAD x tau (default: "
                "the predictor's own, fitted on unseen task families; 0 turns it off)")


def _spread(text: str) -> float:
    """An argparse type: a threshold spread (a number >= 0)."""
    from .predictor.calibration import check_tau_spread

    try:
        return check_tau_spread(float(text), "--tau-spread")
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


_NO_CONTEXT_HELP = ("each text's curve from that text alone (by default a predictor exported "
                    "with a batch context compares each text's length with its look-alikes "
                    "in the file)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="clear-learn",
        description="Spend a token budget across reasoning queries with CLEAR: fit or "
                    "predict each query's accuracy-vs-budget curve, then allocate by a "
                    "shadow price.")
    from . import __version__

    ap.add_argument("--version", action="version", version=f"clear-learn {__version__}")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check rollout files; every problem is named by "
                                        "line and field",
                       description="Check rollout JSONL files (plain or gzip) against the "
                                   "format; exit 1 if any problem is found.")
    p.add_argument("files", nargs="+")
    p.add_argument("--max-problems", type=nonnegative_int, default=50)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("fit", help="fit one curve (tau, p, k) per query from its rollouts",
                       description="Fit shifted-surge curves to each query's rollouts by "
                                   "penalised maximum likelihood; writes JSONL rows "
                                   "{id, tau, p, k, nll}.")
    p.add_argument("rollouts")
    p.add_argument("-o", "--output", required=True, type=output_file)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("allocate", help="split a total budget among queries given curves",
                       description="Allocate per-query budgets from a curves JSONL "
                                   "(rows with tau, p, k and optional id).")
    p.add_argument("curves", help="curves JSONL, or with --predictor a JSONL of {id, text}")
    p.add_argument("--predictor", help="an exported predictor: predict the curves from each "
                                       "row's text (max tokens default to its cap)")
    p.add_argument("--runtime", choices=RUNTIMES, default="torch", help=_RUNTIME_HELP)
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--total-budget", type=nonnegative_int)
    g.add_argument("--per-query", type=nonnegative_number, help="average budget per query")
    p.add_argument("--max-tokens", type=positive_int, default=None, help="per-query cap")
    p.add_argument("--fallback-tokens", type=nonnegative_int, default=0,
                   help="budget given to abandoned queries (reserved from the total)")
    p.add_argument("-o", "--output", type=output_file,
                   help="write {id, budget, abandoned} rows here")
    p.add_argument("--no-batch-context", action="store_true", help=_NO_CONTEXT_HELP)
    p.add_argument("--tau-spread", type=_spread, default=None, help=_SPREAD_HELP)
    p.set_defaults(func=cmd_allocate)

    p = sub.add_parser("predict", help="curves (tau, p, k) for texts from an exported predictor")
    p.add_argument("predictor", help="an exported predictor directory")
    p.add_argument("input", help="JSONL rows with 'text' (and optional 'id'); rollout files do")
    p.add_argument("-o", "--output", required=True, type=output_file,
                   help="write {id, tau, p, k} rows here")
    p.add_argument("--batch-size", type=positive_int, default=16,
                   help="texts per forward pass of the encoder, sorted by length (default 16)")
    p.add_argument("--runtime", choices=RUNTIMES, default="torch", help=_RUNTIME_HELP)
    p.add_argument("--no-batch-context", action="store_true", help=_NO_CONTEXT_HELP)
    p.add_argument("--tau-spread", type=_spread, default=None, help=_SPREAD_HELP)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="Pareto frontiers of policies on held-out queries",
                       description="Compare uniform, CLEAR with a text-free task prior, "
                                   "CLEAR with given curves, the oracle and the exact optimum "
                                   "on held-out queries. Without a rollout file it runs on "
                                   "the embedded SIMULATED default.")
    p.add_argument("rollouts", nargs="?", default=None,
                   help="a rollout file, or 'default'/'benchmark' (the embedded real sets)")
    p.add_argument("--curves", help="curves JSONL (with ids) to evaluate as 'clear-given'")
    p.add_argument("--predictor", help="an exported predictor directory, evaluated as "
                                       "'clear-learned' (its curves from the texts alone)")
    p.add_argument("--runtime", choices=RUNTIMES, default="torch", help=_RUNTIME_HELP)
    p.add_argument("--budgets", type=budgets_list, default=budgets_list(DEFAULT_BUDGETS),
                   help=f"average budgets per query (default {DEFAULT_BUDGETS})")
    p.add_argument("--test-tasks", help="comma-separated tasks held out (default: a random "
                                        "share of queries)")
    p.add_argument("--test-fraction", type=fraction, default=0.5,
                   help="share of queries held out, strictly between 0 and 1 (default 0.5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--splits", type=positive_int, default=5,
                   help="average over this many random halvings of each query's rollouts "
                        "into an oracle half and a scoring half (default 5)")
    p.add_argument("--out", default="runs/evaluate", type=output_dir,
                   help="folder for report.json and frontier.png (default runs/evaluate)")
    p.add_argument("--streams", action="store_true",
                   help="also evaluate preset traffic streams (balanced, easy-heavy, "
                        "hard-heavy, bimodal, bursts, one task at a time) in batches")
    p.add_argument("--stream-size", type=positive_int, default=1024)
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("simulate", help="write SIMULATED rollouts sampled from known curves")
    p.add_argument("-o", "--output", required=True, type=output_file)
    p.add_argument("--per-task", type=positive_int, default=150)
    p.add_argument("--rollouts-per-query", type=positive_int, default=8)
    p.add_argument("--max-new-tokens", type=positive_int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("import", help="convert a Qwen2.5-Math eval output or the GSM8K "
                                      "example solutions into rollouts",
                       description="Token counts come from the named tokenizer: a "
                                   "tokenizer.json, its directory, or pkg:PACKAGE.")
    p.add_argument("format", choices=["qwen25-math", "gsm8k-example"])
    p.add_argument("source")
    p.add_argument("--tokenizer", required=True)
    p.add_argument("--max-new-tokens", type=positive_int, required=True,
                   help="the generation cap to assume; longer responses count as cut off")
    p.add_argument("-o", "--output", required=True, type=output_file)
    p.set_defaults(func=cmd_import)

    from .training.recalibrate import register as register_recalibrate

    register_recalibrate(sub)

    from .generation.commands import add_generation_commands

    add_generation_commands(sub)

    from .serve.config import register as register_serve  # the proxy (clear_learn.serve)

    register_serve(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run one command; bad input gives a one-line error and status 2, never a traceback.

    An interruption (Ctrl-C) gives status 130; files are written atomically, so an
    interrupted command leaves every output as it was before it started."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as err:  # DataError is a ValueError
        print(f"clear-learn {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"clear-learn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
