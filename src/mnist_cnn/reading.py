"""Reading numbers: find each handwritten digit on a page, classify it, return the string.

The page goes through the same decoding and ink extraction as a single digit
(:mod:`mnist_cnn.preprocess`); :func:`mnist_cnn.segmentation.segment` cuts its ink into lines of
digits, each put through the MNIST geometry (crop, 20 px box, centre of mass); one batch of
forward passes classifies them all.

>>> import mnist_cnn
>>> from mnist_cnn.reading import read_digits
>>> reading = read_digits(mnist_cnn.load_model("runs/basic"), "postcode.jpg")   # doctest: +SKIP
>>> reading.text, reading.digits[0].confidence                                 # doctest: +SKIP
('75013', 0.998)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .config import DEFAULT_MIN_CONFIDENCE
from .preprocess import LIMITS, WORK_SIDE, ImageLimits, NoDigitError, PreprocessRecord, decode_image, ink_map
from .segmentation import MAX_DIGITS, SEGMENT, SegmentParams, segment

if TYPE_CHECKING:
    from .inference import Classifier

# segment and its parameters lived here before the segmentation had a module of its own
__all__ = ["DEFAULT_MIN_CONFIDENCE", "MAX_DIGITS", "SEGMENT", "Digit", "Reading", "SegmentParams", "read_digits", "segment"]  # fmt: skip


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
    probs = clf.frame_proba(frames)
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
