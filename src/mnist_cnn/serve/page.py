"""The drawing page at ``/``: HTML, JS and CSS served from the package (``mnist_cnn/web``), no CDN."""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter
from fastapi.responses import Response

from .errors import ApiError

JS = "text/javascript; charset=utf-8"
WEB_FILES = {"index.html": "text/html; charset=utf-8", "app.js": JS, "pad.js": JS,
             "style.css": "text/css; charset=utf-8", "favicon.svg": "image/svg+xml"}  # fmt: skip


def page_router() -> APIRouter:
    """``GET /`` and ``GET /static/{name}``, with the files read once, when the app is built."""
    web = {name: (resources.files("mnist_cnn").joinpath("web", name).read_bytes(), ctype) for name, ctype in WEB_FILES.items()}  # fmt: skip
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    async def page():
        body, ctype = web["index.html"]
        return Response(body, media_type=ctype)

    @router.get("/static/{name}")
    async def static(name: str):
        if name not in web or name == "index.html":
            raise ApiError(404, f"no file {name!r}")
        body, ctype = web[name]
        return Response(body, media_type=ctype, headers={"Cache-Control": "max-age=3600"})

    return router
