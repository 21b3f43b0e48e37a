"""Any image a user can hand us, decoded into greyscale: the first step of :mod:`mnist_cnn.preprocess`.

:func:`decode_image` reads a path, bytes, a file object, a ``PIL.Image`` or a numpy array, in any
format and mode Pillow reads (first frame of animations; EXIF orientation applied), checks the
pixel count from the header against :class:`ImageLimits` before anything is decoded, and returns
a float32 array in 0-1, reduced to at most ``WORK_SIDE`` px, with the :class:`PreprocessRecord`
that the later steps go on filling in.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import FormatNotAcceptedError, ImageError, MissingImageError, NotAnImageError, TooManyPixelsError

# Our own limits, far below Pillow's decompression-bomb threshold (89 Mpx warning, 179 Mpx error):
# a 48-megapixel phone photo passes, a 20000x20000 "image" is refused from its header.
MAX_PIXELS = 50_000_000
MAX_BYTES = 64 * 1024 * 1024
# Work on at most this many pixels along the longer side: enough for a line of digits, and it
# bounds the memory and time of everything after decoding.
WORK_SIDE = 1200


@dataclass(frozen=True)
class ImageLimits:
    """What :func:`decode_image` accepts. The defaults suit files a user names; the service passes its own."""

    max_pixels: int = MAX_PIXELS  # width x height, checked from the header before anything is decoded
    formats: frozenset[str] | None = None  # Pillow's format names (PNG, JPEG, ...) accepted; None: any it reads


LIMITS = ImageLimits()


@dataclass
class PreprocessRecord:
    """What was done to the image, so a user can see what the model saw and why."""

    source: str = "<image>"
    format: str | None = None  # as Pillow names it: PNG, JPEG, ...
    mode: str | None = None  # Pillow mode before conversion: RGB, RGBA, P, 1, I;16, CMYK, ...
    size: tuple[int, int] = (0, 0)  # (width, height) as stored in the file
    frames: str = "single"  # "single", or "first of an animation"
    exif_orientation: int | None = None  # the EXIF tag that was applied (1 = none needed)
    working_scale: float = 1.0  # large images are reduced to WORK_SIDE before processing
    inverted: bool = False  # True: dark ink on light paper, turned into white on black
    polarity: str = ""  # which side is ink, and how that was decided
    background: str = "flat"  # "flat", or "uneven (removed)" when lighting varied across the page
    threshold: float = 0.0  # Otsu level of the ink map, 0-1 of the full range
    contrast: float = 0.0  # typical ink level above the paper, 0-1
    lines_removed: int = 0  # ruled or squared-paper lines and box sides taken out (:func:`remove_lines`)
    specks_removed: int = 0  # small separate blobs (dust, noise) left out
    bbox: tuple[int, int, int, int] = (0, 0, 0, 0)  # the ink's (left, top, right, bottom) in the image's pixels
    scale: float = 1.0  # 28x28-frame pixels per image pixel
    shift: tuple[int, int] = (0, 0)  # (dx, dy) applied to put the centre of mass at the centre
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return str(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(source, np.ndarray):
        return "<array>"
    return getattr(source, "filename", None) or getattr(source, "name", None) or "<image>"


def readable_twice(source) -> Callable[[], object]:
    """A function that gives ``source`` afresh at each call, so that :func:`decode_image` can read it twice: a
    file object is read into memory once (never more than ``MAX_BYTES`` + 1) and given as a buffer with its
    name, so messages still name it; anything else is given as it is."""
    if not hasattr(source, "read"):
        return lambda: source
    name = _describe(source)
    try:
        data = source.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ImageError(f"{name}: cannot read ({exc.strerror or exc})") from None

    def again() -> io.BytesIO:
        buffer = io.BytesIO(data)
        buffer.name = name
        return buffer

    return again


def _open(source, name: str) -> Image.Image:
    """A lazily opened PIL image (header read, pixels not yet decoded)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise MissingImageError(f"{name}: no such file") from None
        except OSError as exc:
            raise ImageError(f"{name}: cannot read ({exc.strerror or exc})") from None
        if path.is_dir():
            raise ImageError(f"{name}: is a folder, not an image")
        if size == 0:
            raise ImageError(f"{name}: empty (0 bytes), not an image")
        if size > MAX_BYTES:
            raise ImageError(f"{name}: {size:,} bytes is more than the limit of {MAX_BYTES:,}")
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ImageError(f"{name}: cannot read ({exc.strerror or exc})") from None
        return Image.open(io.BytesIO(data))
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise ImageError(f"{name}: empty (0 bytes), not an image")
        if len(source) > MAX_BYTES:
            raise ImageError(f"{name}: {len(source):,} bytes is more than the limit of {MAX_BYTES:,}")
        return Image.open(io.BytesIO(bytes(source)))
    if hasattr(source, "read"):
        return _open(bytes(source.read(MAX_BYTES + 1)), name)  # never more than the limit in memory
    raise ImageError(
        f"{name}: expected a path, bytes, a file object, a PIL image or an array, got {type(source).__name__}"
    )


def _grey_from_pil(img: Image.Image) -> np.ndarray:
    """Float32 (H, W) in 0-1 from any Pillow mode; transparency becomes a background that contrasts with the ink."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        alpha = rgba[..., 3]
        lum = rgba[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
        if alpha.min() >= 1.0:  # opaque: the alpha channel says nothing
            return lum
        # Where it is transparent there is no drawing: that is the background. Put it behind the
        # drawn pixels in the colour that contrasts with them (black strokes on a transparent canvas
        # become black on white; white strokes become white on black).
        weight = alpha.sum()
        drawn = float((lum * alpha).sum() / weight) if weight > 0 else 0.0
        paper = 1.0 if drawn < 0.5 else 0.0
        return lum * alpha + paper * (1 - alpha)
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        return np.asarray(img, dtype=np.float32) / 65535.0
    if img.mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        if finite.size == 0:
            return np.zeros(arr.shape, np.float32)
        lo, hi = float(finite.min()), float(finite.max())
        return (np.clip(np.nan_to_num(arr, nan=lo), lo, hi) - lo).astype(np.float32) / max(hi - lo, 1e-12)
    return np.asarray(img.convert("L"), dtype=np.float32) / 255.0


def _check_size(width: int, height: int, name: str, limit: int, when: str = "") -> None:
    if width * height > limit:
        message = f"{name}: too many pixels: {width}x{height} is more than the limit of {limit:,}{when}"
        raise TooManyPixelsError(message, limit, width, height)


def _grey_from_array(arr: np.ndarray, name: str, max_pixels: int) -> np.ndarray:
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        _check_size(arr.shape[1], arr.shape[0], name, max_pixels)
        mode = "RGBA" if arr.shape[-1] == 4 else "RGB"
        if arr.dtype != np.uint8:
            arr = np.clip(arr * (255 if arr.dtype.kind == "f" else 1), 0, 255).astype(np.uint8)
        return _grey_from_pil(Image.fromarray(arr, mode))
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2 or min(arr.shape) < 1:
        raise ImageError(f"{name}: an image array must be (H, W), (H, W, 3) or (H, W, 4); got shape {arr.shape}")
    _check_size(arr.shape[1], arr.shape[0], name, max_pixels)
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if arr.dtype.kind in "ui":
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return np.clip(arr, 0, top).astype(np.float32) / top
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise ImageError(f"{name}: the array holds NaN or infinite values")
        if arr.min() < 0 or arr.max() > 1:
            raise ImageError(f"{name}: float arrays must be in 0-1 (divide by 255, or pass uint8)")
        return arr.astype(np.float32)
    raise ImageError(f"{name}: unsupported array dtype {arr.dtype}")


def downscale(grey: np.ndarray, side: int, full: tuple[int, int] | None = None) -> tuple[np.ndarray, float]:
    """``grey`` reduced (box filter) so its longer side is at most ``side`` px, and the scale applied to the
    image's ``full`` (H, W) (``full``: its size as stored, where JPEG's draft or :func:`_shrink` decoded it smaller)."""
    h, w = full or grey.shape
    if max(h, w) <= side:
        return grey, 1.0
    scale = side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # A pixel of a whole-factor reduction covers f x f stored pixels, the last row and column fewer: resize
    # the part that covers the stored image exactly, so nothing shifts (by up to f/2 px) on the way.
    fy, fx = (max(1, round(a / b)) for a, b in zip((h, w), grey.shape, strict=True))
    box = (0.0, 0.0, w / fx, h / fy)
    small = Image.fromarray(grey, "F").resize(size, Image.Resampling.BOX, box=box)
    return np.asarray(small, dtype=np.float32), scale


# Modes Image.reduce averages correctly (it premultiplies LA and RGBA by their alpha itself).
_REDUCIBLE = ("L", "LA", "RGB", "RGBA", "I", "F")


def _shrink(img: Image.Image, side: int) -> Image.Image:
    """Box-average a large image by a whole factor that keeps at least ``side`` px on its longer side, before
    any float copy is made: a 4000x4000 upload then costs a 1333x1333 float array, not a 4000x4000 one.

    The exact reduction to ``side`` is :func:`downscale`'s, as before; averaging in two box steps changes a
    frame by at most one grey level. 16-bit modes are left whole (Image.reduce does not average them).
    """
    factor = max(img.size) // side
    if factor < 2:
        return img
    if img.mode == "P":  # as _grey_from_pil would: a palette index cannot be averaged
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif img.mode in ("PA", "La", "RGBa"):
        img = img.convert("RGBA")
    elif img.mode not in _REDUCIBLE and not img.mode.startswith("I;16"):
        img = img.convert("L")  # CMYK, YCbCr, 1, ...: what _grey_from_pil does with them
    return img.reduce(factor) if img.mode in _REDUCIBLE else img


def _check_header(img: Image.Image, name: str, limits: ImageLimits) -> None:
    if limits.formats is not None and img.format not in limits.formats:
        raise FormatNotAcceptedError(name, img.format, limits.formats)
    _check_size(img.width, img.height, name, limits.max_pixels, " (refused before decoding)")


def decode_image(
    source, *, work_side: int = WORK_SIDE, limits: ImageLimits = LIMITS
) -> tuple[np.ndarray, PreprocessRecord]:
    """Decode ``source`` into a float32 greyscale array in 0-1, at most ``work_side`` px on its longer side.

    ``source`` is a path, bytes, a binary file object, a ``PIL.Image`` or a numpy array. Bad input
    raises :class:`ImageError` with a message naming it (the subclasses :class:`NotAnImageError`,
    :class:`FormatNotAcceptedError` and :class:`TooManyPixelsError` tell the cases apart); nothing
    is decoded before the header has been checked against ``limits``.
    """
    name = _describe(source)
    record = PreprocessRecord(source=name)
    full = None  # (H, W) of the image as stored, where JPEG's draft or _shrink decoded it smaller
    if isinstance(source, np.ndarray):
        grey = _grey_from_array(source, name, limits.max_pixels)
        record.size, record.mode = (grey.shape[1], grey.shape[0]), f"array {source.dtype}"
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                img = source if isinstance(source, Image.Image) else _open(source, name)
                record.format, record.mode, record.size = img.format, img.mode, img.size
                _check_header(img, name, limits)
                if getattr(img, "is_animated", False):
                    record.frames = "first of an animation"  # only frame 0 is ever decoded
                if img.format == "JPEG" and max(img.size) > 2 * work_side:
                    img.draft("L", (work_side, work_side))  # JPEG decodes at 1/2, 1/4, 1/8 scale cheaply
                img.load()
                full = record.size[::-1]
                img = _shrink(img, work_side)
                orientation = img.getexif().get(0x0112)
                if orientation in (5, 6, 7, 8):  # a quarter turn: the full size turns too
                    full = full[::-1]
                if orientation and orientation != 1:
                    img = ImageOps.exif_transpose(img)
                    record.exif_orientation = int(orientation)
                grey = _grey_from_pil(img)
        except ImageError:
            raise
        except UnidentifiedImageError:
            raise NotAnImageError(f"{name}: not an image (or a format Pillow cannot read)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise TooManyPixelsError(
                f"{name}: too many pixels, refused before decoding ({exc})", limits.max_pixels
            ) from None
        except (OSError, ValueError, SyntaxError, EOFError, TypeError, IndexError, KeyError) as exc:
            # truncated or corrupt data inside a valid header
            raise ImageError(f"{name}: cannot decode image ({exc})") from None
    grey, record.working_scale = downscale(grey, work_side, full)
    return grey, record
