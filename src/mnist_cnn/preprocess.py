"""Turn an image file into MNIST-format input: 28x28 uint8, white digit on black.

This is the simple pipeline (greyscale, resize, invert a light background). Everything that
reads an image — the CLI, the Python API — goes through :func:`load_image`, so they agree.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import MnistCnnError

# Refuse images with more pixels than this before decoding them (decompression bombs).
MAX_PIXELS = 40_000_000


class ImageError(MnistCnnError):
    """A file that is not an image this tool can read."""


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file and return it as MNIST-style (28, 28) uint8, white on black."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > MAX_PIXELS:
                    raise ImageError(
                        f"{path}: {img.width}x{img.height} pixels is more than the limit of {MAX_PIXELS:,}"
                    )
                img = ImageOps.exif_transpose(img)
                grey = _to_grey(img)
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a folder, not an image") from None
    except UnidentifiedImageError:
        raise ImageError(f"{path}: not an image (or a format Pillow cannot read)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{path}: refused, too many pixels ({exc})") from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data inside a valid header
        raise ImageError(f"{path}: cannot decode image ({exc})") from None
    return to_mnist(grey)


def _to_grey(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Transparent areas are background: flatten onto white so they read as paper.
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        span = max(arr.max() - arr.min(), 1.0)
        return Image.fromarray(((arr - arr.min()) * 255.0 / span).astype(np.uint8))
    return img.convert("L")


def to_mnist(grey: Image.Image) -> np.ndarray:
    """Resize a greyscale image to 28x28 and invert it if its background is light."""
    small = np.asarray(grey.resize((28, 28), Image.Resampling.LANCZOS), dtype=np.uint8)
    border = np.concatenate([small[0], small[-1], small[:, 0], small[:, -1]])
    if border.mean() > 127:  # light background: MNIST digits are white on black
        small = 255 - small
    return small
