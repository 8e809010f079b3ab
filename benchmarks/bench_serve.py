"""Load test of `clear-learn serve` on loopback: requests/s through the proxy, and the latency
it adds (p50, p99) over calling the same upstream directly.

Three processes: a fast stub upstream (clear_learn.serve.testing, 8-token answers), the proxy
(with a constant fake predictor, for the proxy's own overhead, and/or the real
checkpoints/default encoder), and this load generator (httpx, asyncio). Bounded: every phase
stops after ``--requests`` requests or ``--seconds`` seconds, whichever comes first, and the
servers are always stopped.

    python benchmarks/bench_serve.py                     # fake and real predictor
    python benchmarks/bench_serve.py --predictor fake --requests 500 --concurrency 32

Aim (issue 19): under 15 ms added at p50 with one query per request, >= 200 requests/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from clear_learn.serve.testing import wait_http

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BODY = {"model": "stub", "max_tokens": 300,
        "messages": [{"role": "user", "content": "What is 17 * 23? Show your steps."}]}


class ConstPredictor:
    """The same easy curve for every text, at no cost."""

    max_new_tokens = 512

    def predict(self, texts, batch_context: bool = True):
        from clear_learn.curves import Curves

        n = len(texts)
        return Curves(np.full(n, 40.0), np.full(n, 0.9), np.full(n, 0.05))


def run_proxy(upstream: str, port: int, predictor: str) -> None:
    """The proxy process (a fake predictor cannot be named on the command line)."""
    import uvicorn

    from clear_learn.serve.app import create_app
    from clear_learn.serve.config import ServeConfig

    cfg = ServeConfig(upstream=upstream, tokens_per_query=128, port=port, log_level="warning",
                      predictor=None if predictor == "fake" else predictor).validate()
    app = create_app(cfg, predictor=ConstPredictor() if predictor == "fake" else None)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def start(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, *args], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)


async def load(url: str, n: int, seconds: float, concurrency: int) -> tuple[np.ndarray, float]:
    """POST ``BODY`` to ``url`` from ``concurrency`` workers until ``n`` requests or
    ``seconds``; (latencies in seconds, wall time)."""
    import httpx

    lat: list[float] = []
    left = [n]
    t_end = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        for _ in range(min(5, n)):  # warm the connections and the code paths
            (await client.post(url, json=BODY)).raise_for_status()

        async def worker() -> None:
            while left[0] > 0 and time.monotonic() < t_end:
                left[0] -= 1
                t0 = time.perf_counter()
                r = await client.post(url, json=BODY)
                lat.append(time.perf_counter() - t0)
                r.raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - t0
    return np.array(lat), wall


def phase(name: str, url: str, args) -> dict:
    seq, _ = asyncio.run(load(url, args.requests, args.seconds, 1))
    par, wall = asyncio.run(load(url, args.requests, args.seconds, args.concurrency))
    out = {"p50": np.percentile(seq, 50) * 1e3, "p99": np.percentile(seq, 99) * 1e3,
           "rps": par.size / wall, "n_seq": seq.size, "n_par": par.size}
    print(f"  {name:<28} 1 client: p50 {out['p50']:6.2f} ms  p99 {out['p99']:6.2f} ms "
          f"({out['n_seq']} req)   {args.concurrency} clients: {out['rps']:6.0f} req/s "
          f"({out['n_par']} req)", flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--role", choices=("bench", "proxy"), default="bench",
                    help=argparse.SUPPRESS)
    ap.add_argument("--upstream", help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--predictor", default="both",
                    help="fake, a predictor directory, or both (fake and checkpoints/default)")
    ap.add_argument("--requests", type=int, default=400, help="cap per phase")
    ap.add_argument("--seconds", type=float, default=15.0, help="time cap per phase")
    ap.add_argument("--concurrency", type=int, default=16)
    args = ap.parse_args()
    if args.role == "proxy":
        run_proxy(args.upstream, args.port, args.predictor)
        return 0

    from clear_learn.serve.testing import free_port

    predictors = (["fake", str(ROOT / "checkpoints" / "default")] if args.predictor == "both"
                  else [args.predictor])
    print(f"bench_serve: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
          f"(other work on the machine inflates these figures)", flush=True)
    up_port = free_port()
    up = start(["-m", "clear_learn.serve.testing", "--port", str(up_port)])
    procs = [up]
    try:
        wait_http(f"http://127.0.0.1:{up_port}/v1/models", 60)
        direct = phase("direct to the stub", f"http://127.0.0.1:{up_port}/v1/chat/completions",
                       args)
        for pred in predictors:
            port = free_port()
            px = start([__file__, "--role", "proxy", "--upstream",
                        f"http://127.0.0.1:{up_port}/v1", "--port", str(port),
                        "--predictor", pred])
            procs.append(px)
            try:
                wait_http(f"http://127.0.0.1:{port}/health", 180)
                label = "proxy, fake predictor" if pred == "fake" else "proxy, " + Path(pred).name
                via = phase(label, f"http://127.0.0.1:{port}/v1/chat/completions", args)
                print(f"    added by the proxy: p50 {via['p50'] - direct['p50']:+.2f} ms, "
                      f"p99 {via['p99'] - direct['p99']:+.2f} ms; throughput "
                      f"{via['rps']:.0f} req/s ({via['rps'] / direct['rps']:.0%} of direct)",
                      flush=True)
            finally:
                stop(px)
    finally:
        for p in procs:
            stop(p)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
