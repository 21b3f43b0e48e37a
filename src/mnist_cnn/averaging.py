"""Networks that average probabilities: test-time augmentation (TTA) and ensembles.

Each is an ``nn.Module`` that averages *probabilities* (of several views of an image, or of
several models) and returns their logarithm. Softmax of a log-probability is the probability
itself, so everything that works on logits (argmax, ``Classifier.predict_proba``, cross-entropy,
export) works unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

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
