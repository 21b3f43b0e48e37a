"""Training: a real short run reaches a floor accuracy; the kept checkpoint is the best on validation."""

import csv
import json

import numpy as np
import pytest
import torch

from mnist_cnn.callbacks import AfterEpoch
from mnist_cnn.config import RECIPES, TrainConfig, validation_of
from mnist_cnn.inference import to_model_input
from mnist_cnn.loop import fit
from mnist_cnn.models import create_model


def _subset(mnist, start, n):
    return to_model_input(mnist.train_images[start : start + n]), mnist.train_labels[start : start + n]


def test_short_real_run_reaches_floor_accuracy(trained_run):
    result, metrics = trained_run
    # basic, 3 epochs on 6,000 images: ~97% on the full test set; 96% is the floor.
    assert metrics["test_accuracy"] >= 0.96
    assert metrics["test_images"] == 10_000
    assert len(result.fit.history) == 3
    assert result.fit.history[-1]["train_loss"] < result.fit.history[0]["train_loss"]


def test_run_folder_holds_model_history_metrics_and_report(trained_run):
    result, metrics = trained_run
    run = result.run_dir
    for name in ("model.safetensors", "config.json", "history.csv", "history.json", "metrics.json", "report.html"):
        assert (run / name).is_file(), name
    for fig in ("samples", "curves", "predictions", "confusion", "mistakes"):
        assert (run / "figures" / f"{fig}.png").stat().st_size > 1000
    config = json.loads((run / "config.json").read_text())
    assert config["architecture"] == "basic"
    assert config["train_config"]["limit"] == 6000
    assert config["metrics"]["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert set(config["data"]["sha256"]) == {
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    }
    assert config["versions"]["torch"] == torch.__version__
    with open(run / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds"} <= set(rows[0])
    html = (run / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5
    assert f"{metrics['test_accuracy']:.4f}" in html
    assert "<h2>Hyper-parameters (train config)</h2>" in html and "<tr><th>batch_size</th><td>32</td></tr>" in html
    assert f"<tr><th>trained</th><td>{config['started']} to {config['created']}</td></tr>" in html


def test_the_curves_say_which_loss_is_which_and_label_a_lone_epoch(tmp_path):
    from mnist_cnn.report import curves, loss_names

    smoothed = {"label_smoothing": 0.1, "aug_rotate": 10}
    assert loss_names(smoothed) == (
        "training loss (with label smoothing 0.1, on augmented batches)",
        "validation loss (plain cross-entropy)",
    )
    assert loss_names({"label_smoothing": 0.0})[0] == "training loss"
    one = [{"epoch": 1, "train_loss": 0.61, "val_loss": 0.07, "train_accuracy": 0.9, "val_accuracy": 0.981}]
    path = curves(one, tmp_path / "curves.png", best_epoch=1, train_config=smoothed)
    assert path.stat().st_size > 1000
    steps = [{"step": s, "epoch": s / 50, "train_loss": 2 / s, "train_accuracy": 1 - 1 / s} for s in range(1, 51)]
    by_step = curves(one, tmp_path / "by-step.png", best_epoch=1, train_config=smoothed, steps=steps)
    assert by_step.stat().st_size > path.stat().st_size  # a line of 50 points, not one point


def test_metrics_agree_with_a_hand_computed_confusion_matrix(trained_run, mnist):
    from mnist_cnn import load_model

    result, metrics = trained_run
    preds = load_model(result.run_dir).predict(mnist.test_images.numpy())
    labels = mnist.test_labels.numpy()
    matrix = np.zeros((10, 10), dtype=int)
    for actual, predicted in zip(labels, preds, strict=True):
        matrix[actual, predicted] += 1
    assert metrics["confusion_matrix"] == matrix.tolist()
    assert metrics["test_accuracy"] == pytest.approx(np.trace(matrix) / matrix.sum())
    assert metrics["misclassified"] == [i for i in range(len(labels)) if preds[i] != labels[i]]
    recall_3 = matrix[3, 3] / matrix[3].sum()
    assert metrics["classification_report"]["3"]["recall"] == pytest.approx(recall_3)
    assert metrics["classification_report"]["3"]["support"] == matrix[3].sum()


@pytest.mark.slow
def test_kept_checkpoint_is_the_best_on_validation(mnist):
    # A learning rate far too high makes validation accuracy jump around, so the best epoch is
    # often not the last one; whichever it is, the model must come back holding its weights.
    train, val = _subset(mnist, 0, 1000), _subset(mnist, 50_000, 1000)
    peaked_early = []
    for seed in range(4):
        config = TrainConfig(model="dropout", epochs=6, batch_size=50, lr=0.03, seed=seed)
        torch.manual_seed(seed)
        model = create_model("dropout")
        result = fit(model, train, val, config, progress=False)
        accs = [row["val_accuracy"] for row in result.history]
        assert result.best_epoch == int(np.argmax(accs)) + 1  # first of equals: no evidence the later is better
        model.eval()
        with torch.no_grad():
            kept = (model(val[0]).argmax(1) == val[1]).float().mean().item()
        assert kept == pytest.approx(max(accs))
        peaked_early.append(result.best_epoch != len(accs))
    assert any(peaked_early), "no run peaked before its last epoch, so the test showed nothing"


@pytest.mark.slow
def test_same_seed_same_weights_and_ctrl_c_keeps_what_was_trained(mnist):
    train, val = _subset(mnist, 0, 600), _subset(mnist, 50_000, 300)
    config = TrainConfig(model="basic", epochs=3, batch_size=100, seed=7)

    def run(on_epoch=None):
        torch.manual_seed(7)
        model = create_model("basic")
        return model, fit(
            model, train, val, config, progress=False, callbacks=[AfterEpoch(on_epoch)] if on_epoch else ()
        )

    a, _ = run()
    b, _ = run()
    assert all(torch.equal(pa, pb) for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True))

    def interrupt(state):
        if len(state.history) == 2:
            raise KeyboardInterrupt

    c, result = run(interrupt)
    assert result.interrupted and len(result.history) == 2
    assert 1 <= result.best_epoch <= 2


def test_recipes_hold_the_seeds_settings():
    expected = {
        "basic": (10, 32, 5000),
        "dropout": (10, 32, 0.3),
        "three-conv": (5, 128, 5000),
        "deep": (30, 256, 5000),
    }
    for name, (epochs, batch, val) in expected.items():
        c = RECIPES[name].config
        assert (c.epochs, c.batch_size, c.val_split, c.model) == (epochs, batch, val, name)


@pytest.mark.parametrize("given, count_or_fraction", [("5000", 5000), (5000, 5000), ("0.3", 0.3), (0.3, 0.3), ("0", 0)])
def test_val_split_is_a_count_or_a_fraction_given_as_text_or_number(given, count_or_fraction):
    # The CLI passes text, and configs saved before val_split was a number hold "5000" or "0.3".
    config = TrainConfig(val_split=given)
    assert config.val_split == count_or_fraction and type(config.val_split) is type(count_or_fraction)
    assert TrainConfig(**config.to_dict()) == config
    assert validation_of({"train_config": {"val_split": given, "seed": 4}}) == (count_or_fraction, 4)
    assert validation_of({"validation": {"val_split": given, "seed": 4}}) == (count_or_fraction, 4)


@pytest.mark.parametrize("change,message", [
    ({"epochs": 0}, "epochs must be at least 1"),
    ({"model": "vgg"}, "unknown model 'vgg'"),
    ({"lr_schedule": "step"}, "unknown lr_schedule"),
    ({"val_split": "lots"}, "validation split"),
])  # fmt: skip
def test_invalid_config_is_refused_with_a_message(change, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**change)


def test_text_report_shows_every_class_and_the_matrix(trained_run):
    from mnist_cnn.evaluate import format_metrics

    _, metrics = trained_run
    text = format_metrics(metrics)
    lines = text.splitlines()
    assert lines[0].split() == ["precision", "recall", "f1-score", "support"]
    row3 = next(line.split() for line in lines if line.split()[:1] == ["3"])
    m = metrics["classification_report"]["3"]
    assert row3 == ["3", f"{m['precision']:.4f}", f"{m['recall']:.4f}", f"{m['f1-score']:.4f}", str(int(m["support"]))]
    matrix_rows = lines[lines.index("confusion matrix (rows: actual, columns: predicted)") + 2 :]
    assert [[int(v) for v in row.split()[1:]] for row in matrix_rows] == metrics["confusion_matrix"]
    assert f"{metrics['test_accuracy']:.4f}" in text


@pytest.mark.slow
def test_without_validation_an_interrupted_run_keeps_the_last_completed_epoch(mnist):
    train = _subset(mnist, 0, 400)  # 4 steps per epoch
    config = TrainConfig(model="basic", epochs=3, batch_size=100, seed=2)
    snapshots, calls = [], []

    def stop_midway_through_epoch_2(module, inputs):
        calls.append(1)
        if len(calls) == 7:  # epoch 2, third step: two of its steps have already changed the weights
            raise KeyboardInterrupt

    torch.manual_seed(2)
    model = create_model("basic")
    model.register_forward_pre_hook(stop_midway_through_epoch_2)
    on_epoch = AfterEpoch(lambda state: snapshots.append({k: v.clone() for k, v in model.state_dict().items()}))
    result = fit(model, train, None, config, progress=False, callbacks=[on_epoch])
    assert result.interrupted and result.best_epoch == 1 and len(snapshots) == 1
    assert all(torch.equal(v, snapshots[0][k]) for k, v in model.state_dict().items())
