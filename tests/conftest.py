"""Shared fixtures. Tests never download: MNIST comes from $MNIST_CNN_DATA or ../shared/data/mnist."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _mnist_dir() -> Path | None:
    for candidate in (os.environ.get("MNIST_CNN_DATA"), ROOT.parent / "shared" / "data" / "mnist"):
        if candidate and (Path(candidate) / "train-images-idx3-ubyte.gz").is_file():
            return Path(candidate).resolve()
    return None


# A test that needs the session's trained model (or its exported copy) waits for a real training
# run, so it is slow whatever its own body costs; `make test-fast` (pytest -m "not slow") skips it.
NEEDS_TRAINING = {"trained_run", "exported_run"}


def pytest_collection_modifyitems(items):
    for item in items:
        if NEEDS_TRAINING & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _isolate(monkeypatch, tmp_path):
    """No test reads the user's cache or environment by accident, and none uses more than 2 threads."""
    monkeypatch.delenv("MNIST_CNN_DATA", raising=False)
    monkeypatch.setenv("MNIST_CNN_CACHE", str(tmp_path / "cache"))
    torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    found = _mnist_dir()
    if found is None:
        if os.environ.get("MNIST_CNN_REQUIRE_DATA"):
            pytest.fail("MNIST_CNN_REQUIRE_DATA is set but no MNIST folder was found (set MNIST_CNN_DATA)")
        pytest.skip("MNIST files not found: set MNIST_CNN_DATA to a folder holding them")
    return found


@pytest.fixture(scope="session")
def mnist(mnist_dir):
    from mnist_cnn.data import load_mnist

    return load_mnist(mnist_dir)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, mnist):
    """A real (short) training run on a subset: the basic model, 3 epochs on 6,000 images."""
    from mnist_cnn.config import TrainConfig
    from mnist_cnn.train import train_run

    run_dir = tmp_path_factory.mktemp("runs") / "basic-small"
    config = TrainConfig(model="basic", epochs=3, batch_size=32, limit=6000, val_split="2000", seed=1)
    result = train_run(config, mnist, run_dir, recipe="basic", device="cpu", progress=False)
    return result, evaluate_fully(run_dir, mnist)


def evaluate_fully(run_dir: Path, data, *, calibrate: bool = True, **options) -> dict:
    """The steps `mnist-cnn evaluate` takes: fit the temperature, measure, record the metrics, write the report and model card."""
    from mnist_cnn.calibrate import calibrate_if_possible
    from mnist_cnn.evaluate import evaluate_run, save_metrics
    from mnist_cnn.model_card import write_model_card
    from mnist_cnn.report import write_run_report

    if calibrate:
        calibrate_if_possible(run_dir, data)
    measured = evaluate_run(run_dir, data, **options)
    save_metrics(measured)
    write_run_report(measured, data)
    write_model_card(measured)
    return measured.metrics


def make_idx_folder(folder: Path, n_train: int = 60, n_test: int = 20, gz: bool = True, seed: int = 0) -> Path:
    """Write four small, valid IDX files (random digits) under MNIST's names."""
    from mnist_cnn.data import FILES, write_idx

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for key, array in arrays.items():
        write_idx(folder / (FILES[key].name + (".gz" if gz else "")), array)
    return folder


@pytest.fixture(scope="session")
def exported_run(tmp_path_factory, trained_run, mnist):
    """A copy of ``trained_run`` with model.onnx exported and verified on the test set (issue 5's tests)."""
    import shutil

    from mnist_cnn.export import export_onnx, verify_onnx

    folder = tmp_path_factory.mktemp("exported") / "basic-small"
    shutil.copytree(trained_run[0].run_dir, folder)
    export_onnx(folder)
    verify_onnx(folder, mnist.test_images.numpy())
    return folder
