"""Uploaded image files: decoded by the package's own preprocessing, within the service's limits.

:func:`mnist_cnn.preprocess.decode_image` checks the format and the pixel count from the header
(one limit, the service's) and raises typed errors; here each type becomes its HTTP answer. A photo for
/v1/predict goes through :func:`mnist_cnn.parallel.upload_frame`, which decoding processes can run without
importing the service.
"""

from __future__ import annotations

import contextlib
import io
import warnings

from PIL import Image

from ..config import ServeSettings as Settings
from ..errors import (
    FormatNotAcceptedError,
    ImageError,
    NoDigitError,
    NotAnImageError,
    TooManyMarksError,
    TooManyPixelsError,
)
from ..preprocess import ImageLimits
from ..reading import read_digits
from .errors import ApiError

FIELD = "image"  # the multipart field, and the name error messages give the upload


def limits(settings: Settings) -> ImageLimits:
    return ImageLimits(max_pixels=settings.max_image_pixels, formats=frozenset(settings.formats))


def read_upload(data: bytes, settings: Settings, classifier, min_confidence: float) -> dict:
    """Every digit in an uploaded image, through :func:`mnist_cnn.reading.read_digits`: the JSON body of /v1/read."""
    with as_api_errors():
        reading = read_digits(classifier, _named(data), min_confidence=min_confidence, limits=limits(settings))
    body = {**reading.to_dict(), "min_confidence": min_confidence}
    if not reading.found:
        body["detail"] = "no digit found in the image"
    return body


def header_pixels(data: bytes, settings: Settings) -> int:
    """Width x height as the upload's header declares them (nothing is decoded): what its decode will hold.

    0 when Pillow reads no header, or when the image is over the pixel limit: decoding refuses those at once.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                pixels = img.width * img.height
    except (OSError, ValueError, SyntaxError, EOFError, TypeError, IndexError, KeyError, Image.DecompressionBombError):
        return 0
    return pixels if pixels <= settings.max_image_pixels else 0


def _named(data: bytes) -> io.BytesIO:
    """The upload as a file object named after its field, so that the preprocessing's messages say 'image: ...'."""
    file = io.BytesIO(data)
    file.name = FIELD
    return file


@contextlib.contextmanager
def as_api_errors():
    """Every error of the preprocessing becomes an ApiError: 415 for a format outside the allow-list or not an
    image at all, 413 for too many pixels, 422 for an empty, truncated or corrupt file, or one without a digit."""
    try:
        yield
    except FormatNotAcceptedError as exc:
        raise ApiError(415, f"image format {exc.format} is not accepted; send one of: {', '.join(exc.accepted)}", FIELD) from None  # fmt: skip
    except NotAnImageError:
        raise ApiError(415, "image is not an image file Pillow can read", FIELD) from None
    except TooManyPixelsError as exc:
        size = "has too many pixels" if exc.width is None else f"is {exc.width}x{exc.height} pixels"
        raise ApiError(413, f"image {size}, more than the limit of {exc.limit:,}", FIELD) from None
    except TooManyMarksError as exc:  # /v1/read: far more marks than a number has
        raise ApiError(422, str(exc), FIELD) from None
    except NoDigitError:  # a blank page: say so rather than guess
        raise ApiError(422, "image: no digit found (no ink stands out from the background)", FIELD) from None
    except ImageError as exc:  # empty, truncated or corrupt data
        raise ApiError(422, f"image cannot be decoded: {str(exc).removeprefix(f'{FIELD}: ')}", FIELD) from None
