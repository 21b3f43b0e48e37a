"""Confidence you can act on: temperature scaling fitted on the validation split.

A network trained with cross-entropy is usually over-confident: of the digits it calls 99% sure,
fewer than 99% are right. Temperature scaling (Guo et al., 2017) divides the logits by one number
``T`` chosen to minimise the negative log-likelihood on held-out data. It never changes which digit
is predicted, only how sure the model says it is.

``T`` is fitted on the run's validation split — the same images, recreated from the run's saved
train_config with :func:`mnist_cnn.data.split_validation` — and stored in the model folder's
``config.json``, where :attr:`Classifier.temperature` picks it up. The test set is only used to
report the expected calibration error (ECE) before and after. A run trained without a validation
split cannot be calibrated: fitting on the test set would make the test figures meaningless.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import minimize_scalar

from .config import validation_of
from .data import MNIST, split_validation
from .errors import MnistCnnError
from .folder import ModelFolder
from .inference import load_model

log = logging.getLogger(__name__)

ECE_BINS = 15  # the usual choice (Guo et al.); equal-width bins of confidence


class CalibrationError(MnistCnnError):
    """The run cannot be calibrated (e.g. it kept no validation split)."""

    exit_code = 2


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the gap between confidence and accuracy, averaged over equal-width confidence bins.

    ``probs`` (N, C), ``labels`` (N,). Each prediction's confidence is its top probability; in bin
    ``b`` (confidences in ((b-1)/bins, b/bins]), |accuracy - mean confidence| is weighted by the
    share of predictions that fall there.
    """
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    if len(labels) == 0:
        return 0.0
    confidence = probs.max(1)
    correct = (probs.argmax(1) == labels).astype(np.float64)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            ece += inside.mean() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(ece)


def nll(logits: torch.Tensor, labels, temperature: float = 1.0) -> float:
    return float(F.cross_entropy(logits / temperature, torch.as_tensor(np.asarray(labels), dtype=torch.long)))


def fit_temperature(logits: torch.Tensor, labels) -> float:
    """The temperature in [0.05, 20] that minimises the negative log-likelihood of ``labels``."""
    logits = logits.double()
    labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    objective = lambda log_t: float(F.cross_entropy(logits / np.exp(log_t), labels))  # noqa: E731
    best = minimize_scalar(objective, bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(best.x))


def validation_split(config: dict, data: MNIST) -> tuple[np.ndarray, np.ndarray]:
    """The run's validation images and labels, recreated from its saved train_config (or, for an
    ensemble, from the split its members share)."""
    spec = validation_of(config)
    if spec is None:
        raise CalibrationError(
            "calibration is not possible: the model folder does not record its validation split "
            "(train_config.val_split and seed; an ensemble whose members share one split); "
            "the test set is never used for fitting"
        )
    _, val_idx = split_validation(len(data.train_images), *spec)
    if len(val_idx) == 0:
        raise CalibrationError(
            "calibration is not possible: this run was trained without a validation split (val_split=0), "
            "and the test set is never used for fitting; train with --val-split N to calibrate"
        )
    return data.train_images[val_idx].numpy(), data.train_labels[val_idx].numpy()


def calibrate_run(run_dir: str | os.PathLike, data: MNIST, *, device: str = "cpu") -> dict:
    """Fit the temperature of the model in ``run_dir`` on its validation split and save it in config.json.

    Returns the ``calibration`` record: the temperature and the validation NLL and ECE before and after.
    """
    run_dir = Path(run_dir)
    clf = load_model(run_dir, device=device)
    images, labels = validation_split(clf.config, data)
    logits = clf.logits(images)
    temperature = fit_temperature(logits, labels)
    before = torch.softmax(logits, 1).numpy()
    after = torch.softmax(logits / temperature, 1).numpy()
    record = {
        "temperature": round(temperature, 6),
        "fitted_on": "validation split ({} images, val_split={}, seed={})".format(
            len(labels), *validation_of(clf.config)
        ),
        "val_nll_before": round(nll(logits, labels), 6),
        "val_nll_after": round(nll(logits, labels, temperature), 6),
        "val_ece_before": round(expected_calibration_error(before, labels), 6),
        "val_ece_after": round(expected_calibration_error(after, labels), 6),
    }
    ModelFolder(run_dir).update(calibration=record)
    log.info(
        "temperature %.3f fitted on %d validation images: NLL %.4f -> %.4f, ECE %.4f -> %.4f",
        temperature, len(labels), record["val_nll_before"], record["val_nll_after"],
        record["val_ece_before"], record["val_ece_after"],
    )  # fmt: skip
    return record


def calibrate_if_possible(run_dir: str | os.PathLike, data: MNIST, *, device: str = "cpu") -> dict:
    """:func:`calibrate_run`, or, for a run that cannot be calibrated, a warning and a note in config.json saying why.

    The step ``mnist-cnn evaluate`` takes before it measures the model.
    """
    try:
        return calibrate_run(run_dir, data, device=device)
    except CalibrationError as exc:
        log.warning("%s", exc)
        record = {"temperature": None, "note": str(exc)}
        ModelFolder(run_dir).update(calibration=record)
        return record
