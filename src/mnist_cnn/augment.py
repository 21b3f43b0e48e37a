"""Data augmentation on whole batches with torch ops: random affine maps, elastic distortion, and
the ways other pens, scanners and crops change a digit (stroke width, pencil, blur, low resolution,
a digit cut by the frame's edge).

Everything runs on the batch's device (CPU or GPU) with one ``affine_grid``/``grid_sample`` per
batch; the random parameters come from a seeded CPU generator, so a run repeats exactly on any
device. No torchvision: there is no CPU build of it on the machines we target. A transform whose
range is 0 draws nothing from the generator, so adding one never changes the draws of the others.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

MAX_STROKE = 3.0  # px: beyond this a 28x28 digit is a blob or gone
MAX_BLUR = 3.0  # px
MIN_LOWRES = 4  # px: the smallest side a digit may be reduced to


@dataclass(frozen=True)
class Augmentation:
    """Ranges of the random transforms; each sample gets its own draw, uniform in ``[-r, r]``.

    ``rotate`` and ``shear`` are in degrees, ``scale`` is a relative change (0.1: 90%-110% size),
    ``translate`` a fraction of the image side, ``elastic`` the strength of an elastic distortion
    in pixels (Simard et al. 2003), smoothed by a Gaussian of ``elastic_sigma`` pixels.

    The corruptions below each hit a sample with probability ``corrupt_p`` (the others keep the
    clean digit), at a strength uniform in their range: ``stroke`` thickens or thins the strokes by
    up to that many pixels (grey-scale dilation/erosion), ``pencil`` fades the ink by up to that
    fraction with grain, ``blur`` is a Gaussian of up to that many pixels, ``lowres`` the smallest
    side (px) the digit is reduced to and scaled back up from, and ``crop`` the largest fraction of
    the ink cut off at one side, as by a tight frame.
    """

    rotate: float = 0.0
    scale: float = 0.0
    shear: float = 0.0
    translate: float = 0.0
    elastic: float = 0.0
    elastic_sigma: float = 4.0
    stroke: float = 0.0
    pencil: float = 0.0
    blur: float = 0.0
    lowres: int = 0
    crop: float = 0.0
    corrupt_p: float = 0.5

    def __post_init__(self):
        for name in ("rotate", "scale", "shear", "translate", "elastic", "stroke", "blur", "lowres"):
            if getattr(self, name) < 0:
                raise ValueError(f"augmentation {name} must be >= 0, got {getattr(self, name)}")
        if self.scale >= 1:
            raise ValueError(f"augmentation scale must be < 1 (a relative change), got {self.scale}")
        for name in ("pencil", "crop"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"augmentation {name} must be in [0, 1) (a fraction), got {getattr(self, name)}")
        if self.elastic_sigma <= 0:
            raise ValueError(f"elastic_sigma must be > 0, got {self.elastic_sigma}")
        if self.stroke > MAX_STROKE or self.blur > MAX_BLUR:
            raise ValueError(f"augmentation stroke must be <= {MAX_STROKE} px and blur <= {MAX_BLUR} px")
        if self.lowres and not MIN_LOWRES <= self.lowres < 28:
            raise ValueError(f"augmentation lowres must be 0 (off) or a side in {MIN_LOWRES}-27 px, got {self.lowres}")
        if not 0 < self.corrupt_p <= 1:
            raise ValueError(f"augmentation corrupt_p must be in (0, 1], got {self.corrupt_p}")

    @property
    def geometric(self) -> bool:
        return any((self.rotate, self.scale, self.shear, self.translate, self.elastic))

    @property
    def active(self) -> bool:
        return self.geometric or any((self.stroke, self.pencil, self.blur, self.lowres, self.crop))

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


def _draw(n: int, low: float, high: float, aug: Augmentation, generator: torch.Generator | None) -> torch.Tensor:
    """Each sample's strength: uniform in [low, high] for the share ``corrupt_p`` it hits, else 0 (float64, CPU)."""
    hit = torch.rand(n, generator=generator, dtype=torch.float64) < aug.corrupt_p
    return (low + torch.rand(n, generator=generator, dtype=torch.float64) * (high - low)) * hit


def _per_sample(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.to(device=like.device, dtype=like.dtype).view(-1, 1, 1, 1)


def stroke_width(ink: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """Thicken (amount > 0) or thin each digit by ``amount`` (n,) px: grey-scale dilation/erosion.

    ``ink`` (B, C, H, W) is 0 on the paper. Whole pixels are 3x3 max-pools (of the ink, or of its
    negative); fractions blend two neighbouring steps. A thinned digit keeps its peak ink level, as
    preprocessing would stretch it; one that would vanish is left as it was.
    """
    steps = int(math.ceil(float(amount.abs().max()))) if len(amount) else 0
    if steps == 0:
        return ink
    thicker, thinner = [ink], [ink]
    for _ in range(steps):
        thicker.append(F.max_pool2d(thicker[-1], 3, 1, 1))
        thinner.append(-F.max_pool2d(-thinner[-1], 3, 1, 1))
    a = amount.abs().to(ink.device)
    k = a.floor().long().clamp(max=steps - 1)
    rows = torch.arange(len(ink), device=ink.device)
    frac = _per_sample(a - k, ink)

    def blend(levels: list[torch.Tensor]) -> torch.Tensor:
        stack = torch.stack(levels)  # (steps + 1, B, C, H, W)
        return stack[k, rows] * (1 - frac) + stack[k + 1, rows] * frac

    peak = ink.amax(dim=(1, 2, 3), keepdim=True)
    thin = blend(thinner)
    thin_peak = thin.amax(dim=(1, 2, 3), keepdim=True)
    thin = torch.where(thin_peak > 0.25 * peak, thin * peak / thin_peak.clamp_min(1e-8), ink)
    return torch.where(_per_sample(amount, ink) > 0, blend(thicker), thin)


def pencil(ink: torch.Tensor, fade: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Fade each digit's ink by ``fade`` (n,) on average, grainy: every pixel loses 50-100% of that."""
    grain = torch.rand(ink.shape, generator=generator).to(device=ink.device, dtype=ink.dtype)
    return ink * (1 - _per_sample(fade, ink) * (0.5 + 0.5 * grain))


def gaussian_blur(ink: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image by a Gaussian of ``sigma`` (n,) px (0: unchanged); one grouped convolution per axis."""
    n, c, h, w = ink.shape
    radius = max(1, int(math.ceil(3 * float(sigma.max())))) if n else 1
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-(t**2) / (2 * sigma.view(-1, 1).clamp_min(1e-3) ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0).to(device=ink.device, dtype=ink.dtype)
    y = ink.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0)), k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius)), k.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)


def low_resolution(ink: torch.Tensor, sides: torch.Tensor) -> torch.Tensor:
    """Reduce each image to ``sides`` (n,) px square (averaging) and scale it back up (bilinear).

    A side >= the image's leaves it unchanged.
    """
    h, w = ink.shape[-2:]
    out = ink.clone()
    for side in sides.unique().tolist():
        if side >= min(h, w):
            continue
        idx = (sides == side).nonzero().squeeze(1).to(ink.device)
        small = F.interpolate(ink[idx], size=(side, side), mode="area")
        out[idx] = F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)
    return out


def _extent(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last index of True in each row of ``mask`` (B, L); (0, L - 1) for an empty row."""
    length = mask.shape[1]
    first = mask.int().argmax(1)
    last = length - 1 - mask.flip(1).int().argmax(1)
    return first, last


def cut_edge(ink: torch.Tensor, frac: torch.Tensor, side: torch.Tensor) -> torch.Tensor:
    """Cut ``frac`` (n,) of each digit's ink box off at ``side`` (n,: 0 top, 1 bottom, 2 left, 3 right),
    as a frame drawn too tight does; frac 0 leaves the digit as it was.

    The rest is framed again like MNIST and preprocessing frame a digit: its longer side 20 px
    of 28, its centre of mass at the centre.
    """
    n, _, h, w = ink.shape
    grey = ink.amax(1)  # (B, H, W)
    mask = grey > 0.1 * grey.amax(dim=(1, 2), keepdim=True).clamp_min(1e-8)
    r0, r1 = _extent(mask.any(2))
    c0, c1 = _extent(mask.any(1))
    f = frac.to(ink.device, torch.float32)
    rows = torch.arange(h, device=ink.device).view(1, h, 1)
    cols = torch.arange(w, device=ink.device).view(1, 1, w)

    def line(v: torch.Tensor) -> torch.Tensor:
        return v.float().view(-1, 1, 1)

    s = side.to(ink.device).view(-1, 1, 1)
    cut_r, cut_c = f.view(-1, 1, 1) * line(r1 - r0 + 1), f.view(-1, 1, 1) * line(c1 - c0 + 1)
    keep = torch.where(s == 0, rows >= line(r0) + cut_r, rows <= line(r1) - cut_r)
    keep = torch.where(s >= 2, torch.where(s == 2, cols >= line(c0) + cut_c, cols <= line(c1) - cut_c), keep)
    keep = keep | (f.view(-1, 1, 1) == 0)
    cut = ink * keep.unsqueeze(1).to(ink.dtype)
    hit = (frac > 0).nonzero().squeeze(1).to(ink.device)
    if len(hit):
        cut[hit] = _reframe(cut[hit])
    return cut


def _reframe(ink: torch.Tensor) -> torch.Tensor:
    """Scale each image's ink box so its longer side is 20 px of 28 and move its centre of mass to the centre."""
    n, _, h, w = ink.shape
    grey = ink.amax(1)
    mask = grey > 0.1 * grey.amax(dim=(1, 2), keepdim=True).clamp_min(1e-8)
    r0, r1 = _extent(mask.any(2))
    c0, c1 = _extent(mask.any(1))
    longest = torch.maximum(r1 - r0 + 1, c1 - c0 + 1).to(torch.float64)
    mass = grey.to(torch.float64).clamp_min(0)
    total = mass.sum(dim=(1, 2)).clamp_min(1e-8)
    cy = (mass.sum(2) * torch.arange(h, device=ink.device)).sum(1) / total
    cx = (mass.sum(1) * torch.arange(w, device=ink.device)).sum(1) / total
    scale = (longest / (20 / 28 * max(h, w))).cpu()  # input pixels per output pixel
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = theta[:, 1, 1] = scale
    # affine_grid's coordinates: pixel i sits at (2i + 1) / size - 1; the centre of mass goes to the middle pixel.
    theta[:, 0, 2] = (2 * cx.cpu() + 1) / w - 1 - scale * ((2 * (w // 2) + 1) / w - 1)
    theta[:, 1, 2] = (2 * cy.cpu() + 1) / h - 1 - scale * ((2 * (h // 2) + 1) / h - 1)
    grid = F.affine_grid(theta.to(device=ink.device, dtype=ink.dtype), list(ink.shape), align_corners=False)
    return F.grid_sample(ink, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _geometric(ink: torch.Tensor, aug: Augmentation, generator: torch.Generator | None) -> torch.Tensor:
    n, _, h, w = ink.shape
    theta = affine_matrices(n, aug, generator).to(device=ink.device, dtype=ink.dtype)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    if aug.elastic > 0:
        grid = grid + elastic_offsets(n, h, w, aug, generator).to(device=ink.device, dtype=ink.dtype)
    return F.grid_sample(ink, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def augment(
    x: torch.Tensor, aug: Augmentation, generator: torch.Generator | None = None, fill: float = 0.0
) -> torch.Tensor:
    """Apply the random transforms ``aug`` names to a batch; labels are unchanged by design.

    In the order a digit meets them: the pen (stroke width, pencil), the hand (affine, elastic),
    the frame (a cut edge), the camera or scanner (blur, low resolution).
    """
    if x.dim() != 4:
        raise ValueError(f"expected a batch of shape (B, C, H, W), got {tuple(x.shape)}")
    if not aug.active or len(x) == 0:
        return x
    n = len(x)
    ink = x - fill  # the transforms assume paper at zero (grid_sample pads with zeros)
    if aug.stroke > 0:
        ink = stroke_width(ink, _draw(n, -aug.stroke, aug.stroke, aug, generator))
    if aug.pencil > 0:
        ink = pencil(ink, _draw(n, 0, aug.pencil, aug, generator), generator)
    if aug.geometric:
        ink = _geometric(ink, aug, generator)
    if aug.crop > 0:
        ink = cut_edge(ink, _draw(n, 0, aug.crop, aug, generator), torch.randint(4, (n,), generator=generator))
    if aug.blur > 0:
        ink = gaussian_blur(ink, _draw(n, 0, aug.blur, aug, generator))
    if aug.lowres > 0:
        sides = torch.randint(aug.lowres, x.shape[-1] + 1, (n,), generator=generator)
        hit = torch.rand(n, generator=generator) < aug.corrupt_p
        ink = low_resolution(ink, torch.where(hit, sides, x.shape[-1]))
    return ink + fill
