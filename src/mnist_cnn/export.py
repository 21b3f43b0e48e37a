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
import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import MnistCnnError, ModelFolderError
from .inference import CONFIG, WEIGHTS, BaseClassifier, load_model, read_config, to_model_input, write_json

log = logging.getLogger(__name__)

ONNX_FILE = "model.onnx"
OPSET = 18  # supported by every ONNX Runtime since 1.14
TOLERANCE = 1e-4  # largest |ONNX Runtime - PyTorch| logit difference accepted by verify_onnx


class ExportError(MnistCnnError):
    """The export failed, or the exported model does not reproduce PyTorch's outputs."""

    exit_code = 1


def _require_onnx():
    try:
        import onnx  # noqa: F401
        import onnxruntime
    except ImportError:
        raise MnistCnnError(
            "ONNX export and the onnxruntime runtime need the 'onnx' extra: pip install 'mnist-cnn[onnx]'"
        ) from None
    return onnxruntime


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
    _require_onnx()
    folder = Path(folder)
    clf = load_model(folder)
    model = clf.model.cpu().eval().to(memory_format=torch.contiguous_format)
    example = torch.zeros(2, 1, 28, 28)
    tmp = folder / f".{ONNX_FILE}.tmp"
    exporter = "dynamo"
    try:
        with _quiet_exporter():
            torch.onnx.export(
                model, (example,), tmp, input_names=["images"], output_names=["logits"], opset_version=opset,
                dynamo=True, external_data=False, verbose=False,
                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            )  # fmt: skip
    except Exception as exc:  # the new exporter still misses some ops; the TorchScript one covers them
        log.warning("torch.export-based ONNX export failed (%s); using the TorchScript exporter", exc)
        exporter = "torchscript"
        try:
            with _quiet_exporter():
                torch.onnx.export(
                    model, (example,), tmp, input_names=["images"], output_names=["logits"], opset_version=opset,
                    dynamo=False, dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}},
                )  # fmt: skip
        except Exception as exc2:
            tmp.unlink(missing_ok=True)
            raise ExportError(f"cannot export {clf.config['architecture']!r} to ONNX: {exc2}") from None
    os.replace(tmp, folder / ONNX_FILE)
    config = read_config(folder)
    config["onnx"] = {
        "file": ONNX_FILE,
        "opset": opset,
        "exporter": exporter,
        "torch": torch.__version__,
        "weights_sha256": file_sha256(folder / WEIGHTS),
    }
    write_json(folder / CONFIG, config)
    log.info("wrote %s (opset %d, %s exporter)", folder / ONNX_FILE, opset, exporter)
    return folder / ONNX_FILE


def verify_onnx(folder: str | os.PathLike, images, tolerance: float = TOLERANCE, batch_size: int = 1000) -> float:
    """Largest |logit difference| between ONNX Runtime and PyTorch on ``images``; raises ExportError past ``tolerance``.

    Also checks that both pick the same label for every image, and records the result in ``config.json``.
    """
    folder = Path(folder)
    torch_logits = load_model(folder).logits(images, batch_size).numpy()
    onnx_logits = load_model(folder, runtime="onnxruntime").logits(images, batch_size).numpy()
    diff = float(np.abs(torch_logits - onnx_logits).max()) if len(torch_logits) else 0.0
    disagree = int((torch_logits.argmax(1) != onnx_logits.argmax(1)).sum())
    config = read_config(folder)
    config.setdefault("onnx", {})["verified"] = {
        "images": int(len(torch_logits)),
        "max_abs_logit_diff": diff,
        "tolerance": tolerance,
        "labels_disagree": disagree,
    }
    write_json(folder / CONFIG, config)
    if not diff <= tolerance:  # also catches NaN
        raise ExportError(
            f"{folder / ONNX_FILE}: ONNX Runtime differs from PyTorch by up to {diff:.3g} (more than {tolerance:g})"
        )
    log.info("ONNX Runtime matches PyTorch on %d images: max |diff| %.3g, %d labels differ", len(torch_logits), diff, disagree)  # fmt: skip
    return diff


class OnnxClassifier(BaseClassifier):
    """The ONNX Runtime counterpart of :class:`mnist_cnn.inference.Classifier` (same predict methods)."""

    runtime = "onnxruntime"
    default_batch_size = 1000

    def __init__(self, folder: str | os.PathLike, config: dict | None = None, threads: int | None = None):
        ort = _require_onnx()
        folder = Path(folder)
        self.config = config if config is not None else read_config(folder)
        path = folder / ONNX_FILE
        if not path.is_file():
            raise ModelFolderError(
                f"{folder} has no {ONNX_FILE}; create it with: mnist-cnn export {folder} --format onnx"
            )
        recorded = self.config.get("onnx", {}).get("weights_sha256")
        if recorded and (folder / WEIGHTS).is_file() and file_sha256(folder / WEIGHTS) != recorded:
            raise ModelFolderError(
                f"{path} was exported from other weights than {folder / WEIGHTS}; re-export with: "
                f"mnist-cnn export {folder} --format onnx"
            )
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        try:
            self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for a damaged file
            raise ModelFolderError(f"{path} cannot be loaded by ONNX Runtime: {exc}") from None
        self._input = self.session.get_inputs()[0].name
        self.device = torch.device("cpu")

    def logits(self, images, batch_size: int | None = None) -> torch.Tensor:
        """Raw logits from the exported graph; :meth:`predict_proba` divides them by the temperature."""
        x = to_model_input(images, self.normalization).numpy()
        if len(x) == 0:
            return torch.empty(0, 10)
        step = batch_size or self.default_batch_size
        out = [self.session.run(None, {self._input: x[i : i + step]})[0] for i in range(0, len(x), step)]
        return torch.from_numpy(out[0] if len(out) == 1 else np.concatenate(out))
