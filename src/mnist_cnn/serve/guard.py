"""The ASGI guard around the app: the request-body limit and the access log.

Pure ASGI middleware (cheaper than Starlette's BaseHTTPMiddleware): a body over the limit is
refused with 413 from its Content-Length before it is read, or while a chunked body is read.
A client that leaves before its body is in is logged as status 499 (nginx's "client closed
request"), one line like any other request, not a traceback: nobody is left to answer.
"""

from __future__ import annotations

import logging
import time

from starlette.requests import ClientDisconnect

from ..config import ServeSettings as Settings
from .errors import ApiError, error_response

access_log = logging.getLogger("mnist_cnn.access")
CLIENT_CLOSED = 499  # the status logged for a client that disconnected while its request was read


class BodyTooLarge(Exception):
    """Raised while reading a body that grows past the limit; the app answers it with :func:`too_large`."""


def too_large(limit: int) -> ApiError:
    return ApiError(413, f"request body is larger than the limit of {limit:,} bytes", "body")


class Guard:
    """Refuses bodies over ``settings.max_body_bytes`` with 413 and writes one JSON access-log line per request."""

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

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > limit:
                    raise BodyTooLarge
            return message

        refused, detail = _refusal(scope["headers"], limit), None
        try:
            if refused is not None:
                await error_response(refused)(scope, receive, send_status)
            else:
                await self.app(scope, limited_receive, send_status)
        except ClientDisconnect:
            status[0], detail = CLIENT_CLOSED, "client disconnected"
        if self.log:
            _log_access(scope, status[0], t0, received[0], detail)


def _refusal(headers, limit: int) -> ApiError | None:
    """The error for a Content-Length over the limit or not a number; None when the body may be read."""
    for key, value in headers:
        if key == b"content-length":
            if not value.isdigit():
                return ApiError(400, "Content-Length is not a number")
            return too_large(limit) if int(value) > limit else None
    return None


def _log_access(scope, status: int, t0: float, received: int, detail: str | None = None) -> None:
    client = scope.get("client")
    access_log.info(
        '{"method":"%s","path":"%s","status":%d,"ms":%.2f,"bytes_in":%d,"client":"%s"%s}',
        scope["method"], scope["path"].replace('"', "%22"), status, (time.perf_counter() - t0) * 1000,
        received, f"{client[0]}:{client[1]}" if client else "-", f',"detail":"{detail}"' if detail else "",
    )  # fmt: skip
