"""Digits drawn with a pen, in the ways of writing that MNIST's writers rarely used.

MNIST's digits come from American census staff and students. Other writers make a 1 with a flag
and a base, a 7 with a bar across, a 9 with a straight or hooked tail, a 4 open at the top, a 2
with a loop, a flat-topped 3. A model that has never seen those shapes reads them as other digits.
:func:`pen_digits` draws each digit from a few stroke templates (points in a unit box, y down,
joined by a smooth spline), moved about at random (each point, the slant, the rotation, the width,
the pen) and puts it into MNIST's geometry with :func:`mnist_cnn.preprocess.to_frame`, so training
(``TrainConfig.pen_digits``) can add them to MNIST's own digits. They are a supplement: drawn
templates are tidier than real handwriting, so they widen the styles a model knows without
replacing the real thing.

>>> from mnist_cnn.pen_digits import pen_digits
>>> images, labels = pen_digits(20, seed=0)
>>> images.shape, images.dtype, sorted(set(labels.tolist())) == list(range(10))
((20, 28, 28), dtype('uint8'), True)
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

Stroke = list[tuple[float, float]]
BOX, MARGIN = 80, 24  # px: the unit box drawn at this size, inside this margin


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, stop: float, step: float = 30) -> Stroke:
    """Points on an ellipse from angle ``start`` to ``stop`` (degrees; 0 is right, 90 is down: y points down)."""
    angles = np.radians(np.arange(start, stop + 1e-6, step if stop >= start else -step))
    return [(cx + rx * np.cos(a), cy + ry * np.sin(a)) for a in angles]


def _templates() -> dict[int, list[list[Stroke]]]:
    """For each digit, its ways of writing: each a list of strokes (pen down to pen up)."""
    upper9 = _arc(0.45, 0.27, 0.37, 0.27, 0, 360)
    return {
        0: [[_arc(0.5, 0.5, 0.4, 0.5, -90, 270)], [_arc(0.5, 0.5, 0.38, 0.5, -60, 320)]],
        1: [
            [[(0.5, 0.0), (0.5, 1.0)]],
            [[(0.2, 0.3), (0.55, 0.0), (0.5, 1.0)]],
            [[(0.2, 0.3), (0.55, 0.0), (0.55, 1.0)], [(0.2, 1.0), (0.9, 1.0)]],
            [[(0.35, 0.15), (0.55, 0.0), (0.55, 1.0)], [(0.25, 1.0), (0.85, 1.0)]],
        ],
        2: [
            [_arc(0.5, 0.28, 0.38, 0.28, 190, 380) + [(0.1, 1.0), (0.95, 1.0)]],
            [_arc(0.5, 0.28, 0.38, 0.28, 190, 380) + [(0.15, 0.95), (0.3, 0.82), (0.35, 0.98), (0.95, 1.0)]],
            [[(0.1, 0.05), (0.9, 0.05), (0.1, 1.0), (0.9, 1.0)]],
        ],
        3: [
            [_arc(0.5, 0.25, 0.35, 0.25, 200, 450) + _arc(0.5, 0.73, 0.4, 0.27, 270, 520)[1:]],
            [[(0.1, 0.0), (0.9, 0.0), (0.4, 0.42)] + _arc(0.5, 0.72, 0.4, 0.28, 250, 520)[1:]],
        ],
        4: [
            [[(0.65, 0.0), (0.05, 0.68), (0.95, 0.68)], [(0.68, 0.0), (0.68, 1.0)]],
            [[(0.2, 0.0), (0.1, 0.6), (0.95, 0.6)], [(0.72, 0.15), (0.72, 1.0)]],
            [[(0.25, 0.0), (0.05, 0.55), (0.9, 0.55)], [(0.7, 0.0), (0.6, 1.0)]],
        ],
        5: [
            [[(0.85, 0.02), (0.25, 0.02)], [(0.25, 0.02), (0.22, 0.45)] + _arc(0.5, 0.7, 0.38, 0.3, 230, 500)],
            [[(0.85, 0.0), (0.25, 0.0), (0.2, 0.45)] + _arc(0.5, 0.7, 0.38, 0.3, 230, 500)],
        ],
        6: [
            [[(0.75, 0.0), (0.4, 0.25), (0.2, 0.6)] + _arc(0.5, 0.72, 0.3, 0.28, 180, 540)],
            [[(0.6, 0.0), (0.22, 0.7)] + _arc(0.5, 0.72, 0.3, 0.28, 170, 530)],
        ],
        7: [
            [[(0.05, 0.02), (0.95, 0.02), (0.4, 1.0)]],
            [[(0.05, 0.02), (0.95, 0.02), (0.4, 1.0)], [(0.3, 0.52), (0.85, 0.52)]],
            [[(0.05, 0.18), (0.08, 0.02), (0.95, 0.02), (0.45, 1.0)]],
            [[(0.05, 0.02), (0.95, 0.02), (0.6, 0.5), (0.5, 1.0)]],
        ],
        8: [
            [
                [
                    (0.8, 0.12),
                    (0.5, 0.0),
                    (0.2, 0.18),
                    (0.35, 0.4),
                    (0.7, 0.6),
                    (0.85, 0.82),
                    (0.5, 1.0),
                    (0.15, 0.82),
                    (0.3, 0.6),
                    (0.65, 0.4),
                    (0.8, 0.18),
                    (0.75, 0.08),
                ]
            ],
            [_arc(0.5, 0.25, 0.28, 0.25, 90, 450), _arc(0.5, 0.75, 0.36, 0.25, -90, 270)],
        ],  # fmt: skip
        9: [
            [upper9 + [(0.82, 1.0)]],
            [upper9 + [(0.5, 1.0)]],
            [upper9 + [(0.8, 0.85), (0.6, 1.0), (0.35, 0.92)]],
            [upper9 + [(0.75, 0.7), (0.55, 1.0)]],
            [_arc(0.45, 0.27, 0.37, 0.27, -30, 300)[::-1] + [(0.82, 0.25), (0.8, 1.0)]],
        ],
    }


TEMPLATES = _templates()


def _spline(points: np.ndarray, per_segment: int = 8) -> np.ndarray:
    """A Catmull-Rom curve through ``points`` (N, 2): smooth, and through every point."""
    if len(points) < 3:
        return points
    p = np.vstack([points[0], points, points[-1]])
    t = np.linspace(0, 1, per_segment, endpoint=False)[:, None]
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.append(0.5 * (2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2
                          + (3 * p1 - p0 - 3 * p2 + p3) * t**3))  # fmt: skip
    return np.vstack([*out, points[-1:]])


def _warp(rng: np.random.Generator) -> np.ndarray:
    """A random 2x2 map of the unit box: width, slant (mostly to the right) and a small rotation."""
    width = rng.uniform(0.55, 1.1)
    slant = rng.normal(0.15, 0.2)
    turn = np.radians(rng.uniform(-10, 10))
    rotate = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    return rotate @ np.array([[width, -slant], [0.0, 1.0]])


def draw(strokes: list[Stroke], rng: np.random.Generator) -> np.ndarray:
    """One drawing of a template as ink coverage, float32 (H, W) in 0-1 (ink bright)."""
    warp, jitter = _warp(rng), rng.uniform(0.015, 0.045)
    side = BOX + 2 * MARGIN
    img = Image.new("L", (side, side), 0)
    pen = ImageDraw.Draw(img)
    width = int(rng.integers(6, 15))
    for stroke in strokes:
        pts = np.asarray(stroke, np.float64) + rng.normal(0, jitter, (len(stroke), 2))
        pts = ((pts - 0.5) @ warp.T + 0.5) * BOX + MARGIN
        line = [tuple(q) for q in _spline(pts)]
        pen.line(line, fill=255, width=width, joint="curve")
        for x, y in (line[0], line[-1]):  # round pen tips
            pen.ellipse([x - width / 2, y - width / 2, x + width / 2, y + width / 2], fill=255)
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 1.5)))
    return np.asarray(img, np.float32) / 255


def pen_digits(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``count`` drawn digits in MNIST format: (images (count, 28, 28) uint8 white on black, labels (count,) int64).

    The digits cycle 0-9 and each picks one of its ways of writing at random; the same ``seed``
    gives the same set. About 1 ms each.
    """
    from .preprocess import to_frame

    rng = np.random.default_rng(seed)
    labels = np.arange(count, dtype=np.int64) % 10
    images = np.empty((count, 28, 28), np.uint8)
    for i, digit in enumerate(labels):
        ways = TEMPLATES[int(digit)]
        images[i] = to_frame(draw(ways[int(rng.integers(len(ways)))], rng))
    return images, labels
