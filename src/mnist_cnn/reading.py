"""Reading numbers: find each handwritten digit on a page, classify it, return the string.

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

The thresholds of 3-5 (:class:`SegmentParams`) were tuned on strings rendered from MNIST
*validation* digits (``benchmarks/handwriting.py --digits-from validation``), never on the test
digits the benchmark reports.

>>> import mnist_cnn
>>> from mnist_cnn.reading import read_digits
>>> reading = read_digits(mnist_cnn.load_model("runs/basic"), "postcode.jpg")   # doctest: +SKIP
>>> reading.text, reading.digits[0].confidence                                 # doctest: +SKIP
('75013', 0.998)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .config import DEFAULT_MIN_CONFIDENCE
from .errors import TooManyMarksError
from .preprocess import (
    LIMITS,
    WORK_SIDE,
    ImageLimits,
    NoDigitError,
    PreprocessRecord,
    components,
    decode_image,
    ink_map,
    to_frame,
)

if TYPE_CHECKING:
    from .inference import Classifier

MAX_DIGITS = 200  # more pieces than this is not a number: refuse rather than classify noise


@dataclass
class Digit:
    box: tuple[int, int, int, int]  # (left, top, right, bottom) in the image's pixels
    line: int  # 0 for the first (top) line
    label: int  # the most probable digit
    confidence: float  # its (calibrated) probability
    probabilities: list[float]  # all ten
    uncertain: bool  # confidence below the threshold: shown as "?"
    array: np.ndarray = field(repr=False)  # (28, 28) uint8, what the model saw

    @property
    def char(self) -> str:
        return "?" if self.uncertain else str(self.label)

    def to_dict(self) -> dict:
        return {
            "box": list(self.box),
            "line": self.line,
            "label": self.label,
            "char": self.char,
            "confidence": round(self.confidence, 6),
            "uncertain": self.uncertain,
            "probabilities": [round(p, 6) for p in self.probabilities],
        }


@dataclass
class Reading:
    text: str  # one string per line, joined by newlines; "" when no digit was found
    digits: list[Digit]
    record: PreprocessRecord

    @property
    def found(self) -> bool:
        return bool(self.digits)

    @property
    def lines(self) -> list[str]:
        return self.text.split("\n") if self.text else []

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "found": self.found,
            "lines": self.lines,
            "digits": [d.to_dict() for d in self.digits],
        }


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


def _pieces(ink: np.ndarray) -> tuple[list[_Piece], np.ndarray]:
    """Components of the ink, each pixel of the faint edges given to the nearest component; specks dropped."""
    labels, count = components(ink)
    if count == 0:
        return [], labels
    # Faint edge pixels (below the component level) belong to the nearest component within 2 px.
    dist, (iy, ix) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    owner = np.where(dist <= 2, labels[iy, ix], 0)
    idx = np.arange(1, count + 1)
    mass = ndimage.sum_labels(ink, owner, idx)
    pieces = [
        _Piece(sy.start, sy.stop, sx.start, sx.stop, [i + 1], float(mass[i]))
        for i, (sy, sx) in enumerate(ndimage.find_objects(owner))
        if sy is not None
    ]
    top = max(p.mass for p in pieces)
    main = [p for p in pieces if p.mass >= 0.2 * top]
    height = float(np.median([p.h for p in main]))
    keep = {p.ids[0] for p in pieces if p.mass >= 0.015 * top and not (p.mass < 0.06 * top and p.h < 0.25 * height)}
    # A faint or thin stroke (a 9's tail, a 6's small loop) can break into bits as small as specks:
    # bits less than a few px from a kept piece's ink, or from a chain of such bits, are part of it.
    near, _ = ndimage.label(dist <= max(1.0, 0.05 * height), structure=np.ones((3, 3), bool))
    group = ndimage.maximum(near, labels, idx)  # each component lies in one group
    wanted = {group[i - 1] for i in keep}
    keep |= {i + 1 for i in range(count) if group[i] in wanted and mass[i] >= 0.002 * top}
    return [p for p in pieces if p.ids[0] in keep], owner


def _vertical_overlap(a: _Piece, b: _Piece, by=min) -> float:
    """How much of the shorter (``by=max``: the taller) piece's height the two share."""
    return (min(a.y1, b.y1) - max(a.y0, b.y0)) / max(by(a.h, b.h), 1)


def _lines(pieces: list[_Piece]) -> list[list[_Piece]]:
    """Group pieces into text lines, left to right: a piece continues the line whose last piece it overlaps vertically.

    Following the line piece by piece keeps a slanted or curved line together. The overlap is a
    share of the taller piece's height, so a short mark (the bar of a 5) that starts a line of its
    own does not take the digits after it away from their line; such a line of short marks then
    rejoins the line it sits in.
    """
    lines: list[list[_Piece]] = []
    for p in sorted(pieces, key=lambda p: p.x0):
        scores = [max(_vertical_overlap(p, q, by=max) for q in line[-3:]) for line in lines]
        if scores and max(scores) >= 0.3:
            lines[int(np.argmax(scores))].append(p)
        else:
            lines.append([p])
    # A small mark (a broken-off stroke) that started a line of its own joins the line it sits beside.
    top = max(p.mass for p in pieces)
    big = [line for line in lines if any(p.mass >= 0.2 * top for p in line)]
    for line in [line for line in lines if all(p.mass < 0.2 * top for p in line)]:
        if big:
            cy = np.mean([p.cy for p in line])
            nearest = min(big, key=lambda other: min(abs(q.cy - cy) for q in other))
            nearest.extend(line)
    lines = big or lines
    while found := next(((line, host) for line in lines if (host := _host(line, lines)) is not None), None):
        line, host = found
        host.extend(line)
        lines.remove(line)
    lines.sort(key=lambda line: np.median([p.cy for p in line]))
    return [sorted(line, key=lambda p: p.x0) for line in lines]


def _host(line: list[_Piece], lines: list[list[_Piece]]) -> list[_Piece] | None:
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
        if tallest >= 0.6 * height or not near:
            continue
        gap = max(min(q.y0 for q in near) - y1, y0 - max(q.y1 for q in near))
        if gap <= 0.25 * height and gap < best_gap:
            best, best_gap = other, gap
    return best


def _merge(line: list[_Piece]) -> list[_Piece]:
    """Join pieces of one digit: stacked pieces that overlap horizontally, and small fragments beside a digit.

    The pair that overlaps most is joined first, so a fragment goes to the digit it lies over rather
    than to a neighbour it merely touches (a broken 3 beside another 3 first becomes whole, then
    stays apart). Two full-height pieces side by side (two slanted 1s) stay apart even when their
    boxes overlap.
    """
    height = float(np.median([p.h for p in line])) if line else 0.0
    line = sorted(line, key=lambda p: p.x0)
    while len(line) > 1:
        best, pair = -math.inf, None
        for i, a in enumerate(line):
            for j in range(i + 1, len(line)):
                b = line[j]
                if b.x0 > a.x1 + 0.1 * height:  # sorted by x0: the rest are further right
                    break
                overlap = min(a.x1, b.x1) - max(a.x0, b.x0)
                ratio = overlap / max(min(a.w, b.w), 1)
                small = min(a.h, b.h) < 0.6 * max(height, a.h, b.h)
                stacked = _vertical_overlap(a, b) < 0.5
                if ((ratio >= 0.5 and (stacked or small)) or (small and overlap >= -0.1 * height)) and ratio > best:
                    best, pair = ratio, (i, j)
        if pair is None:
            break
        i, j = pair
        line[i] = line[i].join(line.pop(j))  # j > i, so i still points at the same piece
        line.sort(key=lambda p: p.x0)
    return line


@dataclass(frozen=True)
class SegmentParams:
    """How a line of ink is cut into digits. Tuned on the development set (validation digits), never on test digits."""

    wide: float = 1.0  # a piece wider than this x its height may hold several digits (a wide 5 or 7 gets close)
    one_or_two: float = 1.7  # up to this ratio it may still be one broad digit, so one digit stays a choice
    cut_band: float = 0.15  # a cut path wanders at most this x the line height from its column
    min_part: float = 0.12  # no cut closer than this x the line height to a piece's edge or another cut
    gap: float = 0.1  # pieces further apart than this x the line height are never one digit
    overlap: float = 0.3  # full-height pieces join only when they overlap by this x the narrower's width
    max_width: float = 1.5  # no joined digit wider than this x the line height
    short_cost: float = 4.0  # log-prior per line height of height below `short`
    short: float = 0.6  # x line height: a shorter "digit" is probably a fragment of one
    digit_cost: float = 0.0  # log-bonus per digit: > 0 means joining pieces must make them that much surer


SEGMENT = SegmentParams()


def _cut_paths(ink: np.ndarray, mine: np.ndarray, height: float, params: SegmentParams) -> list[np.ndarray]:
    """Top-to-bottom paths through the least ink of a piece (its own pixels ``mine``): one column per row each.

    Candidates start at the local minima of the column profile; each follows the cheapest path
    (crossing as little ink as possible, drifting at most ``cut_band`` x height sideways), so a cut
    between two touching digits can go round a stroke instead of straight through it.
    """
    h, w = mine.shape
    region = np.where(mine, ink, 0)
    profile = ndimage.uniform_filter1d(region.sum(0), max(1, int(0.06 * height)))
    margin = max(1, int(params.min_part * height))
    if w <= 2 * margin:
        return []
    inner = np.arange(margin, w - margin)
    minima = inner[(profile[inner] <= profile[inner - 1]) & (profile[inner] <= profile[inner + 1])]
    band = max(1, int(params.cut_band * height))
    cost = region + 0.02  # a little per row, so straighter paths win ties
    paths, scores = [], []
    for c in minima:
        lo, hi = max(0, c - band), min(w, c + band + 1)
        acc = cost[0, lo:hi].copy()
        back = np.zeros((h, hi - lo), np.int8)
        for y in range(1, h):  # dynamic programming, one row at a time: the cheapest way down to each column
            stack = np.stack([np.r_[np.inf, acc[:-1]] + 0.01, acc, np.r_[acc[1:], np.inf] + 0.01])
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


def _parts(ink, owner, p: _Piece, height: float, params: SegmentParams) -> list[_Piece]:
    """A piece cut along its candidate paths into parts, left to right (each part a new label in ``owner``)."""
    mine = np.isin(owner[p.y0 : p.y1, p.x0 : p.x1], p.ids)
    paths = _cut_paths(ink[p.y0 : p.y1, p.x0 : p.x1], mine, height, params)
    cols = np.arange(p.w)[None, :]
    part = sum(((cols >= path[:, None]).astype(np.int32) for path in paths), np.zeros(mine.shape, np.int32))
    view, local = owner[p.y0 : p.y1, p.x0 : p.x1], ink[p.y0 : p.y1, p.x0 : p.x1]
    out, label = [], int(owner.max()) + 1
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


def _group_scores(ink, owner, groups: list[_Piece], height: float, record, clf: Classifier, params) -> np.ndarray:
    """log(top calibrated probability) of each group read as one digit, minus a penalty for being much shorter than the line."""
    framed = [_frames(ink, owner, [g], record) for g in groups]
    ok = [k for k, f in enumerate(framed) if f]
    score = np.full(len(groups), -np.inf)
    if ok:
        probs = clf.predict_proba(np.stack([framed[k][0][0] for k in ok]))
        score[ok] = np.log(np.clip(probs.max(1), 1e-12, 1))
    short = np.array([g.h / height for g in groups])
    return score - params.short_cost * np.maximum(0, params.short - short)


def _best_grouping(ink, owner, atoms: list[_Piece], height, record, clf, params, max_span: int, counts=None):
    """Group consecutive atoms into digits, for each number of digits in ``counts`` (default: any): {count: (score, groups)}.

    Every run of up to ``max_span`` neighbouring atoms (close enough, not too wide) is a candidate
    digit scored by :func:`_group_scores`; dynamic programming finds, for each count, the grouping
    with the highest total.
    """
    n = len(atoms)
    spans, groups = [], []
    for i in range(n):
        group = atoms[i]
        for j in range(i + 1, min(n, i + max_span) + 1):
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
    score = _group_scores(ink, owner, groups, height, record, clf, params)
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


def _split_wide(ink, owner, line: list[_Piece], height: float, record, clf: Classifier, params) -> list[_Piece]:
    """Split pieces too wide for one digit (touching digits) into the count the model is surest of.

    The count comes from the piece's width (one more or less is tried); for each count the cuts
    are chosen among the candidate paths, and the count whose digits have the highest mean
    log-probability wins.
    """
    singles = [p.w for p in line if p.w <= params.wide * max(p.h, height)]
    typical = float(np.median(singles)) if singles else 0.7 * height
    typical = min(max(typical, 0.45 * height), 0.9 * height)
    # Parts of one piece may always rejoin (one broad digit).
    whole = dataclasses.replace(params, gap=math.inf, max_width=math.inf, overlap=-math.inf)
    out: list[_Piece] = []
    for p in line:
        ratio = p.w / max(p.h, height, 1)
        if ratio <= params.wide:
            out.append(p)
            continue
        guess = max(2, round(p.w / typical))
        counts = {1, 2} if ratio <= params.one_or_two else {max(2, guess - 1), guess, guess + 1}
        parts = _parts(ink, owner, p, height, params)
        options = _best_grouping(ink, owner, parts, height, record, clf, whole, max_span=8, counts=counts)
        if not options:  # no grouping reads as digits: keep it whole, under the parts' labels it now has in owner
            out.append(functools.reduce(_Piece.join, parts))
            continue
        out.extend(max(options.items(), key=lambda item: item[1][0] / item[0])[1][1])
    return out


def _join_broken(ink, owner, line: list[_Piece], height: float, record, clf: Classifier, params) -> list[_Piece]:
    """Join neighbouring pieces when, together, they read as one digit more surely than apart (a broken stroke)."""
    if len(line) < 2:
        return line
    options = _best_grouping(ink, owner, line, height, record, clf, params, max_span=3)
    scored = {c: score + params.digit_cost * c for c, (score, _) in options.items()}
    return options[max(scored, key=scored.get)][1] if scored else line


def _crop(ink: np.ndarray, owner: np.ndarray, p: _Piece) -> tuple[np.ndarray, tuple[int, int]]:
    """The piece's own ink (neighbours' strokes inside its box removed), and the crop's offset."""
    region = np.where(np.isin(owner[p.y0 : p.y1, p.x0 : p.x1], p.ids), ink[p.y0 : p.y1, p.x0 : p.x1], 0)
    return region.astype(np.float32), (p.x0, p.y0)


def _frames(ink, owner, pieces, record) -> list[tuple[np.ndarray, PreprocessRecord]]:
    out = []
    for p in pieces:
        crop, offset = _crop(ink, owner, p)
        sub = PreprocessRecord(source=record.source, working_scale=record.working_scale)
        try:
            out.append((to_frame(crop, sub, offset), sub))
        except NoDigitError:
            continue
    return out


def segment(
    ink: np.ndarray, record: PreprocessRecord, clf: Classifier, params: SegmentParams = SEGMENT
) -> list[list[tuple[np.ndarray, PreprocessRecord]]]:
    """Lines of digits, top to bottom, each left to right: (28x28 uint8 frame, its record with its box)."""
    pieces, owner = _pieces(ink)
    if not pieces:
        return []
    if len(pieces) > MAX_DIGITS:
        raise TooManyMarksError(
            f"{record.source}: {len(pieces)} separate marks found; this does not look like a number "
            f"(at most {MAX_DIGITS} digits are read)"
        )
    result = []
    for line in _lines(pieces):
        line = _merge(line)
        height = float(np.median([p.h for p in line]))
        line = _split_wide(ink, owner, line, height, record, clf, params)
        line = _join_broken(ink, owner, sorted(line, key=lambda q: (q.x0 + q.x1) / 2), height, record, clf, params)
        frames = _frames(ink, owner, line, record)
        if frames:
            result.append(frames)
    return result


def read_digits(
    clf: Classifier,
    image,
    *,
    min_confidence: float = DEFAULT_MIN_CONFIDENCE,
    work_side: int = WORK_SIDE,
    limits: ImageLimits = LIMITS,
) -> Reading:
    """Read every digit in ``image`` (path, bytes, file object, PIL image or array): a :class:`Reading`.

    Digits whose probability is below ``min_confidence`` are marked uncertain and shown as "?" in
    the text. An image with no ink gives a Reading with ``found == False`` and empty text; input
    that is not a readable image (or is outside ``limits``) raises :class:`mnist_cnn.preprocess.ImageError`,
    and one with more separate marks than :data:`MAX_DIGITS` raises :class:`mnist_cnn.errors.TooManyMarksError`.
    """
    if not 0 <= min_confidence <= 1:
        raise ValueError(f"min_confidence must be between 0 and 1, got {min_confidence}")
    grey, record = decode_image(image, work_side=work_side, limits=limits)
    try:
        ink = ink_map(grey, record)
    except NoDigitError:
        return Reading("", [], record)
    lines = segment(ink, record, clf)
    if not lines:
        return Reading("", [], record)
    frames = np.stack([f for line in lines for f, _ in line])
    probs = clf.predict_proba(frames)
    digits, texts, n = [], [], 0
    for number, line in enumerate(lines):
        chars = []
        for frame, sub in line:
            p = probs[n]
            n += 1
            label = int(p.argmax())
            d = Digit(
                sub.bbox,
                number,
                label,
                float(p[label]),
                p.astype(float).tolist(),
                bool(p[label] < min_confidence),
                frame,
            )
            digits.append(d)
            chars.append(d.char)
        texts.append("".join(chars))
    return Reading("\n".join(texts), digits, record)
