"""Seeds, deterministic algorithms and what a run records about where it came from.

``--deterministic`` makes two runs with the same seed, on the same machine and thread count,
give bit-identical weights, and makes a resumed run continue exactly where it stopped.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import platform
import random
import subprocess
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

# Packages whose version can change a result or a file; recorded with every run when installed.
_PACKAGES = ("torch", "numpy", "safetensors", "scikit-learn", "optuna", "tensorboard")


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and PyTorch (every device); with ``deterministic`` also refuse
    non-deterministic kernels and turn off cuDNN's benchmark-based algorithm choice."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        # cuBLAS needs a fixed workspace to be deterministic; it reads this when it starts.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True


def package_versions() -> dict:
    """Installed versions of the packages that matter for a run, plus Python's and the platform."""
    found = {}
    for name in _PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    found["torch"] = torch.__version__  # includes the build (+cpu, +cu124)
    found["python"] = platform.python_version()
    found["platform"] = platform.platform()
    return found


def git_commit(path: str | os.PathLike | None = None) -> dict | None:
    """The commit of the git checkout holding ``path`` (default: this package), and whether it had
    uncommitted changes; None when it is not a checkout or git is not installed."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        run = lambda *args: subprocess.run(  # noqa: E731
            ["git", *args], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        commit = run("rev-parse", "HEAD")
        dirty = bool(run("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "dirty": dirty}
