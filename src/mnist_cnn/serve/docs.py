"""The API docs at ``/docs``: Swagger UI with its JS and CSS served from the ``fastapi-offline`` package, so
the page works without internet (FastAPI's default loads them from a CDN). Swagger UI 5 or newer: FastAPI
writes OpenAPI 3.1, which Swagger UI 4 (the ``swagger-ui-bundle`` package) refuses to render."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import Response

from .errors import ApiError

ASSETS = {"swagger-ui-bundle.js": "text/javascript; charset=utf-8", "swagger-ui.css": "text/css; charset=utf-8",
          "favicon.png": "image/png"}  # fmt: skip
PREFIX = "/docs/assets"


def _asset_folder() -> Path | None:
    """fastapi-offline's folder of Swagger UI files, found without importing the package (we need only its files)."""
    spec = importlib.util.find_spec("fastapi_offline")
    if spec is None or not spec.submodule_search_locations:  # pragma: no cover - part of the 'serve' extra
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def docs_router(title: str, openapi_url: str = "/openapi.json") -> APIRouter:
    """``GET /docs`` and ``GET /docs/assets/{name}``; each asset is read once, on its first request."""
    router = APIRouter(include_in_schema=False)
    cache: dict[str, bytes] = {}

    @router.get("/docs")
    async def docs():
        return get_swagger_ui_html(openapi_url=openapi_url, title=f"{title} - API docs",
                                   swagger_js_url=f"{PREFIX}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{PREFIX}/swagger-ui.css",
                                   swagger_favicon_url=f"{PREFIX}/favicon.png")  # fmt: skip

    @router.get(PREFIX + "/{name}")
    async def asset(name: str):
        folder = _asset_folder()
        if name not in ASSETS:
            raise ApiError(404, f"no file {name!r}")
        if folder is None:
            raise ApiError(404, "Swagger UI is not installed: pip install 'mnist-cnn[serve]'")
        if name not in cache:
            cache[name] = (folder / name).read_bytes()
        return Response(cache[name], media_type=ASSETS[name], headers={"Cache-Control": "max-age=86400"})

    return router
