"""The paper's light as a smooth surface: a plane or a quadratic fitted to the pixels that are not ink.

:mod:`mnist_cnn.preprocess` subtracts it to find the ink under uneven light; nothing here knows about
files, records or polarity.
"""

from __future__ import annotations

import functools

import numpy as np

from .decode import downscale
from .shadow import least_squares
from .strokes import median, reduce_mask


def _axes(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates from -0.5 to 0.5: (H, 1) and (1, W)."""
    return (np.arange(h, dtype=np.float64)[:, None] / max(h - 1, 1) - 0.5,
            np.arange(w, dtype=np.float64)[None, :] / max(w - 1, 1) - 0.5)  # fmt: skip


@functools.lru_cache(maxsize=16)
def _design(h: int, w: int, terms: int) -> np.ndarray:
    """The surface's terms at every pixel, (H, W, terms): 1, x, y, x^2, xy, y^2 (the first ``terms``); read-only,
    kept for the last few shapes (photos from one camera or one page share theirs)."""
    yy, xx = np.broadcast_arrays(*_axes(h, w))
    design = np.stack([np.ones_like(xx), xx, yy, xx * xx, xx * yy, yy * yy][:terms], -1)
    design.flags.writeable = False
    return design


def _surface(h: int, w: int, coef: np.ndarray) -> np.ndarray:
    """``_design(h, w, len(coef)) @ coef`` without the (H, W, terms) array: (H, W) float64."""
    yy, xx = _axes(h, w)
    terms = [1.0, xx, yy, xx * xx, xx * yy, yy * yy][: len(coef)]
    return sum(c * t for c, t in zip(coef, terms, strict=True)) + np.zeros((h, w))


def background(grey: np.ndarray, paper: np.ndarray | None = None) -> np.ndarray:
    """A smooth estimate of the paper: a surface fitted to the pixels that are not ink.

    Fitted on a reduced copy with iterative outlier rejection (ink is the outlier, on either side):
    a quadratic surface for page-sized images, a plane for digit-sized ones (too few pixels to
    tell a curved light from the digit's shape), a constant for tiny ones. Without ``paper`` (a
    bool (H, W) mask of pixels known to be paper) the fit starts from the median, which assumes
    that the paper is the majority of the pixels; with it, the fit starts from those pixels.
    """
    h, w = grey.shape
    if min(h, w) < 16:
        return np.full_like(grey, float(median(grey if paper is None or not paper.any() else grey[paper])))
    terms = 6 if min(h, w) >= 48 else 3
    small, _ = downscale(grey, 96)
    basis = _design(*small.shape, terms).reshape(-1, terms)
    z = small.reshape(-1).astype(np.float64)
    if paper is None:
        known = np.ones(z.shape, bool)
        deviation = np.abs(z - median(z))
        keep = deviation < 2.5 * max(1.4826 * float(median(deviation)), 0.01)
    else:
        known = keep = reduce_mask(paper, small.shape).reshape(-1)
    coef = np.zeros(terms)
    for _ in range(5):
        if keep.sum() < 4 * terms:
            break
        coef = least_squares(np.compress(keep, basis, axis=0), z[keep])  # 4x faster than basis[keep], the same rows
        resid = z - basis @ coef
        # From known paper, the spread of the pixels kept so far: ink never sets the tolerance, nor joins the fit.
        spread = max(1.4826 * float(median(np.abs(resid if paper is None else resid[keep]))), 0.01)
        kept, keep = keep, known & (np.abs(resid) < 2.5 * spread)
        if np.array_equal(kept, keep):  # the next fit would be this one again
            break
    if not coef.any():
        return np.full_like(grey, float(median(grey)))
    return _surface(h, w, coef).astype(np.float32)
