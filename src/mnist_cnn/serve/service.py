"""The model behind the service: loaded and warmed up in the lifespan, its batcher, and what it reports.

The one place in the service that loads a model folder (through the library's own loader).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from functools import partial
from pathlib import Path

import numpy as np
from starlette.concurrency import run_in_threadpool

from .. import __version__
from ..config import ServeSettings as Settings
from ..errors import MnistCnnError, ModelFolderError, NonFiniteOutputError
from ..folder import GATE_SECTION
from ..inference import load_model, read_config
from ..parallel import process_pool, upload_frame
from ..runtime import available_cores
from .batcher import MicroBatcher, QueueFull
from .decoding import DecodeGate, DecodeRefused
from .errors import broken_model, busy
from .uploads import FIELD, as_api_errors, header_pixels, limits, read_upload

log = logging.getLogger("mnist_cnn.serve")


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
        self.uploads = 0  # uploads being received, waiting for a decode slot or decoded now
        self.decoders: ProcessPoolExecutor | None = None  # --decode-processes, started with the service
        # A decode holds memory in proportion to its pixels: a few at once, never one per waiting client.
        self.decoding = DecodeGate(settings.decode_slots or available_cores(), settings.decode_pixels or settings.max_image_pixels,
                                   settings.decode_wait_s)  # fmt: skip

    @property
    def ready(self) -> bool:
        return self.batcher is not None

    def _load(self):
        import torch

        torch.set_num_threads(self.settings.threads)
        clf = load_model(self.model_dir, runtime=self.settings.runtime, threads=self.settings.threads)
        self.parameters = _count_parameters(clf, self.model_dir)
        # Warm-up: the first calls at each batch size allocate and pick kernels.
        for n in (1, 2, 8, self.settings.max_batch):
            clf.frame_proba(np.zeros((n, 28, 28), np.float32))
        return clf

    def load_now(self) -> None:
        """Load the model in this thread, before serving: a folder that cannot load is a ModelFolderError (the
        command line's one ``error:`` line and exit 2) instead of a server whose /readyz says 503 for ever."""
        try:
            self.classifier = self._load()
        except MnistCnnError:
            raise
        except Exception as exc:  # onnxruntime, safetensors and torch raise their own types
            raise ModelFolderError(f"model {self.model_dir} could not be loaded: {exc}") from None

    async def start(self) -> None:
        await self._start_decoders()
        if self.classifier is not None:  # loaded by load_now
            self._start_batcher(0.0)
            return
        try:
            t0 = time.perf_counter()
            self.classifier = await asyncio.to_thread(self._load)
        except Exception as exc:  # reported by /readyz; the process stays up for /healthz
            self.error = _without_paths(str(exc), self.model_dir)
            log.error("model %s could not be loaded: %s", self.model_dir, exc)
            return
        self._start_batcher(time.perf_counter() - t0)

    def _start_batcher(self, load_s: float) -> None:
        s = self.settings
        batcher = MicroBatcher(partial(answer_rows, self.classifier), s.max_batch, s.max_queue, s.batch_wait_ms / 1000)
        batcher.start()
        self.batcher = batcher
        log.info("model %s ready (%s, %s runtime) in %.2f s", self.model_dir, self.config["architecture"],
                 s.runtime, load_s)  # fmt: skip

    async def _start_decoders(self) -> None:
        """The processes that decode uploads (``decode_processes``); the server's threads do it when there are
        none, or when they cannot be started."""
        if self.settings.decode_processes:
            try:
                self.decoders = await asyncio.to_thread(process_pool, self.settings.decode_processes)
            except (OSError, RuntimeError, BrokenProcessPool) as exc:
                log.error("decoding processes could not be started (%s); uploads are decoded in threads", exc)

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()
        if self.decoders is not None:  # waited for: the process may end by its signal next, with no exit handlers
            await asyncio.to_thread(self.decoders.shutdown, wait=True, cancel_futures=True)

    def _check_ready(self) -> None:
        if self.batcher is None:
            why = "the model is still loading" if self.error is None else f"the model could not be loaded: {self.error}"
            raise busy(self.settings.retry_after_s, why)

    async def predict(self, image: np.ndarray, min_confidence: float) -> dict:
        """The answer of /v1/predict for one (28, 28) float32 image in 0-1, computed in the next batch."""
        self._check_ready()
        try:
            row = await self.batcher.submit(image)
        except QueueFull:
            raise busy(self.settings.retry_after_s) from None
        except NonFiniteOutputError:
            raise broken_model() from None
        return prediction(row[:10], image, min_confidence, looks_like_digit=bool(row[10]))

    @contextlib.asynccontextmanager
    async def upload(self):
        """One upload, from its body to its decoded image: 503 + Retry-After at once when ``max_queue`` are in already,
        before the body is read or anything decoded, so overload is answered quickly instead of timing out."""
        self._check_ready()
        if self.uploads >= self.settings.max_queue:
            raise busy(self.settings.retry_after_s)
        self.uploads += 1
        try:
            yield
        finally:
            self.uploads -= 1

    async def decode_upload(self, data: bytes) -> np.ndarray:
        """/v1/predict's uploaded photo as its (28, 28) float32 frame, decoded in a decoding process when there are
        some, else in a thread; the preprocessing's errors as their HTTP answers."""
        with as_api_errors():
            return await self.decode(upload_frame, data, limits(self.settings), FIELD, separate=True)

    async def decode(self, fn, data: bytes, *args, separate: bool = False):
        """``fn(data, *args)`` in a worker thread once a decode slot and the pixels ``data``'s header declares are free
        (:class:`~.decoding.DecodeGate`); 503 + Retry-After when they are not within ``decode_wait_s``. ``separate``:
        in a decoding process when there are some (``fn`` and its arguments then travel by pickle)."""
        try:
            async with self.decoding.admit(header_pixels(data, self.settings)):
                if separate and self.decoders is not None:
                    with contextlib.suppress(BrokenProcessPool):
                        return await asyncio.wrap_future(self.decoders.submit(fn, data, *args))
                    self._lost_decoders()
                return await run_in_threadpool(fn, data, *args)
        except DecodeRefused:
            raise busy(self.settings.retry_after_s, "the server is decoding other images; retry shortly") from None

    def _lost_decoders(self) -> None:
        """A decoding process died (killed from outside, out of memory): uploads go on in threads from now on."""
        if self.decoders is not None:
            log.error("a decoding process ended unexpectedly; uploads are decoded in threads from now on")
            self.decoders.shutdown(wait=False, cancel_futures=True)
            self.decoders = None

    async def read(self, data: bytes, min_confidence: float) -> dict:
        """Read every digit in an uploaded image (decoding, segmentation and its forward passes in a worker thread)."""
        self._check_ready()
        try:
            return await self.decode(read_upload, data, self.settings, self.classifier, min_confidence)
        except NonFiniteOutputError:
            raise broken_model() from None

    def describe(self) -> dict:
        """What /v1/model answers: the model folder's config, the versions, the limits and the batching counters."""
        c, s = self.config, self.settings
        versions = {**c.get("versions", {}), "serving": {"mnist_cnn": __version__, "runtime": _runtime_version(s.runtime)}}  # fmt: skip
        info = {
            "architecture": c["architecture"],
            "parameters": self.parameters,
            "model_kwargs": c.get("model_kwargs", {}),
            "recipe": c.get("recipe"),
            "labels": c.get("labels"),
            "input_shape": c.get("input_shape", [1, 28, 28]),
            "normalization": c.get("normalization"),
            "metrics": c.get("metrics") or {},
            "runtime": s.runtime,
            "onnx": c.get("onnx"),
            "versions": versions,
            "format_version": c.get("format_version"),
            "min_confidence": s.min_confidence,
            "digit_gate": _gate_info(c),
            "limits": {
                "max_body_bytes": s.max_body_bytes,
                "max_image_pixels": s.max_image_pixels,
                "image_formats": sorted(s.formats),
                "max_queue": s.max_queue,
                "decode_slots": self.decoding.slots,
                "decode_pixels": self.decoding.pixels,
                "decode_wait_s": s.decode_wait_s,
            },
        }
        if self.batcher is not None:
            info["batches"] = {"forward_passes": self.batcher.batches, "images": self.batcher.images}
        return info


def _gate_info(config: dict) -> dict | None:
    """What /v1/model says of the model's digit gate (None without one): its threshold and what it refuses."""
    gate = config.get(GATE_SECTION)
    if not isinstance(gate, dict):
        return None
    keys = ("threshold", "fitted_on", "validation_digits_refused", "held_out_not_digits_refused")
    return {k: gate[k] for k in keys if k in gate}


def answer_rows(clf, frames: np.ndarray) -> np.ndarray:
    """What the batcher computes per image: the 10 probabilities, then 1.0 if the frame passes the model's
    digit gate (:meth:`mnist_cnn.classifier.BaseClassifier.frame_answers`), else 0.0; shaped (N, 11)."""
    probs, looks_like_digit = clf.frame_answers(frames)
    return np.column_stack([probs, looks_like_digit.astype(probs.dtype)])


def prediction(probs: np.ndarray, image: np.ndarray, min_confidence: float, looks_like_digit: bool = True) -> dict:
    """The JSON of one answer of /v1/predict: the best guess is always given; below ``min_confidence`` it is flagged.

    ``not_a_digit`` is the service's reject answer ("not sure -- is this a digit?"): the guess is
    ``uncertain``, or the model's digit gate (:mod:`mnist_cnn.gate`) says the image is no digit.
    """
    label = int(probs.argmax())
    confidence = float(probs[label])
    unsure = confidence < min_confidence
    return {
        "label": label,
        "confidence": confidence,
        "confident": not unsure,
        "uncertain": unsure,
        "not_a_digit": unsure or not looks_like_digit,
        "min_confidence": min_confidence,
        "probabilities": probs,
        "input": np.rint(image * 255).astype(np.uint8),
    }


def _without_paths(message: str, model_dir: Path) -> str:
    """``message`` for a client: the server's own paths are nobody else's business."""
    for path in sorted({str(model_dir.resolve()), str(model_dir.absolute()), str(model_dir)}, key=len, reverse=True):
        message = message.replace(path, "<model folder>")
    return message


def _count_parameters(classifier, model_dir: Path) -> int:
    """The network's parameter count; ONNX Runtime holds no torch module, so the folder's weights are loaded for it."""
    from ..models import count_parameters

    model = getattr(classifier, "model", None)
    if model is None:
        model = load_model(model_dir).model
    return count_parameters(model)


def _runtime_version(runtime: str) -> str:
    if runtime.startswith("onnxruntime"):  # onnxruntime, onnxruntime-int8
        import onnxruntime

        return f"onnxruntime {onnxruntime.__version__}"
    import torch

    return f"torch {torch.__version__}"
