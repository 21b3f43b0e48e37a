"""Loading a saved model folder into an object that predicts with it.

A model folder (:mod:`mnist_cnn.folder`) holds the weights and ``config.json``; :func:`load_model`
rebuilds the network and wraps it in the classifier of the runtime asked for
(:mod:`mnist_cnn.classifier`). Which pieces are put together is decided in one place: the tables
:data:`NETWORKS` (how a folder's architecture becomes a network) and :data:`LOADERS` (one per runtime).

>>> import mnist_cnn, numpy as np
>>> clf = mnist_cnn.load_model("runs/basic")            # doctest: +SKIP
>>> clf = mnist_cnn.load_model()                        # the model that ships with the package  # doctest: +SKIP
>>> clf.predict(np.zeros((28, 28), dtype=np.uint8))     # doctest: +SKIP
array([5])
"""

from __future__ import annotations

import os
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

from .averaging import TTA, Ensemble, background
from .classifier import (
    BATCH_SIZE,
    RUNTIMES,
    BaseClassifier,
    Classifier,
    OnnxClassifier,
    OnnxInt8Classifier,
    batched_logits,
    select_device,
    to_model_input,
)
from .errors import ModelFolderError
from .folder import (
    CONFIG,
    ENSEMBLE,
    FORMAT_VERSION,
    LABELS,
    MNIST_NORMALIZATION,
    WEIGHTS,
    ModelFolder,
    read_config,
    save_model,
    versions,
    write_json,
)
from .gate import load_gate
from .models import create_model, kwargs_from_weights
from .runs import resolve_run

# The model that ships inside the package (made by ``make default-model``: see mnist_cnn/default_model.py).
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent / "pretrained"

# Also importable from here, where they lived before the folder and the classifiers had modules of their own.
__all__ = [
    "BATCH_SIZE", "CONFIG", "DEFAULT_MODEL_DIR", "FORMAT_VERSION", "LABELS", "LOADERS", "MNIST_NORMALIZATION", "NETWORKS", "RUNTIMES",
    "WEIGHTS", "BaseClassifier", "Classifier", "ModelFolder", "OnnxClassifier", "batched_logits", "default_model_dir",
    "load_ensemble",
    "load_model", "load_network", "read_config", "save_model", "select_device", "to_model_input", "versions",
    "write_json",
]  # fmt: skip


def default_model_dir() -> Path:
    """The folder of the model that ships with the package; :class:`ModelFolderError` if this installation lacks it."""
    missing = [name for name in (WEIGHTS, CONFIG) if not (DEFAULT_MODEL_DIR / name).is_file()]
    if missing:
        raise ModelFolderError(
            f"the default model is missing from this installation ({DEFAULT_MODEL_DIR} has no {' and no '.join(missing)});"
            " reinstall mnist-cnn (in a checkout: make default-model RUN=...), or name a model folder"
        )
    return DEFAULT_MODEL_DIR


def load_model(
    path: str | os.PathLike | None = None,
    device: str | torch.device = "cpu",
    runtime: str = "torch",
    *,
    tta: bool = False,
    threads: int | None = None,
    runs_dir: str | os.PathLike = "runs",
) -> BaseClassifier:
    """Load a model folder written by ``mnist-cnn train``, ``mnist-cnn ensemble`` or :func:`save_model`;
    with no ``path``, the model that ships with the package (:func:`default_model_dir`).

    ``path`` is named as on the command line: a folder, a run name in ``runs_dir``, ``"latest"`` (the
    newest finished run there) or a file in a run folder (:func:`mnist_cnn.runs.resolve_run`); a name that
    matches nothing is a :class:`ModelFolderError` listing the closest runs.

    ``tta=True`` averages each prediction over a few small rotations and zooms of the image.
    ``runtime="onnxruntime"`` predicts with the folder's ``model.onnx`` (see :mod:`mnist_cnn.export`)
    through ONNX Runtime on the CPU instead (``"onnxruntime-int8"``: with ``model.int8.onnx``, see
    :mod:`mnist_cnn.quantize`), a batch's chunks running on ``threads`` threads side by side (default:
    one per core; PyTorch's thread count is the process's, see ``torch.set_num_threads``); the
    returned object has the same predict methods.
    """
    if runtime not in LOADERS:
        raise ValueError(f"unknown runtime {runtime!r}; choose one of: {', '.join(RUNTIMES)}")
    folder = ModelFolder(default_model_dir() if path is None else resolve_run(path, runs_dir))
    return LOADERS[runtime](folder, folder.read(), device, tta, threads)


def load_network(folder: ModelFolder, config: dict) -> nn.Module:
    """The PyTorch network of a model folder, with its weights; ``config`` is the folder's."""
    build = NETWORKS.get(config["architecture"], _single_network)
    return build(folder, config)


def _torch_classifier(folder: ModelFolder, config: dict, device, tta: bool, threads: int | None) -> Classifier:
    network = load_network(folder, config)
    gate = load_gate(folder, config)
    if tta:  # average over small rotations and zooms of each image
        network = TTA(network, fill=background(config.get("normalization", MNIST_NORMALIZATION)))
    return Classifier(network, config, device, gate=gate)


def _onnx_classifier(
    folder: ModelFolder, config: dict, device, tta: bool, threads: int | None, kind: type = OnnxClassifier
) -> OnnxClassifier:
    if tta:
        raise ValueError("test-time augmentation (--tta) needs the torch runtime")
    return kind(folder.path, config, threads=threads)


def _single_network(folder: ModelFolder, config: dict) -> nn.Module:
    state = folder.read_weights(config)
    name = config["architecture"]
    kwargs = config.get("model_kwargs") or {}
    if config.get("format_version", FORMAT_VERSION) < 2:  # format 1 did not record every argument
        kwargs = {**kwargs_from_weights(name, state), **kwargs}
    try:
        model = create_model(
            name, in_channels=config.get("in_channels", 1), num_classes=config.get("num_classes", 10), **kwargs
        )
    except (ValueError, TypeError) as exc:  # torch's own message may not say which argument
        raise ModelFolderError(
            f"{folder.config_path}: {name!r} cannot be built with model_kwargs {kwargs}: {exc}"
        ) from None
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[:3]
        raise ModelFolderError(f"{folder.weights_path} does not fit {name!r}: {' '.join(first)}") from None
    return model


def load_ensemble(folder: ModelFolder, config: dict) -> Ensemble:
    """The members of an ensemble folder, each with its own calibration temperature."""
    entries = config.get("members")
    if not isinstance(entries, list) or not entries:
        raise ModelFolderError(f"{folder.config_path} is an ensemble with no members")
    members, temperatures = [], []
    for entry in entries:
        sub = folder.path / str(entry.get("folder", "") if isinstance(entry, dict) else entry)
        if sub.resolve().parent.parent != folder.path.resolve():
            raise ModelFolderError(f"{folder.path}: ensemble member {sub} is outside the folder")
        member = load_model(sub)
        members.append(member.model)
        temperatures.append(member.temperature)
    return Ensemble(members, temperatures)


# How a folder's architecture becomes a network: registered networks are rebuilt from their
# weights; an ensemble from its members' folders.
NETWORKS: dict[str, Callable[[ModelFolder, dict], nn.Module]] = {ENSEMBLE: load_ensemble}
# What each runtime returns; its keys are RUNTIMES.
LOADERS: dict[str, Callable[[ModelFolder, dict, str | torch.device, bool, int | None], BaseClassifier]] = {
    Classifier.runtime: _torch_classifier,
    OnnxClassifier.runtime: _onnx_classifier,
    OnnxInt8Classifier.runtime: partial(_onnx_classifier, kind=OnnxInt8Classifier),
}
