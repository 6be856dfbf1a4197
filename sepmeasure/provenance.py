"""Seeds, library versions and the git commit: what is recorded next to every result."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import random
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["seed_everything", "library_versions", "git_commit", "environment_info"]

_LIBRARIES = ("sepmeasure", "torch", "numpy", "scipy", "pandas", "scikit-learn", "cvxpy", "mnist1d")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and every CUDA device); return a CPU generator with that seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that results depend on (``"absent"`` when not installed)."""
    out = {"python": platform.python_version()}
    for lib in _LIBRARIES:
        try:
            out[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            out[lib] = "absent"
    return out


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The commit of the git checkout holding ``path`` (default: this package), or None."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment_info(device: torch.device | str | None = None) -> dict[str, Any]:
    """Versions, git commit, platform and device: one flat dict to store beside a result."""
    info: dict[str, Any] = {f"version_{k}": v for k, v in library_versions().items()}
    info["git_commit"] = git_commit()
    info["platform"] = platform.platform()
    dev = torch.device(device) if device is not None else torch.device("cpu")
    info["device"] = str(dev)
    if dev.type == "cuda" and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(dev)
    return info
