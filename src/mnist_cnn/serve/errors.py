"""Client errors and how every answer of the service is written: JSON by orjson, numpy arrays included."""

from __future__ import annotations

import orjson
from fastapi.responses import Response


class ApiError(Exception):
    """A client error with its HTTP status; ``field`` names the part of the request that was wrong."""

    def __init__(self, status: int, detail: str, field: str | None = None, headers: dict | None = None):
        super().__init__(detail)
        self.status, self.detail, self.field, self.headers = status, detail, field, headers or {}


def json_response(data, status: int = 200, headers: dict | None = None) -> Response:
    """``data`` as a JSON response; orjson writes numpy arrays itself, far faster than pydantic would."""
    body = orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(body, status, headers, media_type="application/json")


def error_response(exc: ApiError) -> Response:
    body = {"detail": exc.detail} if exc.field is None else {"detail": exc.detail, "field": exc.field}
    return json_response(body, exc.status, exc.headers)


def busy(retry_after_s: int, detail: str = "too many requests are waiting; retry shortly") -> ApiError:
    """A 503 that tells the client when to retry."""
    return ApiError(503, detail, headers={"Retry-After": str(retry_after_s)})


def broken_model() -> ApiError:
    """A 503 for a model that computes NaN or infinity: the server's fault, and no answer is better than a wrong one."""
    return ApiError(503, "the model gave no finite answer (its weights or normalisation are broken); tell the operator")
