"""Locating files shipped inside installed Python packages (weights, tokenizers)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["package_dir"]


def package_dir(name: str, what: str) -> Path:
    """The directory of installed package ``name``; ``what`` names the caller in errors."""
    found = importlib.util.find_spec(name)
    if found is None or not found.submodule_search_locations:
        raise FileNotFoundError(f"{what}: no installed package named {name!r} "
                                f"(pip install {name.replace('_', '-')})")
    return Path(next(iter(found.submodule_search_locations)))
