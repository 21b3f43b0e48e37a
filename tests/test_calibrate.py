"""Temperature scaling: the ECE formula against a hand count, the fit recovers a known temperature,
a real run gets better calibrated on validation, and a run without validation is refused."""

import json

import numpy as np
import pytest
import torch

from mnist_cnn import create_model, load_model
from mnist_cnn.calibrate import (
    CalibrationError,
    calibrate_run,
    expected_calibration_error,
    fit_temperature,
    nll,
)
from mnist_cnn.inference import save_model


def test_ece_by_hand():
    # Confidences 0.9, 0.9 (one right) fall in bin (13/15, 14/15]; 0.58 (right) and 0.55 (wrong) in
    # (8/15, 9/15]; 0.7 (right) alone in (10/15, 11/15].
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.42, 0.58], [0.55, 0.45], [0.3, 0.7]])
    labels = np.array([0, 1, 1, 1, 1])
    expected = 2 / 5 * abs(0.5 - 0.9) + 2 / 5 * abs(0.5 - (0.58 + 0.55) / 2) + 1 / 5 * abs(1 - 0.7)
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)
    assert expected_calibration_error(np.eye(3), np.arange(3)) == 0.0  # sure and right: perfectly calibrated


def test_fit_recovers_a_known_temperature():
    gen = torch.Generator().manual_seed(0)
    true_logits = torch.randn(20000, 10, generator=gen) * 2
    labels = torch.multinomial(torch.softmax(true_logits, 1), 1, generator=gen).squeeze(1).numpy()
    overconfident = true_logits * 3  # a model 3 times too sure of itself
    t = fit_temperature(overconfident, labels)
    assert t == pytest.approx(3.0, rel=0.05)
    assert nll(overconfident, labels, t) < nll(overconfident, labels)


def test_calibrating_a_run_lowers_validation_nll_and_ece_and_is_used(trained_run, mnist, tmp_path):
    import shutil

    run = shutil.copytree(trained_run[0].run_dir, tmp_path / "run")
    record = calibrate_run(run, mnist)
    assert record["val_nll_after"] < record["val_nll_before"]
    assert record["val_ece_after"] < record["val_ece_before"]
    assert "2000 images" in record["fitted_on"]
    saved = json.loads((run / "config.json").read_text())["calibration"]
    assert saved["temperature"] == record["temperature"] != 1.0
    clf = load_model(run)
    images = mnist.test_images[:100].numpy()
    expected = torch.softmax(clf.logits(images) / record["temperature"], 1).numpy()
    np.testing.assert_allclose(clf.predict_proba(images), expected, rtol=1e-5, atol=1e-7)


def test_evaluate_reports_test_ece_before_and_after(trained_run):
    run = trained_run[0].run_dir
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 <= metrics["test_ece"] < 1 and 0 <= metrics["test_ece_uncalibrated"] < 1
    assert metrics["temperature"] == json.loads((run / "config.json").read_text())["calibration"]["temperature"]
    assert "temperature scaling" in (run / "report.html").read_text()


def test_a_run_without_validation_cannot_be_calibrated(tmp_path, mnist):
    folder = save_model(
        tmp_path / "noval",
        create_model("basic"),
        {"architecture": "basic", "train_config": {"val_split": "0", "seed": 0}},
    )
    with pytest.raises(CalibrationError, match="not possible.*without a validation split.*test set is never used"):
        calibrate_run(folder, mnist)
    assert "calibration" not in json.loads((folder / "config.json").read_text())
