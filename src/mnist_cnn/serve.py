"""The REST service and the drawing page: FastAPI on uvicorn, with concurrent requests micro-batched.

``create_app(model_dir, settings)`` builds the app; the model is loaded and warmed up in the
lifespan (in a thread, so ``/healthz`` answers and ``/readyz`` says 503 meanwhile). Every
``/v1/predict`` request is parsed and checked on the event loop, then queued; one worker thread
takes everything queued so far as one batch through the model, so 16 concurrent clients cost
about one forward pass instead of 16. ``/v1/read`` takes an image of a number and answers what
:func:`mnist_cnn.reading.read_digits` finds (segmentation and its forward passes in a worker thread,
outside the batcher). ``mnist-cnn serve RUN`` runs it on uvicorn.

>>> from mnist_cnn.serve import Settings, create_app        # doctest: +SKIP
>>> app = create_app("runs/basic", Settings(runtime="torch"))  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import logging
import os
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Literal

import numpy as np

try:
    import orjson
    from fastapi import FastAPI, Request
    from fastapi.responses import Response
    from pydantic import BaseModel, Field
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException
except ImportError as exc:  # pragma: no cover - the message is the point
    from .errors import MnistCnnError

    raise MnistCnnError(
        f"the service needs the 'serve' extra ({exc.name} is missing): pip install 'mnist-cnn[serve]'"
    ) from None

from . import __version__
from .config import ServeSettings as Settings
from .errors import MnistCnnError
from .inference import load_model, read_config
from .preprocess import ImageError, NoDigitError

log = logging.getLogger(__name__)
access_log = logging.getLogger("mnist_cnn.access")


# ----------------------------------------------------------------------------- errors


class ApiError(Exception):
    """A client error with its HTTP status; ``field`` names the part of the request that was wrong."""

    def __init__(self, status: int, detail: str, field: str | None = None, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.detail, self.field, self.headers = status, detail, field, headers or {}


def _json(data, status: int = 200, headers: dict | None = None) -> Response:
    return Response(
        orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, media_type="application/json"
    )


def _error_response(exc: ApiError) -> Response:
    body = {"detail": exc.detail} if exc.field is None else {"detail": exc.detail, "field": exc.field}
    return _json(body, exc.status, exc.headers)


# ----------------------------------------------------------------------------- request parsing

ALLOWED_KEYS = {"pixels", "scale"}


def parse_pixels(body: bytes) -> np.ndarray:
    """A JSON body ``{"pixels": [...], "scale": 255|1}`` as a (28, 28) float32 image in 0-1.

    ``pixels``: 784 numbers, or 28 rows of 28. ``scale`` (optional): 255 for 0-255 values, 1 for 0-1;
    without it, values above 1 mean 0-255. Raises ApiError(422) naming the field that is wrong.
    """
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(422, f"body is not valid JSON: {exc}", "body") from None
    if not isinstance(data, dict):
        raise ApiError(422, 'body must be a JSON object like {"pixels": [784 numbers]}', "body")
    unknown = set(data) - ALLOWED_KEYS
    if unknown:
        raise ApiError(422, f"unknown field {sorted(unknown)[0]!r}; expected 'pixels' and optionally 'scale'", sorted(unknown)[0])  # fmt: skip
    if "pixels" not in data:
        raise ApiError(422, "pixels is required: 784 numbers, or 28 rows of 28", "pixels")
    scale = data.get("scale")
    if scale is not None and (type(scale) not in (int, float) or scale not in (1, 255)):
        raise ApiError(422, f"scale must be 255 (values 0-255) or 1 (values 0-1); got {scale!r}", "scale")
    pixels = data["pixels"]
    if not isinstance(pixels, list):
        raise ApiError(422, f"pixels must be a list of 784 numbers or 28 rows of 28; got {_json_type(pixels)}", "pixels")  # fmt: skip
    if len(pixels) == 28 and all(isinstance(row, list) for row in pixels):
        for i, row in enumerate(pixels):
            if len(row) != 28:
                raise ApiError(422, f"pixels[{i}] must hold 28 numbers; got {len(row)}", f"pixels[{i}]")
        flat = [v for row in pixels for v in row]
        name = lambda k: f"pixels[{k // 28}][{k % 28}]"
    elif len(pixels) == 784:
        flat = pixels
        name = lambda k: f"pixels[{k}]"
    else:
        raise ApiError(422, f"pixels must be 784 numbers or 28 rows of 28; got a list of {len(pixels)}", "pixels")
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


def _json_type(v) -> str:
    names = {bool: "a boolean", str: "a string", dict: "an object", list: "a list", type(None): "null"}
    return names.get(type(v), type(v).__name__)


def _with_upload(data: bytes, settings: Settings, use):
    """Open an uploaded image file, check its format and pixel count against the limits, and pass it to ``use``.

    Every client mistake becomes an ApiError: 415 for a format outside the allow-list or not an
    image at all, 413 for too many pixels, 422 for an empty, truncated or corrupt file (or one the
    package's preprocessing refuses, e.g. no ink for one digit).
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise ApiError(422, "image is empty (0 bytes)", "image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                fmt = (img.format or "?").upper()
                if fmt not in settings.formats:
                    raise ApiError(415, f"image format {fmt} is not accepted; send one of: {', '.join(sorted(settings.formats))}", "image")  # fmt: skip
                if img.width * img.height > settings.max_image_pixels:
                    raise ApiError(413, f"image is {img.width}x{img.height} pixels, more than the limit of {settings.max_image_pixels:,}", "image")  # fmt: skip
                img.seek(0)
                return use(img)
    except UnidentifiedImageError:
        raise ApiError(415, "image is not an image file Pillow can read", "image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ApiError(413, f"image refused: too many pixels ({exc})", "image") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:  # truncated or corrupt data inside a valid header
        raise ApiError(422, f"image cannot be decoded: {exc}", "image") from None
    except NoDigitError as exc:  # a blank page: say so rather than guess (or, for /v1/read, far too many marks)
        reason = str(exc).removeprefix("<image>: ")
        if "separate marks" in reason:
            raise ApiError(422, f"image: {reason}", "image") from None
        raise ApiError(422, "image: no digit found (no ink stands out from the background)", "image") from None
    except ImageError as exc:  # the package's decoding refused it (truncated or corrupt pixel data)
        raise ApiError(422, f"image cannot be decoded: {str(exc).removeprefix('<image>: ')}", "image") from None


def decode_upload(data: bytes, settings: Settings) -> np.ndarray:
    """An uploaded image file as a (28, 28) float32 image in 0-1, through the package's preprocessing."""
    from .preprocess import preprocess_image

    image = _with_upload(data, settings, lambda img: preprocess_image(img).array)
    return image.astype(np.float32) / np.float32(255)


def read_upload(data: bytes, settings: Settings, classifier, min_confidence: float) -> dict:
    """Every digit in an uploaded image, through :func:`mnist_cnn.reading.read_digits`: the JSON body of /v1/read."""
    from .reading import read_digits

    reading = _with_upload(data, settings, lambda img: read_digits(classifier, img, min_confidence=min_confidence))
    body = {**reading.to_dict(), "min_confidence": min_confidence}
    if not reading.found:
        body["detail"] = "no digit found in the image"
    return body


def parse_min_confidence(value: str | None, default: float) -> float:
    """The optional ``min_confidence`` of /v1/read (a number in 0-1), else ``default``; ApiError(422) if malformed."""
    if value is None or value == "":
        return default
    try:
        number = float(value)
    except ValueError:
        raise ApiError(422, f"min_confidence must be a number between 0 and 1; got {value[:40]!r}", "min_confidence") from None  # fmt: skip
    if not 0 <= number <= 1:  # also refuses nan
        raise ApiError(422, f"min_confidence must be between 0 and 1; got {value[:40]}", "min_confidence")
    return number


# ----------------------------------------------------------------------------- micro-batching


class QueueFull(Exception):
    pass


class MicroBatcher:
    """Collects concurrent requests into batches for one worker thread that runs the model."""

    def __init__(self, predict_proba, max_batch: int, max_queue: int, wait_s: float = 0.0):
        self._predict = predict_proba
        self.max_batch, self.max_queue, self.wait_s = max_batch, max_queue, wait_s
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="mnist-cnn-model")
        self.batches = self.images = 0  # counters for /v1/model and the logs

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, image: np.ndarray) -> np.ndarray:
        """Probabilities (10,) for one (28, 28) float32 image; raises QueueFull when too many wait."""
        if self._queue.qsize() >= self.max_queue:
            raise QueueFull
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((image, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        queue = self._queue
        while True:
            items = [await queue.get()]
            if self.wait_s and queue.qsize() < self.max_batch - 1:
                await asyncio.sleep(self.wait_s)
            while len(items) < self.max_batch and not queue.empty():
                items.append(queue.get_nowait())
            items = [it for it in items if not it[1].done()]  # clients that went away
            if not items:
                continue
            batch = np.stack([it[0] for it in items])  # (B, 28, 28)
            try:
                probs = await loop.run_in_executor(self._executor, self._predict, batch)
            except Exception as exc:  # a bug or a broken model: every waiting request gets it, the loop goes on
                for _, future in items:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.images += len(items)
            for (_, future), p in zip(items, probs, strict=True):
                if not future.done():
                    future.set_result(p)

    async def stop(self) -> None:
        """Finish what is queued, then stop the worker."""
        if self._task is not None:
            while not self._queue.empty():
                await asyncio.sleep(0.005)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)


# ----------------------------------------------------------------------------- the model behind the service


class Service:
    """The loaded model, its batcher and what /readyz and /v1/model report."""

    def __init__(self, model_dir: Path, settings: Settings):
        self.model_dir, self.settings = model_dir, settings
        self.config = read_config(model_dir)  # a missing or broken folder fails here, before serving
        self.classifier = None
        self.batcher: MicroBatcher | None = None
        self.error: str | None = None
        self.started = time.time()
        self.parameters: int | None = None
        self.reads = 0  # /v1/read requests being computed now (they bypass the batcher)

    @property
    def ready(self) -> bool:
        return self.batcher is not None

    def _load(self):
        import torch

        from .models import count_parameters

        torch.set_num_threads(self.settings.threads)
        torch_clf = load_model(self.model_dir)
        self.parameters = count_parameters(torch_clf.model)
        if self.settings.runtime == "onnxruntime":
            from .export import OnnxClassifier

            clf = OnnxClassifier(self.model_dir, self.config, threads=self.settings.threads)
        else:
            clf = torch_clf
        # Warm-up: the first calls at each batch size allocate and pick kernels.
        for n in (1, 2, 8, self.settings.max_batch):
            clf.predict_proba(np.zeros((n, 28, 28), np.float32))
        return clf

    async def start(self) -> None:
        try:
            t0 = time.perf_counter()
            self.classifier = await asyncio.to_thread(self._load)
        except Exception as exc:  # reported by /readyz; the process stays up for /healthz
            self.error = str(exc)
            log.error("model %s could not be loaded: %s", self.model_dir, exc)
            return
        s = self.settings
        batcher = MicroBatcher(self.classifier.predict_proba, s.max_batch, s.max_queue, s.batch_wait_ms / 1000)
        batcher.start()
        self.batcher = batcher
        log.info("model %s ready (%s, %s runtime) in %.2f s", self.model_dir, self.config["architecture"],
                 s.runtime, time.perf_counter() - t0)  # fmt: skip

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()

    def _check_ready(self) -> None:
        if self.batcher is None:
            raise ApiError(503, "the model is still loading" if self.error is None else f"the model could not be loaded: {self.error}",
                           headers={"Retry-After": str(self.settings.retry_after_s)})  # fmt: skip

    async def predict(self, image: np.ndarray) -> Response:
        self._check_ready()
        try:
            probs = await self.batcher.submit(image)
        except QueueFull:
            raise ApiError(503, "too many requests are waiting; retry shortly",
                           headers={"Retry-After": str(self.settings.retry_after_s)}) from None  # fmt: skip
        label = int(probs.argmax())
        confidence = float(probs[label])
        return _json({
            "label": label,
            "confidence": confidence,
            "confident": confidence >= self.settings.min_confidence,
            "probabilities": probs,
            "input": np.rint(image * 255).astype(np.uint8),
        })  # fmt: skip

    async def read(self, data: bytes, min_confidence: float) -> Response:
        """Read every digit in an uploaded image (segmentation and its forward passes in a worker thread)."""
        self._check_ready()
        if self.reads >= self.settings.max_queue:
            raise ApiError(503, "too many requests are waiting; retry shortly",
                           headers={"Retry-After": str(self.settings.retry_after_s)})  # fmt: skip
        self.reads += 1
        try:
            body = await run_in_threadpool(read_upload, data, self.settings, self.classifier, min_confidence)
        finally:
            self.reads -= 1
        return _json(body)

    def describe(self) -> dict:
        c = self.config
        versions = {**c.get("versions", {}), "serving": {"mnist_cnn": __version__, "runtime": self._runtime_version()}}
        info = {
            "architecture": c["architecture"],
            "parameters": self.parameters,
            "model_kwargs": c.get("model_kwargs", {}),
            "recipe": c.get("recipe"),
            "labels": c.get("labels"),
            "input_shape": c.get("input_shape", [1, 28, 28]),
            "normalization": c.get("normalization"),
            "metrics": c.get("metrics", {}),
            "runtime": self.settings.runtime,
            "onnx": c.get("onnx"),
            "versions": versions,
            "format_version": c.get("format_version"),
            "min_confidence": self.settings.min_confidence,
            "limits": {
                "max_body_bytes": self.settings.max_body_bytes,
                "max_image_pixels": self.settings.max_image_pixels,
                "image_formats": sorted(self.settings.formats),
                "max_queue": self.settings.max_queue,
            },
        }
        if self.batcher is not None:
            info["batches"] = {"forward_passes": self.batcher.batches, "images": self.batcher.images}
        return info

    def _runtime_version(self) -> str:
        if self.settings.runtime == "onnxruntime":
            import onnxruntime

            return f"onnxruntime {onnxruntime.__version__}"
        import torch

        return f"torch {torch.__version__}"


# ----------------------------------------------------------------------------- ASGI guard: body limit and access log


class BodyTooLarge(Exception):
    pass


class Guard:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware): refuses bodies over the limit with 413
    (from Content-Length before reading, or while reading a chunked body) and writes the access log."""

    def __init__(self, app, settings: Settings):
        self.app, self.limit, self.log = app, settings.max_body_bytes, settings.access_log

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        t0 = time.perf_counter()
        status = [0]
        received = [0]
        limit = self.limit

        async def send_status(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        length = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                length = value
                break
        try:
            if length is not None and (not length.isdigit() or int(length) > limit):
                raise BodyTooLarge if length.isdigit() else ApiError(400, "Content-Length is not a number")
        except (BodyTooLarge, ApiError) as exc:
            await _error_response(_as_api_error(exc, limit))(scope, receive, send_status)
        else:

            async def limited_receive():
                message = await receive()
                if message["type"] == "http.request":
                    received[0] += len(message.get("body", b""))
                    if received[0] > limit:
                        raise BodyTooLarge
                return message

            await self.app(scope, limited_receive, send_status)
        if self.log:
            client = scope.get("client")
            access_log.info(
                '{"method":"%s","path":"%s","status":%d,"ms":%.2f,"bytes_in":%d,"client":"%s"}',
                scope["method"], scope["path"].replace('"', "%22"), status[0], (time.perf_counter() - t0) * 1000,
                received[0], f"{client[0]}:{client[1]}" if client else "-",
            )  # fmt: skip


def _as_api_error(exc: Exception, limit: int) -> ApiError:
    if isinstance(exc, BodyTooLarge):
        return ApiError(413, f"request body is larger than the limit of {limit:,} bytes", "body")
    return exc


# ----------------------------------------------------------------------------- the app


class ErrorBody(BaseModel):
    detail: str = Field(description="what was wrong and what to send instead")
    field: str | None = Field(None, description="the part of the request that was wrong, e.g. pixels[3][7]")


class PixelsRequest(BaseModel):
    pixels: list[float] | list[list[float]] = Field(description="784 numbers, or 28 rows of 28, row by row; white digit on black like MNIST")  # fmt: skip
    scale: Literal[1, 255] | None = Field(None, description="255: values in 0-255; 1: values in 0-1; default: 255 if any value is above 1")  # fmt: skip


class Prediction(BaseModel):
    label: int = Field(description="the predicted digit")
    confidence: float = Field(description="the probability of that digit")
    confident: bool = Field(description="confidence is at least the service's min_confidence")
    probabilities: list[float] = Field(description="one probability per digit 0-9")
    input: list[list[int]] = Field(description="the 28x28 image (0-255) the model saw")


class ReadDigit(BaseModel):
    box: list[int] = Field(description="[left, top, right, bottom] of the digit's ink, in the uploaded image's pixels")
    line: int = Field(description="text line the digit is on, 0 for the top one")
    label: int = Field(description="the most probable digit")
    char: str = Field(description="the label, or '?' when confidence is below min_confidence")
    confidence: float = Field(description="the probability of that digit")
    uncertain: bool = Field(description="confidence is below min_confidence")
    probabilities: list[float] = Field(description="one probability per digit 0-9")


class ReadingResult(BaseModel):
    text: str = Field(description="the digits left to right, lines joined by a newline, '?' for an uncertain digit; '' when no digit was found")  # fmt: skip
    found: bool = Field(description="false when the image holds no ink: then text is '' and digits is empty")
    lines: list[str] = Field(description="text, one string per line, top to bottom")
    digits: list[ReadDigit] = Field(description="every digit, line by line, left to right")
    min_confidence: float = Field(description="the threshold used: min_confidence of the request, else the service's")
    detail: str | None = Field(None, description="'no digit found in the image' when found is false")


_ERRORS = {
    413: {"model": ErrorBody, "description": "body or image larger than the limits"},
    415: {"model": ErrorBody, "description": "content type or image format not accepted"},
    422: {"model": ErrorBody, "description": "malformed or out-of-range input; `field` names it"},
    503: {"model": ErrorBody, "description": "model loading or queue full; see Retry-After"},
}
_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": PixelsRequest.model_json_schema()},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {"type": "string", "format": "binary", "description": "PNG, JPEG, ... of one digit"}
                    },  # fmt: skip
                    "required": ["image"],
                }
            },
        },
    }
}
_MIN_CONFIDENCE_HELP = "digits less probable than this are shown as '?' (also accepted as a query parameter; default: the service's min_confidence)"  # fmt: skip
_READ_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "image": {
                            "type": "string",
                            "format": "binary",
                            "description": "PNG, JPEG, ... of a number (digits on one or more lines)",
                        },
                        "min_confidence": {
                            "type": "number",
                            "minimum": 0,
                            "maximum": 1,
                            "description": _MIN_CONFIDENCE_HELP,
                        },
                    },
                    "required": ["image"],
                }
            },
        },
    }
}
WEB_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
             "style.css": "text/css; charset=utf-8", "favicon.svg": "image/svg+xml"}  # fmt: skip


def _web_file(name: str) -> bytes:
    return resources.files("mnist_cnn").joinpath("web", name).read_bytes()


def create_app(model_dir: str | os.PathLike, settings: Settings | None = None) -> FastAPI:
    """The FastAPI app serving the model folder ``model_dir`` (loaded in the lifespan)."""
    settings = settings or Settings()
    service = Service(Path(model_dir), settings)
    web = {name: (_web_file(name), ctype) for name, ctype in WEB_FILES.items()}

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(service.start())
        yield
        await loading
        await service.stop()  # uvicorn has let in-flight requests finish before this runs

    app = FastAPI(
        title="mnist-cnn",
        version=__version__,
        description="Handwritten digit recognition. `POST /v1/predict` with an image or 784 pixel values for one "
        "digit; `POST /v1/read` with an image of a number (several digits, one or more lines) for the string, "
        "each digit's box, label and confidence.",
        lifespan=lifespan,
    )
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return _error_response(exc)

    @app.exception_handler(BodyTooLarge)
    async def too_large(request: Request, exc: BodyTooLarge):
        return _error_response(_as_api_error(exc, settings.max_body_bytes))

    @app.post("/v1/predict", response_model=Prediction, responses=_ERRORS, openapi_extra=_PREDICT_BODY,
              summary="Classify one digit: an uploaded image, or 784 pixel values as JSON")  # fmt: skip
    async def predict(request: Request):
        image = await _read_image(request, settings)
        return await service.predict(image)

    @app.post("/v1/read", response_model=ReadingResult, responses=_ERRORS, openapi_extra=_READ_BODY,
              summary="Read a number: every digit in an uploaded image, left to right, line by line")  # fmt: skip
    async def read(request: Request):
        ctype = _content_type(request)
        if ctype != "multipart/form-data":
            raise ApiError(415, f"content type {ctype or '(none)'!r} is not accepted; /v1/read takes multipart/form-data with the image in a field named 'image'", "content-type")  # fmt: skip
        data, fields = await _upload(request, settings)
        query = request.query_params.get("min_confidence")
        if query is not None and fields.get("min_confidence") is not None:
            raise ApiError(422, "min_confidence was sent twice (query and form); send it once", "min_confidence")
        value = fields.get("min_confidence", query)
        min_confidence = parse_min_confidence(value, settings.min_confidence)
        return await service.read(data, min_confidence)

    @app.get("/healthz", summary="The process is alive")
    async def healthz():
        return _json({"status": "ok"})

    @app.get("/readyz", summary="200 once the model is loaded and warmed up, else 503", responses={503: {"model": ErrorBody}})  # fmt: skip
    async def readyz():
        if service.ready:
            return _json({"status": "ready"})
        detail = "loading" if service.error is None else f"model could not be loaded: {service.error}"
        return _json({"detail": detail}, 503, {"Retry-After": str(settings.retry_after_s)})

    @app.get("/v1/model", summary="Architecture, metrics, versions and limits of the model served")
    async def model_info():
        return _json(service.describe())

    @app.get("/", include_in_schema=False)
    async def page():
        body, ctype = web["index.html"]
        return Response(body, media_type=ctype)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str):
        if name not in web or name == "index.html":
            raise ApiError(404, f"no file {name!r}")
        body, ctype = web[name]
        return Response(body, media_type=ctype, headers={"Cache-Control": "max-age=3600"})

    app.add_middleware(Guard, settings=settings)
    return app


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _upload(request: Request, settings: Settings) -> tuple[bytes, dict[str, str]]:
    """The bytes of the multipart file field ``image``, and the text fields sent with it."""
    try:
        form = await request.form(max_files=1, max_fields=4, max_part_size=settings.max_body_bytes)
    except MultiPartException as exc:
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


async def _read_image(request: Request, settings: Settings) -> np.ndarray:
    ctype = _content_type(request)
    if ctype == "application/json":
        return parse_pixels(await request.body())
    if ctype == "multipart/form-data":
        data, _ = await _upload(request, settings)
        return await run_in_threadpool(decode_upload, data, settings)
    raise ApiError(415, f"content type {ctype or '(none)'!r} is not accepted; send application/json or multipart/form-data", "content-type")  # fmt: skip


# ----------------------------------------------------------------------------- running it


def settings_from(values: dict) -> Settings:
    """Settings from a dict (e.g. parsed CLI flags), ignoring keys that are not fields and values of None."""
    names = {f.name for f in dataclasses.fields(Settings)}
    return Settings(**{k: v for k, v in values.items() if k in names and v is not None})


def run(model_dir: str | os.PathLike, settings: Settings, host: str = "127.0.0.1", port: int = 8000,
        graceful_timeout: float = 10.0) -> None:  # fmt: skip
    """Serve on uvicorn (httptools parser, uvloop where installed) until SIGINT/SIGTERM; in-flight requests finish."""
    import importlib.util

    import uvicorn

    app = create_app(model_dir, settings)
    uvicorn.run(
        app, host=host, port=port, log_config=None, access_log=False, server_header=False,
        http="httptools", loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        timeout_graceful_shutdown=graceful_timeout, lifespan="on",
    )  # fmt: skip
