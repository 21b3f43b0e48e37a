"""Reading numbers: find each handwritten digit on a page, classify it, return the string.

The page goes through the same decoding and ink extraction as a single digit
(:mod:`mnist_cnn.preprocess`), then:

1. connected components of the ink; specks (dust, noise) dropped,
2. components grouped into lines (a few lines are fine) by their vertical position,
3. in each line, pieces that overlap horizontally are merged (a broken stroke, the detached bar of
   a 5 or a 7),
4. a piece much wider than a digit is split where the ink is thinnest (touching digits); with a
   classifier, the number of digits it holds is the one whose digits the model is surest of,
5. each digit goes through the MNIST geometry (crop, 20 px box, centre of mass) and is classified.

>>> import mnist_cnn
>>> from mnist_cnn.reading import read_digits
>>> reading = read_digits(mnist_cnn.load_model("runs/basic"), "postcode.jpg")   # doctest: +SKIP
>>> reading.text, reading.digits[0].confidence                                 # doctest: +SKIP
('75013', 0.998)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from .config import DEFAULT_MIN_CONFIDENCE
from .preprocess import (
    WORK_SIDE,
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
    cut: tuple[int, int] | None = None  # only the columns [a, b) of those components, after a split

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
    pieces = [p for p in pieces if p.mass >= 0.015 * top and not (p.mass < 0.06 * top and p.h < 0.25 * height)]
    return pieces, owner


def _vertical_overlap(a: _Piece, b: _Piece) -> float:
    return (min(a.y1, b.y1) - max(a.y0, b.y0)) / max(min(a.h, b.h), 1)


def _lines(pieces: list[_Piece]) -> list[list[_Piece]]:
    """Group pieces into text lines, left to right: a piece continues the line whose last piece it overlaps vertically.

    Following the line piece by piece keeps a slanted or curved line together.
    """
    lines: list[list[_Piece]] = []
    for p in sorted(pieces, key=lambda p: p.x0):
        scores = [max(_vertical_overlap(p, q) for q in line[-3:]) for line in lines]
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
    lines.sort(key=lambda line: np.median([p.cy for p in line]))
    return [sorted(line, key=lambda p: p.x0) for line in lines]


def _merge(line: list[_Piece]) -> list[_Piece]:
    """Join pieces of one digit: stacked pieces that overlap horizontally, and small fragments beside a digit.

    Two full-height pieces side by side (two slanted 1s) stay apart even when their boxes overlap.
    """
    height = float(np.median([p.h for p in line])) if line else 0.0
    merged = True
    while merged and len(line) > 1:
        merged = False
        line.sort(key=lambda p: p.x0)
        for i in range(len(line) - 1):
            a, b = line[i], line[i + 1]
            overlap = min(a.x1, b.x1) - max(a.x0, b.x0)
            small = min(a.h, b.h) < 0.6 * max(height, a.h, b.h)
            stacked = _vertical_overlap(a, b) < 0.5
            if (overlap >= 0.5 * min(a.w, b.w) and (stacked or small)) or (small and -0.1 * height <= overlap):
                line[i : i + 2] = [a.join(b)]
                merged = True
                break
    return line


def _column_profile(ink: np.ndarray, owner: np.ndarray, p: _Piece) -> np.ndarray:
    mine = np.isin(owner[p.y0 : p.y1, p.x0 : p.x1], p.ids)
    return (ink[p.y0 : p.y1, p.x0 : p.x1] * mine).sum(0)


def _split(p: _Piece, k: int, profile: np.ndarray) -> list[_Piece]:
    """Cut ``p`` into ``k`` pieces at the columns with the least ink near the evenly spaced positions."""
    cuts = [0]
    for j in range(1, k):
        centre = j * p.w / k
        lo, hi = int(max(cuts[-1] + 1, centre - 0.3 * p.w / k)), int(min(p.w - 1, centre + 0.3 * p.w / k))
        cuts.append(lo + int(np.argmin(profile[lo : hi + 1])) if hi >= lo else int(centre))
    cuts.append(p.w)
    out = []
    for a, b in zip(cuts[:-1], cuts[1:], strict=True):
        if b > a:
            out.append(_Piece(p.y0, p.y1, p.x0 + a, p.x0 + b, p.ids, float(profile[a:b].sum()), (p.x0 + a, p.x0 + b)))
    return out


def _crop(ink: np.ndarray, owner: np.ndarray, p: _Piece) -> tuple[np.ndarray, tuple[int, int]]:
    """The piece's own ink (neighbours' strokes inside its box removed), and the crop's offset."""
    x0, x1 = p.cut if p.cut else (p.x0, p.x1)
    region = np.where(np.isin(owner[p.y0 : p.y1, x0:x1], p.ids), ink[p.y0 : p.y1, x0:x1], 0).astype(np.float32)
    return region, (x0, p.y0)


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


def _confidence(clf: Classifier, frames: list[np.ndarray]) -> float:
    """Mean log-probability of the top class: how sure the model is of a set of digits."""
    probs = clf.predict_proba(np.stack(frames))
    return float(np.log(np.clip(probs.max(1), 1e-12, 1)).mean())


def _split_wide(ink, owner, line: list[_Piece], record, clf: Classifier | None) -> list[_Piece]:
    """Split pieces too wide for one digit (touching digits) into the count the model is surest of."""
    height = float(np.median([p.h for p in line]))
    singles = [p.w for p in line if p.w <= 1.0 * max(p.h, height)]
    typical = float(np.median(singles)) if singles else 0.7 * height
    typical = min(max(typical, 0.45 * height), 0.9 * height)
    out: list[_Piece] = []
    for p in line:
        ratio = p.w / max(p.h, height, 1)
        if ratio <= 1.0:  # as wide as tall at most: one digit (a wide 5 or 7 gets close)
            out.append(p)
            continue
        guess = max(2, round(p.w / typical))
        # Up to 1.7 times wider than tall it may still be one broad digit, so keep that choice open.
        choices = sorted({1, 2} if ratio <= 1.7 else {max(2, guess - 1), guess, guess + 1})
        profile = _column_profile(ink, owner, p)
        if clf is None:
            out.extend([p] if ratio <= 1.3 else _split(p, 2 if ratio <= 1.7 else guess, profile))
            continue
        best, best_score = None, -math.inf
        for k in choices:
            parts = [p] if k == 1 else _split(p, k, profile)
            frames = [f for f, _ in _frames(ink, owner, parts, record)]
            if len(frames) != len(parts):
                continue
            score = _confidence(clf, frames)
            if score > best_score:
                best, best_score = parts, score
        out.extend(best if best is not None else [p])
    return out


def segment(
    ink: np.ndarray, record: PreprocessRecord, clf: Classifier | None = None
) -> list[list[tuple[np.ndarray, PreprocessRecord]]]:
    """Lines of digits, top to bottom, each left to right: (28x28 uint8 frame, its record with its box)."""
    pieces, owner = _pieces(ink)
    if not pieces:
        return []
    if len(pieces) > MAX_DIGITS:
        raise NoDigitError(
            f"{record.source}: {len(pieces)} separate marks found; this does not look like a number "
            f"(at most {MAX_DIGITS} digits are read)"
        )
    result = []
    for line in _lines(pieces):
        line = _split_wide(ink, owner, _merge(line), record, clf)
        frames = _frames(ink, owner, line, record)
        if frames:
            result.append(frames)
    return result


def read_digits(
    clf: Classifier, image, *, min_confidence: float = DEFAULT_MIN_CONFIDENCE, work_side: int = WORK_SIDE
) -> Reading:
    """Read every digit in ``image`` (path, bytes, file object, PIL image or array): a :class:`Reading`.

    Digits whose probability is below ``min_confidence`` are marked uncertain and shown as "?" in
    the text. An image with no ink gives a Reading with ``found == False`` and empty text; input
    that is not a readable image raises :class:`mnist_cnn.preprocess.ImageError`.
    """
    if not 0 <= min_confidence <= 1:
        raise ValueError(f"min_confidence must be between 0 and 1, got {min_confidence}")
    grey, record = decode_image(image, work_side=work_side)
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
