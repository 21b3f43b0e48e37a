"""The REST service and the drawing page: FastAPI on uvicorn, with concurrent requests micro-batched.

``create_app(model_dir, settings)`` builds the app; the model is loaded and warmed up in the
lifespan (in a thread, so ``/healthz`` answers and ``/readyz`` says 503 meanwhile). Every
``/v1/predict`` request is parsed and checked on the event loop, then queued; one worker thread
takes everything queued so far as one batch through the model, so 16 concurrent clients cost
about one forward pass instead of 16. ``/v1/read`` takes an image of a number and answers what
:func:`mnist_cnn.reading.read_digits` finds (segmentation and its forward passes in a worker thread,
outside the batcher). ``mnist-cnn serve RUN`` runs it on uvicorn.

One job per module:

- ``app``: the app factory :func:`create_app` and :func:`run` (uvicorn)
- ``routes``: the API's endpoints (an ``APIRouter``; the service comes through ``Depends``)
- ``page``: the drawing page and its static files
- ``docs``: the API docs at /docs, Swagger UI from the ``fastapi-offline`` package (no CDN)
- ``service``: the model behind the service (loading, warm-up, predict, read, /v1/model)
- ``batcher``: micro-batching of concurrent requests
- ``parsing``: content type, the JSON pixels (parsed by hand: the hot path), multipart, ``min_confidence``
- ``uploads``: uploaded images through the package's preprocessing, its typed errors as HTTP answers
- ``guard``: the ASGI middleware for the body limit and the access log
- ``schemas``: the pydantic types that write the OpenAPI schema at /docs
- ``errors``: :class:`ApiError` and the JSON answers
- ``settings``: :class:`Settings` (``mnist_cnn.config.ServeSettings``)

>>> from mnist_cnn.serve import Settings, create_app        # doctest: +SKIP
>>> app = create_app("runs/basic", Settings(runtime="torch"))  # doctest: +SKIP
"""

try:
    import fastapi  # noqa: F401
    import orjson  # noqa: F401
except ImportError as exc:  # pragma: no cover - the message is the point
    from ..errors import MnistCnnError

    raise MnistCnnError(
        f"the service needs the 'serve' extra ({exc.name} is missing): pip install 'mnist-cnn[serve]'"
    ) from None

from .app import check_port, create_app, run
from .errors import ApiError
from .service import Service
from .settings import Settings, settings_from

__all__ = ["ApiError", "Service", "Settings", "check_port", "create_app", "run", "settings_from"]
