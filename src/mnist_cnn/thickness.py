"""Stroke width: measured as on MNIST's digits, and brought into MNIST's band when a pen was finer or bolder.

A digit written with a fine pen and framed to 20 px leaves faint, broken hairlines; a marker's strokes
fill a 6's or an 8's loops. MNIST shows neither, so :func:`even_strokes` widens or thins the strokes
of a cropped digit (in ink units, bright on black) before :mod:`mnist_cnn.preprocess` frames it.
Nothing here knows about files or records.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

BOX = 20  # MNIST: the longer side of the digit is 20 px (widths here are in px of that box)
STROKE_SIDE = 80  # px: strokes are measured (and widened) with the digit's longer side at this size
THIN_STROKE, STROKE = 1.7, 2.0  # px in MNIST's 20-px box: MNIST's thinnest 5% of strokes, and its lower quartile ...
THICK_STROKE, BOLD_STROKE = 3.6, 3.1  # ... its boldest 4%, and its boldest 10%
BLOT = 5.5  # ... and "strokes" wider than this (MNIST's boldest 0.1%; a dot, a smear) are no pen's: left as they are
STROKE_TOLERANCE = 0.25  # px in the 20-px box: an evened stroke this close to its target is left


def resize_longer(crop: np.ndarray, side: int) -> np.ndarray:
    """``crop`` (float) with its longer side scaled to ``side`` px, aspect kept, each side at least 1 px.
    Pillow's filters widen with the reduction factor, so shrinking averages (anti-aliases) instead of
    skipping pixels; growing interpolates."""
    h, w = crop.shape
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(crop, "F").resize(size, Image.Resampling.BILINEAR), dtype=np.float32)


def stroke_width(ink: np.ndarray) -> float:
    """The digit's mean stroke width in px of MNIST's 20-px box: its ink's area over half its outline's length.

    ``ink`` is float (H, W) in 0-1, cropped to the digit. MNIST's own digits measure 1.7 px (thinnest
    5%), 2.3 (median) and 3.1 (thickest 10%); a stroke thinner than a pixel at the measuring size
    reads as that pixel.
    """
    big = np.pad(resize_longer(ink, STROKE_SIDE), 1)
    gy, gx = np.gradient(big)
    outline = float(np.hypot(gx, gy).sum())
    return 2 * float(big.sum()) / max(outline, 1e-6) * BOX / STROKE_SIDE


def _disk(radius: float) -> np.ndarray:
    reach = int(np.ceil(radius))
    yy, xx = np.mgrid[-reach : reach + 1, -reach : reach + 1]
    return xx**2 + yy**2 <= radius**2 + 0.25


def _pen_change(width: float, target: float) -> float:
    """The radius (px at ``STROKE_SIDE``) that brings strokes of ``width`` to ``target`` once re-framed.

    Growing each stroke by r grows the digit's box by 2r too, and framing scales the box back to
    20 px: (w + 2r) / (L + 2r) = t / 20 with w, L at ``STROKE_SIDE`` (L = STROKE_SIDE) and the same
    with -r for thinning, so r = |t - w| / 2 * L / 20 / (1 - t / 20).
    """
    return abs(target - width) / 2 * STROKE_SIDE / BOX / (1 - target / BOX)


def _restroke(big: np.ndarray, width: float, target: float) -> np.ndarray:
    """``big`` (at ``STROKE_SIDE``) with its strokes grown or shrunk towards ``target``, cropped to its ink."""
    disk = _disk(_pen_change(width, target))
    if target > width:
        big = ndimage.grey_dilation(np.pad(big, disk.shape[0] // 2), footprint=disk)
    else:
        big = ndimage.grey_erosion(big, footprint=disk)
    rows, cols = np.nonzero(big.max(1) > 0)[0], np.nonzero(big.max(0) > 0)[0]
    if rows.size == 0:
        return big
    return big[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def even_strokes(crop: np.ndarray) -> tuple[np.ndarray, float, str | None]:
    """A digit written with a finer or a bolder pen than MNIST's is brought to MNIST's stroke width.

    Strokes thinner than ``THIN_STROKE`` are widened to ``STROKE``, and strokes wider than
    ``THICK_STROKE`` (but no ``BLOT``) are thinned to ``BOLD_STROKE``, by a grey dilation or erosion
    with a disk at ``STROKE_SIDE``; a second step, measured again, takes up what the first left
    (soft edges and filled loops move less than the disk's radius). Returns the crop (as it was, or
    at ``STROKE_SIDE`` and cropped to its ink), its size over the input's, and a note for the
    record when it was changed.
    """
    width = stroke_width(crop)
    if THIN_STROKE <= width <= THICK_STROKE or width > BLOT:
        return crop, 1.0, None
    target = STROKE if width < THIN_STROKE else BOLD_STROKE
    big = resize_longer(crop, STROKE_SIDE)
    grown = big.shape[0] / crop.shape[0]
    evened = _restroke(big, width, target)
    left = stroke_width(evened) if evened.max() > 0 else target
    if abs(left - target) > STROKE_TOLERANCE:
        grown *= STROKE_SIDE / max(evened.shape)
        evened = _restroke(resize_longer(evened, STROKE_SIDE), left, target)
    if evened.max() <= 0:  # eroded away: the strokes were no strokes; keep what was found
        return crop, 1.0, None
    return evened, grown, f"stroke width evened ({width:.1f} -> {target} px in the 20-px box)"
