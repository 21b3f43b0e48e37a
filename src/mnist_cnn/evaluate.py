"""Test-set evaluation of a saved model: metrics (scikit-learn), recorded in ``metrics.json``.

Measuring changes nothing: :func:`evaluate_run` only reads the folder; fitting a temperature
(:mod:`mnist_cnn.calibrate`), recording the metrics (:func:`save_metrics`) and writing the report
(:func:`mnist_cnn.report.write_run_report`) are steps of their own, which ``mnist-cnn evaluate``
takes in that order.

This is the only place the test set is used, and it is used after training is over: nothing
here feeds back into choosing epochs, checkpoints or hyper-parameters.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix

from .calibrate import ECE_BINS, CalibrationError, expected_calibration_error, validation_split
from .config import TrainConfig
from .data import MNIST
from .folder import ModelFolder, write_json
from .inference import BaseClassifier, load_model
from .models import count_parameters

log = logging.getLogger(__name__)

METRICS = "metrics.json"


@dataclass
class Evaluation:
    probs: np.ndarray  # (N, 10) class probabilities
    preds: np.ndarray  # (N,) predicted labels
    metrics: dict


def evaluate(
    clf: BaseClassifier, images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, batch_size: int = 1000
) -> Evaluation:
    """Accuracy, loss, calibration error, per-class precision/recall/F1, confusion matrix and the misclassified indices.

    ``test_loss`` is on the raw logits (comparable across runs); ``probs`` and ``test_ece`` use the
    model's calibrated temperature, ``test_ece_uncalibrated`` the raw softmax.
    """
    labels = np.asarray(labels)
    logits = clf.logits(images, batch_size)
    probs = torch.softmax(logits / clf.temperature, 1).numpy()
    preds = probs.argmax(1)
    names = clf.labels
    metrics = {
        "test_accuracy": float(accuracy_score(labels, preds)),
        "test_loss": float(F.cross_entropy(logits, torch.as_tensor(labels, dtype=torch.long)).item()),
        "test_images": int(len(labels)),
        "temperature": clf.temperature,
        "test_ece_uncalibrated": expected_calibration_error(torch.softmax(logits, 1).numpy(), labels),
        "test_ece": expected_calibration_error(probs, labels),
        "classification_report": classification_report(
            labels, preds, labels=list(range(len(names))), target_names=names, output_dict=True, zero_division=0
        ),
        "confusion_matrix": confusion_matrix(labels, preds, labels=list(range(len(names)))).tolist(),
        "misclassified": np.flatnonzero(preds != labels).tolist(),
    }
    return Evaluation(probs, preds, metrics)


def format_metrics(metrics: dict) -> str:
    """The classification report and confusion matrix as text, the way the Keras tutorials print them."""
    report_rows = metrics["classification_report"]
    names = [k for k, v in report_rows.items() if isinstance(v, dict) and k not in ("macro avg", "weighted avg")]
    lines = [f"{'':>12} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}"]
    for name in [*names, "macro avg", "weighted avg"]:
        m = report_rows[name]
        lines.append(f"{name:>12} {m['precision']:9.4f} {m['recall']:9.4f} {m['f1-score']:9.4f} {int(m['support']):9d}")
    lines.append(f"{'accuracy':>12} {metrics['test_accuracy']:29.4f} {metrics['test_images']:9d}")
    if "test_ece" in metrics:
        lines += ["", calibration_line(metrics)]
    lines += ["", "confusion matrix (rows: actual, columns: predicted)", "      " + "".join(f"{n:>6}" for n in names)]
    lines += [
        f"{n:>6}" + "".join(f"{v:6d}" for v in row) for n, row in zip(names, metrics["confusion_matrix"], strict=True)
    ]
    return "\n".join(lines)


def calibration_line(metrics: dict) -> str:
    ece = f"expected calibration error on the test set ({ECE_BINS} bins): {metrics['test_ece_uncalibrated']:.4f}"
    if metrics.get("temperature", 1.0) == 1.0:
        return f"{ece} (not calibrated)"
    return f"{ece} before, {metrics['test_ece']:.4f} after temperature scaling (T={metrics['temperature']:.3f}, fitted on validation)"


@dataclass
class RunEvaluation:
    """What :func:`evaluate_run` measured, and what the report needs to show it."""

    run_dir: Path
    metrics: dict  # the headline figures config.json keeps, then everything metrics.json holds
    evaluation: Evaluation  # test-set probabilities and predictions
    config: dict  # the folder's config.json, as it was measured
    history: list[dict]  # per-epoch figures from training (none for an ensemble)
    runtime: str
    parameters: int
    tta_views: int  # views averaged per image (0: no test-time augmentation)
    labels: list[str]

    @property
    def headline(self) -> dict:
        return {k: self.metrics[k] for k in HEADLINE}


# The figures config.json records under "metrics", so they travel with the model.
HEADLINE = ("test_accuracy", "test_loss", "val_accuracy", "best_epoch", "train_seconds", "tta", "temperature",
            "test_ece_uncalibrated", "test_ece")  # fmt: skip


def evaluate_run(
    run_dir: str | os.PathLike, data: MNIST, *, device: str = "cpu", tta: bool = False, runtime: str = "torch"
) -> RunEvaluation:
    """Measure the model in ``run_dir`` on the test set; changes nothing on disk.

    The probabilities use the temperature the folder holds (fit one first with
    :func:`mnist_cnn.calibrate.calibrate_run`); :func:`save_metrics` and
    :func:`mnist_cnn.report.write_run_report` record the result. With ``tta`` every prediction
    averages a few views of the image, and the validation accuracy is measured again with them, so
    whether TTA helps can be judged without the test set. ``runtime="onnxruntime"`` measures the
    exported ``model.onnx`` instead of the PyTorch weights.
    """
    run_dir = Path(run_dir)
    clf = load_model(run_dir, device=device, runtime=runtime, tta=tta)
    network = clf.model if runtime == "torch" else load_model(run_dir).model
    result = evaluate(clf, data.test_images.numpy(), data.test_labels.numpy())
    history = _read_history(run_dir)
    training = clf.config.get("training", {})
    headline = {
        "test_accuracy": result.metrics["test_accuracy"],
        "test_loss": result.metrics["test_loss"],
        "val_accuracy": _val_accuracy(clf, data, history, tta),
        "best_epoch": training.get("best_epoch"),
        "train_seconds": training.get("train_seconds"),
        "tta": tta,
        **{k: result.metrics[k] for k in ("temperature", "test_ece_uncalibrated", "test_ece")},
    }
    log.info("test accuracy %.4f, test loss %.4f", headline["test_accuracy"], headline["test_loss"])
    return RunEvaluation(
        run_dir, {**headline, **result.metrics}, result, clf.config, history, runtime,
        count_parameters(network), len(clf.model.views) if tta else 0, clf.labels,
    )  # fmt: skip


def _val_accuracy(clf: BaseClassifier, data: MNIST, history: list[dict], tta: bool) -> float | None:
    """Validation accuracy of the kept epoch, from training; measured again with TTA or when training kept none."""
    best_epoch = clf.config.get("training", {}).get("best_epoch")
    best = next((r for r in history if r["epoch"] == best_epoch), None)
    val_accuracy = best.get("val_accuracy") if best else None
    if tta or val_accuracy is None:  # TTA changes what validation accuracy means; an ensemble has no history
        try:
            val_images, val_labels = validation_split(clf.config, data)
        except CalibrationError:  # the folder records no validation split, or none was held out
            return val_accuracy
        val_accuracy = float((clf.predict(val_images) == val_labels).mean())
    return val_accuracy


def save_metrics(run: RunEvaluation) -> None:
    """Write ``metrics.json`` and the headline figures into the folder's ``config.json``."""
    write_json(run.run_dir / METRICS, run.metrics)
    ModelFolder(run.run_dir).update(metrics=run.headline)


def augmentation_of(config: dict):
    """The run's augmentation if it used one, else None."""
    try:
        aug = TrainConfig(**config["train_config"]).augmentation
    except (KeyError, TypeError, ValueError):  # no train config (ensembles), or one from another version
        return None
    return aug if aug.active else None


def _read_history(run_dir: Path) -> list[dict]:
    try:
        history = json.loads((run_dir / "history.json").read_text())
        return history if isinstance(history, list) else []
    except (OSError, json.JSONDecodeError):
        return []
