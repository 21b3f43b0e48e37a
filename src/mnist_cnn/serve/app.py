"""The app factory, and running the app on uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import importlib.util
import os
from pathlib import Path

from fastapi import FastAPI, Request

from .. import __version__
from .docs import docs_router
from .errors import ApiError, error_response
from .guard import BodyTooLarge, Guard, too_large
from .page import page_router
from .routes import router
from .service import Service
from .settings import Settings
from .transport import uvicorn_options

DESCRIPTION = (
    "Handwritten digit recognition. `POST /v1/predict` with an image or 784 pixel values for one "
    "digit; `POST /v1/read` with an image of a number (several digits, one or more lines) for the string, "
    "each digit's box, label and confidence."
)


def create_app(model_dir: str | os.PathLike, settings: Settings | None = None) -> FastAPI:
    """The FastAPI app serving the model folder ``model_dir`` (loaded in the lifespan, in a thread).

    A missing or broken folder raises here; a model that fails to load keeps ``/readyz`` at 503 with the reason.
    """
    settings = settings or Settings()
    service = Service(Path(model_dir), settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(service.start())
        yield
        await loading
        await service.stop()  # uvicorn has let in-flight requests finish before this runs

    app = FastAPI(title="mnist-cnn", version=__version__, description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None)  # fmt: skip  # /docs from local files, in docs_router
    app.state.service = service

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError):
        return error_response(exc)

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, exc: BodyTooLarge):
        return error_response(too_large(settings.max_body_bytes))

    app.include_router(router)
    app.include_router(page_router())
    app.include_router(docs_router(app.title, app.openapi_url))
    app.add_middleware(Guard, settings=settings)
    return app


def check_port(host: str, port: int) -> None:
    """Raise :class:`PortInUseError` when ``host:port`` cannot be bound, before anything says "serving"."""
    import socket

    from ..errors import PortInUseError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            raise PortInUseError(f"port {port} is in use; choose another with --port") from None


def run(model_dir: str | os.PathLike, settings: Settings, host: str = "127.0.0.1", port: int = 8000,
        graceful_timeout: float = 10.0) -> None:  # fmt: skip
    """Serve on uvicorn (httptools parser, uvloop where installed) until SIGINT/SIGTERM; in-flight requests finish.

    The transport limits (connections, idle and header timeouts, header size) are ``settings``'; see :mod:`.transport`.
    """
    import uvicorn

    app = create_app(model_dir, settings)
    app.state.service.load_now()  # a model that cannot load stops here, with its reason, before any port is opened
    uvicorn.run(
        app, host=host, port=port, log_config=None, access_log=False, server_header=False,
        loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
        timeout_graceful_shutdown=graceful_timeout, lifespan="on", **uvicorn_options(settings),
    )  # fmt: skip
