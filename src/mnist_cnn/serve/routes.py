"""The API's endpoints: /v1/predict, /v1/read, /v1/model, /healthz and /readyz.

Each handler gets the :class:`~mnist_cnn.serve.service.Service` of its app through ``Depends``;
the request is parsed on the event loop, images are decoded in a worker thread (a few at once: ``decode_slots``).
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Request

from . import parsing
from .errors import ApiError, json_response
from .schemas import ERRORS, PREDICT_BODY, READ_BODY, ErrorBody, Prediction, ReadingResult
from .service import Service


async def get_service(request: Request) -> Service:
    """The app's service (async, so FastAPI does not send this to a thread for every request)."""
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]
router = APIRouter()


@router.post("/v1/predict", response_model=Prediction, responses=ERRORS, openapi_extra=PREDICT_BODY,
             summary="Classify one digit: an uploaded image, or 784 pixel values as JSON")  # fmt: skip
async def predict(request: Request, service: ServiceDep):
    image, min_confidence = await _read_image(request, service)
    return json_response(await service.predict(image, min_confidence))


@router.post("/v1/read", response_model=ReadingResult, responses=ERRORS, openapi_extra=READ_BODY,
             summary="Read a number: every digit in an uploaded image, left to right, line by line")  # fmt: skip
async def read(request: Request, service: ServiceDep):
    ctype = parsing.content_type(request)
    if ctype != "multipart/form-data":
        raise ApiError(415, f"content type {ctype or '(none)'!r} is not accepted; /v1/read takes multipart/form-data with the image in a field named 'image'", "content-type")  # fmt: skip
    async with service.upload():
        data, fields = await parsing.read_upload(request)
        min_confidence = parsing.min_confidence(request, fields.get("min_confidence"), service.settings.min_confidence)
        return json_response(await service.read(data, min_confidence))


@router.get("/healthz", summary="The process is alive")
async def healthz():
    return json_response({"status": "ok"})


@router.get("/readyz", summary="200 once the model is loaded and warmed up, else 503", responses={503: {"model": ErrorBody}})  # fmt: skip
async def readyz(service: ServiceDep):
    if service.ready:
        return json_response({"status": "ready"})
    detail = "loading" if service.error is None else f"model could not be loaded: {service.error}"
    return json_response({"detail": detail}, 503, {"Retry-After": str(service.settings.retry_after_s)})


@router.get("/v1/model", summary="Architecture, metrics, versions and limits of the model served")
async def model_info(service: ServiceDep):
    return json_response(service.describe())


async def _read_image(request: Request, service: Service) -> tuple[np.ndarray, float]:
    """The (28, 28) float32 image of a /v1/predict request, and the min_confidence to judge its answer by."""
    ctype, default = parsing.content_type(request), service.settings.min_confidence
    if ctype == "application/json":
        data = parsing.load_json_object(await request.body())
        image = parsing.parse_pixels(data)
        return image, parsing.min_confidence(request, data.get("min_confidence"), default, "body")
    if ctype == "multipart/form-data":
        async with service.upload():
            data, fields = await parsing.read_upload(request)
            min_confidence = parsing.min_confidence(request, fields.get("min_confidence"), default)
            return await service.decode_upload(data), min_confidence
    raise ApiError(415, f"content type {ctype or '(none)'!r} is not accepted; send application/json or multipart/form-data", "content-type")  # fmt: skip
