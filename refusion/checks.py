"""Checks the commands make before any slow work: where their output goes, and the device asked for."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import RefusionError


def output_dir(path: str | os.PathLike, option: str = "--output") -> Path:
    """`path` as a folder that exists or can be made there; otherwise a RefusionError naming the option."""
    path = Path(path).expanduser()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        inside = "" if existing == path else f": {existing}"
        raise RefusionError(f"{option} {path}{inside} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RefusionError(f"{option} {path}: cannot write in {existing}")
    return path


def device(name: str) -> str:
    """A device torch knows and can use here: cpu, cuda, cuda:N, mps, ..."""
    import torch

    try:
        torch.device(name)
    except (RuntimeError, TypeError):
        raise RefusionError(f"unknown device {name!r} (expected cpu, cuda, cuda:N, ...)") from None
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RefusionError(f"device {name!r} asked for, but torch sees no CUDA GPU")
    return name
