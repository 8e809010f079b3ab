"""Load test of `clear-learn serve` on loopback: requests/s through the proxy, and the latency
it adds (p50, p99) over calling the same upstream directly.

Three processes: a fast stub upstream (clear_learn.serve.testing, 8-token answers), the proxy
(with a constant fake predictor, for the proxy's own overhead, and/or the real
checkpoints/default encoder), and this load generator (httpx, asyncio). Bounded: every phase
stops after ``--requests`` requests or ``--seconds`` seconds, whichever comes first, and the
servers are always stopped.

    python benchmarks/bench_serve.py                     # fake and real predictor
    python benchmarks/bench_serve.py --predictor fake --requests 500 --concurrency 32
    python benchmarks/bench_serve.py --predictor checkpoints/default --rate 150 \
        --queue-timeout-ms 250 --queue-timeout-ms null    # overload: shedding on and off

Aim (issue 19): under 15 ms added at p50 with one query per request, >= 200 requests/s.
Beyond the encoder's rate, an open-loop phase (``--rate``: arrivals that do not wait for each
other, as a service's users) shows what ``queue_timeout_ms`` buys: without it the encoder's
queue grows for as long as the overload lasts; with it, queries past the deadline are shed
(granted as the typical query) and the wait stays bounded.
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

from clear_learn.serve.config import ServeConfig
from clear_learn.serve.testing import wait_http

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BODY = {"model": "stub", "max_tokens": 300,
        "messages": [{"role": "user", "content": "What is 17 * 23? Show your steps."}]}


LONG = ("A train leaves the station at 9:40 and travels 84 km at a constant speed, stops for "
        "17 minutes, then covers the remaining 126 km at a speed 12 km/h higher than before. "
        "It arrives at 13:05. A second train leaves the same station 25 minutes after the "
        "first and keeps a constant speed the whole way. If both arrive at the same time, "
        "what is the second train's speed in km/h? Give your answer as a decimal number.")


class ConstPredictor:
    """The same easy curve for every text, at no cost."""

    max_new_tokens = 512

    def predict(self, texts, batch_context: bool = True):
        from clear_learn.curves import Curves

        n = len(texts)
        return Curves(np.full(n, 40.0), np.full(n, 0.9), np.full(n, 0.05))


def run_proxy(upstream: str, port: int, predictor: str, queue_timeout_ms: float | None
              ) -> None:
    """The proxy process (a fake predictor cannot be named on the command line)."""
    import uvicorn

    from clear_learn.serve.app import create_app
    from clear_learn.serve.config import ServeConfig

    cfg = ServeConfig(upstream=upstream, tokens_per_query=128, port=port, log_level="warning",
                      predictor=None if predictor == "fake" else predictor,
                      queue_timeout_ms=queue_timeout_ms).validate()
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


async def load_open(url: str, rate: float, seconds: float, seed: int = 0) -> np.ndarray:
    """Open loop: POST ``BODY`` at Poisson arrivals of ``rate`` a second for ``seconds``,
    whoever is still waiting (as users arrive, not as a fixed pool of clients); latencies
    in seconds, in arrival order."""
    import httpx

    rng = np.random.default_rng(seed)
    arrivals = np.cumsum(rng.exponential(1.0 / rate, int(rate * seconds * 1.5) + 10))
    arrivals = arrivals[arrivals < seconds]
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=256)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        for _ in range(5):
            (await client.post(url, json=BODY)).raise_for_status()

        async def one(at: float) -> float:
            await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
            t = time.perf_counter()
            r = await client.post(url, json=BODY)
            r.raise_for_status()
            return time.perf_counter() - t

        t0 = time.perf_counter()
        return np.array(await asyncio.gather(*[one(a) for a in arrivals]))


def shed_count(base: str) -> float | None:
    """The proxy's ``clear_shed_total`` (None for a server without it)."""
    import httpx

    try:
        text = httpx.get(base + "/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    return next((float(ln.split()[1]) for ln in text.splitlines()
                 if ln.startswith("clear_shed_total ")), None)


def phase(name: str, base: str, args) -> dict:
    url = base + "/v1/chat/completions"
    seq, _ = asyncio.run(load(url, args.requests, args.seconds, 1))
    shed0 = shed_count(base)
    par, wall = asyncio.run(load(url, args.requests, args.seconds, args.concurrency))
    shed1 = shed_count(base)
    out = {"p50": np.percentile(seq, 50) * 1e3, "p99": np.percentile(seq, 99) * 1e3,
           "rps": par.size / wall, "n_seq": seq.size, "n_par": par.size,
           "par_p50": np.percentile(par, 50) * 1e3, "par_p99": np.percentile(par, 99) * 1e3}
    shed = "" if shed0 is None or shed1 is None else f", shed {(shed1 - shed0) / par.size:.0%}"
    print(f"  {name:<28} 1 client: p50 {out['p50']:6.2f} ms  p99 {out['p99']:6.2f} ms "
          f"({out['n_seq']} req)   {args.concurrency} clients: {out['rps']:6.0f} req/s, "
          f"p50 {out['par_p50']:.0f} ms, p99 {out['par_p99']:.0f} ms ({out['n_par']} req"
          f"{shed})", flush=True)
    for rate in args.rate or []:
        shed0 = shed_count(base)
        lat = asyncio.run(load_open(url, rate, args.seconds))
        shed1 = shed_count(base)
        shed = "" if shed0 is None or shed1 is None else f", shed {(shed1 - shed0) / lat.size:.0%}"
        late = lat[lat.size // 2:]  # the second half of the arrivals: a queue shows as growth
        print(f"    {rate:g} arrivals/s for {args.seconds:g} s ({lat.size} req{shed}): "
              f"p50 {np.percentile(lat, 50) * 1e3:.0f} ms, p99 {np.percentile(lat, 99) * 1e3:.0f}"
              f" ms; second half p50 {np.percentile(late, 50) * 1e3:.0f} ms", flush=True)
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
    ap.add_argument("--long", action="store_true",
                    help="a long query (the encoder's 96 tokens) instead of a short one")
    ap.add_argument("--rate", type=float, action="append", metavar="R",
                    help="also an open-loop phase of R Poisson arrivals a second (repeatable)")
    ap.add_argument("--queue-timeout-ms", action="append", default=None, metavar="MS",
                    help="the proxy's queue_timeout_ms ('null': off); repeat to compare "
                         "(default: the config's default)")
    args = ap.parse_args()
    if args.long:
        BODY["messages"][0]["content"] = LONG
    timeouts = [None if t is None or t.lower() in ("null", "none") else float(t)
                for t in (args.queue_timeout_ms or [None])]
    if args.role == "proxy":
        run_proxy(args.upstream, args.port, args.predictor, timeouts[0] if
                  args.queue_timeout_ms else ServeConfig.queue_timeout_ms)
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
        direct = phase("direct to the stub", f"http://127.0.0.1:{up_port}", args)
        for pred, timeout in ((p, t) for p in predictors for t in args.queue_timeout_ms
                              or [None]):
            port = free_port()
            px = start([__file__, "--role", "proxy", "--upstream",
                        f"http://127.0.0.1:{up_port}/v1", "--port", str(port),
                        "--predictor", pred]
                       + ([] if timeout is None else ["--queue-timeout-ms", timeout]))
            procs.append(px)
            try:
                wait_http(f"http://127.0.0.1:{port}/health", 180)
                label = "proxy, fake predictor" if pred == "fake" else "proxy, " + Path(pred).name
                if timeout is not None:
                    label += f", queue_timeout_ms {timeout}"
                via = phase(label, f"http://127.0.0.1:{port}", args)
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
