"""Crash-safe training checkpoints: written atomically, verified when read, the last K kept.

A checkpoint is one ``torch.save`` file of tensors and plain Python data only (model, optimiser,
scheduler and EMA state, random-number-generator states, epoch/step, history, the best weights so
far), read back with ``weights_only=True`` so that loading one never runs code. Beside each is a
small JSON manifest with its SHA-256, written last: a checkpoint without a manifest, or whose
bytes do not match it, is damaged (the machine died while writing) and the previous one is used.

Files are written with :func:`mnist_cnn.folder.atomic_write` (a temporary name in the same folder,
fsync, rename), so a crash at any moment leaves either the old set of checkpoints or the new one.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
from pathlib import Path

import torch

from .errors import MnistCnnError
from .folder import atomic_write

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
FORMAT_VERSION = 1
_NAME = re.compile(r"^step-(\d{9})\.pt$")


class CheckpointError(MnistCnnError):
    """No usable checkpoint to resume from."""

    exit_code = 2


class Checkpoints:
    """The checkpoints of one run, in ``run_dir/checkpoints``, named by global step."""

    def __init__(self, run_dir: str | os.PathLike, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep must be at least 1 checkpoint, got {keep}")
        self.folder = Path(run_dir) / CHECKPOINT_DIR
        self.keep = keep

    def paths(self) -> list[Path]:
        """Checkpoint files, oldest first (manifests and temporary files excluded)."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if _NAME.match(p.name))

    def save(self, state: dict, step: int) -> Path:
        """Write ``state`` as the checkpoint of global ``step``, then drop all but the newest K."""
        self.folder.mkdir(parents=True, exist_ok=True)
        buffer = io.BytesIO()
        torch.save({"format_version": FORMAT_VERSION, **state}, buffer)
        data = buffer.getvalue()
        path = self.folder / f"step-{step:09d}.pt"
        atomic_write(path, data)
        manifest = {"file": path.name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest(), "step": step}
        atomic_write(path.with_suffix(".json"), json.dumps(manifest) + "\n")
        self._rotate(path)
        for stray in self.folder.glob(".*.tmp"):  # left by a process killed while writing
            if not stray.name.endswith(f".{os.getpid()}.tmp"):
                stray.unlink(missing_ok=True)
        return path

    def _rotate(self, newest: Path) -> None:
        """Keep ``newest`` and the newest intact others, K in all; damaged ones go first, whatever their step.

        After a resume past damaged checkpoints (the machine died while writing them) those have the
        highest step numbers; keeping by step alone would delete the fresh, intact ones instead.
        """
        others = [p for p in reversed(self.paths()) if p != newest]
        intact = [p for p in others if _intact(p)]
        for old in [p for p in others if p not in intact[: self.keep - 1]]:
            old.with_suffix(".json").unlink(missing_ok=True)
            old.unlink(missing_ok=True)

    def load(self, path: Path) -> dict:
        """Read and verify one checkpoint; raise CheckpointError if it is damaged."""
        try:
            manifest = json.loads(path.with_suffix(".json").read_text())
            data = path.read_bytes()
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{path}: no readable manifest or data ({exc})") from None
        if not isinstance(manifest, dict):
            raise CheckpointError(f"{path}: its manifest is not a JSON object (damaged)")
        if len(data) != manifest.get("bytes") or hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
            raise CheckpointError(f"{path}: its bytes do not match its manifest (written partly, or damaged)")
        try:
            state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for a bad archive
            raise CheckpointError(f"{path}: cannot be read: {exc}") from None
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: holds a {type(state).__name__}, not a training state")
        if state.get("format_version", 0) > FORMAT_VERSION:
            raise CheckpointError(f"{path} was written by a newer mnist-cnn; upgrade to resume it")
        return state

    def latest(self) -> tuple[Path, dict] | None:
        """The newest checkpoint that reads back intact; damaged newer ones are logged and skipped."""
        for path in reversed(self.paths()):
            try:
                return path, self.load(path)
            except CheckpointError as exc:
                log.warning("skipping damaged checkpoint: %s", exc)
        return None


def _intact(path: Path) -> bool:
    """Do the checkpoint's bytes match its manifest (without unpickling anything)?"""
    try:
        manifest = json.loads(path.with_suffix(".json").read_text())
        data = path.read_bytes()
    except (OSError, ValueError):
        return False
    return (
        isinstance(manifest, dict)
        and len(data) == manifest.get("bytes")
        and hashlib.sha256(data).hexdigest() == manifest.get("sha256")
    )


def rng_states() -> dict:
    """The global random states that training draws from (dropout, and anything a user seeds)."""
    import random

    import numpy as np

    np_state = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype("int64")), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "python": _python_state_to_plain(random.getstate()),
    }  # fmt: skip
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    import random

    import numpy as np

    torch.set_rng_state(states["torch"])
    n = states["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype("uint32"), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate(_python_state_from_plain(states["python"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _python_state_to_plain(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _python_state_from_plain(state: list) -> tuple:
    version, internal, gauss = state
    return (version, tuple(internal), gauss)
