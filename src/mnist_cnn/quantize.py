"""int8 inference: a model folder's network quantised statically for ONNX Runtime.

:func:`quantize_onnx` writes ``model.int8.onnx`` next to ``model.onnx``, with the same contract: input
``images`` float32 (N, 1, 28, 28) pixels in 0-1, normalised inside the graph; output ``logits`` float32
(N, 10); the same ``metadata_props`` (:func:`mnist_cnn.export.onnx_metadata`) plus ``quantization``.
Inside, weights are int8 (one scale per output channel) and activations uint8, in ONNX's QDQ form, with
the activations' ranges calibrated on a few hundred *training* images (:func:`calibration_images`; never
the test set). ``config.json`` records it in its ``onnx_int8`` section, with the file's SHA-256 and that of
the weights it came from, both checked when it is loaded; :func:`verify_int8` measures how often it agrees
with ``model.onnx``. ``load_model(folder, runtime="onnxruntime-int8")`` predicts with it.

Choices, each measured on the full test set and timed (docs/benchmarks.md, benchmarks/quantize.py):

- The network is first rewritten, exactly, so that every layer from the first convolution to the last
  matrix product stays in int8: a batch norm that follows a max-pool is folded into the convolution
  before the pool (max commutes with a positive scale), and a ReLU after a pool moves before it (max
  commutes with ReLU). Without it ``best`` ran max-pools in float32 between dequantise and quantise
  nodes, 0.75x the speed of the rewritten graph.
- QDQ rather than QOperator: the same speed once ONNX Runtime fuses it (QOperator with int8 activations
  is 5x slower on x86), and the format ONNX Runtime recommends.
- The first convolution stays float32, with the max-pool after it (:func:`float32_stem`): with one input
  channel, a 3x3 or 5x5 kernel is a dot product of 9 or 25 that int8 kernels compute at a fraction of
  their speed; it took half of ``basic``'s int8 time (ONNX Runtime's profiler) for 7% of its
  multiply-adds, twice its float32 time. In float32 it runs in ONNX Runtime's blocked layout with its
  max-pool, and the ReLU after the pool is folded into the quantisation of the pool's output: ``basic``
  int8 went from 1.15x to 1.9-2.1x float32, ``best`` from 2.1x to 2.6-2.8x (benchmarks/quantize.py, 2 cores).
- Weights in 7 bits (``reduce_range``): without VNNI, x86 multiplies uint8 by int8 in pairs summed
  into 16 bits (AVX2's ``vpmaddubsw``), which saturates with full 8-bit weights; ``best`` then lost 0.16
  point of test accuracy against float32, and 0.01 point with 7 bits.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .classifier import GATE_SHA256, NORMALIZATION_IN_GRAPH, PIXELS, require_onnx, to_model_input
from .config import validation_of
from .data import split_validation
from .export import INPUT, OPSET, ExportError, onnx_metadata, pixel_graph, with_metadata
from .folder import ONNX_FILES, ONNX_SHA256, ModelFolder, atomic_write, gate_sha256
from .inference import load_model

__all__ = ["CALIBRATION_IMAGES", "INT8_FILE", "MIN_AGREEMENT", "calibration_images", "float32_stem",
           "int8_network", "quantize_onnx", "verify_int8"]  # fmt: skip

log = logging.getLogger(__name__)

INT8_FILE, SECTION = ONNX_FILES["int8"][:2]  # model.int8.onnx, recorded in config.json's "onnx_int8"
CALIBRATION_IMAGES = 500  # training images whose activations set the int8 ranges; 200-1,000 gave the same accuracy
MIN_AGREEMENT = 0.99  # verify_int8 fails when int8 and float32 pick the same digit for fewer of the images
# What the int8 file says about its arithmetic, in its metadata_props and config.json.
SCHEME = {
    "format": "QDQ",
    "weights": "int8, one scale per output channel, 7-bit range",
    "activations": "uint8, one scale per tensor, calibrated (min-max)",
    "float32": "convolutions of one input channel and the max-pool after them",
}


def int8_network(model: nn.Module) -> nn.Module:
    """A copy of ``model`` computing the same logits, rearranged so that int8 needs no float32 layer inside.

    In every ``nn.Sequential``: conv -> max-pool -> batch norm becomes conv (batch norm folded in) ->
    max-pool, where the batch norm's scale is positive in every channel (elsewhere it stays as it is);
    then max-pool -> ReLU becomes ReLU -> max-pool, except after a convolution of one input channel,
    which stays float32 (:func:`float32_stem`) and takes the opposite order: conv -> max-pool -> ReLU, so
    that its pool runs in float32 too and the ReLU folds into the quantisation after it. Every step is
    exact up to float rounding.
    """
    model = copy.deepcopy(model).cpu().eval()
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        layers = list(seq)
        for i in range(len(layers) - 2):
            conv, pool, bn = layers[i : i + 3]
            if isinstance(conv, nn.Conv2d) and isinstance(pool, nn.MaxPool2d) and isinstance(bn, nn.BatchNorm2d):
                folded = _fold_batch_norm(conv, bn)
                if folded is not None:
                    layers[i], layers[i + 2] = folded, nn.Identity()
        layers = [m for m in layers if not isinstance(m, nn.Identity)]
        for i in range(len(layers) - 1):
            if isinstance(layers[i], nn.MaxPool2d) and isinstance(layers[i + 1], nn.ReLU):
                if not (i and _one_input_channel(layers[i - 1])):
                    layers[i], layers[i + 1] = layers[i + 1], layers[i]
        for i in range(len(layers) - 2):
            if _one_input_channel(layers[i]) and isinstance(layers[i + 1], nn.ReLU):
                if isinstance(layers[i + 2], nn.MaxPool2d):
                    layers[i + 1], layers[i + 2] = layers[i + 2], layers[i + 1]
        for i in range(len(seq)):  # same length: the removed batch norms leave identities at the end
            seq[i] = layers[i] if i < len(layers) else nn.Identity()
    return model


def _one_input_channel(layer: nn.Module) -> bool:
    return isinstance(layer, nn.Conv2d) and layer.in_channels == 1 and layer.groups == 1


def float32_stem(graph) -> list[str]:
    """Names of the nodes of an ONNX ``graph`` that int8 would slow down, to be left in float32: every
    convolution of one input channel (not grouped) and a max-pool that takes its output."""
    weights = {t.name: list(t.dims) for t in graph.initializer}
    stems = [
        node for node in graph.node
        if node.op_type == "Conv" and weights.get(node.input[1], [0, 0])[1:2] == [1] and _group(node) == 1
    ]  # fmt: skip
    outputs = {name for node in stems for name in node.output}
    pools = [node for node in graph.node if node.op_type == "MaxPool" and node.input[0] in outputs]
    return [node.name for node in stems + pools]


def _group(node) -> int:
    return next((attr.i for attr in node.attribute if attr.name == "group"), 1)


@torch.no_grad()
def _fold_batch_norm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d | None:
    """``conv`` with ``bn`` (eval mode) folded in, or None if a channel's scale is not positive: max-pooling
    commutes with ``scale * x + shift`` only for scale > 0."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    if not bool((scale > 0).all()) or conv.groups != 1:
        return None
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                       conv.dilation, bias=True)  # fmt: skip
    folded.weight.copy_(conv.weight * scale[:, None, None, None])
    bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
    folded.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return folded


def calibration_images(config: dict, data, count: int = CALIBRATION_IMAGES, seed: int = 0) -> np.ndarray:
    """``count`` training images, uint8 (count, 28, 28), drawn with ``seed`` from the run's training split
    (the validation images it held out are left out too), or from all 60,000 when the folder records no split."""
    if count < 1:
        raise ValueError(f"the number of calibration images must be at least 1, got {count}")
    spec = validation_of(config)
    pool = split_validation(len(data.train_images), *spec)[0].numpy() if spec else np.arange(len(data.train_images))
    chosen = np.random.default_rng(seed).choice(pool, min(count, len(pool)), replace=False)
    return data.train_images[torch.as_tensor(np.sort(chosen))].numpy()


class _Batches:
    """The CalibrationDataReader ONNX Runtime's quantiser asks for inputs: 0-1 pixels, 100 images at a time."""

    def __init__(self, images: np.ndarray, batch: int = 100):
        pixels = to_model_input(images, PIXELS).numpy()
        self.count = len(pixels)
        if not self.count:
            raise ValueError("calibration needs at least one image")
        self._batches = iter([pixels[i : i + batch] for i in range(0, len(pixels), batch)])

    def get_next(self) -> dict | None:
        batch = next(self._batches, None)
        return None if batch is None else {"images": batch}


def quantize_onnx(folder: str | os.PathLike, images, opset: int = OPSET) -> Path:
    """Write ``model.int8.onnx`` for the model folder, its activation ranges calibrated on ``images``.

    ``images``: training images as :meth:`Classifier.predict` takes them in MNIST format (pick them with
    :func:`calibration_images`; calibrating on test images would flatter every test figure after).

    >>> quantize_onnx("runs/basic", calibration_images(read_config("runs/basic"), load_mnist()))  # doctest: +SKIP
    """
    require_onnx()
    import onnx
    from onnxruntime import __version__ as ort_version
    from onnxruntime.quantization import QuantFormat, QuantType, quant_pre_process, quantize_static

    folder = Path(folder)
    clf = load_model(folder)
    reader = _Batches(images)  # checks the images before anything is exported
    graph, exporter = pixel_graph(int8_network(clf.model), clf.config, clf.temperature, opset, gate=clf.gate)
    metadata = {**onnx_metadata(clf.config, clf.temperature), "quantization": json.dumps(SCHEME)}
    with tempfile.TemporaryDirectory() as scratch, _quiet_quantizer():
        fp32, prepared, int8 = (Path(scratch) / name for name in ("fp32.onnx", "prepared.onnx", "int8.onnx"))
        fp32.write_bytes(graph)
        quant_pre_process(str(fp32), str(prepared))  # shape inference and constant folding, as ORT advises
        quantize_static(
            str(prepared), str(int8), reader, quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            nodes_to_exclude=float32_stem(onnx.load(str(prepared)).graph),
        )  # fmt: skip
        data = with_metadata(int8, metadata)
    atomic_write(folder / INT8_FILE, data)
    saved = ModelFolder(folder)
    saved.update(**{SECTION: {
        "file": INT8_FILE,
        "opset": opset,
        "exporter": exporter,
        "onnxruntime": ort_version,
        **SCHEME,
        "calibration_images": reader.count,
        "weights_sha256": saved.weights_sha256(),
        ONNX_SHA256: hashlib.sha256(data).hexdigest(),  # ModelFolder.read_onnx checks it
        GATE_SHA256: gate_sha256(clf.config),  # OnnxClassifier checks that the gate is the folder's
        "input": INPUT,
        NORMALIZATION_IN_GRAPH: True,
    }})  # fmt: skip
    log.info("wrote %s (int8, calibrated on %d images)", folder / INT8_FILE, reader.count)
    return folder / INT8_FILE


@contextlib.contextmanager
def _quiet_quantizer():
    """ONNX Runtime's quantiser logs its advice through the root logger."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def verify_int8(folder: str | os.PathLike, images, labels=None, min_agreement: float = MIN_AGREEMENT) -> dict:
    """How often ``model.int8.onnx`` picks the digit ``model.onnx`` picks on ``images`` (and, with ``labels``,
    both accuracies); recorded in ``config.json``; :class:`ExportError` below ``min_agreement``."""
    folder = Path(folder)
    fp32 = load_model(folder, runtime="onnxruntime").logits(images).numpy().argmax(1)
    int8 = load_model(folder, runtime="onnxruntime-int8").logits(images).numpy().argmax(1)
    verified = {"images": int(len(fp32)), "agreement": float((fp32 == int8).mean()) if len(fp32) else 1.0}
    if labels is not None:
        labels = np.asarray(labels)
        verified.update(fp32_accuracy=float((fp32 == labels).mean()), int8_accuracy=float((int8 == labels).mean()))
    saved = ModelFolder(folder)
    saved.update(**{SECTION: {**(saved.read().get(SECTION) or {}), "verified": verified}})
    if not verified["agreement"] >= min_agreement:
        raise ExportError(
            f"{folder / INT8_FILE}: int8 and float32 pick the same digit for only {verified['agreement']:.2%} of"
            f" {len(fp32):,} images (at least {min_agreement:.0%} expected); use model.onnx (--runtime onnxruntime)"
        )
    log.info("int8 agrees with float32 on %.2f%% of %d images", 100 * verified["agreement"], len(fp32))
    return verified
