"""ONNX export of a model folder, and the ONNX Runtime backend that predicts with it.

``export_onnx`` writes ``model.onnx`` (dynamic batch dimension) next to ``model.safetensors``;
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
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from .classifier import OnnxClassifier, require_onnx
from .errors import MnistCnnError
from .folder import ONNX_FILE, ModelFolder, atomic_write
from .inference import load_model

__all__ = [
    "ONNX_FILE",
    "OPSET",
    "TOLERANCE",
    "ExportError",
    "OnnxClassifier",
    "export_onnx",
    "file_sha256",
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


def export_onnx(folder: str | os.PathLike, opset: int = OPSET) -> Path:
    """Write ``model.onnx`` for the model folder (input ``images`` (N, 1, 28, 28), output ``logits`` (N, 10)).

    The input is the *normalised* tensor, as for the PyTorch model; :class:`OnnxClassifier` applies the
    folder's normalisation first. Uses the ``torch.export``-based exporter (PyTorch's default), and the
    TorchScript one if that fails for an architecture.
    """
    require_onnx()
    folder = Path(folder)
    clf = load_model(folder)
    model = clf.model.cpu().eval().to(memory_format=torch.contiguous_format)
    example = torch.zeros(2, 1, 28, 28)
    with tempfile.TemporaryDirectory() as scratch:  # the exporter writes a path; atomic_write moves it in
        tmp = Path(scratch) / ONNX_FILE
        exporter = _export(model, example, tmp, opset, clf.config["architecture"])
        atomic_write(folder / ONNX_FILE, tmp.read_bytes())
    saved = ModelFolder(folder)
    saved.update(onnx={
        "file": ONNX_FILE,
        "opset": opset,
        "exporter": exporter,
        "torch": torch.__version__,
        "weights_sha256": saved.weights_sha256(),
    })  # fmt: skip
    log.info("wrote %s (opset %d, %s exporter)", folder / ONNX_FILE, opset, exporter)
    return folder / ONNX_FILE


def _export(model: torch.nn.Module, example: torch.Tensor, path: Path, opset: int, name: str) -> str:
    """Write the ONNX graph to ``path``; return which exporter managed it."""
    try:
        with _quiet_exporter():
            torch.onnx.export(
                model, (example,), path, input_names=["images"], output_names=["logits"], opset_version=opset,
                dynamo=True, external_data=False, verbose=False,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            )  # fmt: skip
        return "dynamo"
    except Exception as exc:  # the new exporter still misses some ops; the TorchScript one covers them
        log.warning("torch.export-based ONNX export failed (%s); using the TorchScript exporter", exc)
    try:
        with _quiet_exporter():
            torch.onnx.export(
                model, (example,), path, input_names=["images"], output_names=["logits"], opset_version=opset,
                dynamo=False, dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
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
    saved.update(onnx={**saved.read().get("onnx", {}), "verified": verified})
    if not diff <= tolerance:  # also catches NaN
        raise ExportError(
            f"{folder / ONNX_FILE}: ONNX Runtime differs from PyTorch by up to {diff:.3g} (more than {tolerance:g})"
        )
    log.info("ONNX Runtime matches PyTorch on %d images: max |diff| %.3g, %d labels differ", len(torch_logits), diff, disagree)  # fmt: skip
    return diff
