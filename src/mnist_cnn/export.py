"""ONNX export of a model folder, and the ONNX Runtime backend that predicts with it.

``export_onnx`` writes ``model.onnx`` (dynamic batch dimension) next to ``model.safetensors``, or in
an ensemble folder (one graph averaging the members). The graph takes *pixels*: float32 (N, 1, 28, 28)
in 0-1, white digit on black in MNIST framing, and normalises them itself; its ``metadata_props`` say
so (:data:`METADATA`), with the normalisation, labels, architecture, recipe, package version and
calibration temperature. A ``model.onnx`` exported before took normalised input and has no metadata;
:class:`OnnxClassifier` tells them apart by the ``normalization_in_graph`` key.
``verify_onnx`` checks ONNX Runtime's logits against PyTorch's; both record what they did in the
folder's ``config.json`` (opset, exporter, the SHA-256 of the weights it was exported from, the
largest difference measured). ``load_model(folder, runtime="onnxruntime")`` returns an
:class:`OnnxClassifier` with the same ``predict``/``predict_proba``/``logits`` as the PyTorch one.

>>> from mnist_cnn.export import export_onnx, verify_onnx         # doctest: +SKIP
>>> export_onnx("runs/basic")                                    # doctest: +SKIP
>>> verify_onnx("runs/basic", test_images)                       # doctest: +SKIP
3.1e-06
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._version import __version__
from .classifier import DIGIT_OUTPUT, GATE_SHA256, NORMALIZATION_IN_GRAPH, OnnxClassifier, require_onnx
from .errors import MnistCnnError
from .folder import (
    GATE_SECTION,
    LABELS,
    MNIST_NORMALIZATION,
    ONNX_FILE,
    ONNX_SHA256,
    ModelFolder,
    atomic_write,
    gate_sha256,
)
from .inference import load_model

__all__ = [
    "ONNX_FILE",
    "OPSET",
    "TOLERANCE",
    "METADATA",
    "ExportError",
    "OnnxClassifier",
    "PixelInput",
    "export_onnx",
    "file_sha256",
    "onnx_metadata",
    "pixel_graph",
    "verify_onnx",
]

log = logging.getLogger(__name__)

OPSET = 18  # supported by every ONNX Runtime since 1.14
TOLERANCE = 1e-4  # largest |ONNX Runtime - PyTorch| logit difference accepted by verify_onnx


class ExportError(MnistCnnError):
    """The export failed, or the exported model does not reproduce PyTorch's outputs."""

    exit_code = 1


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter logs a line per optional torchvision op and warns about its own internals."""
    names = ["torch.onnx", "torch.onnx._internal.exporter._registration", "torch.export", "onnxscript", "onnx_ir"]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


# What model.onnx says about itself in its metadata_props (besides the values of the folder's config).
INPUT = "images: float32 (N, 1, 28, 28), greyscale pixels in 0-1 (uint8 / 255), white digit on black, MNIST framing"
OUTPUT = "logits: float32 (N, 10); softmax(logits / temperature) gives the calibrated probabilities"
DIGIT = "digit: float32 (N,), the digit gate's probability that the image is a digit at all; below digit_threshold it is not"
METADATA = ("input", "output", NORMALIZATION_IN_GRAPH, "normalization", "labels", "architecture", "recipe",
            "mnist_cnn_version", "temperature")  # fmt: skip


class PixelInput(nn.Module):
    """A network that takes 0-1 pixels: normalises them as in training, so the exported graph needs no
    preprocessing arithmetic from its caller. With a digit ``gate`` (:mod:`mnist_cnn.gate`) it also
    returns the gate's probability that each image is a digit, from the same features."""

    def __init__(self, model: nn.Module, normalization: dict, gate: nn.Module | None = None):
        super().__init__()
        self.model, self.mean, self.std = model, float(normalization["mean"]), float(normalization["std"])
        self.gate = gate

    def forward(self, x: torch.Tensor):  # (N, 1, 28, 28) in 0-1
        x = (x - self.mean) / self.std
        if self.gate is None:
            return self.model(x)
        features = self.model.features(x)
        return self.model.classifier(features), self.gate(features.flatten(1))


def export_onnx(folder: str | os.PathLike, opset: int = OPSET) -> Path:
    """Write ``model.onnx`` for the model folder (input ``images`` (N, 1, 28, 28), output ``logits`` (N, 10)).

    The input is pixels in 0-1 (the graph normalises them: :class:`PixelInput`), described in the file's
    metadata (:func:`onnx_metadata`). Works for ensemble folders too (one graph). Uses the
    ``torch.export``-based exporter (PyTorch's default), and the TorchScript one if that fails for an
    architecture.
    """
    require_onnx()
    folder = Path(folder)
    clf = load_model(folder)
    data, exporter = pixel_graph(clf.model, clf.config, clf.temperature, opset, gate=clf.gate)
    atomic_write(folder / ONNX_FILE, data)
    saved = ModelFolder(folder)
    saved.update(onnx={
        "file": ONNX_FILE,
        "opset": opset,
        "exporter": exporter,
        "torch": torch.__version__,
        "weights_sha256": saved.weights_sha256(),
        ONNX_SHA256: hashlib.sha256(data).hexdigest(),  # ModelFolder.read_onnx checks it
        GATE_SHA256: gate_sha256(clf.config),  # OnnxClassifier checks that the gate is the folder's
        "input": INPUT,
        NORMALIZATION_IN_GRAPH: True,
    })  # fmt: skip
    log.info("wrote %s (opset %d, %s exporter)", folder / ONNX_FILE, opset, exporter)
    return folder / ONNX_FILE


def pixel_graph(
    network: nn.Module, config: dict, temperature: float = 1.0, opset: int = OPSET, gate: nn.Module | None = None
) -> tuple[bytes, str]:
    """The ONNX file of ``network`` taking 0-1 pixels (:class:`PixelInput`), with :func:`onnx_metadata`; and
    which exporter wrote it. ``config`` is the model folder's (normalisation, labels, architecture). With a
    digit ``gate``, the graph has a second output, ``digit``."""
    network = network.cpu().eval().to(memory_format=torch.contiguous_format)
    model = PixelInput(network, config.get("normalization", MNIST_NORMALIZATION), gate).eval()
    outputs = ("logits",) if gate is None else ("logits", DIGIT_OUTPUT)
    with tempfile.TemporaryDirectory() as scratch:  # the exporter writes a path; the caller writes the bytes
        tmp = Path(scratch) / ONNX_FILE
        exporter = _export(model, torch.zeros(2, 1, 28, 28), tmp, opset, config["architecture"], outputs)
        return with_metadata(tmp, onnx_metadata(config, temperature)), exporter


def onnx_metadata(config: dict, temperature: float = 1.0) -> dict[str, str]:
    """The ``metadata_props`` of an exported model: what it takes and gives, and where it came from."""
    return {
        "input": INPUT,
        "output": OUTPUT,
        NORMALIZATION_IN_GRAPH: "true",
        "normalization": json.dumps(config.get("normalization", MNIST_NORMALIZATION)),
        "labels": json.dumps(config.get("labels", LABELS)),
        "architecture": str(config.get("architecture", "")),
        "recipe": str(config.get("recipe") or ""),
        "mnist_cnn_version": __version__,
        "temperature": repr(float(temperature)),
        **({DIGIT_OUTPUT: DIGIT, "digit_threshold": repr(float(config[GATE_SECTION]["threshold"]))}
           if gate_sha256(config) else {}),
    }  # fmt: skip


def with_metadata(path: Path, metadata: dict[str, str]) -> bytes:
    """The ONNX file at ``path`` with ``metadata`` as its metadata_props (replacing any of the same keys)."""
    import onnx

    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if p.key not in metadata]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in metadata.items():
        proto.metadata_props.add(key=key, value=value)
    proto.doc_string = f"mnist-cnn {metadata.get('architecture')}: {INPUT} -> {OUTPUT}"
    return proto.SerializeToString()


def _export(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    opset: int,
    name: str,
    outputs: tuple[str, ...] = ("logits",),
) -> str:
    """Write the ONNX graph to ``path``; return which exporter managed it."""
    try:
        with _quiet_exporter():
            torch.onnx.export(
                model, (example,), path, input_names=["images"], output_names=list(outputs), opset_version=opset,
                dynamo=True, external_data=False, verbose=False,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            )  # fmt: skip
        return "dynamo"
    except Exception as exc:  # the new exporter still misses some ops; the TorchScript one covers them
        log.warning("torch.export-based ONNX export failed (%s); using the TorchScript exporter", exc)
    try:
        with _quiet_exporter():
            torch.onnx.export(
                model, (example,), path, input_names=["images"], output_names=list(outputs), opset_version=opset,
                dynamo=False, dynamic_axes={axis: {0: "batch"} for axis in ["images", *outputs]},
            )  # fmt: skip
    except Exception as exc:
        raise ExportError(f"cannot export {name!r} to ONNX: {exc}") from None
    return "torchscript"


def verify_onnx(folder: str | os.PathLike, images, tolerance: float = TOLERANCE, batch_size: int = 1000) -> float:
    """Largest |logit difference| between ONNX Runtime and PyTorch on ``images``; raises ExportError past ``tolerance``.

    Also checks that both pick the same label for every image, and records the result in ``config.json``.
    """
    folder = Path(folder)
    torch_logits = load_model(folder).logits(images, batch_size).numpy()
    onnx_logits = load_model(folder, runtime="onnxruntime").logits(images, batch_size).numpy()
    diff = float(np.abs(torch_logits - onnx_logits).max()) if len(torch_logits) else 0.0
    disagree = int((torch_logits.argmax(1) != onnx_logits.argmax(1)).sum())
    saved = ModelFolder(folder)
    verified = {
        "images": int(len(torch_logits)),
        "max_abs_logit_diff": diff,
        "tolerance": tolerance,
        "labels_disagree": disagree,
    }
    saved.update(onnx={**(saved.read().get("onnx") or {}), "verified": verified})
    if not diff <= tolerance:  # also catches NaN
        raise ExportError(
            f"{folder / ONNX_FILE}: ONNX Runtime differs from PyTorch by up to {diff:.3g} (more than {tolerance:g})"
        )
    log.info("ONNX Runtime matches PyTorch on %d images: max |diff| %.3g, %d labels differ", len(torch_logits), diff, disagree)  # fmt: skip
    return diff
