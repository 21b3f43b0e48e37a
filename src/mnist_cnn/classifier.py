"""Classifying: the objects that turn images into digits, one per runtime.

:class:`Classifier` wraps a PyTorch network, :class:`OnnxClassifier` an exported ``model.onnx`` run
by ONNX Runtime, :class:`OnnxInt8Classifier` its int8 version ``model.int8.onnx``; all share :class:`BaseClassifier`'s predict methods, and both read their labels,
normalisation and temperature from the folder's config. :func:`mnist_cnn.load_model` builds them
from a model folder.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import nn

from .averaging import TTA
from .errors import MnistCnnError, ModelFolderError, NonFiniteOutputError
from .folder import GATE_SECTION, LABELS, MNIST_NORMALIZATION, ONNX_FILES, ModelFolder, gate_sha256
from .inputs import as_mnist_images
from .runtime import available_cores, select_device


def to_model_input(images, normalization: dict = MNIST_NORMALIZATION) -> torch.Tensor:
    """Check and convert images to the float tensor a model takes, shaped (N, 1, 28, 28).

    Accepts numpy arrays or tensors shaped (28, 28), (N, 28, 28) or (N, 1, 28, 28): uint8 (or
    other integers) in 0-255, or floats in 0-1. The arithmetic is numpy's, on one thread: PyTorch's
    threads would go on spinning after it and take the cores ONNX Runtime's threads run on (0.8x
    the images per second of ``basic`` at batch 1,024 on 2 cores).
    """
    x = _as_array(images)
    shape = x.shape
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[1:] != (1, 28, 28):
        raise ValueError(f"images must be shaped (28, 28), (N, 28, 28) or (N, 1, 28, 28); got {shape}")
    if x.dtype.kind not in "iuf":
        raise ValueError(f"images must be uint8 in 0-255 or float in 0-1; got {x.dtype}")
    if x.size and x.dtype.kind in "iu":
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"integer images must be in 0-255; got values from {lo} to {hi}")
        x = x.astype(np.float32) / np.float32(255)
    elif x.size:
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise ValueError("images contain NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise ValueError(
                f"float images must be in 0-1; got values from {lo:g} to {hi:g} (divide by 255, or pass uint8)"
            )
    x = x.astype(np.float32, copy=False)  # already float32 unless empty
    if normalization["mean"] != 0 or normalization["std"] != 1:  # ONNX graphs take the 0-1 pixels as they are
        x = (x - np.float32(normalization["mean"])) / np.float32(normalization["std"])
    return torch.from_numpy(np.ascontiguousarray(x))


def _as_array(images) -> np.ndarray:
    """``images`` as a numpy array (a tensor's values on the CPU; bfloat16, which numpy lacks, as float32)."""
    if not isinstance(images, torch.Tensor):
        return np.asarray(images)
    x = images.detach().cpu()
    return (x.float() if x.dtype == torch.bfloat16 else x).numpy()


# Images per forward pass when predicting many: on a CPU, chunks of a few hundred stay in cache and
# beat chunks of 1,000 (benchmarks/inference.py); the results do not depend on it beyond float rounding.
BATCH_SIZE = 256


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode inside the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.inference_mode()
def batched_logits(model: nn.Module, x: torch.Tensor, batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """Logits of ``model`` on normalised inputs, computed in eval mode in batches; on x's device."""
    if len(x) == 0:
        return torch.empty(0, 10, device=x.device)
    with _eval_mode(model):
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


@torch.inference_mode()
def features_and_logits(network: nn.Module, x: torch.Tensor, batch_size: int = BATCH_SIZE):
    """A ``features``-then-``classifier`` network's flattened features (N, F) and logits (N, 10) of normalised
    inputs, in one pass in eval mode (what a digit gate reads, :mod:`mnist_cnn.gate`)."""
    if len(x) == 0:
        return torch.empty(0, 0, device=x.device), torch.empty(0, 10, device=x.device)
    feats, logits = [], []
    with _eval_mode(network):
        for i in range(0, len(x), batch_size):
            f = network.features(x[i : i + batch_size])
            feats.append(f.flatten(1))
            logits.append(network.classifier(f))
    return torch.cat(feats), torch.cat(logits)


class BaseClassifier:
    """What every runtime shares: labels, normalisation and temperature from ``config.json``, and
    predictions built on a subclass's :meth:`logits`."""

    runtime = ""
    default_batch_size = BATCH_SIZE
    config: dict
    gate: nn.Module | None = None  # the folder's digit gate (mnist_cnn.gate), attached with the torch runtime

    @property
    def labels(self) -> list[str]:
        return self.config.get("labels", LABELS)

    @property
    def normalization(self) -> dict:
        return self.config.get("normalization", MNIST_NORMALIZATION)

    @property
    def temperature(self) -> float:
        """Divides the logits before the softmax; fitted on the validation split by ``mnist-cnn calibrate`` (1.0: not calibrated)."""
        return float((self.config.get("calibration") or {}).get("temperature") or 1.0)

    def logits(self, images, batch_size: int | None = None) -> torch.Tensor:
        raise NotImplementedError

    def predict_proba(self, images, batch_size: int | None = None) -> np.ndarray:
        """Calibrated class probabilities, shaped (N, 10).

        ``images``: MNIST-format arrays or tensors (28, 28), (N, 28, 28) or (N, 1, 28, 28), uint8 in 0-255
        or float in 0-1, white digit on black; or a path, a ``PIL.Image``, an array of any other size, or a
        list of those, which go through :func:`mnist_cnn.preprocess_image` as in the CLI. A 28x28 array
        of dark ink on light paper is preprocessed too (see :mod:`mnist_cnn.inputs`).

        >>> clf.predict_proba("seven.png").argmax(1)   # doctest: +SKIP
        array([7])
        """
        return self.frame_proba(as_mnist_images(images), batch_size)

    def predict(self, images, batch_size: int | None = None) -> np.ndarray:
        """Predicted digit per image, shaped (N,); ``images`` as for :meth:`predict_proba`."""
        return self._finite_logits(as_mnist_images(images), batch_size).numpy().argmax(1)

    def frame_proba(self, frames, batch_size: int | None = None) -> np.ndarray:
        """Calibrated probabilities of frames already in MNIST format, taken exactly as they are.

        What the CLI, the reader and the server call after :func:`mnist_cnn.preprocess_image` (or on
        the service's JSON pixels): no second guess about polarity or size, unlike :meth:`predict_proba`.
        """
        return self._probabilities(self._finite_logits(frames, batch_size))

    @property
    def has_gate(self) -> bool:
        """Whether :meth:`frame_answers` asks the folder's digit gate (:mod:`mnist_cnn.gate`)."""
        return self.gate is not None

    @property
    def gate_threshold(self) -> float:
        """Below this digit probability the gate says "not a digit" (0 without a gate)."""
        return float((self.config.get(GATE_SECTION) or {}).get("threshold") or 0.0) if self.has_gate else 0.0

    def frame_answers(self, frames, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`frame_proba`'s probabilities (N, 10) and, per frame, whether it passes the digit gate
        (N,) bool: all True for a model without one."""
        probs = self.frame_proba(frames, batch_size)
        return probs, np.ones(len(probs), dtype=bool)

    def _probabilities(self, logits: torch.Tensor) -> np.ndarray:
        """Softmax of the logits over the temperature, in numpy (one thread: see :func:`to_model_input`)."""
        z = logits.numpy() / np.float32(self.temperature)
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    def _finite_logits(self, images, batch_size: int | None) -> torch.Tensor:
        """Logits, or NonFiniteOutputError: a NaN is no answer, and argmax or softmax would hide it."""
        return self._checked(self.logits(images, batch_size))

    def _checked(self, logits: torch.Tensor) -> torch.Tensor:
        if not torch.isfinite(logits).all():
            raise NonFiniteOutputError(
                f"the model {self.config.get('architecture')!r} gave NaN or infinite outputs: its weights or"
                " normalisation are broken; train or export it again"
            )
        return logits

    def __repr__(self) -> str:
        acc = (self.config.get("metrics") or {}).get("test_accuracy")
        return f"{type(self).__name__}({self.config.get('architecture')!r}, test_accuracy={acc})"


class Classifier(BaseClassifier):
    """A trained model ready to predict: wraps the network and its ``config.json``."""

    runtime = "torch"

    def __init__(
        self, model: nn.Module, config: dict, device: str | torch.device = "cpu", gate: nn.Module | None = None
    ):
        self.device = select_device(device) if isinstance(device, str) else device
        self.config = config
        self.gate = None if gate is None else gate.to(self.device).eval()
        # Channels-last (NHWC) convolutions are 1.3-4x faster on the CPU here (benchmarks/inference.py).
        self.channels_last = self.device.type == "cpu"
        self.model = model.to(self.device).eval()
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    @property
    def tta(self) -> bool:
        """Whether each prediction averages several views of the image (``load_model(..., tta=True)``)."""
        return isinstance(self.model, TTA)

    def logits(self, images, batch_size: int | None = None) -> torch.Tensor:
        """Raw logits, shaped (N, 10), before the temperature; MNIST-format ``images`` only (no preprocessing)."""
        x = to_model_input(images, self.normalization).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return batched_logits(self.model, x, batch_size or self.default_batch_size).cpu()

    def frame_answers(self, frames, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`BaseClassifier.frame_answers`; with a gate, the features feed both the last layer and the gate."""
        if self.gate is None:
            return super().frame_answers(frames, batch_size)
        network = self.model.model if self.tta else self.model
        x = to_model_input(frames, self.normalization).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats, logits = features_and_logits(network, x, batch_size or self.default_batch_size)
        if self.tta:
            logits = batched_logits(self.model, x, batch_size or self.default_batch_size)
        probs = self._probabilities(self._checked(logits.cpu()))
        with torch.inference_mode():
            digit = self.gate(feats).cpu().numpy() if len(feats) else np.zeros(0)
        return probs, digit >= self.gate_threshold


# The metadata key of model.onnx saying the graph normalises 0-1 pixels itself, and the
# "normalisation" that leaves pixels as they are.
NORMALIZATION_IN_GRAPH = "normalization_in_graph"
# The second output of a graph exported with the folder's digit gate, and the key of the export's
# config section recording which gate (its SHA-256).
DIGIT_OUTPUT, GATE_SHA256 = "digit", "digit_gate_sha256"
PIXELS = {"mean": 0.0, "std": 1.0}


def _weights_sha256_or_none(saved: ModelFolder) -> str | None:
    """The folder's weights digest, or None for a folder that holds only model.onnx."""
    try:
        return saved.weights_sha256()
    except (OSError, ModelFolderError):
        return None


def require_onnx():
    """The onnxruntime module, or an error saying which extra installs it."""
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        raise MnistCnnError(
            "ONNX export and the onnxruntime runtime need the 'onnx' extra: pip install 'mnist-cnn[onnx]'"
        ) from None
    return onnxruntime


class OnnxClassifier(BaseClassifier):
    """The ONNX Runtime counterpart of :class:`Classifier` (same predict methods).

    A batch is cut into chunks of :attr:`default_batch_size` images, and ``threads`` threads (default:
    one per core) run the chunks side by side on one session, each chunk on one thread. On 2 cores that
    is 1.3x (float32) to 2.2x (int8) the images per second of one large run with ONNX Runtime's own
    threads (intra-op, which splits each layer), and small chunks keep a layer's activations in cache
    (docs/benchmarks.md).
    """

    runtime = "onnxruntime"
    precision = "fp32"  # which of the folder's ONNX files (folder.ONNX_FILES)
    default_batch_size = 64  # images per run: 64-128 were fastest on 2 cores, 1,024 was 0.75x (fp32 basic)

    def __init__(self, folder: str | os.PathLike, config: dict | None = None, threads: int | None = None):
        ort = require_onnx()
        saved = ModelFolder(folder)
        folder = saved.path
        self.config = config if config is not None else saved.read()
        name, section, command = ONNX_FILES[self.precision]
        path = folder / name
        data = saved.read_onnx(self.config, self.precision)  # checked against the SHA-256 the export recorded
        recorded = (self.config.get(section) or {}).get("weights_sha256")
        if recorded and _weights_sha256_or_none(saved) not in (None, recorded):
            raise ModelFolderError(
                f"{path} was exported from other weights than {saved.weights_path}; re-export with: "
                f"{command.format(folder)}"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # the parallelism is across chunks (_map)
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        try:
            self.session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for a damaged file
            raise ModelFolderError(f"{path} cannot be loaded by ONNX Runtime: {exc}") from None
        self._input = self.session.get_inputs()[0].name
        self.threads = threads or available_cores()
        self._pool = (
            ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="onnxruntime") if self.threads > 1 else None
        )
        self._gated = DIGIT_OUTPUT in [o.name for o in self.session.get_outputs()]
        self.device = torch.device("cpu")
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        gate = gate_sha256(self.config)
        if gate != (self.config.get(section) or {}).get(GATE_SHA256) or bool(gate) != self._gated:
            raise ModelFolderError(
                f"{path} was exported before the folder's digit gate was fitted, or with another one; re-export"
                f" with: {command.format(folder)}"
            )

    @property
    def has_gate(self) -> bool:
        return self._gated

    @property
    def graph_normalizes(self) -> bool:
        """Whether the graph takes 0-1 pixels and normalises them itself (exported since issue 14); a
        ``model.onnx`` exported before takes normalised inputs, which :meth:`logits` then computes."""
        return self.metadata.get(NORMALIZATION_IN_GRAPH) == "true"

    def logits(self, images, batch_size: int | None = None) -> torch.Tensor:
        """Raw logits from the exported graph; :meth:`predict_proba` divides them by the temperature."""
        return self._outputs(images, batch_size)[0]

    def frame_answers(self, frames, batch_size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """As :meth:`BaseClassifier.frame_answers`; a graph exported with a digit gate gives its answer as a second output."""
        if not self._gated:
            return super().frame_answers(frames, batch_size)
        logits, digit = self._outputs(frames, batch_size)
        probs = self._probabilities(self._checked(logits))
        return probs, digit.numpy() >= self.gate_threshold

    def _outputs(self, images, batch_size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The graph's logits (N, 10) and digit probabilities (N,) (ones for a graph with no digit gate)."""
        x = to_model_input(images, PIXELS if self.graph_normalizes else self.normalization).numpy()
        if len(x) == 0:
            return torch.empty(0, 10), torch.empty(0)
        step = batch_size or self.default_batch_size
        runs = self._map(self._run, [x[i : i + step] for i in range(0, len(x), step)])
        logits = np.concatenate([r[0] for r in runs])
        digit = np.concatenate([r[1] for r in runs]) if self._gated else np.ones(len(x), np.float32)
        return torch.from_numpy(logits), torch.from_numpy(digit)

    def _run(self, chunk: np.ndarray) -> list:
        return self.session.run(None, {self._input: chunk})

    def _map(self, run, chunks: list) -> list:
        """``run`` on every chunk, in order: in this thread when there is one chunk or one thread, else in the
        pool (a session runs concurrent calls safely, and each releases the GIL while it computes)."""
        if self._pool is None or len(chunks) == 1:
            return [run(chunk) for chunk in chunks]
        return list(self._pool.map(run, chunks))


class OnnxInt8Classifier(OnnxClassifier):
    """:class:`OnnxClassifier` on ``model.int8.onnx``: the same network with int8 weights and activations,
    written by :func:`mnist_cnn.quantize.quantize_onnx`; the same input, output and metadata."""

    runtime = "onnxruntime-int8"
    precision = "int8"


RUNTIMES = (Classifier.runtime, OnnxClassifier.runtime, OnnxInt8Classifier.runtime)  # what `--runtime` accepts
