"""Test-time augmentation and ensembles, each an ``nn.Module`` that returns log-probabilities.

Both average *probabilities* (of several views of an image, or of several models) and return
their logarithm. Softmax of a log-probability is the probability itself, so everything that
works on logits — argmax, ``Classifier.predict_proba``, cross-entropy, export — works unchanged.

An ensemble folder holds its members' folders (``members/0``, ``members/1``, ...) and a
``config.json`` whose architecture is ``"ensemble"``; :func:`mnist_cnn.load_model` loads it like
any other model folder.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .config import validation_of
from .errors import ModelFolderError

log = logging.getLogger(__name__)

ENSEMBLE = "ensemble"
MEMBERS = "members"

# (rotation in degrees, scale, shift right in pixels, shift down in pixels) of each TTA view.
TTA_VIEWS: tuple[tuple[float, float, float, float], ...] = (
    (0, 1.0, 0, 0),
    (-8, 1.0, 0, 0),
    (8, 1.0, 0, 0),
    (0, 0.9, 0, 0),
    (0, 1.1, 0, 0),
)


def _view_matrices(views: Sequence[tuple[float, float, float, float]], size: int = 28) -> torch.Tensor:
    theta = torch.zeros(len(views), 2, 3)
    for i, (deg, scale, dx, dy) in enumerate(views):
        a = math.radians(deg)
        # affine_grid maps output to input positions: the inverse of the view's transform.
        theta[i, 0, 0], theta[i, 0, 1] = math.cos(a) / scale, math.sin(a) / scale
        theta[i, 1, 0], theta[i, 1, 1] = -math.sin(a) / scale, math.cos(a) / scale
        theta[i, 0, 2], theta[i, 1, 2] = -2 * dx / size, -2 * dy / size
    return theta


class TTA(nn.Module):
    """Average a model's probabilities over fixed views of each image (small rotations and zooms)."""

    def __init__(self, model: nn.Module, views=TTA_VIEWS, fill: float = 0.0):
        super().__init__()
        self.model, self.views, self.fill = model, tuple(views), fill
        self.register_buffer("theta", _view_matrices(self.views), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        theta = self.theta.to(x.dtype).repeat_interleave(n, dim=0)  # view-major: (V*n, 2, 3)
        grid = F.affine_grid(theta, [len(theta), c, h, w], align_corners=False)
        xs = x.repeat(len(self.views), 1, 1, 1)
        views = F.grid_sample(xs - self.fill, grid, align_corners=False) + self.fill
        logp = F.log_softmax(self.model(views), dim=1).view(len(self.views), n, -1)
        return torch.logsumexp(logp, dim=0) - math.log(len(self.views))


class Ensemble(nn.Module):
    """Average the (calibrated) probabilities of several models."""

    def __init__(self, members: Sequence[nn.Module], temperatures: Sequence[float] | None = None):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(members)
        # Each member's own calibration temperature (1.0: none), so the average is of the same
        # probabilities each member's predict_proba gives.
        self.temperatures = tuple(temperatures) if temperatures is not None else (1.0,) * len(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logp = torch.stack(
            [F.log_softmax(m(x) / t, dim=1) for m, t in zip(self.members, self.temperatures, strict=True)]
        )
        return torch.logsumexp(logp, dim=0) - math.log(len(self.members))


def background(normalization: dict) -> float:
    """The normalised value of a blank (0) pixel: what areas moved in from outside should hold."""
    return -normalization["mean"] / normalization["std"]


def make_ensemble(runs: Sequence[str | os.PathLike], out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Copy the model folders ``runs`` into a new ensemble folder ``out``; return its path."""
    from .inference import CONFIG, WEIGHTS, load_model, write_json

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
    for i, run in enumerate(runs):
        dest = tmp / MEMBERS / str(i)
        dest.mkdir(parents=True)
        for name in (WEIGHTS, CONFIG):
            shutil.copy2(Path(run) / name, dest / name)
    accs = [m.config.get("metrics", {}).get("test_accuracy") for m in members]
    write_json(
        tmp / CONFIG,
        {
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


def load_ensemble(folder: Path, config: dict) -> nn.Module:
    from .inference import load_model

    entries = config.get("members")
    if not isinstance(entries, list) or not entries:
        raise ModelFolderError(f"{folder / 'config.json'} is an ensemble with no members")
    members, temperatures = [], []
    for entry in entries:
        sub = folder / str(entry.get("folder", "") if isinstance(entry, dict) else entry)
        if sub.resolve().parent.parent != folder.resolve():
            raise ModelFolderError(f"{folder}: ensemble member {sub} is outside the folder")
        member = load_model(sub)
        members.append(member.model)
        temperatures.append(member.temperature)
    return Ensemble(members, temperatures)
