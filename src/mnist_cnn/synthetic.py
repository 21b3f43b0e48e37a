"""Synthetic "real use" images: MNIST digits rendered the way people photograph and scan them.

Used to measure the preprocessing and multi-digit reading (``benchmarks/handwriting.py``) and in
the tests. Only ever feed it MNIST *test* digits when measuring a model: a digit the model was
trained on says nothing about how it reads new handwriting. To tune anything (segmentation rules,
thresholds), render digits the model never trained on that are *not* test digits — the run's
validation split — with another seed, and measure on the test digits once at the end
(``benchmarks/handwriting.py --digits-from validation``).

Training can use it too (``TrainConfig.photo_digits`` and ``reject_weight``), on training digits
only: :func:`photographed` turns digits into what :func:`mnist_cnn.preprocess.preprocess_image`
makes of their photos, and :func:`digit_parts` makes what a wrong cut hands the classifier
(part of a digit, two touching digits), for the model to learn to be unsure of.

Each image is dark ink on light, tinted paper, at a random size and off-centre position, with
thicker or thinner strokes, a small rotation and perspective, uneven light, blur, sensor noise and
JPEG compression. Everything is drawn from the ``numpy.random.Generator`` passed in, so a seed
reproduces the set exactly.
"""

from __future__ import annotations

import io
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter
from scipy import ndimage

from .parallel import available_cores


@dataclass(frozen=True)
class Style:
    """The ranges each photo's settings are drawn from (uniformly)."""

    digit_height: tuple[int, int] = (28, 110)  # px, the height of the 28x28 MNIST frame on the page
    stroke: tuple[float, float] = (-0.35, 0.6)  # thinner (<0) or thicker (>0), in original MNIST px
    rotation: float = 8.0  # degrees, either way
    perspective: float = 0.04  # corner displacement, fraction of the image size
    light: tuple[float, float] = (0.55, 1.0)  # darkest corner's brightness relative to the brightest
    blur: tuple[float, float] = (0.0, 1.2)  # Gaussian radius, px at the rendered size
    noise: tuple[float, float] = (0.0, 8.0)  # sensor noise standard deviation, grey levels
    jpeg_quality: tuple[int, int] = (35, 95)
    paper: tuple[int, int] = (185, 250)  # paper brightness
    ink: tuple[int, int] = (10, 90)  # ink darkness (lower is darker)
    spacing: tuple[float, float] = (-0.05, 0.6)  # gap between digits in a string, fraction of digit height


def _stroke(digit: np.ndarray, amount: float, scale: float) -> np.ndarray:
    """Thicken (amount > 0) or thin a float (H, W) digit by about ``amount`` MNIST pixels."""
    radius = abs(amount) * scale
    if radius < 0.5:
        return digit
    size = int(2 * round(radius) + 1)
    footprint = np.hypot(*np.mgrid[-(size // 2) : size // 2 + 1, -(size // 2) : size // 2 + 1]) <= radius + 0.5
    op = ndimage.grey_dilation if amount > 0 else ndimage.grey_erosion
    return op(digit, footprint=footprint)


def _ink_layer(digit28: np.ndarray, height: int, stroke: float) -> np.ndarray:
    """The digit as ink coverage (0-1), upscaled smoothly to ``height`` px for the 28x28 frame."""
    img = Image.fromarray(digit28.astype(np.uint8)).resize((height, height), Image.Resampling.BICUBIC)
    layer = np.asarray(img, np.float32) / 255.0
    layer = _stroke(layer, stroke, height / 28)
    # Tighten the edges a little: upscaled MNIST is blurrier than a pen line.
    return np.clip((layer - 0.2) / 0.6, 0, 1)


def _crop_frame(layer: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(layer.max(1) > 0.05)[0], np.nonzero(layer.max(0) > 0.05)[0]
    if rows.size == 0:
        return layer
    return layer[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _photograph(
    coverage: np.ndarray, rng: np.random.Generator, style: Style, owner: np.ndarray | None = None
) -> tuple[Image.Image, np.ndarray | None]:
    """Ink coverage on a page -> (a JPEG-compressed RGB photo of it, ``owner`` moved the same way).

    ``owner`` (H, W) uint8 says which digit each pixel belongs to (0: paper); it goes through the
    same rotation and perspective (nearest neighbour) and draws nothing from ``rng``, so the photo
    is the same with or without it.
    """
    h, w = coverage.shape
    paper = rng.uniform(*style.paper) * rng.uniform(0.92, 1.0, 3)  # a slight tint
    ink = rng.uniform(*style.ink) + np.array([0, 0, rng.uniform(0, 60)])  # black to blue-black
    rgb = paper[None, None] * (1 - coverage[..., None]) + ink[None, None] * coverage[..., None]
    img = Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB")

    # Small rotation and perspective, filling the corners with paper.
    fill = tuple(int(v) for v in paper)
    angle = rng.uniform(-style.rotation, style.rotation)
    img = img.rotate(angle, Image.Resampling.BICUBIC, expand=False, fillcolor=fill)
    d = style.perspective
    corners = np.array([[0, 0], [0, h], [w, h], [w, 0]], np.float64)  # Pillow's QUAD order: UL, LL, LR, UR
    quad = tuple((corners + rng.uniform(-d, d, (4, 2)) * [w, h]).ravel())
    img = img.transform((w, h), Image.Transform.QUAD, quad, Image.Resampling.BICUBIC, fillcolor=fill)
    if owner is not None:
        moved = Image.fromarray(owner.astype(np.uint8), "L").rotate(angle, Image.Resampling.NEAREST)
        owner = np.asarray(moved.transform((w, h), Image.Transform.QUAD, quad, Image.Resampling.NEAREST))

    # Uneven light: a smooth gradient across the page in a random direction.
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    light = 1 - (1 - rng.uniform(*style.light)) * ramp
    img = img.filter(ImageFilter.GaussianBlur(rng.uniform(*style.blur)))
    arr = np.asarray(img, np.float32) * light[..., None]
    arr += rng.normal(0, rng.uniform(*style.noise), arr.shape)
    buf = io.BytesIO()
    Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB").save(
        buf, "JPEG", quality=int(rng.integers(style.jpeg_quality[0], style.jpeg_quality[1] + 1))
    )
    buf.seek(0)
    return Image.open(buf), owner


def render_digit(digit28: np.ndarray, rng: np.random.Generator, style: Style = Style()) -> Image.Image:
    """One MNIST digit (28x28, white on black) as a photo of ink on paper, off-centre on a larger page."""
    height = int(rng.integers(style.digit_height[0], style.digit_height[1] + 1))
    glyph = _crop_frame(_ink_layer(digit28, height, rng.uniform(*style.stroke)))
    gh, gw = glyph.shape
    page_h = int(gh * rng.uniform(1.4, 3.0))
    page_w = int(max(gw, gh) * rng.uniform(1.4, 3.0))
    page = np.zeros((page_h, page_w), np.float32)
    y = int(rng.integers(0, page_h - gh + 1))
    x = int(rng.integers(0, page_w - gw + 1))
    page[y : y + gh, x : x + gw] = glyph
    return _photograph(page, rng, style)[0]


def render_string(digits28: np.ndarray, rng: np.random.Generator, style: Style = Style(), *, truth: bool = False):
    """Several MNIST digits (N, 28, 28) written left to right on one line, with varied spacing and size.

    Returns the photo (a PIL image); with ``truth=True``, ``(photo, owner)`` where ``owner`` (H, W)
    uint8 gives, for each pixel of the photo, 1 + the index of the digit whose ink is there (0:
    paper; where two digits touch, the later one). The photo is the same either way.
    """
    height = int(rng.integers(max(style.digit_height[0], 36), style.digit_height[1] + 1))
    stroke = rng.uniform(*style.stroke)
    glyphs = [
        _crop_frame(_ink_layer(d, max(12, int(height * rng.uniform(0.9, 1.1))), stroke)) for d in np.asarray(digits28)
    ]
    gh = max(g.shape[0] for g in glyphs)
    gaps = [int(rng.uniform(*style.spacing) * gh) for _ in glyphs[1:]]
    jitter = [int(rng.uniform(-0.08, 0.08) * gh) for _ in glyphs]
    width = sum(g.shape[1] for g in glyphs) + sum(gaps)
    margin_x, margin_y = int(gh * rng.uniform(0.3, 1.2)), int(gh * rng.uniform(0.3, 1.0))
    page = np.zeros((gh + 2 * margin_y + 2 * max(map(abs, jitter)), width + 2 * margin_x), np.float32)
    owner = np.zeros(page.shape, np.uint8)
    x = margin_x
    for i, (g, gap, dy) in enumerate(zip(glyphs, [0, *gaps], jitter, strict=True)):
        x += gap
        y = margin_y + max(map(abs, jitter)) + dy + (gh - g.shape[0]) // 2
        region = page[y : y + g.shape[0], x : x + g.shape[1]]
        np.maximum(region, g, out=region)  # touching digits overlap like ink does
        owner[y : y + g.shape[0], x : x + g.shape[1]][g > 0.3] = i + 1
        x += g.shape[1]
    photo, owner = _photograph(page, rng, style, owner if truth else None)
    return (photo, owner) if truth else photo


def _photographed_chunk(digits28: np.ndarray, seed: np.random.SeedSequence) -> np.ndarray:
    from threadpoolctl import threadpool_limits

    from .preprocess import ImageError, preprocess_image

    rng = np.random.default_rng(seed)
    out = np.empty_like(digits28)
    # One thread per process: the image libraries' own threads only fight over the cores here.
    with threadpool_limits(1):
        for k, digit in enumerate(digits28):
            try:
                out[k] = preprocess_image(render_digit(digit, rng)).array
            except ImageError:  # lost in the photo (too faint): keep the clean digit
                out[k] = digit
    return out


def _in_processes(fn, jobs: list[tuple], workers: int | None) -> list:
    """``[fn(*job) for job in jobs]``, over ``workers`` processes (default: one per core)."""
    workers = min(len(jobs), workers or available_cores())
    if workers <= 1:
        return [fn(*job) for job in jobs]
    # spawn: a forked copy of a process that has run torch's thread pool can hang
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(fn, *zip(*jobs, strict=True)))


def photographed(digits28: np.ndarray, seed: int, *, workers: int | None = None, chunk: int = 500) -> np.ndarray:
    """Each MNIST digit (N, 28, 28) uint8 photographed (:func:`render_digit`) and put back through
    :func:`mnist_cnn.preprocess.preprocess_image`: what the model gets from a real photo of it.

    About 8 ms a digit on one core, spread over ``workers`` processes (default: one per core).
    The result depends only on ``seed``, never on the number of processes.
    """
    digits28 = np.asarray(digits28, np.uint8)
    seeds = np.random.SeedSequence(seed).spawn(max(1, -(-len(digits28) // chunk)))
    chunks = [digits28[i : i + chunk] for i in range(0, len(digits28), chunk)]
    parts = _in_processes(_photographed_chunk, list(zip(chunks, seeds, strict=True)), workers)
    return np.concatenate(parts) if parts else digits28.copy()


def _columns(digit: np.ndarray) -> tuple[int, int]:
    cols = np.nonzero(digit.max(0) > 0.1)[0]
    return (int(cols[0]), int(cols[-1]) + 1) if cols.size else (0, 0)


def digit_parts(digits28: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Not-a-digit images from MNIST digits (N, 28, 28): what a wrong cut between digits produces.

    About half of them are part of one digit, cut at a column 30-70% across its ink (the left or the
    right side, at least 15% of its ink), made from the first third of the digits; the rest are two
    digits side by side, touching or overlapping a little, made from the other two thirds. Each goes
    through the MNIST geometry like a piece that ``read`` cut out. Returns about N // 2 frames,
    (M, 28, 28) uint8.
    """
    from .preprocess import to_frame

    digits = np.asarray(digits28, np.float32) / 255
    third = len(digits) // 3
    out = []
    for d in digits[:third]:  # part of a digit; a 1 is too narrow to have parts
        c0, c1 = _columns(d)
        if c1 - c0 < 8:
            continue
        cut = int(round(c0 + rng.uniform(0.3, 0.7) * (c1 - c0)))
        part = d.copy()
        if rng.random() < 0.5:  # keep the left side
            part[:, cut:] = 0
        else:
            part[:, :cut] = 0
        if part.sum() >= 0.15 * d.sum():  # ink left, so to_frame finds a digit
            out.append(to_frame(part))
    for a, b in zip(digits[third::2], digits[third + 1 :: 2], strict=False):  # two digits touching
        (a0, a1), (b0, b1) = _columns(a), _columns(b)
        a, b = a[:, a0:a1], b[:, b0:b1]
        if not (a.size and b.size):
            continue
        overlap = int(round(rng.uniform(-0.05, 0.25) * min(a.shape[1], b.shape[1])))
        width = a.shape[1] + b.shape[1] - overlap
        pair = np.zeros((28, width), np.float32)
        pair[:, : a.shape[1]] = a
        right = pair[:, width - b.shape[1] :]
        np.maximum(right, b, out=right)
        out.append(to_frame(pair))
    return np.stack(out) if out else np.zeros((0, 28, 28), np.uint8)


# ----------------------------------------------------------------------------- not-digits

NOT_DIGIT_KINDS = ("dot", "dash", "cross", "scribble", "scratch", "coil", "smudge", "letter", "noise")
# Capitals, small letters and signs that look like no digit (no O, I, l, S, Z, B, G, b, q, g, T, L, J, &).
NOT_DIGIT_LETTERS = "AEFHKMNRWXehkmnrwx#%@*+"


def training_fonts() -> list[str]:
    """The font files not-digit letters are drawn with: DejaVu Sans and DejaVu Sans Mono from matplotlib.

    DejaVu Serif and STIX are left out on purpose: evaluation suites draw their letters with those,
    so a model trained on these letters is still measured on letters it never saw.
    """
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = sorted(str(f) for pattern in ("DejaVuSans.ttf", "DejaVuSans-*.ttf", "DejaVuSansMono*.ttf")
                   for f in folder.glob(pattern))  # fmt: skip
    if not fonts:
        raise FileNotFoundError(f"no DejaVu Sans fonts in {folder}: is matplotlib installed completely?")
    return fonts


def _line_width(size: int, rng: np.random.Generator) -> int:
    return max(1, int(size * rng.uniform(0.05, 0.16)))


def _random_points(size: int, count: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    return [tuple(p) for p in rng.uniform(0.1 * size, 0.9 * size, (count, 2))]


def _scratch_points(size: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """A crossing-out: the pen goes back and forth across the page 6-11 times, each pass a little lower
    (fewer passes would draw a Z, too close to a 2 or a 7)."""
    passes, tilt = int(rng.integers(6, 12)), rng.uniform(-0.3, 0.3)
    left, right = size * rng.uniform(0.1, 0.3), size * rng.uniform(0.7, 0.9)
    rows = np.linspace(size * rng.uniform(0.15, 0.35), size * rng.uniform(0.65, 0.85), passes)
    rows = rows + rng.normal(0, 0.03 * size, passes)
    ends = [right if i % 2 else left for i in range(passes)]
    return [(x, y + tilt * (x - size / 2)) for x, y in zip(ends, rows, strict=True)]


def _coil_points(size: int, rng: np.random.Generator) -> list[tuple[float, float]]:
    """A doodled coil: 3-7 loops drawn while the pen drifts sideways (or a spiral, one in three)."""
    turns = rng.uniform(3, 7)
    t = np.linspace(0, 2 * np.pi * turns, int(turns * 24))
    c = size / 2
    if rng.random() < 1 / 3:  # a spiral from the centre out
        r = size * 0.4 * t / t[-1]
        x, y = c + r * np.cos(t), c + r * np.sin(t)
    else:
        r = size * rng.uniform(0.12, 0.25)
        x = c + size * 0.35 * np.linspace(-1, 1, len(t)) + r * np.cos(t)
        y = c + r * rng.uniform(0.8, 1.6) * np.sin(t)
    angle = rng.uniform(-0.5, 0.5)
    xr = c + (x - c) * np.cos(angle) - (y - c) * np.sin(angle)
    yr = c + (x - c) * np.sin(angle) + (y - c) * np.cos(angle)
    return list(zip(np.clip(xr, 0, size - 1).tolist(), np.clip(yr, 0, size - 1).tolist(), strict=True))


def _draw_not_digit(kind: str, size: int, rng: np.random.Generator, fonts: list[str]) -> np.ndarray:
    """Ink coverage (size, size) float32 in 0-1 of one not-digit of ``kind``, drawn with a pen of random width."""
    from PIL import ImageDraw, ImageFont

    img = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(img)
    width, c = _line_width(size, rng), size / 2
    if kind == "dot":
        r = size * rng.uniform(0.04, 0.2)
        draw.ellipse([c - r, c - r * rng.uniform(0.7, 1.3), c + r, c + r * rng.uniform(0.7, 1.3)], fill=255)
    elif kind == "dash":  # near horizontal: a steep one would be a 1
        half, tilt = size * rng.uniform(0.15, 0.45), np.tan(np.radians(rng.uniform(-25, 25)))
        draw.line([(c - half, c - half * tilt), (c + half, c + half * tilt)], fill=255, width=width)
    elif kind == "cross":
        half, turn = size * rng.uniform(0.2, 0.45), rng.choice([0.0, 45.0]) + rng.uniform(-15, 15)
        for angle in (turn, turn + 90 + rng.uniform(-15, 15)):
            dx, dy = half * np.cos(np.radians(angle)), half * np.sin(np.radians(angle))
            draw.line([(c - dx, c - dy), (c + dx, c + dy)], fill=255, width=width)
    elif kind == "scribble":  # a tangle of many strokes
        draw.line(_random_points(size, int(rng.integers(6, 14)), rng), fill=255, width=width, joint="curve")
    elif kind in ("scratch", "coil"):  # a crossing-out, loops doodled in a row, a spiral
        points = _scratch_points(size, rng) if kind == "scratch" else _coil_points(size, rng)
        draw.line(points, fill=255, width=max(1, width // 3), joint="curve")
    elif kind == "smudge":  # soft overlapping blobs, as a rubbed-out mark or a fingerprint
        for x, y in _random_points(size, int(rng.integers(2, 6)), rng):
            r = size * rng.uniform(0.08, 0.25)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=int(rng.integers(120, 256)))
        img = img.filter(ImageFilter.GaussianBlur(size * rng.uniform(0.03, 0.1)))
    elif kind == "letter":
        font = ImageFont.truetype(fonts[int(rng.integers(len(fonts)))], int(size * rng.uniform(0.6, 0.9)))
        draw.text((c, c), str(rng.choice(list(NOT_DIGIT_LETTERS))), fill=255, font=font, anchor="mm")
        img = img.rotate(rng.uniform(-15, 15), Image.Resampling.BICUBIC)
    elif kind == "noise":  # a nearly blank page: a few specks of dust and grain
        for x, y in _random_points(size, int(rng.integers(3, 30)), rng):
            r = size * rng.uniform(0.005, 0.03)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=int(rng.integers(60, 256)))
    else:
        raise ValueError(f"unknown not-digit kind {kind!r}; choose from: {', '.join(NOT_DIGIT_KINDS)}")
    return np.asarray(img, np.float32) / 255


def render_not_digit(kind: str, rng: np.random.Generator, style: Style = Style(), fonts: list[str] | None = None):
    """One not-digit of ``kind`` (see :data:`NOT_DIGIT_KINDS`) photographed as ink on paper, like :func:`render_digit`."""
    size = int(rng.integers(style.digit_height[0], style.digit_height[1] + 1))
    glyph = _draw_not_digit(kind, size, rng, fonts if fonts is not None else training_fonts())
    page = np.zeros((int(size * rng.uniform(1.2, 2.5)), int(size * rng.uniform(1.2, 2.5))), np.float32)
    y, x = int(rng.integers(0, page.shape[0] - size + 1)), int(rng.integers(0, page.shape[1] - size + 1))
    page[y : y + size, x : x + size] = glyph
    return _photograph(page, rng, style)[0]


def _not_digits_chunk(kinds: list[str], seed: np.random.SeedSequence) -> np.ndarray:
    from threadpoolctl import threadpool_limits

    from .preprocess import NoDigitError, preprocess_image

    rng, fonts, out = np.random.default_rng(seed), training_fonts(), []
    with threadpool_limits(1):
        for kind in kinds:
            try:
                out.append(preprocess_image(render_not_digit(kind, rng, fonts=fonts)).array)
            except NoDigitError:  # preprocessing already answers "no digit": nothing for the model to learn
                pass
    return np.stack(out) if out else np.zeros((0, 28, 28), np.uint8)


def not_digits(
    count: int, seed: int, kinds: tuple[str, ...] = NOT_DIGIT_KINDS, *, workers: int | None = None, chunk: int = 500
) -> np.ndarray:
    """``count`` not-digits (an equal share of each of ``kinds``) as the model meets them: photographed
    as ink on paper (:func:`render_not_digit`) and put through :func:`mnist_cnn.preprocess.preprocess_image`,
    so a dot arrives as the big filled blob preprocessing makes of it.

    Returns (M, 28, 28) uint8, white on black; M <= count, as those preprocessing already finds no
    digit in (faint noise) are left out. Parallel like :func:`photographed`; depends only on ``seed``.
    """
    unknown = sorted(set(kinds) - set(NOT_DIGIT_KINDS))
    if unknown or not kinds:
        raise ValueError(f"unknown not-digit kinds {unknown}; choose from: {', '.join(NOT_DIGIT_KINDS)}")
    rng = np.random.default_rng(seed)
    order = [kinds[i % len(kinds)] for i in rng.permutation(count)] if count > 0 else []
    jobs = [order[i : i + chunk] for i in range(0, len(order), chunk)]
    seeds = np.random.SeedSequence(seed).spawn(len(jobs))
    parts = _in_processes(_not_digits_chunk, list(zip(jobs, seeds, strict=True)), workers)
    return np.concatenate(parts) if parts else np.zeros((0, 28, 28), np.uint8)
