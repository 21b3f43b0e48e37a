"""The saved-model folder and the object that predicts with it.

A model folder holds ``model.safetensors`` (the weights, no pickle) and ``config.json`` (the
architecture and its arguments, input normalisation, label names, metrics and versions), so the
loader rebuilds the exact network:

>>> import mnist_cnn, numpy as np
>>> clf = mnist_cnn.load_model("runs/basic")            # doctest: +SKIP
>>> clf = mnist_cnn.load_model()                        # the model that ships with the package  # doctest: +SKIP
>>> clf.predict(np.zeros((28, 28), dtype=np.uint8))     # doctest: +SKIP
array([5])
"""

from __future__ import annotations

import json
import logging
import os
import platform
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from . import __version__
from .errors import ModelFolderError
from .models import create_model, kwargs_from_weights
from .runtime import select_device

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
WEIGHTS, CONFIG = "model.safetensors", "config.json"
LABELS = [str(d) for d in range(10)]
# Mean and standard deviation of the MNIST training pixels scaled to [0, 1].
MNIST_NORMALIZATION = {"mean": 0.1307, "std": 0.3081}


def versions() -> dict:
    return {
        "mnist_cnn": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


def to_model_input(images, normalization: dict = MNIST_NORMALIZATION) -> torch.Tensor:
    """Check and convert images to the float tensor a model takes, shaped (N, 1, 28, 28).

    Accepts numpy arrays or tensors shaped (28, 28), (N, 28, 28) or (N, 1, 28, 28): uint8 (or
    other integers) in 0-255, or floats in 0-1.
    """
    x = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    shape = tuple(x.shape)
    if x.ndim == 2:
        x = x[None, None]
    elif x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or tuple(x.shape[1:]) != (1, 28, 28):
        raise ValueError(f"images must be shaped (28, 28), (N, 28, 28) or (N, 1, 28, 28); got {shape}")
    if x.dtype == torch.bool or x.is_complex():
        raise ValueError(f"images must be uint8 in 0-255 or float in 0-1; got {x.dtype}")
    if x.numel() and not x.is_floating_point():
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"integer images must be in 0-255; got values from {lo} to {hi}")
        x = x.float() / 255.0
    elif x.numel():
        x = x.float()
        if not torch.isfinite(x).all():
            raise ValueError("images contain NaN or infinite values")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0 or hi > 1:
            raise ValueError(
                f"float images must be in 0-1; got values from {lo:g} to {hi:g} (divide by 255, or pass uint8)"
            )
    else:
        x = x.float()
    return (x - normalization["mean"]) / normalization["std"]


# Images per forward pass when predicting many: on a CPU, chunks of a few hundred stay in cache and
# beat chunks of 1,000 (benchmarks/inference.py); the results do not depend on it beyond float rounding.
BATCH_SIZE = 256


@torch.inference_mode()
def batched_logits(model: nn.Module, x: torch.Tensor, batch_size: int = BATCH_SIZE) -> torch.Tensor:
    """Logits of ``model`` on normalised inputs, computed in eval mode in batches; on x's device."""
    was_training = model.training
    model.eval()
    try:
        if len(x) == 0:
            return torch.empty(0, 10, device=x.device)
        return torch.cat([model(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])
    finally:
        model.train(was_training)


class BaseClassifier:
    """What every runtime shares: labels, normalisation and temperature from ``config.json``, and
    predictions built on a subclass's :meth:`logits`."""

    runtime = ""
    default_batch_size = BATCH_SIZE
    config: dict

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
        """Calibrated class probabilities, shaped (N, 10), for images shaped (28, 28), (N, 28, 28) or (N, 1, 28, 28)."""
        return torch.softmax(self.logits(images, batch_size) / self.temperature, dim=1).numpy()

    def predict(self, images, batch_size: int | None = None) -> np.ndarray:
        """Predicted digit per image, shaped (N,)."""
        return self.logits(images, batch_size).argmax(dim=1).numpy()

    def __repr__(self) -> str:
        acc = self.config.get("metrics", {}).get("test_accuracy")
        return f"{type(self).__name__}({self.config.get('architecture')!r}, test_accuracy={acc})"


class Classifier(BaseClassifier):
    """A trained model ready to predict: wraps the network and its ``config.json``."""

    runtime = "torch"

    def __init__(self, model: nn.Module, config: dict, device: str | torch.device = "cpu", *, tta: bool = False):
        from .ensemble import TTA, background

        self.device = select_device(device) if isinstance(device, str) else device
        self.config = config
        self.tta = tta
        if tta:  # average over small rotations and zooms of each image
            model = TTA(model, fill=background(self.normalization))
        # Channels-last (NHWC) convolutions are 1.3-4x faster on the CPU here (benchmarks/inference.py).
        self.channels_last = self.device.type == "cpu"
        self.model = model.to(self.device).eval()
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)

    def logits(self, images, batch_size: int | None = None) -> torch.Tensor:
        """Raw logits, shaped (N, 10), before the temperature."""
        x = to_model_input(images, self.normalization).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return batched_logits(self.model, x, batch_size or self.default_batch_size).cpu()


def save_model(folder: str | os.PathLike, model: nn.Module, config: dict) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (``config`` must name the architecture)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    full = {
        "format_version": FORMAT_VERSION,
        "model_kwargs": {},
        "in_channels": 1,
        "num_classes": 10,
        "input_shape": [1, 28, 28],
        "normalization": MNIST_NORMALIZATION,
        "labels": LABELS,
        "versions": versions(),
        **config,
    }
    tmp = folder / f".{WEIGHTS}.tmp"  # a crash while writing never leaves a damaged model.safetensors
    save_file(state, tmp, metadata={"architecture": full["architecture"]})
    os.replace(tmp, folder / WEIGHTS)
    write_json(folder / CONFIG, full)
    return folder


# The model that ships inside the package (made by ``make default-model``: see mnist_cnn/default_model.py).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "pretrained"


def default_model_dir() -> Path:
    """The folder of the model that ships with the package; :class:`ModelFolderError` if this installation lacks it."""
    missing = [name for name in (WEIGHTS, CONFIG) if not (DEFAULT_MODEL_DIR / name).is_file()]
    if missing:
        raise ModelFolderError(
            f"the default model is missing from this installation ({DEFAULT_MODEL_DIR} has no {' and no '.join(missing)});"
            " reinstall mnist-cnn (in a checkout: make default-model RUN=...), or name a model folder"
        )
    return DEFAULT_MODEL_DIR


def read_config(folder: str | os.PathLike) -> dict:
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"model folder {folder} does not exist (train one with: mnist-cnn train)")
    path = folder / CONFIG
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise ModelFolderError(f"{folder} is not a model folder: it has no {CONFIG}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFolderError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(config, dict) or "architecture" not in config:
        raise ModelFolderError(f"{path} does not name an architecture")
    if config.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ModelFolderError(f"{path} was written by a newer mnist-cnn (format {config['format_version']}); upgrade")
    return config


RUNTIMES = ("torch", "onnxruntime")


def load_model(
    path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    runtime: str = "torch",
    *,
    tta: bool = False,
    threads: int | None = None,
):
    """Load a model folder written by ``mnist-cnn train``, ``mnist-cnn ensemble`` or :func:`save_model`;
    with no ``path``, the model that ships with the package (:func:`default_model_dir`).

    ``tta=True`` averages each prediction over a few small rotations and zooms of the image.
    ``runtime="onnxruntime"`` predicts with the folder's ``model.onnx`` (see :mod:`mnist_cnn.export`)
    through ONNX Runtime on the CPU instead; the returned object has the same predict methods.
    ``threads`` is ONNX Runtime's threads per forward pass (None: its own choice); PyTorch's are
    set for the whole process (``torch.set_num_threads``).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}")
    folder = default_model_dir() if path is None else Path(path)
    config = read_config(folder)
    if runtime == "onnxruntime":
        if tta:
            raise ValueError("test-time augmentation (--tta) needs the torch runtime")
        from .export import OnnxClassifier

        return OnnxClassifier(folder, config, threads=threads)
    if config["architecture"] == "ensemble":
        from .ensemble import load_ensemble

        return Classifier(load_ensemble(folder, config), config, device, tta=tta)
    try:
        state = load_file(folder / WEIGHTS)
    except FileNotFoundError:
        raise ModelFolderError(f"{folder} has no {WEIGHTS}") from None
    except (SafetensorError, OSError) as exc:
        raise ModelFolderError(f"{folder / WEIGHTS} is damaged: {exc}") from None
    try:
        model = create_model(
            config["architecture"],
            in_channels=config.get("in_channels", 1),
            num_classes=config.get("num_classes", 10),
            **{**kwargs_from_weights(config["architecture"], state), **config.get("model_kwargs", {})},
        )
    except (ValueError, TypeError) as exc:
        raise ModelFolderError(f"{folder / CONFIG}: {exc}") from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[:3]
        raise ModelFolderError(
            f"{folder / WEIGHTS} does not fit {config['architecture']!r}: {' '.join(first)}"
        ) from None
    return Classifier(model, config, device, tta=tta)


def write_json(path: Path, data) -> None:
    """Write JSON through a temporary file, so a crash never leaves half a file."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
