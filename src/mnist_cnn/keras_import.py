"""Keras models of the seed architectures carried over: a ``.keras`` or ``.h5`` file to a model folder.

>>> from mnist_cnn.keras_import import import_keras
>>> import_keras("my_model.keras", "runs/from-keras")       # doctest: +SKIP
PosixPath('runs/from-keras')

The seed tutorials' three Keras models are layer for layer ``basic``, ``dropout`` and
``three-conv`` (:data:`KERAS_ARCHITECTURES`). The file is read with h5py, TensorFlow is not needed:

- ``.keras`` (Keras 3): a zip of ``config.json`` and ``model.weights.h5``, whose variables sit in
  ``layers/<class name in snake case, numbered>/vars/0, 1`` (kernel, bias; Keras 2.13-2.15 wrote
  ``_layer_checkpoint_dependencies/`` instead of ``layers/``);
- ``.h5`` (Keras 2, ``model.save("m.h5")``): the ``model_config`` attribute and
  ``model_weights/<layer>/<layer>/kernel:0``, listed by each group's ``weight_names``.

The layer list (Conv2D, MaxPooling2D, Flatten, Dropout, Dense and their activations) is turned into
a signature that each candidate torch model also yields, so a file matches an architecture only if
every layer and width agrees. Weights change layout on the way: convolution kernels are HWIO in
Keras and OIHW in torch, dense kernels (in, out) and (out, in), and Keras flattens channels-last
(H, W, C), so the rows of the first dense kernel are reordered to torch's (C, H, W). The final
softmax is dropped (our models return logits; softmax of them is Keras' output). Keras models take
pixels scaled to 0-1 (the tutorials divide by 255), so the folder records normalisation mean 0 and
std 1, or what a leading ``Rescaling`` layer implies.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .errors import KerasImportError, ModelFolderError
from .folder import ModelFolder
from .models import create_model

KERAS_ARCHITECTURES = ("basic", "dropout", "three-conv")  # the seeds' Keras models, reproduced layer for layer
_WEIGHTED = {"Conv2D", "Dense"}


@dataclass
class KerasLayer:
    """One layer as the file describes it: Keras class name, its config and its arrays (kernel, bias)."""

    kind: str
    config: dict
    weights: list[np.ndarray] = field(default_factory=list)

    @property
    def name(self) -> str:
        return str(self.config.get("name", self.kind))


@dataclass
class KerasModel:
    """What a Keras file holds: its layers in order, and where it came from."""

    layers: list[KerasLayer]
    file_format: str  # "keras" (Keras 3 zip) or "h5" (Keras 2 HDF5)
    keras_version: str | None = None


def read_keras(path: str | os.PathLike) -> KerasModel:
    """Read a ``.keras`` or ``.h5`` file's layers and weights; raises :class:`KerasImportError` on anything else."""
    path = Path(path)
    if not path.is_file():
        raise KerasImportError(f"{path} does not exist or is not a file")
    try:
        import h5py
    except ImportError:
        raise KerasImportError('reading Keras files needs h5py: pip install "mnist-cnn[keras]"') from None
    try:
        if zipfile.is_zipfile(path):
            return _read_keras3(path, h5py)
        if h5py.is_hdf5(path):
            return _read_h5(path, h5py)
    except KerasImportError:
        raise
    except (OSError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as exc:
        raise KerasImportError(f"{path} is damaged or not a saved Keras model: {exc}") from None
    raise KerasImportError(
        f"{path} is neither a Keras 3 .keras archive nor a Keras 2 .h5 file; save the model with model.save(...)"
    )


def _layer_list(config: dict, path: Path) -> list[dict]:
    inner = config.get("config", {}) if isinstance(config, dict) else {}
    layers = inner.get("layers") if isinstance(inner, dict) else inner  # very old Sequential: a bare list
    if not isinstance(layers, list) or not all(isinstance(x, dict) and "class_name" in x for x in layers):
        raise KerasImportError(f"{path}: the model config lists no layers; is it a Keras model?")
    return layers


def _read_keras3(path: Path, h5py) -> KerasModel:
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        if not {"config.json", "model.weights.h5"} <= names:
            raise KerasImportError(
                f"{path} is a zip file but not a Keras 3 model (no config.json and model.weights.h5)"
            )
        config = json.loads(archive.read("config.json"))
        meta = json.loads(archive.read("metadata.json")) if "metadata.json" in names else {}
        weights = archive.read("model.weights.h5")
    layers, counts = [], {}
    with h5py.File(io.BytesIO(weights), "r") as f:
        for spec in _layer_list(config, path):
            kind = spec["class_name"]
            snake = _snake_case(kind)  # Keras 3 names a layer's variables by class, numbered: dense, dense_1, ...
            number = counts.get(snake, -1) + 1
            counts[snake] = number
            inner = f"{snake}" + (f"_{number}" if number else "") + "/vars"
            # Keras 3 keeps them under layers/; the .keras files of Keras 2.13-2.15 under _layer_checkpoint_dependencies/
            group = next((g for g in (f"layers/{inner}", f"_layer_checkpoint_dependencies/{inner}") if g in f), inner)
            arrays = []
            if kind in _WEIGHTED:
                if group not in f:
                    raise KerasImportError(
                        f"{path}: no weights for layer {spec['config'].get('name', kind)!r} ({group})"
                    )
                arrays = [np.asarray(f[group][k]) for k in sorted(f[group], key=int)]
            layers.append(KerasLayer(kind, spec.get("config", {}), arrays))
    return KerasModel(layers, "keras", meta.get("keras_version"))


def _read_h5(path: Path, h5py) -> KerasModel:
    with h5py.File(path, "r") as f:
        if "model_config" not in f.attrs:
            raise KerasImportError(
                f"{path} holds weights only, without the model's layers; save the whole model with model.save(...)"
            )
        config = json.loads(_text(f.attrs["model_config"]))
        groups = f["model_weights"] if "model_weights" in f else f
        layers = []
        for spec in _layer_list(config, path):
            cfg = spec.get("config", {})
            name = cfg.get("name", "")
            arrays = []
            if spec["class_name"] in _WEIGHTED:
                if name not in groups:
                    raise KerasImportError(f"{path}: no weights for layer {name!r}")
                group = groups[name]
                arrays = [np.asarray(group[_text(n)]) for n in group.attrs.get("weight_names", [])]
            layers.append(KerasLayer(spec["class_name"], cfg, arrays))
        version = f.attrs.get("keras_version")
    return KerasModel(layers, "h5", _text(version) if version is not None else None)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _snake_case(name: str) -> str:
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def _activation(layer: KerasLayer) -> str:
    act = layer.config.get("activation") or "linear"
    if isinstance(act, dict):  # a serialised function, as some Keras versions write it
        act = act.get("config", {}).get("name") or act.get("class_name", "?")
    return str(act).lower()


def _pair(value, default) -> tuple:
    value = default if value is None else value
    return tuple(value) if isinstance(value, list | tuple) else (value, value)


def _keras_signature(model: KerasModel) -> tuple[list[str], dict]:
    """Tokens for the layers (``conv32k3``, ``relu``, ``pool2``, ``flatten``, ``dense128``) and the
    settings that are not part of the shape: the dropout rate and the input scaling."""
    tokens, options = [], {}
    for i, layer in enumerate(model.layers):
        cfg, last = layer.config, i == len(model.layers) - 1
        shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
        if shape is not None and list(shape[1:]) != [28, 28, 1]:
            raise KerasImportError(
                f"layer {layer.name!r} expects input {tuple(shape[1:])}; MNIST models take (28, 28, 1)"
            )
        if cfg.get("data_format", "channels_last") != "channels_last":
            raise KerasImportError(f"layer {layer.name!r} is channels_first; only channels_last models are supported")
        if layer.kind == "Conv2D":
            if (
                _pair(cfg.get("strides"), 1) != (1, 1)
                or cfg.get("padding", "valid") != "valid"
                or not cfg.get("use_bias", True)
            ):
                raise KerasImportError(
                    f"layer {layer.name!r}: only stride-1 'valid' convolutions with a bias are supported"
                )
            tokens.append(f"conv{cfg.get('filters')}k{_pair(cfg.get('kernel_size'), 3)[0]}")
        elif layer.kind == "MaxPooling2D":
            size = _pair(cfg.get("pool_size"), 2)
            if _pair(cfg.get("strides"), size) != size or cfg.get("padding", "valid") != "valid":
                raise KerasImportError(f"layer {layer.name!r}: only non-overlapping 'valid' max-pooling is supported")
            tokens.append(f"pool{size[0]}")
        elif layer.kind == "Dense":
            if not cfg.get("use_bias", True):
                raise KerasImportError(f"layer {layer.name!r}: a dense layer without bias is not supported")
            tokens.append(f"dense{cfg.get('units')}")
        elif layer.kind == "Flatten":
            tokens.append("flatten")
        elif layer.kind == "Dropout":
            options["dropout"] = float(cfg.get("rate", 0.0))
        elif layer.kind == "Rescaling" and not tokens:
            options["normalization"] = _rescaling(layer)
        elif layer.kind == "Activation":
            tokens += _activation_tokens(layer, last)
        elif layer.kind != "InputLayer":
            raise KerasImportError(f"layer {layer.name!r} ({layer.kind}) has no counterpart in {_names()}")
        if layer.kind in _WEIGHTED:
            tokens += _activation_tokens(layer, last)
    return tokens, options


def _activation_tokens(layer: KerasLayer, last: bool) -> list[str]:
    act = _activation(layer)
    if act == "relu":
        return ["relu"]
    if act == "linear" or (act == "softmax" and last):  # softmax(logits) is Keras' output: dropped
        return []
    raise KerasImportError(f"layer {layer.name!r}: activation {act!r} has no counterpart in {_names()}")


def _rescaling(layer: KerasLayer) -> dict:
    """Keras sees ``raw * scale + offset`` of 0-255 pixels; as (x - mean) / std of 0-1 pixels."""
    scale, offset = float(layer.config.get("scale", 1.0)), float(layer.config.get("offset", 0.0))
    if scale <= 0:
        raise KerasImportError(f"layer {layer.name!r}: a Rescaling scale of {scale} is not supported")
    return {"mean": -offset / (255 * scale), "std": 1 / (255 * scale)}


def _names() -> str:
    return ", ".join(KERAS_ARCHITECTURES)


def torch_signature(model: nn.Module) -> list[str]:
    """The same tokens for one of our networks (dropout leaves no token, as in :func:`_keras_signature`)."""
    tokens = []
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            tokens.append(f"conv{m.out_channels}k{m.kernel_size[0]}")
        elif isinstance(m, nn.MaxPool2d):
            tokens.append(f"pool{m.kernel_size}")
        elif isinstance(m, nn.Linear):
            tokens.append(f"dense{m.out_features}")
        elif isinstance(m, nn.Flatten):
            tokens.append("flatten")
        elif isinstance(m, nn.ReLU):
            tokens.append("relu")
    return tokens


def match_architecture(model: KerasModel) -> tuple[str, dict]:
    """The registry name of the architecture the Keras model is, and its settings; or a clear error."""
    tokens, options = _keras_signature(model)
    for name in KERAS_ARCHITECTURES:
        if torch_signature(create_model(name)) == tokens:
            return name, options
    raise KerasImportError(
        f"the Keras model ({' '.join(tokens) or 'no layers'}) is none of the architectures that can be imported"
        f" ({_names()}: Conv32-Pool-Conv64-Pool[-Conv64]-Flatten[-Dropout]-Dense...-Dense10)"
    )


def convert_weights(model: KerasModel, network: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict for ``network`` (built by :func:`match_architecture`'s name) from the Keras arrays."""
    targets = [m for m in network.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    sources = [layer for layer in model.layers if layer.kind in _WEIGHTED]
    with torch.no_grad():
        features = network.features(torch.zeros(1, 1, 28, 28))  # (1, C, H, W): what the first Linear sees
    state, flattened = {}, False
    names = {m: n for n, m in network.named_modules()}
    for target, layer in zip(targets, sources, strict=True):
        if len(layer.weights) != 2:
            raise KerasImportError(
                f"layer {layer.name!r} has {len(layer.weights)} arrays; expected a kernel and a bias"
            )
        kernel, bias = (np.asarray(w, dtype=np.float32) for w in layer.weights)
        if isinstance(target, nn.Conv2d):
            weight = kernel.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        elif not flattened:
            _, c, h, w = features.shape  # Keras flattened (H, W, C); torch flattens (C, H, W)
            weight = kernel.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(kernel.shape[-1], -1)
            flattened = True
        else:
            weight = kernel.T
        name = names[target]
        for key, value, want in ((f"{name}.weight", weight, target.weight), (f"{name}.bias", bias, target.bias)):
            if tuple(value.shape) != tuple(want.shape):
                raise KerasImportError(
                    f"layer {layer.name!r}: weights shaped {tuple(value.shape)} where {tuple(want.shape)} was expected"
                )
            state[key] = torch.from_numpy(np.ascontiguousarray(value))
    return state


def import_keras(path: str | os.PathLike, out: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a model folder (``model.safetensors`` + ``config.json``) at ``out`` from a Keras file.

    Raises :class:`~mnist_cnn.errors.KerasImportError` for a file that is damaged, not Keras, or of
    an architecture other than :data:`KERAS_ARCHITECTURES`; :class:`ModelFolderError` if ``out``
    already holds something and ``overwrite`` is false.
    """
    path, out = Path(path), Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ModelFolderError(f"{out} already exists and is not empty; choose another --out or pass --overwrite")
    keras = read_keras(path)
    name, options = match_architecture(keras)
    kwargs = {"dropout": options["dropout"]} if name == "dropout" and "dropout" in options else {}
    network = create_model(name, **kwargs)
    network.load_state_dict(convert_weights(keras, network))
    source = {
        "keras_file": path.name,
        "format": keras.file_format,
        "keras_version": keras.keras_version,
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    normalization = options.get("normalization", {"mean": 0.0, "std": 1.0})  # Keras models take pixels / 255
    return ModelFolder(out).save(
        network.eval(), {"architecture": name, "normalization": normalization, "imported_from": source}
    )
