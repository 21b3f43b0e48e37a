"""Corruptions: one MNIST digit turned into an image as people really hand it over.

Each generator takes one MNIST digit (28x28 uint8, white on black) and a ``numpy.random.Generator``
and returns what a user would pass to ``mnist-cnn predict``: a PIL image, or encoded bytes (PNG for
the tight crops, JPEG for the JPEG corruption). :data:`DIGIT_CORRUPTIONS` names them all; the
robustness suite (:mod:`mnist_cnn.robustness`) draws a set from each and scores models on it.

Feed them only digits a model never trained on: MNIST *test* digits to report, the run's
validation split to choose models or variants.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from functools import partial

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

Source = Image.Image | bytes  # what preprocess_image is handed: a PIL image, or an encoded file
INK_LEVEL = 128  # a tight crop cuts at the pixels at least half inked (MNIST's faint halo falls outside)


# ----------------------------------------------------------------------------- drawing helpers


def _ink_box(digit28: np.ndarray) -> np.ndarray:
    """The digit cropped to its ink's bounding box (uint8)."""
    digit28 = np.asarray(digit28, np.uint8)
    rows, cols = np.nonzero(digit28.max(1) >= INK_LEVEL)[0], np.nonzero(digit28.max(0) >= INK_LEVEL)[0]
    if rows.size == 0:
        raise ValueError("the digit holds no ink (no pixel at least half inked)")
    return digit28[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def glyph(digit28: np.ndarray, height: int, stroke: float = 0.0) -> np.ndarray:
    """The digit's ink, cropped to its bounding box and ``height`` px tall (aspect kept): coverage (H, W) 0-1.

    ``stroke``: px at this size to thicken (> 0, dilation) or thin (< 0, erosion) the ink by.
    """
    crop = _ink_box(digit28)
    h, w = crop.shape
    width = max(1, round(w * height / h))
    layer = np.asarray(Image.fromarray(crop).resize((width, height), Image.Resampling.BICUBIC), np.float32) / 255
    if height > h:  # upscaled MNIST is blurrier than a pen line: tighten the edges a little
        layer = np.clip((layer - 0.2) / 0.6, 0, 1)
    radius = abs(stroke)
    if radius >= 0.5:
        r = int(np.ceil(radius))
        disc = np.hypot(*np.mgrid[-r : r + 1, -r : r + 1]) <= radius
        layer = (ndimage.grey_dilation if stroke > 0 else ndimage.grey_erosion)(layer, footprint=disc)
    return layer.astype(np.float32)


def place(coverage: np.ndarray, shape: tuple[int, int], top: int, left: int) -> np.ndarray:
    page = np.zeros(shape, np.float32)
    h, w = coverage.shape
    page[top : top + h, left : left + w] = coverage
    return page


def with_margins(coverage: np.ndarray, rng: np.random.Generator, lo: float = 0.3, hi: float = 1.0) -> np.ndarray:
    """The glyph on a page with a margin of ``lo``-``hi`` of its height on each side, drawn separately."""
    h, w = coverage.shape
    top, bottom, left, right = (int(rng.uniform(lo, hi) * h) for _ in range(4))
    return place(coverage, (h + top + bottom, w + left + right), top, left)


def _written(digit28: np.ndarray, rng: np.random.Generator, heights=(40, 100), stroke: float = 0.0) -> np.ndarray:
    """The digit written ``heights`` px tall with some paper around it: page coverage (H, W) 0-1."""
    return with_margins(glyph(digit28, int(rng.integers(heights[0], heights[1] + 1)), stroke), rng)


def ink_on_paper(coverage: np.ndarray, paper, ink) -> np.ndarray:
    """Coverage (H, W) -> pixels: float (H, W) for grey paper/ink, (H, W, 3) for RGB ones."""
    paper, ink = np.asarray(paper, np.float32), np.asarray(ink, np.float32)
    c = coverage[..., None] if paper.ndim else coverage
    return paper * (1 - c) + ink * c


def grey_ink(rng: np.random.Generator) -> tuple[float, float]:
    """(paper, ink) grey levels of dark ink on light paper."""
    return rng.uniform(200, 250), rng.uniform(10, 80)


def to_image(pixels: np.ndarray, noise: float = 0.0, rng: np.random.Generator | None = None) -> Image.Image:
    """Float pixels (0-255, grey or RGB) -> a PIL image, with Gaussian sensor noise of ``noise`` grey levels."""
    if noise:
        pixels = pixels + rng.normal(0, noise, pixels.shape)
    return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8), "RGB" if pixels.ndim == 3 else "L")


def _encode(img: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **options)
    return buf.getvalue()


def photo(coverage: np.ndarray, rng: np.random.Generator, noise: float = 2.0) -> Image.Image:
    """Dark ink on light grey paper, with a little sensor noise."""
    return to_image(ink_on_paper(coverage, *grey_ink(rng)), noise, rng)


# ----------------------------------------------------------------------------- tight crops


def tight_crop(digit28: np.ndarray, rng: np.random.Generator, *, edges: int, white_on_black: bool) -> bytes:
    """The digit cropped to its ink's bounding box, so strokes touch ``edges`` (1, 2 or 4) edges: a PNG.

    4: the box itself, longer side 48-128 px (a non-square frame); 2: the same in a square frame
    (aspect kept: a tall digit touches the top and bottom); 1: smaller, in a square frame, pushed
    against one edge drawn at random.
    """
    size = int(rng.integers(48, 129))
    crop = _ink_box(digit28)
    longer = size if edges in (2, 4) else round(size * rng.uniform(0.7, 0.85))
    scale = longer / max(crop.shape)
    h, w = max(1, round(crop.shape[0] * scale)), max(1, round(crop.shape[1] * scale))
    ink = np.asarray(Image.fromarray(crop).resize((w, h), Image.Resampling.BICUBIC), np.float32)
    if edges == 4:
        frame = ink
    elif edges == 2:
        frame = place(ink, (size, size), (size - h) // 2, (size - w) // 2)
    elif edges == 1:
        side = int(rng.integers(4))  # 0 top, 1 bottom, 2 left, 3 right
        top = {0: 0, 1: size - h}.get(side, (size - h) // 2)
        left = {2: 0, 3: size - w}.get(side, (size - w) // 2)
        frame = place(ink, (size, size), top, left)
    else:
        raise ValueError(f"edges must be 1, 2 or 4, got {edges}")
    pixels = frame if white_on_black else 255 - frame
    return _encode(to_image(pixels), "PNG")


# ----------------------------------------------------------------------------- size and position


def offcentre_page(digit28: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A 40-80 px digit on a 600-1000 px page, in an outer part of it (away from the centre)."""
    g = glyph(digit28, int(rng.integers(40, 81)))
    shape = (int(rng.integers(600, 1001)), int(rng.integers(600, 1001)))
    # the digit's centre at 10-30% or 70-90% of the way across, each way
    fy, fx = (rng.uniform(0.1, 0.3) if rng.random() < 0.5 else rng.uniform(0.7, 0.9) for _ in range(2))
    top, left = int(fy * shape[0] - g.shape[0] / 2), int(fx * shape[1] - g.shape[1] / 2)
    return photo(place(g, shape, top, left), rng)


def sized(digit28: np.ndarray, rng: np.random.Generator, *, height: int) -> Image.Image:
    """The digit's ink exactly ``height`` px tall (12: a thumbnail; 1000: a close-up) with 10-40% of that around it."""
    return photo(with_margins(glyph(digit28, height), rng, 0.1, 0.4), rng)


# ----------------------------------------------------------------------------- pens


def stroke_width(digit28: np.ndarray, rng: np.random.Generator, *, thicker: bool) -> Image.Image:
    """Written 80-140 px tall with a thin pen (ink eroded by 3-5% of the height) or a thick marker (dilated 4-8%)."""
    height = int(rng.integers(80, 141))
    amount = rng.uniform(0.04, 0.08) if thicker else -rng.uniform(0.03, 0.05)
    return photo(with_margins(glyph(digit28, height, amount * height), rng), rng)


def pencil(digit28: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Grey pencil on white: 35-80 grey levels of contrast, grainy strokes, thinner lines."""
    height = int(rng.integers(60, 121))
    coverage = with_margins(glyph(digit28, height, -0.02 * height), rng)
    grain = ndimage.gaussian_filter(rng.uniform(0.3, 1.0, coverage.shape), 0.7)
    paper = rng.uniform(225, 250)
    return to_image(ink_on_paper(coverage * grain, paper, paper - rng.uniform(35, 80)), 3.0, rng)


# ----------------------------------------------------------------------------- geometry


def slant(digit28: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Sheared sideways by 10-25 degrees (either way), as fast handwriting leans."""
    coverage = _written(digit28, rng, stroke=0)
    h, w = coverage.shape
    k = np.tan(np.radians(rng.uniform(10, 25))) * rng.choice([-1, 1])
    pad = int(abs(k) * h / 2) + 1
    wide = Image.fromarray(np.pad(coverage, ((0, 0), (pad, pad))), "F")
    # output (x, y) reads input (x + k (y - h/2), y)
    sheared = wide.transform(wide.size, Image.Transform.AFFINE, (1, k, -k * h / 2, 0, 1, 0), Image.Resampling.BICUBIC)
    return photo(np.clip(np.asarray(sheared), 0, 1), rng)


def rotation(digit28: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Turned by 10-25 degrees, either way."""
    page = Image.fromarray(_written(digit28, rng), "F")
    angle = rng.uniform(10, 25) * rng.choice([-1, 1])
    turned = page.rotate(float(angle), Image.Resampling.BICUBIC, expand=True)
    return photo(np.clip(np.asarray(turned), 0, 1), rng)


# ----------------------------------------------------------------------------- image quality


def low_resolution(digit28: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Captured with the digit 8-16 px tall, then upscaled 5-10x (nearest or bilinear), as a zoomed thumbnail."""
    small = photo(with_margins(glyph(digit28, int(rng.integers(8, 17))), rng, 0.3, 0.8), rng)
    factor = int(rng.integers(5, 11))
    resample = Image.Resampling.NEAREST if rng.random() < 0.5 else Image.Resampling.BILINEAR
    return small.resize((small.width * factor, small.height * factor), resample)


def blur(digit28: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Out of focus: a Gaussian blur of 4-8% of the digit's height."""
    height = int(rng.integers(50, 101))
    img = photo(with_margins(glyph(digit28, height), rng), rng, noise=0)
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0.04, 0.08) * height))


def jpeg(digit28: np.ndarray, rng: np.random.Generator) -> bytes:
    """A colour photo saved as JPEG at quality 20-40."""
    paper, ink = grey_ink(rng)
    tint = rng.uniform(0.9, 1.0, 3)
    img = to_image(ink_on_paper(_written(digit28, rng, (30, 90)), paper * tint, ink * tint), 3.0, rng)
    return _encode(img, "JPEG", quality=int(rng.integers(20, 41)))


def sensor_noise(digit28: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Sensor noise of a dim photo: Gaussian, 10-25 grey levels."""
    return photo(_written(digit28, rng), rng, noise=rng.uniform(10, 25))


# ----------------------------------------------------------------------------- paper and light


def uneven_light(digit28: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A lamp's spot off to one side: the far corners get 25-50% of the light."""
    coverage = _written(digit28, rng)
    h, w = coverage.shape
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    cy, cx = rng.uniform(-0.3, 1.3, 2) * [h / max(h, w), w / max(h, w)]
    dark = rng.uniform(0.25, 0.5)
    light = dark + (1 - dark) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * rng.uniform(0.3, 0.6) ** 2))
    return to_image(ink_on_paper(coverage, *grey_ink(rng)) * light, 2.0, rng)


def shadow(digit28: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A hand's or phone's shadow: a soft-edged half of the page at 50-75% of the light, its edge across the digit."""
    coverage = _written(digit28, rng)
    h, w = coverage.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    cy, cx = h * rng.uniform(0.35, 0.65), w * rng.uniform(0.35, 0.65)
    side = (np.cos(angle) * (xx - cx) + np.sin(angle) * (yy - cy)) > 0
    edge = ndimage.gaussian_filter(side.astype(np.float32), rng.uniform(2, 8))
    light = 1 - (1 - rng.uniform(0.5, 0.75)) * edge
    return to_image(ink_on_paper(coverage, *grey_ink(rng)) * light, 2.0, rng)


PAPERS = {  # RGB: coloured paper, and a blackboard for light chalk
    "yellow": (250, 240, 150),
    "pink": (250, 200, 210),
    "light blue": (200, 225, 250),
    "light green": (210, 240, 200),
    "kraft": (205, 175, 125),
    "blackboard": (40, 62, 50),
}
INKS = {"blue": (30, 50, 160), "red": (190, 30, 40), "green": (30, 120, 50), "violet": (100, 40, 140)}


def coloured(digit28: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """Coloured ink on coloured paper (RGB), or chalk on a blackboard."""
    paper_name = rng.choice(list(PAPERS))
    paper = np.array(PAPERS[paper_name]) * rng.uniform(0.92, 1.0, 3)
    ink = (230, 230, 215) if paper_name == "blackboard" else INKS[rng.choice(list(INKS))]
    return to_image(ink_on_paper(_written(digit28, rng), paper, np.array(ink) * rng.uniform(0.85, 1.0, 3)), 2.0, rng)


def _lines(shape: tuple[int, int], spacing: float, width: int, rng: np.random.Generator, axis: int) -> np.ndarray:
    """Coverage of evenly spaced printed lines across the page (axis 0: horizontal lines)."""
    n = shape[axis]
    pos = np.arange(n)
    on = ((pos - rng.uniform(0, spacing)) % spacing) < width
    return np.broadcast_to(on[:, None] if axis == 0 else on[None, :], shape).astype(np.float32)


def ruled_paper(digit28: np.ndarray, rng: np.random.Generator, *, squared: bool) -> Image.Image:
    """Ruled (or squared, graph) paper: printed blue-grey lines 1-3 px wide crossing the digit."""
    height = int(rng.integers(50, 101))
    coverage = with_margins(glyph(digit28, height), rng)
    spacing = height * (rng.uniform(0.15, 0.3) if squared else rng.uniform(0.25, 0.45))
    width = int(rng.integers(1, 3 if squared else 4))
    lines = _lines(coverage.shape, spacing, width, rng, 0)
    if squared:
        lines = np.maximum(lines, _lines(coverage.shape, spacing, width, rng, 1))
    paper = np.full(3, rng.uniform(225, 252))
    line_colour = np.array([150, 180, 230] if rng.random() < 0.6 else [140, 140, 140]) * rng.uniform(0.85, 1.1)
    printed = ink_on_paper(lines, paper, line_colour)
    ink = np.array([rng.uniform(10, 60)] * 2 + [rng.uniform(10, 120)])  # black to blue-black
    return to_image(printed * (1 - coverage[..., None]) + ink * coverage[..., None], 2.0, rng)


def form_box(digit28: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A form field: a box 1-4 px thick, as dark as the ink or lighter, drawn around the digit."""
    height = int(rng.integers(40, 101))
    g = glyph(digit28, height)
    inner = [
        int(rng.uniform(0.05, 0.3) * height) for _ in range(4)
    ]  # gap between ink and box: top, bottom, left, right
    outer = [int(rng.uniform(0.1, 0.6) * height) for _ in range(4)]
    box_h, box_w = g.shape[0] + inner[0] + inner[1], g.shape[1] + inner[2] + inner[3]
    shape = (box_h + outer[0] + outer[1], box_w + outer[2] + outer[3])
    page = place(g, shape, outer[0] + inner[0], outer[2] + inner[2])
    frame = Image.new("L", (shape[1], shape[0]), 0)
    ImageDraw.Draw(frame).rectangle(
        (outer[2], outer[0], outer[2] + box_w - 1, outer[0] + box_h - 1),
        outline=int(rng.uniform(0.4, 1.0) * 255),
        width=int(rng.integers(1, 5)),
    )
    return photo(np.maximum(page, np.asarray(frame, np.float32) / 255), rng)


DIGIT_CORRUPTIONS: dict[str, Callable[[np.ndarray, np.random.Generator], Source]] = {
    **{
        f"crop-{n}-edge{'s' * (n > 1)}-{'white-on-black' if white else 'black-on-white'}": partial(
            tight_crop, edges=n, white_on_black=white
        )
        for white in (True, False)
        for n in (1, 2, 4)
    },
    "page-offcentre": offcentre_page,
    "tiny-12px": partial(sized, height=12),
    "huge-1000px": partial(sized, height=1000),
    "thin-pen": partial(stroke_width, thicker=False),
    "thick-marker": partial(stroke_width, thicker=True),
    "pencil": pencil,
    "slant": slant,
    "rotation": rotation,
    "low-resolution": low_resolution,
    "blur": blur,
    "jpeg-20-40": jpeg,
    "noise": sensor_noise,
    "uneven-light": uneven_light,
    "shadow": shadow,
    "coloured": coloured,
    "ruled-paper": partial(ruled_paper, squared=False),
    "graph-paper": partial(ruled_paper, squared=True),
    "form-box": form_box,
}
