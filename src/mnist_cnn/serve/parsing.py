"""What a request says: the content type, the JSON pixels, the multipart upload and ``min_confidence``.

The 784-number JSON body is parsed by hand with orjson on the event loop, not by a pydantic model:
it is the hot path (docs/benchmarks.md), and a hand-written check names the exact value that is wrong.
"""

from __future__ import annotations

import numpy as np
import orjson
from fastapi import Request
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from .errors import ApiError

JSON_KEYS = {"pixels", "scale", "min_confidence"}
MAX_FORM_FIELDS = 4  # text fields beside the image (min_confidence, and a few a form may add)
MAX_TEXT_BYTES = 1024  # one text field's value: a number, not a payload


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def load_json_object(body: bytes) -> dict:
    """The JSON object of a request body; ApiError(422) for anything else or an unknown key."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(422, f"body is not valid JSON: {exc}", "body") from None
    if not isinstance(data, dict):
        raise ApiError(422, 'body must be a JSON object like {"pixels": [784 numbers]}', "body")
    unknown = set(data) - JSON_KEYS
    if unknown:
        raise ApiError(422, f"unknown field {sorted(unknown)[0]!r}; expected 'pixels' and optionally 'scale' and 'min_confidence'", sorted(unknown)[0])  # fmt: skip
    return data


def parse_pixels(data: dict) -> np.ndarray:
    """``{"pixels": [...], "scale": 255|1}`` as a (28, 28) float32 image in 0-1.

    ``pixels``: 784 numbers, or 28 rows of 28. ``scale`` (optional): 255 for 0-255 values, 1 for 0-1;
    without it, values above 1 mean 0-255. Raises ApiError(422) naming the field that is wrong.
    """
    if "pixels" not in data:
        raise ApiError(422, "pixels is required: 784 numbers, or 28 rows of 28", "pixels")
    scale = data.get("scale")
    if scale is not None and (type(scale) not in (int, float) or scale not in (1, 255)):
        raise ApiError(422, f"scale must be 255 (values 0-255) or 1 (values 0-1); got {scale!r}", "scale")
    flat, name = _flatten(data["pixels"])
    for k, v in enumerate(flat):
        t = type(v)
        if t is not int and t is not float:  # bool is a subclass of int: refused here on purpose
            raise ApiError(422, f"{name(k)} must be a number; got {_json_type(v)}", name(k))
    arr = np.array(flat, dtype=np.float64)
    lo, hi = int(arr.argmin()), int(arr.argmax())
    if arr[lo] < 0:
        raise ApiError(422, f"{name(lo)} is {flat[lo]}; pixel values must not be negative", name(lo))
    if scale is None:
        scale = 255 if arr[hi] > 1 else 1
    if arr[hi] > scale:
        raise ApiError(422, f"{name(hi)} is {flat[hi]}; with scale {scale} values must be at most {scale}", name(hi))
    if scale == 255:  # integers in 0-255 give exactly what Classifier.predict gives for uint8
        return (arr.astype(np.float32) / np.float32(255)).reshape(28, 28)
    return arr.astype(np.float32).reshape(28, 28)


def _flatten(pixels) -> tuple[list, callable]:
    """The 784 values, and how to name the k-th of them in an error (``pixels[3][7]`` or ``pixels[91]``)."""
    if not isinstance(pixels, list):
        raise ApiError(422, f"pixels must be a list of 784 numbers or 28 rows of 28; got {_json_type(pixels)}", "pixels")  # fmt: skip
    if len(pixels) == 28 and all(isinstance(row, list) for row in pixels):
        for i, row in enumerate(pixels):
            if len(row) != 28:
                raise ApiError(422, f"pixels[{i}] must hold 28 numbers; got {len(row)}", f"pixels[{i}]")
        return [v for row in pixels for v in row], lambda k: f"pixels[{k // 28}][{k % 28}]"
    if len(pixels) == 784:
        return pixels, lambda k: f"pixels[{k}]"
    raise ApiError(422, f"pixels must be 784 numbers or 28 rows of 28; got a list of {len(pixels)}", "pixels")


def _json_type(v) -> str:
    names = {bool: "a boolean", str: "a string", dict: "an object", list: "a list", type(None): "null"}
    return names.get(type(v), type(v).__name__)


async def read_upload(request: Request) -> tuple[bytes, dict[str, str]]:
    """The bytes of the multipart file field ``image``, and the text fields sent with it.

    ApiError for every way a multipart body can be wrong, naming the part: 422 for no boundary, a second
    file or too many fields, 413 for a text field over MAX_TEXT_BYTES (the body's own limit is the Guard's).
    """
    if "boundary=" not in request.headers.get("content-type", "").lower():
        raise ApiError(422, "multipart/form-data needs a boundary in its Content-Type (let the HTTP client write the header)", "content-type")  # fmt: skip
    try:
        form = await _UploadParser(request).parse()
    except MultiPartException as exc:  # a part without a name, a body that is not multipart at all
        raise ApiError(422, f"malformed multipart body: {exc.message}", "body") from None
    try:
        upload = form.get("image")
        if not isinstance(upload, UploadFile):
            names = ", ".join(repr(k) for k in form.keys()) or "none"
            raise ApiError(422, f"image is required: a multipart file field named 'image' (fields sent: {names})", "image")  # fmt: skip
        fields = {k: v for k, v in form.multi_items() if isinstance(v, str)}
        return await upload.read(), fields
    finally:
        await form.close()


class _UploadParser(MultiPartParser):
    """Starlette's multipart parser with the service's limits, each refused as an ApiError that names the part.

    ``Request.form`` turns its own limits into a bare 400 without a field; here they are counted as each part's
    headers end, before its data is stored. (Uses Starlette's ``_current_part``: tests/test_hostile.py checks it.)
    """

    def __init__(self, request: Request):
        super().__init__(request.headers, request.stream(), max_part_size=MAX_TEXT_BYTES)
        self.files, self.fields = 0, 0

    def on_headers_finished(self) -> None:
        super().on_headers_finished()
        part = self._current_part
        if part.file is not None:
            self.files += 1
            if self.files > 1:
                raise ApiError(422, f"send one file, in the field 'image'; {part.field_name!r} is a second file", part.field_name)  # fmt: skip
        else:
            self.fields += 1
            if self.fields > MAX_FORM_FIELDS:
                raise ApiError(422, f"too many form fields: {part.field_name!r} is one more than {MAX_FORM_FIELDS}", part.field_name)  # fmt: skip

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._current_part
        if part.file is None and len(part.data) + end - start > MAX_TEXT_BYTES:
            raise ApiError(413, f"form field {part.field_name!r} is longer than {MAX_TEXT_BYTES} bytes", part.field_name)  # fmt: skip
        super().on_part_data(data, start, end)


def min_confidence(request: Request, sent, default: float, where: str = "form") -> float:
    """The request's ``min_confidence`` (a number in 0-1) from its ``where`` (form or body: ``sent``) or its query,
    else ``default``. ApiError(422) when it is malformed, out of range or sent both ways."""
    query = request.query_params.get("min_confidence")
    if query is not None and sent is not None:
        raise ApiError(422, f"min_confidence was sent twice (query and {where}); send it once", "min_confidence")
    return parse_min_confidence(sent if sent is not None else query, default)


def parse_min_confidence(value: str | float | None, default: float) -> float:
    """``value`` (text from a form or query, or a JSON number) as a number in 0-1, else ``default``."""
    if value is None or value == "":
        return default
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ApiError(422, f"min_confidence must be a number between 0 and 1; got {value[:40]!r}", "min_confidence") from None  # fmt: skip
    elif type(value) in (int, float):
        number = float(value)
    else:
        raise ApiError(422, f"min_confidence must be a number between 0 and 1; got {_json_type(value)}", "min_confidence")  # fmt: skip
    if not 0 <= number <= 1:  # also refuses nan
        raise ApiError(422, f"min_confidence must be between 0 and 1; got {str(value)[:40]}", "min_confidence")
    return number
