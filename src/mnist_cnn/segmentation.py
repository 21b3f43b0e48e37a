"""Segmentation: cutting a page's ink into digits, line by line (used by :mod:`mnist_cnn.reading`).

The page goes through the same decoding and ink extraction as a single digit
(:mod:`mnist_cnn.preprocess`), then:

1. connected components of the ink; specks (dust, noise) dropped, unless they lie on a chain of
   bits leading to a digit (a faint or thin stroke that came out broken),
2. components grouped into lines (a few lines are fine) by their vertical position; a "line" of
   only short marks inside another line's band (the bar of a broken 5) is part of that line,
3. in each line, pieces stacked on each other are merged (a broken stroke, the detached bar of a
   5 or a 7), the most overlapping pair first,
4. a piece much wider than a digit (touching digits) is cut along paths that go round the ink
   (several candidate paths from the minima of its column profile); how many digits it holds and
   which cuts to use is what the classifier is surest of,
5. neighbouring pieces join when, together, the classifier reads them as one digit much more
   surely than apart (a digit broken side by side, e.g. a thin 8 or 4), with a prior on digit size,
6. each digit goes through the MNIST geometry (crop, 20 px box, centre of mass) and is classified.

Every threshold of 1-5 is a field of :class:`SegmentParams`. Those of 3-5 were tuned on strings
rendered from MNIST *validation* digits (``benchmarks/handwriting.py --digits-from validation``),
never on the test digits the benchmark reports.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .errors import TooManyMarksError
from .preprocess import NoDigitError, PreprocessRecord, components, to_frame

if TYPE_CHECKING:
    from .inference import Classifier

MAX_DIGITS = 200  # more pieces than this is not a number: refuse rather than classify noise


@dataclass
class _Piece:
    """Part of the page's ink: its box (y0, y1, x0, x1) and which component labels it holds."""

    y0: int
    y1: int
    x0: int
    x1: int
    ids: list[int]
    mass: float = 0.0

    @property
    def h(self) -> int:
        return self.y1 - self.y0

    @property
    def w(self) -> int:
        return self.x1 - self.x0

    @property
    def cy(self) -> float:
        return (self.y0 + self.y1) / 2

    def join(self, other: _Piece) -> _Piece:
        return _Piece(
            min(self.y0, other.y0), max(self.y1, other.y1), min(self.x0, other.x0), max(self.x1, other.x1),
            self.ids + other.ids, self.mass + other.mass,
        )  # fmt: skip


@dataclass(frozen=True)
class SegmentParams:
    """How a page's ink is cut into digits: every threshold of the segmentation, with its default.

    Lengths are fractions of the line height (the median piece height), masses fractions of the
    heaviest piece's ink. Those of merging, cutting and joining were tuned on the development set
    (validation digits), never on test digits.
    """

    # Which pieces of ink are kept (specks dropped)
    edge_px: float = 2.0  # faint edge pixels this close (px) to a component belong to it
    main_mass: float = 0.2  # a piece with this much ink is a digit (or most of one), never a speck
    speck_mass: float = 0.015  # a piece with less ink is a speck...
    small_mass: float = 0.06  # ...and so is one with less ink than this that is also
    small_height: float = 0.25  # shorter than this x the height of the main pieces
    chain_gap: float = 0.05  # bits this close (x that height, >= 1 px) to kept ink, or a chain of them, are kept
    chain_mass: float = 0.002  # as long as they hold this much ink
    # Lines
    line_overlap: float = 0.3  # a piece joins the line whose last pieces it overlaps by this x the taller's height
    line_memory: int = 3  # how many of a line's last pieces a new piece is compared with
    mark_height: float = 0.6  # a line of marks all shorter than this x another line's height may belong to it...
    band_gap: float = 0.25  # ...when it lies within this x that height of the other line's nearby pieces
    # Merging stacked pieces (a broken stroke, the detached bar of a 5 or a 7)
    merge_reach: float = 0.1  # pieces further apart (x line height) never merge; a fragment may be this far off
    stack_overlap: float = 0.5  # stacked pieces merge when they overlap by this x the narrower's width
    stacked: float = 0.5  # pieces sharing less than this x the shorter's height are stacked
    fragment: float = 0.6  # a piece shorter than this x the line height (or the taller) is a fragment
    # Cutting wide pieces (touching digits)
    wide: float = 1.0  # a piece wider than this x its height may hold several digits (a wide 5 or 7 gets close)
    one_or_two: float = 1.7  # up to this ratio it may still be one broad digit, so one digit stays a choice
    typical_width: float = 0.7  # a digit's width when no piece of the line is a single digit
    typical_range: tuple[float, float] = (0.45, 0.9)  # bounds of a line's typical digit width
    smooth: float = 0.06  # the column profile is averaged over this width, before looking for its minima
    cut_band: float = 0.15  # a cut path wanders at most this x the line height from its column
    min_part: float = 0.12  # no cut closer than this x the line height to a piece's edge or another cut
    row_cost: float = 0.02  # cost of a cut path per row, so straighter paths win ties
    drift_cost: float = 0.01  # cost of a cut path per step sideways
    max_parts: int = 8  # at most this many parts of a cut piece make one digit
    # Joining neighbours that read as one digit (a digit broken side by side)
    max_join: int = 3  # at most this many neighbouring pieces join into one digit
    gap: float = 0.1  # pieces further apart than this x the line height are never one digit
    overlap: float = 0.3  # full-height pieces join only when they overlap by this x the narrower's width
    max_width: float = 1.5  # no joined digit wider than this x the line height
    short_cost: float = 4.0  # log-prior per line height of height below `short`
    short: float = 0.6  # x line height: a shorter "digit" is probably a fragment of one
    digit_cost: float = 0.0  # log-bonus per digit: > 0 means joining pieces must make them that much surer


SEGMENT = SegmentParams()


def _pieces(ink: np.ndarray, params: SegmentParams) -> tuple[list[_Piece], np.ndarray]:
    """Components of the ink, each pixel of the faint edges given to the nearest component; specks dropped."""
    labels, count = components(ink)
    if count == 0:
        return [], labels
    # Faint edge pixels (below the component level) belong to the nearest component.
    dist, (iy, ix) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    owner = np.where(dist <= params.edge_px, labels[iy, ix], 0)
    idx = np.arange(1, count + 1)
    mass = ndimage.sum_labels(ink, owner, idx)
    pieces = [
        _Piece(sy.start, sy.stop, sx.start, sx.stop, [i + 1], float(mass[i]))
        for i, (sy, sx) in enumerate(ndimage.find_objects(owner))
        if sy is not None
    ]
    top = max(p.mass for p in pieces)
    height = float(np.median([p.h for p in pieces if p.mass >= params.main_mass * top]))
    small = lambda p: p.mass < params.small_mass * top and p.h < params.small_height * height  # noqa: E731
    keep = {p.ids[0] for p in pieces if p.mass >= params.speck_mass * top and not small(p)}
    # A faint or thin stroke (a 9's tail, a 6's small loop) can break into bits as small as specks:
    # bits less than a few px from a kept piece's ink, or from a chain of such bits, are part of it.
    near, _ = ndimage.label(dist <= max(1.0, params.chain_gap * height), structure=np.ones((3, 3), bool))
    group = ndimage.maximum(near, labels, idx)  # each component lies in one group
    wanted = {group[i - 1] for i in keep}
    keep |= {i + 1 for i in range(count) if group[i] in wanted and mass[i] >= params.chain_mass * top}
    return [p for p in pieces if p.ids[0] in keep], owner


def _vertical_overlap(a: _Piece, b: _Piece, by=min) -> float:
    """How much of the shorter (``by=max``: the taller) piece's height the two share."""
    return (min(a.y1, b.y1) - max(a.y0, b.y0)) / max(by(a.h, b.h), 1)


def _lines(pieces: list[_Piece], params: SegmentParams) -> list[list[_Piece]]:
    """Group pieces into text lines, left to right: a piece continues the line whose last piece it overlaps vertically.

    Following the line piece by piece keeps a slanted or curved line together. The overlap is a
    share of the taller piece's height, so a short mark (the bar of a 5) that starts a line of its
    own does not take the digits after it away from their line; such a line of short marks then
    rejoins the line it sits in.
    """
    lines: list[list[_Piece]] = []
    for p in sorted(pieces, key=lambda p: p.x0):
        scores = [max(_vertical_overlap(p, q, by=max) for q in line[-params.line_memory :]) for line in lines]
        if scores and max(scores) >= params.line_overlap:
            lines[int(np.argmax(scores))].append(p)
        else:
            lines.append([p])
    # A small mark (a broken-off stroke) that started a line of its own joins the line it sits beside.
    top = max(p.mass for p in pieces)
    big = [line for line in lines if any(p.mass >= params.main_mass * top for p in line)]
    for line in [line for line in lines if all(p.mass < params.main_mass * top for p in line)]:
        if big:
            cy = np.mean([p.cy for p in line])
            nearest = min(big, key=lambda other: min(abs(q.cy - cy) for q in other))
            nearest.extend(line)
    lines = big or lines
    while found := next(((line, host) for line in lines if (host := _host(line, lines, params)) is not None), None):
        line, host = found
        host.extend(line)
        lines.remove(line)
    lines.sort(key=lambda line: np.median([p.cy for p in line]))
    return [sorted(line, key=lambda p: p.x0) for line in lines]


def _host(line: list[_Piece], lines: list[list[_Piece]], params: SegmentParams) -> list[_Piece] | None:
    """The line that ``line`` is part of, if it holds only pieces much shorter than that line's digits and sits in its band.

    A digit broken into an upper and a lower piece (a 5's bar and bowl) can start two lines; the
    band is taken from the other line's pieces near this one, so a slanted line still counts.
    """
    y0, y1 = min(p.y0 for p in line), max(p.y1 for p in line)
    x0, x1 = min(p.x0 for p in line), max(p.x1 for p in line)
    tallest = max(p.h for p in line)
    best, best_gap = None, math.inf
    for other in lines:
        if other is line:
            continue
        height = float(np.median([q.h for q in other]))
        near = [q for q in other if q.x0 - x1 <= height and x0 - q.x1 <= height]
        if tallest >= params.mark_height * height or not near:
            continue
        gap = max(min(q.y0 for q in near) - y1, y0 - max(q.y1 for q in near))
        if gap <= params.band_gap * height and gap < best_gap:
            best, best_gap = other, gap
    return best


def _merge(line: list[_Piece], params: SegmentParams) -> list[_Piece]:
    """Join pieces of one digit: stacked pieces that overlap horizontally, and small fragments beside a digit.

    The pair that overlaps most is joined first, so a fragment goes to the digit it lies over rather
    than to a neighbour it merely touches (a broken 3 beside another 3 first becomes whole, then
    stays apart). Two full-height pieces side by side (two slanted 1s) stay apart even when their
    boxes overlap.
    """
    height = float(np.median([p.h for p in line])) if line else 0.0
    reach = params.merge_reach * height
    line = sorted(line, key=lambda p: p.x0)
    while len(line) > 1:
        best, pair = -math.inf, None
        for i, a in enumerate(line):
            for j in range(i + 1, len(line)):
                b = line[j]
                if b.x0 > a.x1 + reach:  # sorted by x0: the rest are further right
                    break
                overlap = min(a.x1, b.x1) - max(a.x0, b.x0)
                ratio = overlap / max(min(a.w, b.w), 1)
                small = min(a.h, b.h) < params.fragment * max(height, a.h, b.h)
                stacked = _vertical_overlap(a, b) < params.stacked
                joins = (ratio >= params.stack_overlap and (stacked or small)) or (small and overlap >= -reach)
                if joins and ratio > best:
                    best, pair = ratio, (i, j)
        if pair is None:
            break
        i, j = pair
        line[i] = line[i].join(line.pop(j))  # j > i, so i still points at the same piece
        line.sort(key=lambda p: p.x0)
    return line


@dataclass
class _Page:
    """What every step after finding the pieces shares: the ink, who owns each pixel, and how to read a digit.

    ``owner`` (H, W) holds each pixel's piece label; cutting a piece relabels its pixels in place.
    """

    ink: np.ndarray  # (H, W) float, the page's ink
    owner: np.ndarray  # (H, W) int, component label of each pixel (0: paper)
    record: PreprocessRecord
    clf: Classifier
    params: SegmentParams

    def crop(self, p: _Piece) -> tuple[np.ndarray, tuple[int, int]]:
        """The piece's own ink (neighbours' strokes inside its box removed), and the crop's offset."""
        mine = np.isin(self.owner[p.y0 : p.y1, p.x0 : p.x1], p.ids)
        region = np.where(mine, self.ink[p.y0 : p.y1, p.x0 : p.x1], 0)
        return region.astype(np.float32), (p.x0, p.y0)

    def frames(self, pieces: list[_Piece]) -> list[tuple[np.ndarray, PreprocessRecord]]:
        """Each piece through the MNIST geometry: (28x28 uint8 frame, its record); pieces with no ink left are skipped."""
        out = []
        for p in pieces:
            crop, offset = self.crop(p)
            sub = PreprocessRecord(source=self.record.source, working_scale=self.record.working_scale)
            try:
                out.append((to_frame(crop, sub, offset), sub))
            except NoDigitError:
                continue
        return out


def _cut_paths(ink: np.ndarray, mine: np.ndarray, height: float, params: SegmentParams) -> list[np.ndarray]:
    """Top-to-bottom paths through the least ink of a piece (its own pixels ``mine``): one column per row each.

    Candidates start at the local minima of the column profile; each follows the cheapest path
    (crossing as little ink as possible, drifting at most ``cut_band`` x height sideways), so a cut
    between two touching digits can go round a stroke instead of straight through it.
    """
    h, w = mine.shape
    region = np.where(mine, ink, 0)
    profile = ndimage.uniform_filter1d(region.sum(0), max(1, int(params.smooth * height)))
    margin = max(1, int(params.min_part * height))
    if w <= 2 * margin:
        return []
    inner = np.arange(margin, w - margin)
    minima = inner[(profile[inner] <= profile[inner - 1]) & (profile[inner] <= profile[inner + 1])]
    band = max(1, int(params.cut_band * height))
    cost = region + params.row_cost
    paths, scores = [], []
    for c in minima:
        lo, hi = max(0, c - band), min(w, c + band + 1)
        acc = cost[0, lo:hi].copy()
        back = np.zeros((h, hi - lo), np.int8)
        for y in range(1, h):  # dynamic programming, one row at a time: the cheapest way down to each column
            step = params.drift_cost
            stack = np.stack([np.r_[np.inf, acc[:-1]] + step, acc, np.r_[acc[1:], np.inf] + step])
            move = stack.argmin(0)
            acc = stack[move, np.arange(hi - lo)] + cost[y, lo:hi]
            back[y] = move - 1
        x = int(acc.argmin())
        path = np.empty(h, np.int64)
        for y in range(h - 1, -1, -1):
            path[y] = x + lo
            x += back[y, x]
        paths.append(path)
        scores.append(float(acc.min()))
    # Keep the cheapest paths at least `min_part` apart, left to right, and make them not cross.
    kept: list[np.ndarray] = []
    for i in np.argsort(scores):
        if all(abs(paths[i].mean() - k.mean()) >= margin for k in kept):
            kept.append(paths[i])
    kept.sort(key=lambda path: path.mean())
    for a, b in zip(kept[:-1], kept[1:], strict=False):
        np.maximum(b, a + 1, out=b)
    return kept


def _parts(page: _Page, p: _Piece, height: float) -> list[_Piece]:
    """A piece cut along its candidate paths into parts, left to right (each part a new label in ``page.owner``)."""
    view, local = page.owner[p.y0 : p.y1, p.x0 : p.x1], page.ink[p.y0 : p.y1, p.x0 : p.x1]
    mine = np.isin(view, p.ids)
    paths = _cut_paths(local, mine, height, page.params)
    cols = np.arange(p.w)[None, :]
    part = sum(((cols >= path[:, None]).astype(np.int32) for path in paths), np.zeros(mine.shape, np.int32))
    out, label = [], int(page.owner.max()) + 1
    for k in range(len(paths) + 1):
        sel = mine & (part == k)
        if not sel.any():
            continue
        view[sel] = label
        ys, xs = np.nonzero(sel)
        out.append(
            _Piece(p.y0 + int(ys.min()), p.y0 + int(ys.max()) + 1, p.x0 + int(xs.min()), p.x0 + int(xs.max()) + 1,
                   [label], float(local[sel].sum()))
        )  # fmt: skip
        label += 1
    return out


def _group_scores(page: _Page, groups: list[_Piece], height: float) -> np.ndarray:
    """log(top calibrated probability) of each group read as one digit, minus a penalty for being much shorter than the line."""
    framed = [page.frames([g]) for g in groups]
    ok = [k for k, f in enumerate(framed) if f]
    score = np.full(len(groups), -np.inf)
    if ok:
        probs = page.clf.frame_proba(np.stack([framed[k][0][0] for k in ok]))
        score[ok] = np.log(np.clip(probs.max(1), 1e-12, 1))
    short = np.array([g.h / height for g in groups])
    return score - page.params.short_cost * np.maximum(0, page.params.short - short)


def _candidates(atoms: list[_Piece], height: float, params: SegmentParams, max_span: int):
    """Every run of up to ``max_span`` neighbouring atoms that may be one digit: its (start, stop) and joined piece."""
    spans, groups = [], []
    for i in range(len(atoms)):
        group = atoms[i]
        for j in range(i + 1, min(len(atoms), i + max_span) + 1):
            if j > i + 1:
                new, before = atoms[j - 1], group
                gap = new.x0 - before.x1
                overlap = -gap / max(min(new.w, before.w), 1)
                fragment = min(new.h, before.h) < params.short * height
                group = group.join(new)
                if gap > params.gap * height or group.w > params.max_width * max(group.h, height):
                    break
                if overlap < params.overlap and not fragment:  # two whole digits side by side stay apart
                    break
            spans.append((i, j))
            groups.append(group)
    return spans, groups


def _best_grouping(page: _Page, atoms: list[_Piece], height: float, max_span: int, counts=None):
    """Group consecutive atoms into digits, for each number of digits in ``counts`` (default: any): {count: (score, groups)}.

    Every run of up to ``max_span`` neighbouring atoms (close enough, not too wide) is a candidate
    digit scored by :func:`_group_scores`; dynamic programming finds, for each count, the grouping
    with the highest total.
    """
    n = len(atoms)
    spans, groups = _candidates(atoms, height, page.params, max_span)
    score = _group_scores(page, groups, height)
    best = np.full((n + 1, n + 1), -np.inf)  # best[j, c]: atoms [0, j) as c digits
    best[0, 0] = 0.0
    prev = np.full((n + 1, n + 1), -1)
    for k in sorted(range(len(spans)), key=lambda k: spans[k][1]):
        i, j = spans[k]
        cand = best[i, :-1] + score[k]
        better = cand > best[j, 1:]
        best[j, 1:][better], prev[j, 1:][better] = cand[better], k
    out = {}
    for c in counts if counts is not None else range(1, n + 1):
        if c > n or not np.isfinite(best[n, c]):
            continue
        chosen, j, cc = [], n, c
        while j > 0:
            k = prev[j, cc]
            chosen.append(groups[k])
            j, cc = spans[k][0], cc - 1
        out[c] = (float(best[n, c]), chosen[::-1])
    return out


def _split_wide(page: _Page, line: list[_Piece], height: float) -> list[_Piece]:
    """Split pieces too wide for one digit (touching digits) into the count the model is surest of.

    The count comes from the piece's width (one more or less is tried); for each count the cuts
    are chosen among the candidate paths, and the count whose digits have the highest mean
    log-probability wins.
    """
    params = page.params
    singles = [p.w for p in line if p.w <= params.wide * max(p.h, height)]
    typical = float(np.median(singles)) if singles else params.typical_width * height
    typical = min(max(typical, params.typical_range[0] * height), params.typical_range[1] * height)
    # Parts of one piece may always rejoin (one broad digit).
    whole = dataclasses.replace(
        page, params=dataclasses.replace(params, gap=math.inf, max_width=math.inf, overlap=-math.inf)
    )
    out: list[_Piece] = []
    for p in line:
        ratio = p.w / max(p.h, height, 1)
        if ratio <= params.wide:
            out.append(p)
            continue
        guess = max(2, round(p.w / typical))
        counts = {1, 2} if ratio <= params.one_or_two else {max(2, guess - 1), guess, guess + 1}
        parts = _parts(page, p, height)
        options = _best_grouping(whole, parts, height, max_span=params.max_parts, counts=counts)
        if not options:  # no grouping reads as digits: keep it whole, under the parts' labels it now has in owner
            out.append(functools.reduce(_Piece.join, parts))
            continue
        out.extend(max(options.items(), key=lambda item: item[1][0] / item[0])[1][1])
    return out


def _join_broken(page: _Page, line: list[_Piece], height: float) -> list[_Piece]:
    """Join neighbouring pieces when, together, they read as one digit more surely than apart (a broken stroke)."""
    if len(line) < 2:
        return line
    options = _best_grouping(page, line, height, max_span=page.params.max_join)
    scored = {c: score + page.params.digit_cost * c for c, (score, _) in options.items()}
    return options[max(scored, key=scored.get)][1] if scored else line


def segment(
    ink: np.ndarray, record: PreprocessRecord, clf: Classifier, params: SegmentParams = SEGMENT
) -> list[list[tuple[np.ndarray, PreprocessRecord]]]:
    """Lines of digits, top to bottom, each left to right: (28x28 uint8 frame, its record with its box)."""
    pieces, owner = _pieces(ink, params)
    if not pieces:
        return []
    if len(pieces) > MAX_DIGITS:
        raise TooManyMarksError(
            f"{record.source}: {len(pieces)} separate marks found; this does not look like a number "
            f"(at most {MAX_DIGITS} digits are read)"
        )
    page = _Page(ink, owner, record, clf, params)
    result = []
    for line in _lines(pieces, params):
        line = _merge(line, params)
        height = float(np.median([p.h for p in line]))
        line = _split_wide(page, line, height)
        line = _join_broken(page, sorted(line, key=lambda q: (q.x0 + q.x1) / 2), height)
        frames = page.frames(line)
        if frames:
            result.append(frames)
    return result
