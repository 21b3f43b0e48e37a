"""Is this a digit at all? A gate on the network's features, fitted on digits and generated not-digits.

A classifier's confidence lets much junk through: a scribble or a letter often looks enough like one
digit for a confident answer, and training the network itself to be unsure of more junk cost
accuracy on other writers' digits. The gate leaves the network as it is: a logistic regression on
the features the network computes before its last layer, fitted on the run's *training* digits
(as written, strongly corrupted, photographed by :mod:`mnist_cnn.synthetic` and drawn by
:mod:`mnist_cnn.pen_digits`) against generated not-digits (:func:`mnist_cnn.synthetic.not_digits`).
Its threshold is set on the run's validation digits: the gate alone refuses :data:`GATE_REFUSES`
of them.

``mnist-cnn gate RUN`` fits it and saves it in the model folder (``gate.safetensors`` and the
``digit_gate`` section of ``config.json``); :func:`mnist_cnn.load_model` attaches it with the torch
runtime, and ``predict``, the service and the page answer ``not_a_digit`` when the confidence is
below ``min_confidence`` *or* the gate says no.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
from torch import nn

from .classifier import features_and_logits, to_model_input
from .errors import MnistCnnError, ModelFolderError

GATE_REFUSES = 0.005  # the share of the run's validation digits the gate alone may refuse
# The seeds of the gate's own data, apart from training's (run seed + 2..4) and robust_dev's (7).
SEED = 11


class GateError(MnistCnnError):
    """A digit gate cannot be fitted to this model (no features to read, no validation split)."""


class DigitGate(nn.Module):
    """Probability that an image is a digit at all, from the network's features (B, F) -> (B,)."""

    def __init__(self, n_features: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(n_features))
        self.register_buffer("std", torch.ones(n_features))
        self.linear = nn.Linear(n_features, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear((features - self.mean) / self.std)[:, 0])


def has_features(network: nn.Module) -> bool:
    """Whether ``network`` is a convolutional ``features`` then ``classifier`` net (every registered one)."""
    return isinstance(getattr(network, "features", None), nn.Module) and isinstance(
        getattr(network, "classifier", None), nn.Module
    )


def load_gate(folder, config: dict) -> DigitGate | None:
    """The digit gate saved in a model folder (:class:`mnist_cnn.folder.ModelFolder`), or None if it has none."""
    state = folder.read_gate(config)
    if state is None:
        return None
    try:
        gate = DigitGate(state["mean"].numel())
        gate.load_state_dict(state)
    except (KeyError, RuntimeError) as exc:
        raise ModelFolderError(f"{folder.path}: the digit gate does not fit its network: {exc}") from None
    return gate.eval()


def _augmented(digits28: np.ndarray, aug, seed: int) -> np.ndarray:
    from .augment import augment

    x = torch.as_tensor(digits28, dtype=torch.float32)[:, None] / 255
    x = augment(x, aug, torch.Generator().manual_seed(seed))
    return (x[:, 0].clamp(0, 1) * 255).round().to(torch.uint8).numpy()


def gate_frames(train_digits: np.ndarray, digits: int, not_digits: int, seed: int = SEED):
    """(digit frames, not-digit frames), uint8 (N, 28, 28): about ``digits`` digits made from
    ``train_digits`` (MNIST training digits only) and ``not_digits`` generated not-digits.

    Of the digits: 45% with the ``robust`` recipe's augmentation, 30% with every one of its corruptions
    at once, 12.5% photographed and 12.5% drawn by :mod:`mnist_cnn.pen_digits`.
    """
    from .config import get_recipe
    from .pen_digits import pen_digits
    from .synthetic import not_digits as draw_not_digits
    from .synthetic import photographed

    aug = get_recipe("robust").config.augmentation
    rng = np.random.default_rng(seed)
    pool = train_digits[rng.permutation(len(train_digits))]
    counts = np.array([0.45, 0.30, 0.125]) * digits
    a, b, c = (int(k) for k in np.cumsum(counts))
    parts = [
        _augmented(pool[:a], aug, seed),
        _augmented(pool[a:b], dataclasses.replace(aug, corrupt_p=1.0), seed + 1),
        photographed(pool[b:c], seed + 2),
        pen_digits(digits - c, seed + 3)[0],
    ]
    return np.concatenate(parts), draw_not_digits(not_digits, seed + 4)


def fit_gate(network: nn.Module, digit_frames, not_digit_frames, *, normalization: dict, epochs: int = 60,
             seed: int = 0) -> DigitGate:  # fmt: skip
    """A :class:`DigitGate` fitted on ``network``'s features (the network is not changed): digits against
    not-digits, each class weighted to the same total, AdamW with a one-cycle schedule."""
    pos, _ = features_and_logits(network, to_model_input(digit_frames, normalization))
    neg, _ = features_and_logits(network, to_model_input(not_digit_frames, normalization))
    if not len(pos) or not len(neg):
        raise GateError("fitting a digit gate needs digits and not-digits")
    x = torch.cat([pos, neg])
    y = torch.cat([torch.ones(len(pos)), torch.zeros(len(neg))])
    weight = torch.where(y > 0, len(neg) / len(pos), 1.0)
    gate = DigitGate(x.shape[1])
    gate.mean.copy_(x.mean(0))
    gate.std.copy_(x.std(0) + 1e-3)
    _train(gate, x, y, weight, epochs, seed)
    return gate.eval()


def _train(gate: DigitGate, x, y, weight, epochs: int, seed: int, batch: int = 512) -> None:
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(gate.linear.parameters(), 1e-3, weight_decay=0.01)
    steps = epochs * ((len(x) + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, 3e-3, total_steps=steps)
    gate.train()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for i in range(0, len(x), batch):
            b = order[i : i + batch]
            logit = gate.linear((x[b] - gate.mean) / gate.std)[:, 0]
            loss = nn.functional.binary_cross_entropy_with_logits(logit, y[b], weight=weight[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()


@torch.inference_mode()
def digit_probability(network: nn.Module, gate: DigitGate, frames, normalization: dict) -> np.ndarray:
    """The gate's probability that each MNIST-format frame is a digit, (N,)."""
    feats, _ = features_and_logits(network, to_model_input(frames, normalization))
    return gate(feats).numpy() if len(feats) else np.zeros(0)


def fit_run_gate(clf, data, *, digits: int = 48_000, not_digits: int = 18_000, held_out: int = 1_800) -> tuple:
    """Fit the gate of a loaded torch classifier (its training split, its validation digits for the threshold).

    Returns (gate, record): ``record`` is what ``config.json`` keeps under ``digit_gate``, with the
    threshold and what it refuses: validation digits, and not-digits drawn apart from the fitting's.
    """
    from .config import validation_of
    from .data import split_validation
    from .synthetic import not_digits as draw_not_digits

    network = getattr(clf, "model", None)
    if network is None or not has_features(network):
        raise GateError("a digit gate needs a single network with the torch runtime (not an ensemble or ONNX)")
    spec = validation_of(clf.config)
    if spec is None or not spec[0]:
        raise GateError("a digit gate sets its threshold on the run's validation digits; this run has none")
    start = time.perf_counter()
    train_idx, val_idx = split_validation(len(data.train_images), *spec)
    frames = gate_frames(data.train_images.numpy()[train_idx.numpy()], digits, not_digits)
    gate = fit_gate(network, *frames, normalization=clf.normalization)
    val_p = digit_probability(network, gate, data.train_images.numpy()[val_idx.numpy()], clf.normalization)
    threshold = float(np.quantile(val_p, GATE_REFUSES))
    junk_p = digit_probability(network, gate, draw_not_digits(held_out, SEED + 10), clf.normalization)
    return gate, {
        "threshold": round(threshold, 6),
        "fitted_on": f"{len(frames[0])} training digits, {len(frames[1])} generated not-digits",
        "validation_digits_refused": round(float(np.mean(val_p < threshold)), 4),
        "held_out_not_digits_refused": round(float(np.mean(junk_p < threshold)), 4),
        "seconds": round(time.perf_counter() - start, 1),
    }
