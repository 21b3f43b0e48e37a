"""The saved-model folder, and the one way this project writes a file.

A model folder holds ``model.safetensors`` (the weights, no pickle) and ``config.json`` (the
architecture and the arguments it was built with, input normalisation, label names, metrics and
versions), so the loader rebuilds the exact network. :class:`ModelFolder` is the only code that
reads or writes ``config.json``; :func:`atomic_write` is how every file is written (a crash leaves
the old file or the new one, never half of one).

Format versions:

1. ``model_kwargs`` was always ``{}``; the loader took a network's ``width`` from its first convolution.
2. ``model_kwargs`` holds every constructor argument the network was built with (defaults filled in).
   Since issue 17, ``weights_sha256`` records the SHA-256 of ``model.safetensors``, and ``onnx.sha256`` that of
   ``model.onnx`` (written by ``mnist-cnn export``), each checked when the file is read (folders without them still load).
   ``onnx_int8`` records ``model.int8.onnx`` the same way (``mnist-cnn export --quantize int8``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ._version import __version__
from .errors import ModelFolderError

FORMAT_VERSION = 2
WEIGHTS, CONFIG, ONNX_FILE = "model.safetensors", "config.json", "model.onnx"
WEIGHTS_SHA256 = "weights_sha256"  # the config.json key holding the SHA-256 of model.safetensors
GATE, GATE_SECTION = "gate.safetensors", "digit_gate"  # the digit gate (mnist_cnn.gate) and its config.json section
ONNX_SHA256 = "sha256"  # the key of config.json's onnx section holding the SHA-256 of model.onnx
# Each ONNX file a folder may hold, by precision: the file, the config.json section that records it, and
# the command that writes it.
ONNX_FILES = {
    "fp32": (ONNX_FILE, "onnx", "mnist-cnn export {} --format onnx"),
    "int8": ("model.int8.onnx", "onnx_int8", "mnist-cnn export {} --quantize int8"),
}
ENSEMBLE, MEMBERS = "ensemble", "members"  # an ensemble folder's architecture, and where its members' folders go
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


def atomic_write(path: str | os.PathLike, data: bytes | str) -> Path:
    """Write ``data`` (text is written as UTF-8) to ``path``: a temporary file in the same folder,
    flushed to disk, then renamed over ``path``, so a crash leaves the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # checkpoint.py sweeps other processes' leftovers
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a folder; the rename is still atomic there
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: str | os.PathLike, data) -> Path:
    """Write ``data`` as indented JSON through :func:`atomic_write`."""
    return atomic_write(path, json.dumps(data, indent=2) + "\n")


class ModelFolder:
    """One saved model: ``ModelFolder("runs/basic").read()`` gives its config as a dict.

    >>> folder = ModelFolder("runs/basic")                          # doctest: +SKIP
    >>> folder.update(calibration={"temperature": 1.2})             # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.config_path = self.path / CONFIG
        self.weights_path = self.path / WEIGHTS

    def __repr__(self) -> str:
        return f"ModelFolder({str(self.path)!r})"

    def save(self, model: nn.Module, config: dict) -> Path:
        """Write the weights and ``config.json``; ``config`` must name the architecture.

        The constructor arguments come from the network (:func:`mnist_cnn.models.create_model`
        records them as ``model.model_kwargs``), or else from ``config["model_kwargs"]``.
        """
        if "architecture" not in config:
            raise ValueError("the config of a saved model must name its architecture")
        kwargs = getattr(model, "model_kwargs", config.get("model_kwargs"))
        if kwargs is None:
            raise ValueError("save a network built by create_model, or pass its constructor arguments as model_kwargs")
        full = {
            "in_channels": 1,
            "num_classes": 10,
            "input_shape": [1, 28, 28],
            "normalization": MNIST_NORMALIZATION,
            "labels": LABELS,
            "versions": versions(),
            **config,
            "format_version": FORMAT_VERSION,
            "model_kwargs": dict(kwargs),
        }
        self.path.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        data = safetensors_bytes(state, metadata={"architecture": full["architecture"]})
        full[WEIGHTS_SHA256] = hashlib.sha256(data).hexdigest()  # read_weights checks it
        atomic_write(self.weights_path, data)
        self.write(full)
        return self.path

    def read(self) -> dict:
        """The folder's ``config.json``; raises :class:`ModelFolderError` saying what is wrong with it."""
        if not self.path.is_dir():
            raise ModelFolderError(f"model folder {self.path} does not exist (train one with: mnist-cnn train)")
        try:
            config = json.loads(self.config_path.read_text())
        except FileNotFoundError:
            raise ModelFolderError(f"{self.path} is not a model folder: it has no {CONFIG}") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModelFolderError(f"{self.config_path} is not valid JSON: {exc}") from None
        if not isinstance(config, dict) or not isinstance(config.get("architecture"), str):
            raise ModelFolderError(f"{self.config_path} does not name an architecture")
        problem = _problem(config)
        if problem:
            raise ModelFolderError(f"{self.config_path}: {problem}")
        return config

    def write(self, config: dict) -> None:
        """Replace ``config.json`` with ``config``."""
        write_json(self.config_path, config)

    def update(self, **sections) -> dict:
        """Set top-level sections of ``config.json`` (e.g. ``metrics=...``), keep the rest; return the new config."""
        config = {**self.read(), **sections}
        self.write(config)
        return config

    def read_weights(self, config: dict | None = None) -> dict[str, torch.Tensor]:
        """The tensors of ``model.safetensors``; if ``config`` (the folder's) records their SHA-256, the bytes must match it.

        Folders saved before the digest was recorded load unchecked.
        """
        try:
            data = self.weights_path.read_bytes()
        except FileNotFoundError:
            raise ModelFolderError(f"{self.path} has no {WEIGHTS}") from None
        except OSError as exc:
            raise ModelFolderError(f"{self.weights_path} cannot be read: {exc.strerror or exc}") from None
        recorded = (config or {}).get(WEIGHTS_SHA256)
        if recorded is not None and hashlib.sha256(data).hexdigest() != recorded:
            raise ModelFolderError(
                f"{self.weights_path} is damaged or was replaced: the weights do not match the SHA-256 recorded in"
                f" {CONFIG}; save or copy the model folder again"
            )
        try:
            return safetensors_load(data)
        except (SafetensorError, ValueError) as exc:
            raise ModelFolderError(f"{self.weights_path} is damaged: {exc}") from None

    def read_onnx(self, config: dict | None = None, precision: str = "fp32") -> bytes:
        """The bytes of ``model.onnx`` (``precision="int8"``: ``model.int8.onnx``); if ``config`` (the folder's)
        records their SHA-256 (``onnx.sha256`` or ``onnx_int8.sha256``, written by ``mnist-cnn export``), they
        must match it. Files exported before the digest was recorded load unchecked.
        """
        name, section, command = ONNX_FILES[precision]
        path, again = self.path / name, command.format(self.path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ModelFolderError(f"{self.path} has no {name}; create it with: {again}") from None
        except OSError as exc:
            raise ModelFolderError(f"{path} cannot be read: {exc.strerror or exc}") from None
        recorded = ((config or {}).get(section) or {}).get(ONNX_SHA256)
        if recorded is not None and hashlib.sha256(data).hexdigest() != recorded:
            raise ModelFolderError(
                f"{path} is damaged or was replaced: it does not match the SHA-256 recorded in {CONFIG};"
                f" export it again with: {again}"
            )
        return data

    def save_gate(self, state: dict[str, torch.Tensor], record: dict) -> dict:
        """Write the digit gate's tensors and its ``digit_gate`` section (which records both digests); return the config."""
        data = safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in state.items()})
        config = self.read()
        section = {
            **record,
            "sha256": hashlib.sha256(data).hexdigest(),
            "model_weights_sha256": config.get(WEIGHTS_SHA256),
        }
        atomic_write(self.path / GATE, data)
        return self.update(**{GATE_SECTION: section})

    def read_gate(self, config: dict) -> dict[str, torch.Tensor] | None:
        """The digit gate's tensors, or None when ``config`` (the folder's) has no ``digit_gate``; they must
        match the digest recorded, and the gate must have been fitted to this folder's weights."""
        section = config.get(GATE_SECTION)
        if not isinstance(section, dict):
            return None
        path, again = self.path / GATE, f"mnist-cnn gate {self.path}"
        if section.get("model_weights_sha256") != config.get(WEIGHTS_SHA256):
            raise ModelFolderError(
                f"{path} was fitted to other weights than {self.weights_path}; fit it again: {again}"
            )
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ModelFolderError(f"{path} cannot be read ({exc.strerror or exc}); fit it again: {again}") from None
        if hashlib.sha256(data).hexdigest() != section.get("sha256"):
            raise ModelFolderError(
                f"{path} is damaged or was replaced (its SHA-256 differs from {CONFIG}'s); fit it again: {again}"
            )
        try:
            return safetensors_load(data)
        except (SafetensorError, ValueError) as exc:
            raise ModelFolderError(f"{path} is damaged: {exc}") from None

    def weights_sha256(self) -> str:
        """SHA-256 of ``model.safetensors``; for an ensemble folder (no weights of its own), of its
        members' digests in order, so an ensemble's ``model.onnx`` also knows when its weights changed."""
        if self.weights_path.is_file():
            return hashlib.sha256(self.weights_path.read_bytes()).hexdigest()
        config = self.read()
        if config.get("architecture") != ENSEMBLE:
            raise ModelFolderError(f"{self.path} has no {WEIGHTS}; a model folder holds {WEIGHTS} and {CONFIG}")
        members = [m.get("folder", "") if isinstance(m, dict) else m for m in config.get(MEMBERS) or []]
        digests = [ModelFolder(self.path / str(m)).weights_sha256() for m in members]
        return hashlib.sha256("\n".join(digests).encode()).hexdigest()


def gate_sha256(config: dict) -> str | None:
    """The SHA-256 of the folder's digit gate recorded in its config (None without one); an export records it too."""
    return (config.get(GATE_SECTION) or {}).get("sha256")


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Shapes no network of this project has: a config that asks for them is damaged, not ambitious.
LIMITS = {"in_channels": (1, 64), "num_classes": (2, 10_000)}
# The JSON type of each other field the loaders, the service and ``mnist-cnn runs`` read, when it is present.
FIELD_TYPES = {
    "model_kwargs": (dict,), "versions": (dict,), "metrics": (dict, type(None)), "onnx": (dict, type(None)),
    "onnx_int8": (dict, type(None)),
    "training": (dict,), "train_config": (dict,), "validation": (dict,), "calibration": (dict, type(None)),
    "recipe": (str, type(None)), "labels": (list,), "input_shape": (list,),
}  # fmt: skip
JSON_NAMES = {dict: "a JSON object", list: "a list", str: "a string", int: "an integer", bool: "true or false",
              type(None): "null"}  # fmt: skip


def _problem(config: dict) -> str | None:
    """What is wrong with the fields of a read ``config.json`` that the loaders use, or None."""
    version = config.get("format_version", FORMAT_VERSION)
    if not _is_int(version):
        return f"format_version must be an integer, got {version!r}"
    if version > FORMAT_VERSION:
        return f"written by a newer mnist-cnn (format {version}); upgrade"
    for name, (lo, hi) in LIMITS.items():
        value = config.get(name, lo)
        if not _is_int(value) or not lo <= value <= hi:
            return f"{name} must be an integer from {lo} to {hi}, got {value!r}"
    for name, types in FIELD_TYPES.items():
        if name in config and not isinstance(config[name], types):
            return f"{name} must be {' or '.join(JSON_NAMES[t] for t in types)}, got {config[name]!r}"[:300]
    norm = config.get("normalization", MNIST_NORMALIZATION)
    if not isinstance(norm, dict) or not _is_number(norm.get("mean")) or not _is_number(norm.get("std")):
        return f"normalization must hold a finite mean and std, got {norm!r}"
    if norm["std"] <= 0:
        return f"normalization std must be above 0, got {norm['std']!r}"
    temperature = (config.get("calibration") or {}).get("temperature")
    if temperature is not None and (not _is_number(temperature) or temperature <= 0):
        return f"calibration temperature must be a finite number above 0, got {temperature!r}"
    labels = config.get("labels", LABELS)
    if len(labels) != config.get("num_classes", 10) or not all(isinstance(x, str | int) for x in labels):
        return f"labels must be {config.get('num_classes', 10)} names (one per class), got {labels!r}"[:300]
    shape = config.get("input_shape", [1, 28, 28])
    if len(shape) != 3 or not all(_is_int(x) and 0 < x <= 4096 for x in shape):
        return f"input_shape must be [channels, height, width], got {shape!r}"[:300]
    sections = [("", config)] + [(f"{key} ", config.get(key) or {}) for _, key, _ in ONNX_FILES.values()]
    for name, section in sections:
        for key in (WEIGHTS_SHA256, ONNX_SHA256):
            digest = section.get(key)
            if digest is not None and not (isinstance(digest, str) and len(digest) == 64):
                return f"{name}{key} must be a hex SHA-256, got {digest!r}"[:300]
    return None


def save_model(folder: str | os.PathLike, model: nn.Module, config: dict) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (``config`` must name the architecture); see :meth:`ModelFolder.save`."""
    return ModelFolder(folder).save(model, config)


def read_config(folder: str | os.PathLike) -> dict:
    """The model folder's ``config.json``; see :meth:`ModelFolder.read`."""
    return ModelFolder(folder).read()
