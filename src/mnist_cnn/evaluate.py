"""Test-set evaluation of a saved model: metrics (scikit-learn), ``metrics.json`` and the report.

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

from . import report
from .calibrate import ECE_BINS, CalibrationError, calibrate_run, expected_calibration_error, validation_split
from .config import TrainConfig
from .data import MNIST
from .inference import CONFIG, Classifier, load_model, read_config, write_json
from .models import count_parameters

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    probs: np.ndarray  # (N, 10) class probabilities
    preds: np.ndarray  # (N,) predicted labels
    metrics: dict


def evaluate(
    clf: Classifier, images: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray, batch_size: int = 1000
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


def evaluate_run(
    run_dir: str | os.PathLike,
    data: MNIST,
    *,
    device: str = "cpu",
    seed: int = 0,
    tta: bool = False,
    runtime: str = "torch",
    calibrate: bool = True,
) -> dict:
    """Evaluate the model in ``run_dir`` on the test set; write metrics.json, report.html and figures.

    First (with ``calibrate``) fits the temperature on the run's validation split — a few seconds;
    never on the test set. Also records the headline metrics in the folder's config.json, so they
    travel with the model. With ``tta`` every prediction averages a few views of the image, and the
    validation accuracy is measured again with them, so whether TTA helps can be judged without
    the test set. ``runtime="onnxruntime"`` measures the exported ``model.onnx`` instead of the
    PyTorch weights.
    """
    run_dir = Path(run_dir)
    if calibrate:
        try:
            calibrate_run(run_dir, data, device=device)
        except CalibrationError as exc:
            log.warning("%s", exc)
            config = read_config(run_dir)
            config["calibration"] = {"temperature": None, "note": str(exc)}
            write_json(run_dir / CONFIG, config)
    clf = load_model(run_dir, device=device, runtime=runtime, tta=tta)
    n_params = count_parameters(clf.model if runtime == "torch" else load_model(run_dir).model)
    test_images, test_labels = data.test_images.numpy(), data.test_labels.numpy()
    result = evaluate(clf, test_images, test_labels)
    config = clf.config
    history = _read_history(run_dir)
    training = config.get("training", {})
    best = next((r for r in history if r["epoch"] == training.get("best_epoch")), None)
    val_accuracy = best.get("val_accuracy") if best else None
    if tta or val_accuracy is None:  # TTA changes what validation accuracy means; an ensemble has no history
        try:
            val_images, val_labels = validation_split(config, data)
        except CalibrationError:  # the folder records no validation split, or none was held out
            pass
        else:
            val_accuracy = float((clf.predict(val_images) == val_labels).mean())
    metrics = {
        "test_accuracy": result.metrics["test_accuracy"],
        "test_loss": result.metrics["test_loss"],
        "val_accuracy": val_accuracy,
        "best_epoch": training.get("best_epoch"),
        "train_seconds": training.get("train_seconds"),
        "tta": tta,
        "temperature": result.metrics["temperature"],
        "test_ece_uncalibrated": result.metrics["test_ece_uncalibrated"],
        "test_ece": result.metrics["test_ece"],
    }
    write_json(run_dir / "metrics.json", {**metrics, **result.metrics})
    config["metrics"] = metrics
    write_json(run_dir / CONFIG, config)

    figures_dir = run_dir / "figures"
    figures_dir.mkdir(exist_ok=True)
    train_images, train_labels = data.train_images.numpy(), data.train_labels.numpy()
    figures = [
        ("Sample training digits", report.sample_grid(train_images, train_labels, figures_dir / "samples.png", seed=seed)),
        ("Five random test images: actual vs. predicted", report.prediction_grid(test_images, test_labels, result.preds, figures_dir / "predictions.png", seed=seed)),
        ("Most confident mistakes", report.mistakes_grid(test_images, test_labels, result.probs, figures_dir / "mistakes.png")),
        ("Confusion matrix", report.confusion(np.array(result.metrics["confusion_matrix"]), clf.labels, figures_dir / "confusion.png")),
    ]  # fmt: skip
    aug = _augmentation(config)
    if aug is not None:
        figures.insert(1, ("Augmented training digits (top row: originals)", report.augmentation_grid(
            train_images, train_labels, aug, figures_dir / "augmentation.png", seed=seed)))  # fmt: skip
    if history:
        figures.insert(
            1,
            (
                "Loss and accuracy per epoch",
                report.curves(history, figures_dir / "curves.png", training.get("best_epoch")),
            ),
        )
    summary = {
        "architecture": f"{config['architecture']} ({n_params:,} parameters)",
        "runtime": runtime,
        "recipe": config.get("recipe") or "-",
        "epochs completed": training.get("epochs_completed", "-"),
        "checkpoint kept": f"epoch {training.get('best_epoch')} ({training.get('selection', '-')})",
        "training time": f"{training.get('train_seconds', 0):.1f} s on {training.get('device', '?')}, {training.get('threads', '?')} threads",
        "validation accuracy": f"{metrics['val_accuracy']:.4f}" if metrics["val_accuracy"] is not None else "-",
        "test accuracy": f"{metrics['test_accuracy']:.4f}",
        "test loss": f"{metrics['test_loss']:.4f}",
        "test images": f"{len(test_labels):,}",
        "test-time augmentation": f"yes ({len(clf.model.views)} views)" if tta else "no",
        "calibration": calibration_line(metrics),
    }
    report.write_html(
        run_dir / "report.html", f"mnist-cnn report: {run_dir.name}", summary,
        result.metrics["classification_report"], figures, result.metrics["misclassified"],
    )  # fmt: skip
    log.info(
        "test accuracy %.4f, test loss %.4f; report: %s",
        metrics["test_accuracy"],
        metrics["test_loss"],
        run_dir / "report.html",
    )
    return {**metrics, **result.metrics}


def _augmentation(config: dict):
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
