"""Data augmentation on whole batches with torch ops: random affine maps and elastic distortion.

Everything runs on the batch's device (CPU or GPU) with one ``affine_grid``/``grid_sample`` per
batch; the random parameters come from a seeded CPU generator, so a run repeats exactly on any
device. No torchvision: there is no CPU build of it on the machines we target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random transforms; each sample gets its own draw, uniform in ``[-r, r]``.

    ``rotate`` and ``shear`` are in degrees, ``scale`` is a relative change (0.1: 90%-110% size),
    ``translate`` a fraction of the image side, ``elastic`` the strength of an elastic distortion
    in pixels (Simard et al. 2003), smoothed by a Gaussian of ``elastic_sigma`` pixels.
    """

    rotate: float = 0.0
    scale: float = 0.0
    shear: float = 0.0
    translate: float = 0.0
    elastic: float = 0.0
    elastic_sigma: float = 4.0

    def __post_init__(self):
        for name in ("rotate", "scale", "shear", "translate", "elastic"):
            if getattr(self, name) < 0:
                raise ValueError(f"augmentation {name} must be >= 0, got {getattr(self, name)}")
        if self.scale >= 1:
            raise ValueError(f"augmentation scale must be < 1 (a relative change), got {self.scale}")
        if self.elastic_sigma <= 0:
            raise ValueError(f"elastic_sigma must be > 0, got {self.elastic_sigma}")

    @property
    def active(self) -> bool:
        return any((self.rotate, self.scale, self.shear, self.translate, self.elastic))

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None, fill: float = 0.0) -> torch.Tensor:
        """Transform a batch ``x`` of shape (B, C, H, W); areas moved in from outside get ``fill``."""
        return augment(x, self, generator, fill)


def _uniform(n: int, r: float, generator: torch.Generator | None) -> torch.Tensor:
    return (torch.rand(n, generator=generator, dtype=torch.float64) * 2 - 1) * r


def affine_matrices(n: int, aug: Augmentation, generator: torch.Generator | None = None) -> torch.Tensor:
    """(n, 2, 3) float64 matrices in ``affine_grid``'s normalised coordinates, drawn on the CPU."""
    angle = _uniform(n, math.radians(aug.rotate), generator)
    shear = _uniform(n, math.radians(aug.shear), generator)
    scale = 1 + _uniform(n, aug.scale, generator)
    shift = _uniform(2 * n, 2 * aug.translate, generator).view(n, 2)  # normalised coordinates span 2
    cos, sin, tan = angle.cos(), angle.sin(), shear.tan()
    # rotation @ shear-along-x @ isotropic scale; affine_grid maps output pixels to input positions.
    theta = torch.empty(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = cos * scale
    theta[:, 0, 1] = (cos * tan - sin) * scale
    theta[:, 1, 0] = sin * scale
    theta[:, 1, 1] = (sin * tan + cos) * scale
    theta[:, :, 2] = shift
    return theta


def _gaussian_kernel(sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    return k / k.sum()


def elastic_offsets(
    n: int, h: int, w: int, aug: Augmentation, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Smooth random displacement fields (n, h, w, 2) in normalised coordinates, drawn on the CPU."""
    field = torch.rand(n * 2, 1, h, w, generator=generator) * 2 - 1
    k = _gaussian_kernel(aug.elastic_sigma)
    pad = len(k) // 2
    field = F.conv2d(F.pad(field, (pad, pad, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    field = F.conv2d(F.pad(field, (0, 0, pad, pad), mode="replicate"), k.view(1, 1, -1, 1))
    field = field / field.abs().amax(dim=(2, 3), keepdim=True).clamp_min(1e-8)  # peak displacement = elastic
    field = field.view(n, 2, h, w).permute(0, 2, 3, 1)
    return field * aug.elastic * torch.tensor([2.0 / w, 2.0 / h])


def augment(
    x: torch.Tensor, aug: Augmentation, generator: torch.Generator | None = None, fill: float = 0.0
) -> torch.Tensor:
    """Apply random affine maps (and elastic distortion) to a batch; labels are unchanged by design."""
    if x.dim() != 4:
        raise ValueError(f"expected a batch of shape (B, C, H, W), got {tuple(x.shape)}")
    if not aug.active or len(x) == 0:
        return x
    n, _, h, w = x.shape
    theta = affine_matrices(n, aug, generator).to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    if aug.elastic > 0:
        grid = grid + elastic_offsets(n, h, w, aug, generator).to(device=x.device, dtype=x.dtype)
    # grid_sample pads with zeros: shift so the background is zero, then shift back.
    return F.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + fill
