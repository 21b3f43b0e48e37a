"""Turn any image of a handwritten digit into MNIST-format input: 28x28 uint8, white digit on black.

MNIST digits were made this way: ink on a clean background, the digit's bounding box scaled so
its longer side is 20 px (aspect ratio kept, anti-aliased), then placed in a 28x28 frame so that
its centre of mass sits at the centre. A photo, a scan or a web-canvas drawing looks nothing like
that until it goes through the same steps, which :func:`preprocess_image` applies:

1. decode (any format and mode Pillow reads; first frame of animations; EXIF orientation applied;
   the pixel count checked from the header before anything is decoded: :mod:`mnist_cnn.decode`),
2. find which side the ink is on (dark on light paper, or light on dark) and estimate the paper
   (a smooth surface, so uneven lighting goes away); invert so ink is bright. When the paper is
   most of the image it is fitted first; when the ink fills the frame (a tight crop) the border
   and stroke structure decide (:mod:`mnist_cnn.strokes`), and the paper is fitted to its own pixels,
3. a soft threshold around Otsu's level: paper and noise become 0, solid ink 1, edges stay grey,
4. remove ruled/squared-paper lines and a drawn box, drop specks, crop to the ink, bring a fine
   pen's or a marker's strokes into MNIST's width (:mod:`mnist_cnn.thickness`), scale the longer
   side to 20 px, centre by mass in 28x28.

>>> from mnist_cnn.preprocess import preprocess_image
>>> result = preprocess_image("photo.jpg")   # doctest: +SKIP
>>> result.array.shape, result.record.inverted   # doctest: +SKIP
((28, 28), True)

Everything that reads an image — the CLI, the Python API, the server — goes through here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

# Decoding lives in decode.py; its names (and the errors) stay importable from here, where they always were.
from .decode import LIMITS, WORK_SIDE, ImageLimits, PreprocessRecord, decode_image, downscale, readable_twice
from .decode import MAX_BYTES as MAX_BYTES
from .decode import MAX_PIXELS as MAX_PIXELS
from .errors import FormatNotAcceptedError as FormatNotAcceptedError
from .errors import ImageError as ImageError
from .errors import MissingImageError, NoDigitError, UnreadableFolderError
from .errors import NotAnImageError as NotAnImageError
from .errors import TooManyPixelsError as TooManyPixelsError
from .shadow import straight_shadow
from .strokes import dilate, long_runs, median, otsu, polarity_evidence, remove_lines, square_opening
from .surface import background
from .thickness import BOX, even_strokes, resize_longer

FRAME = 28  # MNIST: the digit, its longer side BOX (20) px, in a 28x28 frame
CENTRE = 14.0  # where MNIST's centre of mass sits (row and column index; measured on the training set)
MIN_CONTRAST = 0.08  # paper: a change of light under 8% of the full range (20 grey levels) is no shadow
MIN_INK = 0.05  # ink must differ from the paper by at least 5% of the full range (13 grey levels): faint pencil
MAX_INK_SHARE = 0.2  # ink on more of the image than this (a tight crop): no paper majority to fit to
NEAR_PIECE = 3.0  # px at working resolution: a piece of ink this close to the digit's is part of it (a pen's break)
MIN_SHADOW_LIGHT = 0.3  # a shadow leaves at least 30% of the light on the paper; ink reflects far less
SHADOW_SHRINK = 0.5  # a shadow: both polarities' closings leave under half the smooth fit's ink share
LOCAL_SIDE = 128  # shadows: the closing runs on a copy this size ...
LOCAL_ELEMENT = 0.25  # ... with an element this share of its longer side
PRINTED_LINE_SPAN = 0.35  # a printed line (ruling, a grid, a form's box) runs across this share of the image ...
FILLED_LINE_SPAN = 0.6  # ... or of a frame the ink fills (a tight crop), where the digit's own strokes run far
PRINTED_LINE_WIDTH = 4  # ... and is thinner than this (px, or 3% of its shorter side)
COARSE_SIDE = 400  # one digit in a larger image is first looked for in a copy this size (px, longer side) ...
COARSE_INK = 80  # ... and framed from it when its ink there is at least this long (px, longer side)
NOISY, DENOISE_SIGMA = 0.025, 1.0  # paper noise above 2.5% of the range (6 grey levels) is smoothed, sigma in px
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pbm")


@dataclass
class Preprocessed:
    array: np.ndarray  # (28, 28) uint8, white digit on black: what the model sees
    record: PreprocessRecord


# ----------------------------------------------------------------------------- ink


def _minority(resid: np.ndarray) -> float:
    """Share of the smaller side of Otsu's split of a residual: about the ink's share when the paper is flat."""
    lo, hi = float(resid.min()), float(resid.max())
    if hi - lo < 1e-6:
        return 0.0
    share = float((resid < lo + otsu((resid - lo) / (hi - lo)) * (hi - lo)).mean())
    return min(share, 1 - share)


def _flat_paper(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """The paper-majority fit: (surface, residual, share of the residual's minority side by Otsu's split)."""
    bg = background(grey)
    resid = grey - bg
    return bg, resid, _minority(resid)


def _two_classes(grey: np.ndarray, record: PreprocessRecord) -> np.ndarray:
    """For an image the ink fills (a tight crop, a cell of a form): the paper as a bool mask, the polarity decided.

    The image is split in two by Otsu's level; which side is ink is voted by the border, by
    stroke structure, by which side is in one piece and (weakly) by which side is smaller.
    """
    small, _ = downscale(grey, 128)
    dark_small = small < otsu(small)
    border, strokes, pieces = polarity_evidence(dark_small)
    share = 0.5 - float(dark_small.mean())
    score = border + strokes + pieces + share
    record.inverted = score > 0
    record.polarity = (
        f"{'dark' if record.inverted else 'light'} ink (ink fills the frame: border {border:+.2f}, "
        f"strokes {strokes:+.2f}, pieces {pieces:+.0f}, share {share:+.2f})"
    )
    dark = grey < otsu(grey)
    paper = ~dark if record.inverted else dark
    return ndimage.binary_erosion(paper, iterations=1, border_value=1)


def _paper(grey: np.ndarray, record: PreprocessRecord) -> tuple[np.ndarray, np.ndarray | None]:
    """(surface of the paper, bool mask of paper pixels or None); sets ``record.inverted`` and ``record.polarity``.

    Most images are mostly paper: a smooth surface fitted to the majority removes uneven light, the
    ink is the side (darker or lighter) with more strong deviations from it, and a closing (see
    :func:`_local_paper`) takes out a shadow's edge. When a shadow covers much of the page, no
    smooth surface fits: each polarity's closing is tried instead. When the ink is a large part of
    the image (a tight crop), no majority can be trusted: see :func:`_two_classes`.
    """
    bg, resid, minority = _flat_paper(grey)
    big = min(grey.shape) >= 32
    if minority < MAX_INK_SHARE:
        record.inverted = _more_dark_ink(resid)
        fit = bg
        if big:
            local = _local_paper(grey, record.inverted)
            # Where the light changes sharply (a shadow's edge crosses the page), nothing smooth fits it, and
            # the side the smooth fit leaves brighter may be lit paper, not ink: a straight edge decides.
            if float(np.percentile(np.abs(local - bg), 90)) > MIN_CONTRAST:
                fits = {record.inverted: local, not record.inverted: _local_paper(grey, not record.inverted)}
                record.inverted = _shadowed_polarity(grey, fits, otherwise=record.inverted)
                fit = _sharp_light(grey, fits[record.inverted], record.inverted)
    else:
        # A shadow: under either polarity's closing, far less stands out than from the smooth fit. A tight
        # crop: its ink stays (under the right polarity) as much as it was.
        fits = {dark: _local_paper(grey, dark) for dark in (True, False)} if big else {}
        shadowed = bool(fits) and max(_minority(grey - fit) for fit in fits.values()) < SHADOW_SHRINK * minority
        if shadowed:
            inverted = _shadowed_polarity(grey, fits)
            fit = _sharp_light(grey, fits[inverted], inverted)
        if not shadowed or _light_left(fit) < MIN_SHADOW_LIGHT:  # a "shadow" as dark as ink is the ink
            paper = _two_classes(grey, record)
            return background(grey, paper), paper
        record.inverted = inverted
    record.polarity = f"{'dark' if record.inverted else 'light'} ink (the paper is most of the image)"
    if float(np.abs(fit - bg).max()) > MIN_CONTRAST:
        record.background = "shadowed (removed)"
    return fit, None


def _light_left(fit: np.ndarray) -> float:
    """How much light a shadow in the paper's surface leaves: its darkest over its lightest (1st and 99th percentile)."""
    lo, hi = np.percentile(fit, [1, 99])
    return float(lo) / max(float(hi), 1e-6)


def _more_dark_ink(resid: np.ndarray) -> bool:
    """Whether more dark than light ink stands out from a smooth paper: the summed deviations beyond 4 noise
    levels on either side."""
    level = 4 * _spread(resid, None) + 0.02
    return float(np.clip(-resid - level, 0, None).sum()) > float(np.clip(resid - level, 0, None).sum())


def _local_paper(grey: np.ndarray, dark_ink: bool) -> np.ndarray:
    """The paper under dark (light) ink as a morphological closing (opening) of the image, with an element
    a quarter of its longer side: far wider than a stroke, so the strokes are filled in, while a shadow
    or a lamp's spot (wider than the element) stays, its edge as sharp as it is.
    """
    small, _ = downscale(grey, LOCAL_SIDE)
    size = max(3, round(LOCAL_ELEMENT * max(small.shape)))
    smooth = ndimage.uniform_filter(small, 3)  # noise would bias a max filter towards the paper's brightest grains
    local = (ndimage.grey_closing if dark_ink else ndimage.grey_opening)(smooth, size=(size, size))
    local = np.asarray(Image.fromarray(local, "F").resize(grey.shape[::-1], Image.Resampling.BILINEAR))
    # Scaling back blurs a sharp shadow's edge by a few pixels, which would leave a line of "ink" along it
    # on the dark side: the surface is pushed under (over) the image there.
    reach = 2 * int(np.ceil(max(grey.shape) / max(small.shape))) + 1
    return (ndimage.minimum_filter if dark_ink else ndimage.maximum_filter)(local, size=reach)


def _shadowed_polarity(grey: np.ndarray, fits: dict[bool, np.ndarray], otherwise: bool | None = None) -> bool:
    """Dark ink? On a page a shadow covers: the ink that stands out from a straight shadow's edge fitted to
    the pixels both polarities' closings agree on (far from any stroke), or, when no straight edge
    explains the light, ``otherwise`` or (None) whether the paper (most of what is left) is light."""
    edge = straight_shadow(grey, np.abs(fits[True] - fits[False]) < 0.5 * MIN_CONTRAST)
    if edge is None:
        return float(median(grey)) > 0.5 if otherwise is None else otherwise
    resid = grey - edge
    return _more_dark_ink(resid)


def _sharp_light(grey: np.ndarray, local: np.ndarray, dark_ink: bool) -> np.ndarray:
    """The paper where the light changes sharply: the closing ``local``, and where a straight shadow's edge
    (:mod:`mnist_cnn.shadow`) explains the paper, the darker (lighter) of the two for dark (light) ink. The
    closing's element cannot reach into the tip of a shadow's wedge; the edge model cannot follow a blur
    sharper or softer than its own: each corrects the other where it would make paper look like ink."""
    resid = (grey - local) if dark_ink else (local - grey)
    edge = straight_shadow(grey, resid > -0.5 * MIN_CONTRAST)
    if edge is None:
        return local
    return (np.minimum if dark_ink else np.maximum)(edge, local)


def _spread(resid: np.ndarray, paper: np.ndarray | None) -> float:
    """Noise level of the paper, from the pixels closest to the background (or known to be paper).

    Known paper in a tight crop is mostly the soft edges of strokes: there the noise is what is left
    after a 3x3 mean (a smooth ramp leaves nothing; white noise keeps sqrt(8/9) of its spread).
    """
    if paper is None or paper.sum() < 16:
        noise = resid
    else:
        noise = (resid - ndimage.uniform_filter(resid, 3))[paper] / np.sqrt(8 / 9)
    return 1.4826 * float(median(np.abs(noise - median(noise)))) + 1e-4


def _no_digit(record: PreprocessRecord) -> NoDigitError:
    return NoDigitError(f"{record.source}: no digit found (the image holds no ink that stands out from the background)")


def _drop_printed_lines(ink: np.ndarray, spread: float, span: float, record: PreprocessRecord) -> np.ndarray:
    """Ruled or squared paper, or a form's box, printed fainter than the ink: its lines (thin straight runs
    over ``span`` of the image's side or more) are paper, except where a stroke crosses them, which is
    darker than the line.

    ``ink`` is the raw ink (0-1, bright). Lines as dark as the ink are left to :func:`remove_lines`.
    """
    mask = ink > max(4 * spread, 0.5 * MIN_CONTRAST)
    lines = np.zeros_like(mask)
    for axis, side in ((1, ink.shape[1]), (0, ink.shape[0])):
        length = max(8, round(span * side))
        runs = long_runs(mask, length, axis)
        if not runs.any():
            continue
        width = max(PRINTED_LINE_WIDTH, round(0.03 * min(ink.shape)))
        thick = square_opening(runs, width)
        lines |= runs & ~dilate(thick)  # thin runs only: a bold bar is a stroke
    if lines.sum() < 2 * min(ink.shape):
        return ink
    level, top = float(median(ink[lines])), float(np.percentile(ink[mask], 99))
    if level > 0.6 * top:
        return ink
    faint = dilate(lines) & (ink < 0.5 * (level + top))
    record.notes.append(f"printed lines removed (at {level:.2f} of the range, the ink at {top:.2f})")
    return np.where(faint, 0, ink).astype(np.float32)


def ink_map(grey: np.ndarray, record: PreprocessRecord | None = None) -> np.ndarray:
    """Float32 (H, W) in 0-1: 0 where there is paper, 1 where there is solid ink, grey at the edges.

    Raises :class:`NoDigitError` when nothing stands out from the background (a blank page).
    """
    record = record if record is not None else PreprocessRecord()
    bg, paper = _paper(grey, record)
    resid = grey - bg
    if record.inverted:  # light falls on ink and paper alike: ink's contrast in a shadow is scaled down with it
        resid = resid * (float(median(bg)) / np.maximum(bg, 0.05))
    if float(bg.max() - bg.min()) > 0.1 and record.background == "flat":
        record.background = "uneven (removed)"
    spread = _spread(resid, paper)
    if spread > NOISY:  # grainy paper, pencil, a dim photo: average the grain away before any threshold
        resid = ndimage.gaussian_filter(resid, DENOISE_SIGMA)
        spread = _spread(resid, paper)
        record.notes.append(f"noise smoothed (Gaussian, sigma {DENOISE_SIGMA} px)")
    ink = np.clip(-resid if record.inverted else resid, 0, None)
    ink = _drop_printed_lines(ink, spread, PRINTED_LINE_SPAN if paper is None else FILLED_LINE_SPAN, record)

    top = float(ink.max())
    if top < MIN_INK or top < 6 * spread:
        raise _no_digit(record)
    t = otsu(ink / top) * top
    level = float(median(ink[ink > t])) if np.any(ink > t) else top
    record.threshold, record.contrast = round(t, 4), round(level, 4)
    if level < MIN_INK or level < 6 * spread:
        raise _no_digit(record)
    # Soft threshold: below half of Otsu's level (and above the noise) is paper, the typical ink
    # level and above is solid ink, and the ramp between keeps anti-aliased edges grey.
    lo = max(0.5 * t, min(3 * spread, 0.9 * t))
    hi = max(level, lo + 1e-3)
    return np.clip((ink - lo) / (hi - lo), 0, 1).astype(np.float32)


def components(ink: np.ndarray, level: float = 0.35) -> tuple[np.ndarray, int]:
    """8-connected components of the pixels above ``level``: (labels (H, W) int32, count)."""
    labels, count = ndimage.label(ink > level, structure=np.ones((3, 3), bool))
    return labels, int(count)


def _join_near(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``keep`` (per label, 0 = background) with the pieces within ``NEAR_PIECE`` px of kept ink added,
    twice over (a stroke broken in several places): a fine or faint pen's breaks, not dust."""
    reach = int(np.ceil(NEAR_PIECE)) + 1
    for _ in range(2):
        if keep[1:].all():
            break
        kept = keep[labels]
        rows, cols = np.nonzero(kept.any(1))[0], np.nonzero(kept.any(0))[0]
        box = (
            slice(max(rows[0] - reach, 0), rows[-1] + reach + 1),
            slice(max(cols[0] - reach, 0), cols[-1] + reach + 1),
        )
        inside = np.zeros(len(keep), bool)  # pieces outside the box are out of reach
        inside[np.unique(labels[box])] = True
        distance = ndimage.distance_transform_edt(~kept[box])
        nearest = np.atleast_1d(ndimage.minimum(distance, labels[box], np.arange(1, len(keep))))
        near = (nearest <= NEAR_PIECE) & inside[1:] & ~keep[1:]
        if not near.any():
            break
        keep = keep.copy()
        keep[1:] |= near
    return keep


def drop_specks(ink: np.ndarray, record: PreprocessRecord | None = None) -> np.ndarray:
    """Keep the digit's pieces; remove small blobs of dust or noise well apart from it."""
    labels, count = components(ink)
    if count == 0:
        return ink * 0
    idx = np.arange(1, count + 1)
    mass = ndimage.sum_labels(ink, labels, idx)
    boxes = ndimage.find_objects(labels)
    big = int(np.argmax(mass))
    by0, by1, bx0, bx1 = boxes[big][0].start, boxes[big][0].stop, boxes[big][1].start, boxes[big][1].stop
    reach = 0.5 * max(by1 - by0, bx1 - bx0)
    keep = np.zeros(count + 1, bool)
    for i, (sy, sx) in enumerate(boxes):
        gap = max(by0 - sy.stop, sy.start - by1, bx0 - sx.stop, sx.start - bx1, 0)
        ratio = mass[i] / mass[big]
        keep[i + 1] = ratio >= 0.2 or (ratio >= 0.03 and gap <= reach)
    keep = _join_near(labels, keep)
    if record is not None:
        record.specks_removed = int(count - keep[1:].sum())
    # Pixels below the component level (faint edges) follow the nearest kept component.
    grown = dilate(keep[labels], 2)
    return np.where(grown, ink, 0).astype(np.float32)


# ----------------------------------------------------------------------------- geometry


def to_frame(
    ink: np.ndarray, record: PreprocessRecord | None = None, offset: tuple[int, int] = (0, 0), *, even: bool = False
) -> np.ndarray:
    """MNIST geometry: crop to the ink, longer side to 20 px (aspect kept, anti-aliased), centre of mass to the centre.

    ``ink`` is float (H, W) in 0-1, ink bright. Returns (28, 28) uint8. ``offset`` (x, y) places a
    crop of a larger image, so the record's box is in the whole image's pixels. ``even`` brings a
    fine pen's or a marker's strokes into MNIST's width first (a whole digit, as the user gave it;
    not the parts that reading tries out, nor the images made for training).
    """
    record = record if record is not None else PreprocessRecord()
    rows, cols = np.nonzero(ink.max(1) > 0)[0], np.nonzero(ink.max(0) > 0)[0]
    if rows.size == 0:
        raise NoDigitError(f"{record.source}: no digit found")
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    crop, grown, note = even_strokes(ink[y0:y1, x0:x1]) if even else (ink[y0:y1, x0:x1], 1.0, None)
    if note:
        record.notes.append(note)
    scale = BOX / max(crop.shape)
    resized = np.clip(resize_longer(crop, BOX), 0, 1)
    size = resized.shape[::-1]
    total = float(resized.sum())
    if total <= 0:
        raise NoDigitError(f"{record.source}: no digit found")
    cy = float((resized.sum(1) * np.arange(size[1])).sum() / total)
    cx = float((resized.sum(0) * np.arange(size[0])).sum() / total)
    top = int(np.clip(round(CENTRE - cy), 0, FRAME - size[1]))
    left = int(np.clip(round(CENTRE - cx), 0, FRAME - size[0]))
    frame = np.zeros((FRAME, FRAME), np.float32)
    frame[top : top + size[1], left : left + size[0]] = resized
    s = record.working_scale
    ox, oy = offset
    record.bbox = tuple(int(round(v / s)) for v in (x0 + ox, y0 + oy, x1 + ox, y1 + oy))
    record.scale = round(scale * grown * s, 6)
    record.shift = (left - (FRAME - size[0]) // 2, top - (FRAME - size[1]) // 2)
    return np.round(frame * 255).astype(np.uint8)


def _is_mnist_frame(grey: np.ndarray) -> bool:
    """Already what MNIST's procedure makes: 28x28, a black ring round a white digit at most 22 px across
    whose centre of mass is within 1.5 px of MNIST's (the 28x28 images of MNIST and of data sets like it)."""
    if grey.shape != (FRAME, FRAME) or float(grey.max()) < 0.5:
        return False
    ring = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    rows, cols = np.nonzero((grey > 0.1).any(1))[0], np.nonzero((grey > 0.1).any(0))[0]
    if float(ring.max()) > 0.05 or float(median(grey)) > 0.05 or max(rows[-1] - rows[0], cols[-1] - cols[0]) >= 22:
        return False
    yy, xx = np.mgrid[0:FRAME, 0:FRAME]
    total = float(grey.sum())
    cy, cx = float((grey * yy).sum()) / total, float((grey * xx).sum()) / total
    return abs(cy - CENTRE) <= 1.5 and abs(cx - CENTRE) <= 1.5


def _as_it_is(grey: np.ndarray, record: PreprocessRecord) -> np.ndarray:
    rows, cols = np.nonzero(grey.any(1))[0], np.nonzero(grey.any(0))[0]
    record.polarity = "light ink (already an MNIST frame: taken as it is)"
    record.bbox = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    record.notes.append("already in MNIST format (28x28, white digit centred on black): taken as it is")
    return np.round(grey * 255).astype(np.uint8)


def preprocess_image(source, *, work_side: int = WORK_SIDE, limits: ImageLimits = LIMITS) -> Preprocessed:
    """Turn one image of one digit into MNIST format: :class:`Preprocessed` (array (28, 28) uint8, record).

    ``source``: a path, bytes, a binary file object, a ``PIL.Image``, or a numpy array (H, W) /
    (H, W, 3|4). Raises :class:`ImageError` for input that is not a readable image (or is outside
    ``limits``) and :class:`NoDigitError` (a subclass) for an image with no ink.
    """
    source = readable_twice(source)
    grey, record = decode_image(source(), work_side=min(work_side, COARSE_SIDE), limits=limits)
    if _is_mnist_frame(grey):
        return Preprocessed(_as_it_is(grey, record), record)
    if record.working_scale < 1 and work_side > COARSE_SIDE:  # a large image: a reduced copy may do
        if (coarse := _framed_if_large(grey, record)) is not None:
            return coarse
        grey, record = decode_image(source(), work_side=work_side, limits=limits)
    return Preprocessed(_digit_ink_to_frame(grey, record), record)


def _digit_ink_to_frame(grey: np.ndarray, record: PreprocessRecord) -> np.ndarray:
    """The steps from a decoded image of one digit to its MNIST frame (:func:`preprocess_image`)."""
    ink = ink_map(grey, record)
    ink, record.lines_removed = remove_lines(ink)
    ink = drop_specks(ink, record)
    return to_frame(ink, record, even=True)


def _framed_if_large(grey: np.ndarray, record: PreprocessRecord) -> Preprocessed | None:
    """The frame of an image decoded at ``COARSE_SIDE``, when the digit's ink there is at least ``COARSE_INK`` px
    long (4x the frame's box: its shape is all there); None for a smaller or fainter digit, which is then
    decoded and framed at the working size. A phone photo of one digit costs about a seventh of the time."""
    try:
        frame = _digit_ink_to_frame(grey, record)
    except NoDigitError:
        return None
    left, top, right, bottom = record.bbox
    if max(right - left, bottom - top) * record.working_scale < COARSE_INK:
        return None
    return Preprocessed(frame, record)


def load_image(path) -> np.ndarray:
    """Read an image and return it as MNIST-style (28, 28) uint8, white on black (see :func:`preprocess_image`)."""
    return preprocess_image(path).array


def simple_preprocess(source) -> np.ndarray:
    """The naive pipeline most tutorials use: greyscale, resize the whole image to 28x28, invert a light background.

    Kept to measure what the full procedure gains (``benchmarks/handwriting.py``); not used by the tools.
    """
    grey, _ = decode_image(source)
    small = np.asarray(Image.fromarray(grey, "F").resize((FRAME, FRAME), Image.Resampling.LANCZOS), dtype=np.float32)
    small = np.clip(small, 0, 1)
    border = np.concatenate([small[0], small[-1], small[:, 0], small[:, -1]])
    if border.mean() > 0.5:
        small = 1 - small
    return np.round(small * 255).astype(np.uint8)


def find_images(paths) -> list[Path]:
    """Expand folders (recursively) into the image files they hold, sorted; files named directly are kept as given.

    Names that do not exist, and folders without an image, are one :class:`MissingImageError` naming them all (a
    typo is a mistake in the command, said before anything is read); a folder (or a folder inside it) that cannot
    be listed is an :class:`UnreadableFolderError`, not a folder without images.
    """
    paths = list(map(Path, paths))
    missing = [str(path) for path in paths if not path.exists()]
    if missing:
        raise MissingImageError(f"{', '.join(missing)}: no such file{'s' if len(missing) > 1 else ''}")
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            inside = _images_in(path)
            if not inside:
                raise MissingImageError(
                    f"{path}: no image files in this folder (looked for {', '.join(IMAGE_SUFFIXES)})"
                )
            found.extend(inside)
        else:
            found.append(path)
    return found


def _images_in(folder: Path) -> list[Path]:
    def refuse(exc: OSError):  # os.walk (and Path.rglob) would skip the folder without a word
        raise UnreadableFolderError(f"{exc.filename}: cannot list this folder: {exc.strerror or exc}") from None

    found = [
        Path(root, name)
        for root, _, files in os.walk(folder, onerror=refuse)
        for name in files
        if Path(name).suffix.lower() in IMAGE_SUFFIXES
    ]
    return sorted(p for p in found if p.is_file())
