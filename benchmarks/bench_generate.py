"""Generation throughput of the backends on this machine (stop other jobs first).

    python benchmarks/bench_generate.py [--backends llamacpp-continuous,llamacpp-static,transformers]
                                        [--problems 8] [--max-new-tokens 512] [--slots 32]

Runs the same reasoning-gym problems (8 samples each, the data set's sampling settings) through
each backend with the project's default model and prints generated tokens per second. The
rollouts are written to a temporary file and discarded.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--backends", default="llamacpp-continuous,llamacpp-static")
    ap.add_argument("--problems", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=512)
    ap.add_argument("--slots", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    from clear_learn.generation.backends import make_backend
    from clear_learn.generation.driver import SamplingSettings, generate_rollouts
    from clear_learn.generation.models import fetch_model
    from clear_learn.generation.problems import reasoning_gym_problems

    model = fetch_model(progress=False)
    # every setting's first problem, then the next ones: a mix of short and long answers
    problems = reasoning_gym_problems(per_setting=2, seed=777)[: args.problems]
    settings = SamplingSettings(max_new_tokens=args.max_new_tokens)
    for name in args.backends.split(","):
        kind, _, mode = name.partition("-")
        kwargs = {"threads": args.threads}
        if kind == "llamacpp":
            kwargs.update(slots=args.slots, continuous=mode != "static")
        t = time.perf_counter()
        backend = make_backend(kind, model, **kwargs)
        load = time.perf_counter() - t
        with tempfile.TemporaryDirectory() as tmp:
            s = generate_rollouts(problems, backend, Path(tmp) / "r.jsonl", settings,
                                  progress=False)
        print(f"{name}: {s['tokens_per_second']:.1f} generated tokens/s "
              f"({s['tokens']} tokens, {len(problems)} problems x {settings.n} samples, "
              f"{s['seconds']:.0f} s; load {load:.0f} s)", flush=True)
        del backend


if __name__ == "__main__":
    main()
