"""Figures and the self-contained HTML report of an evaluated run.

Figures are drawn on matplotlib's :class:`~matplotlib.figure.Figure` objects, never through
pyplot, so making a report neither needs a display nor changes the backend of a notebook.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from sklearn.metrics import ConfusionMatrixDisplay

from .augment import augment
from .data import MNIST
from .evaluate import RunEvaluation, augmentation_of, calibration_line
from .folder import atomic_write
from .train import read_steps

log = logging.getLogger(__name__)

REPORT = "report.html"


def _save(fig: Figure, path: Path) -> Path:
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100, bbox_inches="tight")
    return atomic_write(path, png.getvalue())


def _digit_grid(images: np.ndarray, titles: list[str], path: Path, cols: int, colors: list[str] | None = None) -> Path:
    rows = max(1, -(-len(images) // cols))
    fig = Figure(figsize=(1.6 * cols, 1.8 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < len(images):
            ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
            ax.set_title(titles[i], fontsize=9, color=colors[i] if colors else "black")
    return _save(fig, path)


def sample_grid(images: np.ndarray, labels: np.ndarray, path: Path, n: int = 32, seed: int = 0) -> Path:
    """A grid of ``n`` randomly chosen digits, each titled with its label."""
    idx = np.random.default_rng(seed).choice(len(images), size=min(n, len(images)), replace=False)
    return _digit_grid(images[idx], [f"label {labels[i]}" for i in idx], path, cols=8)


def augmentation_grid(images: np.ndarray, labels: np.ndarray, aug, path: Path, n: int = 8, seed: int = 0) -> Path:
    """``n`` training digits (top row) and three random augmentations of each below them."""
    idx = np.random.default_rng(seed).choice(len(images), size=min(n, len(images)), replace=False)
    x = torch.as_tensor(images[idx], dtype=torch.float32)[:, None]
    gen = torch.Generator().manual_seed(seed)
    rows = [x] + [augment(x, aug, gen).clamp(0, 255) for _ in range(3)]
    grid = torch.cat(rows)[:, 0].round().to(torch.uint8).numpy()
    titles = [f"label {labels[i]}" for i in idx] + ["augmented"] * (3 * len(idx))
    return _digit_grid(grid, titles, path, cols=len(idx))


def prediction_grid(images, labels, preds, path: Path, n: int = 5, seed: int = 0) -> Path:
    """``n`` random test images with actual vs. predicted labels (red where wrong)."""
    idx = np.random.default_rng(seed).choice(len(images), size=min(n, len(images)), replace=False)
    titles = [f"#{i}\nactual {labels[i]}, pred {preds[i]}" for i in idx]
    colors = ["green" if labels[i] == preds[i] else "red" for i in idx]
    return _digit_grid(images[idx], titles, path, cols=len(idx), colors=colors)


def mistakes_grid(images, labels, probs, path: Path, n: int = 16) -> Path:
    """The ``n`` mistakes the model was most sure of, most confident first."""
    preds = probs.argmax(1)
    wrong = np.flatnonzero(preds != labels)
    order = wrong[np.argsort(-probs[wrong, preds[wrong]], kind="stable")][:n]
    titles = [f"#{i}: {labels[i]} as {preds[i]}\np={probs[i, preds[i]]:.3f}" for i in order]
    if len(order) == 0:
        fig = Figure(figsize=(4, 1))
        ax = fig.subplots()
        ax.axis("off")
        ax.text(0.5, 0.5, "no mistakes", ha="center", va="center")
        return _save(fig, path)
    return _digit_grid(images[order], titles, path, cols=8)


def loss_names(train_config: dict | None) -> tuple[str, str]:
    """How the two loss curves were computed, so they are not read as the same quantity."""
    tc = train_config or {}
    parts = ["on augmented batches"] if tc.get("aug_rotate") or tc.get("aug_translate") or tc.get("aug_scale") else []
    if tc.get("label_smoothing"):
        parts.insert(0, f"with label smoothing {tc['label_smoothing']}")
    train = "training loss" + (f" ({', '.join(parts)})" if parts else "")
    return train, "validation loss (plain cross-entropy)"


SHORT_RUN = 3  # epochs: a run this short is drawn by steps (StepCurve's points), not by its one or two epochs


def _stretch(steps: list[dict]) -> float:
    """The fraction of an epoch between two of StepCurve's points."""
    return steps[1]["epoch"] - steps[0]["epoch"] if len(steps) > 1 else steps[0]["epoch"]


def curves(history: list[dict], path: Path, best_epoch: int | None = None, train_config: dict | None = None,
           steps: list[dict] | None = None) -> Path:  # fmt: skip
    """Loss and accuracy per epoch, training and validation. A run of under three epochs with ``steps`` (the
    training figures within its epochs) draws training as a line over those, at fractions of an epoch; with one
    or two epochs, each per-epoch point is labelled with its value (a line needs more points)."""
    fig = Figure(figsize=(11, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [row["epoch"] for row in history]
    by_step = bool(steps) and len(history) < SHORT_RUN
    train_loss, val_loss = loss_names(train_config)
    names = {"loss": (train_loss, val_loss), "accuracy": ("training accuracy", "validation accuracy")}
    for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
        for prefix, marker, name in (("train", "o-", names[key][0]), ("val", "s-", names[key][1])):
            if prefix == "train" and by_step:
                ax.plot([p["epoch"] for p in steps], [p[f"train_{key}"] for p in steps], "-", lw=1.2, label=name)
                continue
            if not history or f"{prefix}_{key}" not in history[0]:
                continue
            values = [r[f"{prefix}_{key}"] for r in history]
            ax.plot(epochs, values, marker, label=name)
            if len(values) <= 2:
                for x, v in zip(epochs, values, strict=True):
                    ax.annotate(f"{v:.4f}", (x, v), textcoords="offset points", xytext=(6, 4), fontsize=8)
        if best_epoch:
            ax.axvline(best_epoch, color="gray", ls="--", lw=1, label=f"kept: epoch {best_epoch}")
        ax.set_xlabel(f"epoch (training: a point every {_stretch(steps):.0%} of an epoch)" if by_step else "epoch")
        ax.set_xticks(([0] if by_step else []) + epochs if len(epochs) <= 12 else ax.get_xticks())
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax_loss.set_title("Loss")
    ax_acc.set_title("Accuracy")
    return _save(fig, path)


def confusion(matrix: np.ndarray, labels: list[str], path: Path) -> Path:
    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
    ConfusionMatrixDisplay(matrix, display_labels=labels).plot(ax=ax, cmap="Blues", colorbar=True, values_format="d")
    ax.set_title("Confusion matrix (test set)")
    return _save(fig, path)


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _table(items: dict) -> str:
    return "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in items.items())


def write_html(
    path: Path, title: str, summary: dict, class_report: dict, figures: list[tuple[str, Path]], misclassified: list[int],
    settings: dict | None = None,
) -> Path:  # fmt: skip
    """One HTML file with every figure embedded, so it can be mailed or opened anywhere; ``settings`` (the
    training run's hyper-parameters) get a table of their own."""
    rows = _table(summary)
    hyper = f"<h2>Hyper-parameters (train config)</h2><table>{_table(settings)}</table>" if settings else ""
    per_class = "".join(
        f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{m[key]:.4f}</td>" for key in ("precision", "recall", "f1-score"))
        + f"<td>{int(m['support'])}</td></tr>"
        for name, m in class_report.items() if isinstance(m, dict)
    )  # fmt: skip
    figs = "".join(f"<h2>{html.escape(caption)}</h2>{_img(p, caption)}" for caption, p in figures)
    shown = ", ".join(map(str, misclassified[:200])) + (" ..." if len(misclassified) > 200 else "")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 10px;text-align:right}}
th{{text-align:left}}img{{max-width:100%}}</style></head><body>
<h1>{html.escape(title)}</h1>
<table>{rows}</table>
{hyper}
<h2>Classification report (test set)</h2>
<table><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>{per_class}</table>
{figs}
<h2>Misclassified test images ({len(misclassified)})</h2><p>Indices into the test set: {shown}</p>
</body></html>
"""
    return atomic_write(path, page)


def write_run_report(run: RunEvaluation, data: MNIST, *, seed: int = 0) -> Path:
    """Draw the run's figures into ``figures/`` and write ``report.html`` with them; return its path.

    ``seed`` chooses which digits the sample and prediction grids show.
    """
    figures_dir = run.run_dir / "figures"
    figures_dir.mkdir(exist_ok=True)
    path = write_html(
        run.run_dir / REPORT, f"mnist-cnn report: {run.run_dir.name}", _summary(run, len(data.test_labels)),
        run.metrics["classification_report"], _figures(run, data, figures_dir, seed), run.metrics["misclassified"],
        run.config.get("train_config"),
    )  # fmt: skip
    log.info("report: %s", path)
    return path


def _figures(run: RunEvaluation, data: MNIST, folder: Path, seed: int) -> list[tuple[str, Path]]:
    train_images, train_labels = data.train_images.numpy(), data.train_labels.numpy()
    test_images, test_labels = data.test_images.numpy(), data.test_labels.numpy()
    result = run.evaluation
    best_epoch = run.config.get("training", {}).get("best_epoch")
    aug = augmentation_of(run.config)
    figures = [
        ("Sample training digits", sample_grid(train_images, train_labels, folder / "samples.png", seed=seed)),
        *([("Loss and accuracy per epoch", curves(run.history, folder / "curves.png", best_epoch,
                                                   run.config.get("train_config"), read_steps(run.run_dir)))]
          if run.history else []),
        *([("Augmented training digits (top row: originals)", augmentation_grid(
            train_images, train_labels, aug, folder / "augmentation.png", seed=seed))] if aug is not None else []),
        ("Five random test images: actual vs. predicted", prediction_grid(test_images, test_labels, result.preds, folder / "predictions.png", seed=seed)),
        ("Most confident mistakes", mistakes_grid(test_images, test_labels, result.probs, folder / "mistakes.png")),
        ("Confusion matrix", confusion(np.array(run.metrics["confusion_matrix"]), run.labels, folder / "confusion.png")),
    ]  # fmt: skip
    return figures


def _summary(run: RunEvaluation, test_images: int) -> dict:
    training, metrics = run.config.get("training", {}), run.metrics
    return {
        "architecture": f"{run.config['architecture']} ({run.parameters:,} parameters)",
        "runtime": run.runtime,
        "recipe": run.config.get("recipe") or "-",
        "trained": f"{run.config.get('started', '?')} to {run.config.get('created', '?')}",
        "epochs completed": training.get("epochs_completed", "-"),
        "checkpoint kept": f"epoch {training.get('best_epoch')} ({training.get('selection', '-')})",
        "training time": f"{training.get('train_seconds', 0):.1f} s on {training.get('device', '?')}, {training.get('threads', '?')} threads",
        "validation accuracy": f"{metrics['val_accuracy']:.4f}" if metrics["val_accuracy"] is not None else "-",
        "test accuracy": f"{metrics['test_accuracy']:.4f}",
        "test loss": f"{metrics['test_loss']:.4f}",
        "test images": f"{test_images:,}",
        "test-time augmentation": f"yes ({run.tta_views} views)" if run.tta_views else "no",
        "calibration": calibration_line(metrics),
    }  # fmt: skip
