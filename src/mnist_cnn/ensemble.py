"""Ensemble folders: several trained models whose probabilities are averaged.

An ensemble folder holds its members' folders (``members/0``, ``members/1``, ...) and a
``config.json`` whose architecture is ``"ensemble"``; :func:`mnist_cnn.load_model` loads it like
any other model folder (the averaging itself is :class:`mnist_cnn.averaging.Ensemble`).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from .averaging import TTA, TTA_VIEWS, Ensemble, background
from .config import validation_of
from .errors import ModelFolderError
from .folder import ENSEMBLE, FORMAT_VERSION, MEMBERS, ModelFolder, atomic_write
from .inference import load_ensemble, load_model

# Also importable from here, where the averaging networks lived before they had a module of their own.
__all__ = ["ENSEMBLE", "MEMBERS", "TTA", "TTA_VIEWS", "Ensemble", "background", "load_ensemble", "make_ensemble"]

log = logging.getLogger(__name__)


def make_ensemble(runs: Sequence[str | os.PathLike], out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Copy the model folders ``runs`` into a new ensemble folder ``out``; return its path."""
    if len(runs) < 2:
        raise ValueError("an ensemble needs at least two model folders")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ModelFolderError(f"{out} already exists and is not empty; choose another --out or pass --overwrite")
    members = [load_model(run) for run in runs]  # every member must load before anything is written
    norms = {str(m.normalization) for m in members}
    if len(norms) > 1:
        raise ModelFolderError("the models were trained with different input normalisations; they cannot be averaged")
    for m, run in zip(members, runs, strict=True):
        if m.config.get("architecture") == ENSEMBLE:
            raise ModelFolderError(f"{run} is itself an ensemble; list its members instead")
    splits = {validation_of(m.config) for m in members}
    shared = splits.pop() if len(splits) == 1 else None
    if shared is None:
        log.warning(
            "the members were selected on different validation splits, so the ensemble cannot be validated "
            "(or calibrated); train its members with one --split-seed"
        )
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for i, (run, member) in enumerate(zip(runs, members, strict=True)):
        dest = ModelFolder(tmp / MEMBERS / str(i))
        dest.path.mkdir(parents=True)
        atomic_write(dest.weights_path, ModelFolder(run).weights_path.read_bytes())
        dest.write(member.config)
    accs = [(m.config.get("metrics") or {}).get("test_accuracy") for m in members]
    ModelFolder(tmp).write(
        {
            "format_version": FORMAT_VERSION,
            "architecture": ENSEMBLE,
            "members": [{"folder": f"{MEMBERS}/{i}", "source": str(Path(run).resolve()),
                         "architecture": m.config.get("architecture"), "recipe": m.config.get("recipe"),
                         "test_accuracy": acc} for i, (run, m, acc) in enumerate(zip(runs, members, accs, strict=True))],
            "normalization": members[0].normalization,
            "labels": members[0].labels,
            **({"validation": {"val_split": shared[0], "seed": shared[1]}} if shared else {}),
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
    )  # fmt: skip
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
