"""Telling ink from paper: Otsu's split, evidence for which side of it is ink (a pen stroke is thin),
and ruled lines, squared-paper lines and drawn boxes told apart from a digit's strokes.

Used by :mod:`mnist_cnn.preprocess`; nothing here knows about files or records.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from PIL import Image
from scipy import ndimage

THIN_LINE = 0.1  # a straight run is a line when its thickness is at most this share of its length ...
BOX_SIDE = 0.25  # ... or up to this share, when both its ends meet a line across (a narrow box's short side)


def otsu(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of values in 0-1 (the level that best separates two classes)."""
    hist, edges = np.histogram(values, bins=bins, range=(0.0, 1.0))
    hist = hist.astype(np.float64)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    mean0 = m0 / np.maximum(w0, 1)
    mean1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mean0 - mean1) ** 2
    return float(edges[int(np.argmax(between[:-1])) + 1])


def median(values: np.ndarray):
    """``np.median(values)`` of a float array, the same value of the same type, about 4x faster on an image: one
    selection where numpy makes three (it also places the largest value, to find NaNs, and the lower middle)."""
    flat = np.asarray(values).reshape(-1)
    if flat.size == 0:
        return np.median(flat)  # nan, with numpy's warning
    k = flat.size // 2
    part = np.partition(flat, k)
    if np.isnan(part[k:].max()):  # NaNs sort last: one is among the upper half if there is any
        return part[k:].max()
    return part[k] if flat.size % 2 else (part[:k].max() + part[k]) / 2


def reduce_mask(mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A bool mask reduced to ``shape``: True where (nearly) all of the pixels it covers were True."""
    if mask.shape == shape:
        return mask
    small = Image.fromarray(mask.astype(np.float32), "F").resize(shape[::-1], Image.Resampling.BOX)
    return np.asarray(small) > 0.99


def _pieces(mask: np.ndarray) -> int:
    """Connected pieces of ``mask`` (8-connected) of at least 1% of the image each."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    return int((sizes >= 0.01 * mask.size).sum())


def polarity_evidence(dark: np.ndarray) -> tuple[float, float, float]:
    """Evidence that the dark class is the ink, from the border, from stroke structure and from its pieces
    (each about -1 to 1).

    border: the paper holds the frame's border, even where a tight crop's strokes touch it (rows
    and columns that one class fills end to end, a drawn box or a ruled line, say nothing).
    strokes: ink is drawn with a pen, so it is thin everywhere; paper has wide open parts. Compared
    by the 90th percentile of the distance to the other class (the half-width of the widest parts).
    pieces: a digit is mostly one stroke, while in a crop the strokes that touch the edges cut the paper
    into several parts (a 1 leaves two, a 0 its hole and the corners): 1 when one class is in one piece
    and the other in several (0 otherwise: squared paper's cells may be too small to count).
    """
    h, w = dark.shape
    band = max(1, round(0.04 * min(h, w)))
    ring = np.zeros_like(dark)
    ring[:band], ring[-band:], ring[:, :band], ring[:, -band:] = True, True, True, True
    full = lambda m: (m.mean(1) > 0.9)[:, None] | (m.mean(0) > 0.9)[None, :]  # noqa: E731
    counted = ring & ~full(dark) & ~full(~dark)
    border = 0.5 - float(dark[counted].mean()) if counted.any() else 0.0
    width_dark = np.percentile(ndimage.distance_transform_edt(dark)[dark], 90) if dark.any() else 0.0
    width_light = np.percentile(ndimage.distance_transform_edt(~dark)[~dark], 90) if (~dark).any() else 0.0
    strokes = float(np.clip(np.log((width_light + 0.5) / (width_dark + 0.5)), -1, 1))
    n_dark, n_light = _pieces(dark), _pieces(~dark)
    pieces = 1.0 if n_dark == 1 < n_light else -1.0 if n_light == 1 < n_dark else 0.0
    return 2 * border, strokes, pieces


def long_runs(mask: np.ndarray, length: int, axis: int) -> np.ndarray:
    """The pixels of ``mask`` in runs of ``length`` or more along ``axis`` (1: rows, 0: columns): a binary
    opening with a ``length``-long line, computed from the runs' ends (an opening's cost grows with the length)."""
    m = mask if axis == 1 else mask.T
    padded = np.zeros((m.shape[0], m.shape[1] + 2), np.int8)  # a 0 either side of each row
    padded[:, 1:-1] = m
    edges = np.diff(padded, axis=1)
    rows, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)  # row-major order: each run's end pairs with its start
    keep = ends - starts >= length
    marks = np.zeros((m.shape[0], m.shape[1] + 1), np.int8)
    marks[rows[keep], starts[keep]] = 1  # runs are apart: no start meets another's start or end
    marks[rows[keep], ends[keep]] = -1
    out = np.cumsum(marks, axis=1)[:, :-1] > 0
    return out if axis == 1 else out.T


def dilate(mask: np.ndarray, steps: int = 1) -> np.ndarray:
    """``ndimage.binary_dilation(mask, iterations=steps)`` of a 2-D mask (a 3x3 cross, nothing beyond the border)
    by shifted ORs: the same pixels, at a fraction of the cost on images of a few hundred pixels."""
    out = np.asarray(mask, bool)
    for _ in range(steps):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= out[:, :-1]
        grown[:, :-1] |= out[:, 1:]
        out = grown
    return out


def square_opening(mask: np.ndarray, side: int) -> np.ndarray:
    """A binary opening with a ``side`` x ``side`` square, as separable minimum and maximum filters."""
    eroded = ndimage.minimum_filter(mask, size=side, mode="constant", cval=0)
    return ndimage.maximum_filter(eroded, size=side, mode="constant", cval=0, origin=-1 if side % 2 == 0 else 0)


def _straight_lines(mask: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """The long straight runs along ``axis`` (1: horizontal, 0: vertical): (labels of the thin ones, labels of
    the stubs: runs too thick for their length to be a line on their own, which only a box's corners make one)."""
    length = max(8, round(0.1 * mask.shape[axis]))
    runs = long_runs(mask, length, axis)
    labels, count = ndimage.label(runs, structure=np.ones((3, 3), bool))
    stubs = np.zeros_like(labels)
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        piece = labels[box] == i
        along = box[axis].stop - box[axis].start
        labels[box][piece] = 0
        # A stroke that touches the line (a digit written against a form's box, or crossing ruled lines)
        # joins its component: each line is a block of rows (columns) that run most of the component's
        # length; the stroke's pixels are not.
        blocks, n = _cores(piece.sum(axis=axis), along)
        for block in range(1, n + 1):
            core_piece = piece & np.expand_dims(blocks == block, axis)
            thickness = float(core_piece.sum()) / along
            line = i if block == 1 else (count := count + 1)  # one id per line
            if thickness <= THIN_LINE * along:
                labels[box][core_piece] = line
            elif thickness <= BOX_SIDE * along:  # a bar of the digit, or the short side of a narrow box
                stubs[box][core_piece] = line
    return labels, stubs


def _line_ends(labels: np.ndarray, axis: int) -> np.ndarray:
    """Bool mask: the pixels at both ends of each line in ``labels`` running along ``axis`` (1: its first and last
    columns, 0: rows), grown by 2 px."""
    ends = np.zeros(labels.shape, bool)
    for i, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        line = labels == i
        for end in (box[axis].start, box[axis].stop - 1):
            index = [slice(None)] * 2
            index[axis] = end
            ends[tuple(index)] |= line[tuple(index)]
    return dilate(ends, 2)


def _box_sides(stubs: np.ndarray, corners: np.ndarray, axis: int) -> np.ndarray:
    """The stubs whose both ends meet the end of a thin line across (``corners``): a narrow box's short sides.
    (A digit's own bar that touches a box's two sides meets them between their ends.)"""
    sides = np.zeros(stubs.shape, bool)
    for i, box in enumerate(ndimage.find_objects(stubs), start=1):
        if box is None:
            continue
        stub = stubs == i
        ends = (box[axis].start, box[axis].stop - 1)
        if all((stub.take(end, axis=axis) & corners.take(end, axis=axis)).any() for end in ends):
            sides |= stub
    return sides


def _cores(counts: np.ndarray, along: int) -> tuple[np.ndarray, int]:
    """The lines of a component: (labels of the blocks of rows (columns) that each run half its length or
    more, count). A stroke that touches a line adds pixels to a few rows, far shorter."""
    blocks, n = ndimage.label(counts >= 0.5 * along)
    return blocks, int(n)


def _crossings(rest: np.ndarray, axis: int, reach: int) -> np.ndarray:
    """Pixels with ink of ``rest`` within ``reach`` px on both sides across ``axis``: where a stroke crosses a line."""
    across = 1 - axis
    n = rest.shape[across]
    padded = np.concatenate([np.zeros_like(rest), rest, np.zeros_like(rest)], axis=across)
    window = lambda start: padded.take(np.arange(start, start + n), axis=across)  # noqa: E731
    before = np.any([window(n - d) for d in range(1, reach + 1)], axis=0)
    after = np.any([window(n + d) for d in range(1, reach + 1)], axis=0)
    return before & after


def _anchored(line: np.ndarray, box: tuple[slice, slice], axis: int, near: dict) -> str | None:
    """How a line's ends are held: "box" when both meet a line across it (a box's corners), "page" when
    each reaches the frame's edge or such a corner, None when an end is in the open (a digit's own straight
    stroke, the bar of a 7).
    """
    side = line.shape[axis]
    margin = max(2, round(0.03 * side))
    corners = 0
    for end in (box[axis].start, box[axis].stop - 1):
        cut = bool((line.take(end, axis=axis) & near[1 - axis].take(end, axis=axis)).any())
        if not (cut or end < margin or end >= side - margin):
            return None
        corners += cut
    return "box" if corners == 2 else "page"


def _at_the_edge(extent: dict, shape: tuple[int, int]) -> bool:
    """Whether the ink's extent reaches an edge of the frame (within 3% of its side): a crop of the digit,
    not a page round it."""
    (c0, c1), (r0, r1) = extent[1], extent[0]
    h, w = shape
    mh, mw = max(2, round(0.03 * h)), max(2, round(0.03 * w))
    return r0 < mh or r1 > h - mh or c0 < mw or c1 > w - mw


def remove_lines(ink: np.ndarray) -> tuple[np.ndarray, int]:
    """Take out ruled and squared-paper lines and a box drawn round the digit; strokes that cross them stay.

    A line is a thin straight run that reaches beyond the rest of the ink at both ends: it is longer
    than the digit and runs across or around it. A digit's own bar (a 7, a 4, the base of a 2)
    ends inside the digit on at least one side, and a lone stroke (a 1) has no rest to compare with,
    so they are kept. A line across the page is ruled paper only when another runs beside it and the
    rest of the ink stays clear of the frame's edges: in a tight crop the stem of a 4 or a 9 reaches
    both edges and clears its own loop or arm, and is kept. A box's sides are taken out either way.
    ``ink`` is float (H, W) in 0-1, ink bright; returns (ink, number of lines removed).
    """
    mask = ink > 0.35
    lines = {axis: _straight_lines(mask, axis) for axis in (1, 0)}
    found = []
    for axis, (labels, stubs) in lines.items():
        across = lines[1 - axis][0]
        if stubs.any() and across.any():
            labels = np.where(_box_sides(stubs, _line_ends(across, 1 - axis), axis), stubs, labels)  # one id per run
        found.append((axis, labels, int(labels.max())))
    if not any(count for *_, count in found):  # no straight run long enough to be a line
        return ink, 0
    candidates = np.zeros_like(mask)
    for _, labels, _ in found:
        candidates |= labels > 0
    rest = mask & ~dilate(candidates)
    labels, count = ndimage.label(rest, structure=np.ones((3, 3), bool))
    if count == 0:
        return ink, 0
    mass = ndimage.sum_labels(rest, labels, np.arange(1, count + 1))
    rest = np.isin(labels, 1 + np.nonzero(mass >= 0.1 * mass.max())[0])
    rows, cols = np.nonzero(rest.any(1))[0], np.nonzero(rest.any(0))[0]
    extent = {1: (cols[0], cols[-1] + 1), 0: (rows[0], rows[-1] + 1)}
    cropped = _at_the_edge(extent, mask.shape)
    corners = {axis: dilate(labels > 0, 2) for axis, labels, _ in found}
    clear = []  # (axis, line, thickness, how it is held) of each line that clears the digit
    for axis, labels, _ in found:
        r0, r1 = extent[axis]
        depth = extent[1 - axis][1] - extent[1 - axis][0]
        for i, box in enumerate(ndimage.find_objects(labels), start=1):
            if box is None or not (labels[box] == i).any():
                continue
            line = labels == i
            thickness = float(line.sum()) / (box[axis].stop - box[axis].start)
            beyond = min(r0 - box[axis].start, box[axis].stop - r1)
            held = _anchored(line, box, axis, corners)
            # A box's side need only reach past the digit; a line across the page must clear it well.
            box_side = held == "box"
            needed = 1 if box_side else max(2, 0.1 * (r1 - r0))
            if held and beyond >= needed and depth >= (1 if box_side else 4) * thickness:
                clear.append((axis, line, thickness, held))
    ruled = Counter(axis for axis, *_, held in clear if held == "page")
    removed, n = np.zeros_like(mask), 0
    for axis, line, thickness, held in clear:
        if held == "page" and (cropped or ruled[axis] < 2):
            continue  # the digit reaches the frame, or one straight line alone: the digit's own stroke, not ruled paper
        removed |= dilate(line) & ~_crossings(rest, axis, round(thickness) + 2)
        n += 1
    return (np.where(removed, 0, ink).astype(np.float32) if n else ink), n
