"""How a predictor's encoder runs at inference: PyTorch, or ONNX Runtime for serving.

- ``torch``: the encoder as trained (LoRA adapters applied on the fly); the default.
- ``onnx``: the encoder with its LoRA merged into the weights and its mean pooling, exported
  once to ONNX and run by ONNX Runtime: the same numbers to about 1e-6, with fused kernels and
  less overhead per call (``benchmarks/bench_predict.py``).

8-bit weights (ONNX Runtime's dynamic quantisation, per channel) were measured and left out:
on 256 mixed texts about 10% more queries per second than ``onnx`` at batch 64, for changes of
``p`` up to 0.09.

The exported graph is cached under ``$CLEAR_LEARN_CACHE/onnx`` (default
``~/.cache/clear-learn/onnx``), keyed by the hash of the merged weights, so a predictor is
exported once per machine; the file is written atomically. Needs ``onnxruntime`` and ``onnx``
(``pip install 'clear-learn[fast]'``).
"""

from __future__ import annotations

import copy
import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

__all__ = ["RUNTIMES", "OnnxEncoder", "check_runtime"]

RUNTIMES = ("torch", "onnx")
_OPSET = 17


def check_runtime(runtime: str) -> str:
    """``runtime`` if it is one of :data:`RUNTIMES`, else a ValueError naming them."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}; got {runtime!r}")
    return runtime


def _cache_root() -> Path:
    from ..generation.models import cache_dir

    return cache_dir() / "onnx"


def _pooled_module(model):
    """A copy of ``model``'s encoder, LoRA merged into its weights, as a module
    ``(input_ids, attention_mask) -> pooled`` (:meth:`~.model.CurveModel.pooled`): what is
    exported."""
    import torch

    from .model import CurveModel

    enc = copy.deepcopy(model.encoder)
    if hasattr(enc, "merge_and_unload"):  # peft: fold the LoRA deltas into the weights
        enc = enc.merge_and_unload()

    class Pooled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = enc

        def forward(self, input_ids, attention_mask):
            return CurveModel.pooled(self, input_ids, attention_mask)

    return Pooled().eval()


def _weights_key(module) -> str:
    import onnxruntime

    h = hashlib.sha256(f"opset{_OPSET} ort{onnxruntime.__version__}".encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:24]


class OnnxEncoder:
    """An ONNX Runtime session computing a :class:`~.model.CurveModel`'s pooled encoding.

    ``model``: the trained curve model (left untouched: the export works on a merged copy);
    ``threads``: ONNX Runtime's intra-op threads (default: torch's); ``cache``: where the
    exported graph is kept (default ``$CLEAR_LEARN_CACHE/onnx``). Call with int64
    ``input_ids`` and ``attention_mask`` arrays.
    """

    def __init__(self, model, *, threads: int | None = None,
                 cache: str | os.PathLike | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - depends on the install
            raise ImportError("runtime 'onnx' needs onnxruntime and onnx: "
                              "pip install 'clear-learn[fast]'") from e
        import torch

        pooled = _pooled_module(model)
        root = Path(cache) if cache is not None else _cache_root()
        self.path = root / f"encoder-{_weights_key(pooled)}.onnx"
        if not self.path.is_file():
            _export(pooled, self.path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no busy-waiting between runs: the head (torch) and the server share the cores
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.path), opts,
                                            providers=["CPUExecutionProvider"])

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """The pooled encodings, float32 of shape ``(batch, hidden)``."""
        feeds = {"input_ids": np.asarray(input_ids, dtype=np.int64),
                 "attention_mask": np.asarray(attention_mask, dtype=np.int64)}
        return self.session.run(None, feeds)[0]


def _export(pooled, path: Path) -> None:
    """Export ``pooled`` to ``path`` atomically (a killed export leaves only its temp dir,
    which is removed with it or by the next export's cleanup of its own)."""
    import torch

    path.parent.mkdir(parents=True, exist_ok=True)
    ids = torch.ones((2, 8), dtype=torch.long)
    mask = torch.ones((2, 8), dtype=torch.long)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".export-") as tmp:
        plain = Path(tmp) / path.name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(pooled, (ids, mask), str(plain),
                              input_names=["input_ids", "attention_mask"],
                              output_names=["pooled"], opset_version=_OPSET, dynamo=False,
                              dynamic_axes={"input_ids": {0: "batch", 1: "tokens"},
                                            "attention_mask": {0: "batch", 1: "tokens"},
                                            "pooled": {0: "batch"}})
        os.replace(plain, path)  # same folder: atomic
