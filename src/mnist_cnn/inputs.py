"""What ``predict`` and ``predict_proba`` accept, and how it becomes MNIST-format images.

A model reads MNIST format: 28x28, a white digit on black, centred by mass in a 20 px box. An
array already in that format goes to the model as it is; everything else goes through
:func:`mnist_cnn.preprocess.preprocess_image` first, the same steps the CLI and the server take:

- a path (``str`` or ``Path``), ``bytes``, or a ``PIL.Image``: one image;
- a numpy array or tensor of any other size, (H, W), (H, W, 3|4), or a batch (N, H, W[, C]);
- a 28x28 array that is *dark ink on a light background* (its border, the outer 2 px, averages
  above 127 of 255, or 0.5 of 1: in MNIST it is black, 11 at most), such as a drawing saved
  from Paint and resized: read as the user meant it, inverted and re-framed, never misread;
- a list or tuple of any of these, one image each (or a batch each).

A 28x28 white-on-black array is taken as already MNIST format; if it is a digit that does not
fill MNIST's 20 px box, pass ``preprocess_image(array).array`` instead.

>>> from mnist_cnn.inputs import as_mnist_images
>>> as_mnist_images("seven.png").shape          # doctest: +SKIP
(1, 28, 28)
"""

from __future__ import annotations

import os

import numpy as np
import torch
from PIL import Image

from .preprocess import preprocess_image

SIDE = 28
# Mean pixel (of 255) of the border (the outer 2 px ring) above which a 28x28 image is dark ink on light
# paper. MNIST's digits sit in a 20 px box, so their border is black: its mean is at most 11 in the
# 70,000 images. (The mean of the whole image would misjudge a bold digit or a blob filling the box.)
LIGHT_BACKGROUND = 127
BORDER = np.ones((SIDE, SIDE), bool)
BORDER[2:-2, 2:-2] = False
HINT = (
    "pass a path, a PIL image, a numpy array (28x28 uint8 white-on-black in MNIST format, or an image of any"
    " size), or a list of those"
)
ONE_IMAGE = (str, os.PathLike, bytes, Image.Image)


def as_mnist_images(images) -> np.ndarray | torch.Tensor:
    """``images`` as a batch in MNIST format: (N, 28, 28) or (N, 1, 28, 28), uint8 in 0-255 or float in 0-1.

    An array already in MNIST format comes back unchanged (same object); anything else is preprocessed
    (see the module's docstring). Raises TypeError for what cannot be an image, ValueError for an array of a
    shape that is no image, and :class:`mnist_cnn.ImageError` for an image that cannot be read.
    """
    if isinstance(images, ONE_IMAGE):
        return preprocess_image(images).array[None]
    if isinstance(images, (list, tuple)) and any(isinstance(x, (*ONE_IMAGE, np.ndarray, torch.Tensor)) for x in images):
        return _many(images)
    arr = _as_array(images)
    if _is_mnist_format(arr):
        return _fix_polarity(arr)
    return _preprocess_array(arr)


def _many(items) -> torch.Tensor:
    """One float (N, 28, 28) batch in 0-1 from a list of images or batches (their dtypes may differ)."""
    batches = []
    for item in items:
        x = torch.as_tensor(as_mnist_images(item)).reshape(-1, SIDE, SIDE)
        # Integers become 0-1 like uint8; values out of range stay out of range, for to_model_input to explain.
        batches.append(x.float() / 255 if _is_integer(x) and x.dtype != torch.bool else x)
    return torch.cat(batches)


def _as_array(images) -> np.ndarray | torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images
    try:
        arr = np.asarray(images)
    except (ValueError, TypeError):  # ragged nested lists
        raise ValueError(f"cannot read images from this {type(images).__name__} (ragged or mixed): {HINT}") from None
    if arr.dtype.kind not in "biuf" or (arr.ndim == 0 and not isinstance(images, np.ndarray)):
        raise TypeError(f"cannot read images from an object of type {type(images).__name__}: {HINT}")
    return arr


def _is_mnist_format(arr) -> bool:
    shape = tuple(arr.shape)
    return shape[-2:] == (SIDE, SIDE) and (len(shape) in (2, 3) or (len(shape) == 4 and shape[1] == 1))


def _fix_polarity(arr):
    """``arr`` unchanged, except its images of dark ink on light paper, which are preprocessed."""
    if arr.dtype == torch.bool or arr.dtype == np.bool_ or not _in_range(arr):
        return arr  # to_model_input explains what is wrong with it
    border = arr.reshape(-1, SIDE * SIDE)[:, BORDER.ravel()]
    top = 255.0 if _is_integer(arr) else 1.0
    means = border.float().mean(1) if isinstance(arr, torch.Tensor) else border.astype(np.float64).mean(1)
    light = np.flatnonzero(np.asarray(means) > LIGHT_BACKGROUND * top / 255)
    if not len(light):
        return arr
    out = arr.cpu().numpy().copy() if isinstance(arr, torch.Tensor) else arr.copy()
    frames = out.reshape(-1, SIDE, SIDE)
    for i in light:
        frame = preprocess_image(np.asarray(frames[i])).array
        frames[i] = frame if top == 255.0 else frame.astype(np.float32) / 255
    return out


def _is_integer(arr) -> bool:
    return not arr.is_floating_point() if isinstance(arr, torch.Tensor) else arr.dtype.kind in "iu"


def _in_range(arr) -> bool:
    if arr.numel() == 0 if isinstance(arr, torch.Tensor) else arr.size == 0:
        return False
    lo, hi = float(arr.min()), float(arr.max())
    if _is_integer(arr):
        return 0 <= lo and hi <= 255
    return 0 <= lo and hi <= 1  # NaN fails both


def _preprocess_array(arr) -> np.ndarray:
    """Images of any other size: one (H, W) or (H, W, 3|4), or a batch (N, H, W) or (N, H, W, 1|3|4)."""
    arr = arr.cpu().numpy() if isinstance(arr, torch.Tensor) else arr
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (3, 4)):
        return preprocess_image(arr).array[None]
    if arr.ndim == 3 or (arr.ndim == 4 and arr.shape[-1] in (1, 3, 4)):
        frames = [preprocess_image(a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a).array for a in arr]
        return np.stack(frames) if frames else np.zeros((0, SIDE, SIDE), np.uint8)
    raise ValueError(
        f"images shaped {tuple(arr.shape)} are not images: {HINT}; arrays may be (H, W), (H, W, 3|4),"
        " (N, H, W) or (N, H, W, 1|3|4), and MNIST-format batches (N, 1, 28, 28)"
    )
