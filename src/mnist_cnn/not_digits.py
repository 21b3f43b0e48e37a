"""Not-digits: images a digit reader should refuse (blank paper, marks, letters, a smudge, two digits).

Each generator takes two MNIST digits, (2, 28, 28) uint8 (only ``two-digits`` draws them), and a
``numpy.random.Generator``, and returns a PIL image 64-200 px square: dark marks on light paper, or
(one in four) light on dark like a drawing canvas. :data:`NOT_DIGITS` names them all.

The letters are capitals that look like no digit (A E F H K M N R W X), rendered from the serif
fonts that ship with matplotlib (DejaVu Serif, STIX). Models may learn to refuse letters drawn
with DejaVu Sans or Sans Mono; these fonts stay out of training, so the suite measures letters a
model never saw.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from .corruptions import glyph, grey_ink, ink_on_paper, place, to_image, with_margins

LETTERS = "AEFHKMNRWX"
LETTER_FONTS = (
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSerif-Italic.ttf",
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
)
SUPER = 4  # marks are drawn at 4x and reduced, so their edges are anti-aliased like a photo's


def font_path(name: str) -> Path:
    """One of the TrueType fonts that ship with matplotlib."""
    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name
    if not path.is_file():
        raise FileNotFoundError(f"matplotlib ships no font {name} (looked for {path})")
    return path


def _on_paper(coverage: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Dark marks on light paper, or (one in four) light marks on a dark canvas."""
    paper, ink = grey_ink(rng)
    if rng.random() < 0.25:
        paper, ink = 255 - paper, 255 - ink
    return to_image(ink_on_paper(coverage, paper, ink), 2.0, rng)


def _canvas(rng: np.random.Generator) -> tuple[Image.Image, ImageDraw.ImageDraw, int]:
    """A blank coverage canvas 64-200 px square, at SUPER times that size: (image, its drawer, its side)."""
    side = int(rng.integers(64, 201)) * SUPER
    img = Image.new("L", (side, side), 0)
    return img, ImageDraw.Draw(img), side


def _finish(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    small = img.resize((img.width // SUPER, img.height // SUPER), Image.Resampling.BOX)
    return _on_paper(np.asarray(small, np.float32) / 255, rng)


def _centre(rng: np.random.Generator, side: int, jitter: float = 0.15) -> np.ndarray:
    return side * (0.5 + rng.uniform(-jitter, jitter, 2))


def blank(pair: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Empty paper: a slight gradient and sensor noise, nothing written."""
    side = int(rng.integers(64, 201))
    paper, _ = grey_ink(rng)
    ramp = np.linspace(0, rng.uniform(-20, 20), side)
    return to_image(paper + ramp[None, :] + np.zeros((side, 1)), rng.uniform(1, 4), rng)


def dot(pair: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A filled dot, 6-24% of the page across."""
    img, draw, side = _canvas(rng)
    (x, y), r = _centre(rng, side), rng.uniform(0.03, 0.12) * side
    draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return _finish(img, rng)


def dash(pair: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A short straight stroke, within 20 degrees of level."""
    img, draw, side = _canvas(rng)
    (x, y), half = _centre(rng, side), rng.uniform(0.15, 0.35) * side
    angle = np.radians(rng.uniform(-20, 20))
    dx, dy = half * np.cos(angle), half * np.sin(angle)
    draw.line((x - dx, y - dy, x + dx, y + dy), fill=255, width=int(rng.uniform(0.04, 0.1) * side))
    return _finish(img, rng)


def cross(pair: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Two crossing strokes: an X (or, one in three, a +)."""
    img, draw, side = _canvas(rng)
    (x, y), width = _centre(rng, side, 0.1), int(rng.uniform(0.04, 0.08) * side)
    base = 0.0 if rng.random() < 1 / 3 else 45.0
    for angle in (base + rng.uniform(-12, 12), base + 90 + rng.uniform(-12, 12)):
        half = rng.uniform(0.2, 0.4) * side
        dx, dy = half * np.cos(np.radians(angle)), half * np.sin(np.radians(angle))
        draw.line((x - dx, y - dy, x + dx, y + dy), fill=255, width=width)
    return _finish(img, rng)


def scribble(pair: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A random pen path: 30-80 short steps whose heading wanders, kept on the page."""
    img, draw, side = _canvas(rng)
    point, heading = _centre(rng, side, 0.2), rng.uniform(0, 2 * np.pi)
    step, points = rng.uniform(0.03, 0.06) * side, []
    for _ in range(int(rng.integers(30, 81))):
        heading += rng.normal(0, 0.7)
        move = step * np.array([np.cos(heading), np.sin(heading)])
        if not np.all((0.12 * side < point + move) & (point + move < 0.88 * side)):
            heading += np.pi  # turn back at the edge of the page
            move = -move
        point = point + move
        points.append(tuple(point))
    draw.line(points, fill=255, width=int(rng.uniform(0.02, 0.05) * side), joint="curve")
    return _finish(img, rng)


def letter(pair: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A capital A E F H K M N R W X in a serif font that ships with matplotlib, turned up to 10 degrees."""
    img, draw, side = _canvas(rng)
    font = ImageFont.truetype(str(font_path(rng.choice(LETTER_FONTS))), int(rng.uniform(0.55, 0.85) * side))
    draw.text(tuple(_centre(rng, side, 0.08)), str(rng.choice(list(LETTERS))), fill=255, font=font, anchor="mm")
    img = img.rotate(float(rng.uniform(-10, 10)), Image.Resampling.BILINEAR)
    return _finish(img, rng)


def smudge(pair: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A smear: a few overlapping blobs, blurred, at 30-80% of full ink."""
    img, draw, side = _canvas(rng)
    for _ in range(int(rng.integers(2, 6))):
        (x, y), (rx, ry) = _centre(rng, side, 0.2), rng.uniform(0.05, 0.2, 2) * side
        draw.ellipse((x - rx, y - ry, x + rx, y + ry), fill=int(rng.uniform(120, 255)))
    small = np.asarray(img.resize((side // SUPER, side // SUPER), Image.Resampling.BOX), np.float32)
    blurred = ndimage.gaussian_filter(small, rng.uniform(0.04, 0.1) * side / SUPER)
    return _on_paper(blurred / max(float(blurred.max()), 1e-6) * rng.uniform(0.3, 0.8), rng)


def two_digits(pair: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Two MNIST digits side by side, 40-90 px tall, from just touching to a third of their height apart."""
    height = int(rng.integers(40, 91))
    left, right = (glyph(d, height) for d in pair)
    gap = int(rng.uniform(0.0, 0.3) * height)
    both = place(left, (height, left.shape[1] + gap + right.shape[1]), 0, 0)
    both[:, left.shape[1] + gap :] = np.maximum(both[:, left.shape[1] + gap :], right)
    return _on_paper(with_margins(both, rng, 0.2, 0.6), rng)


NOT_DIGITS: dict[str, Callable[[np.ndarray, np.random.Generator], Image.Image]] = {
    "blank": blank,
    "dot": dot,
    "dash": dash,
    "cross": cross,
    "scribble": scribble,
    "letter": letter,
    "smudge": smudge,
    "two-digits": two_digits,
}
