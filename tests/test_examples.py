"""examples/ and notebooks/: the scripts and the walkthrough notebook, run as a user runs them, on tiny budgets.

The scripts run in this process (``runpy``, as ``python examples/NAME.py ARGS`` would), the notebook
in a Jupyter kernel through nbclient. Each writes into a temporary folder.
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run_example(name: str, args: list[str], monkeypatch, capsys) -> str:
    monkeypatch.setattr(sys, "argv", [name, *args])
    runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    return capsys.readouterr().out


@pytest.fixture
def in_tmp(monkeypatch, tmp_path, mnist_dir):
    """The examples find MNIST as a user's shell would: $MNIST_CNN_DATA; they write in the current folder."""
    monkeypatch.setenv("MNIST_CNN_DATA", str(mnist_dir))
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_predict_my_digit_reads_a_photo_like_file_and_mnist_digits(in_tmp, mnist, monkeypatch, capsys):
    Image.fromarray(255 - mnist.test_images[0].numpy()).resize((100, 100)).save("seven.png")  # dark on light
    out = run_example("predict_my_digit.py", ["seven.png"], monkeypatch, capsys)
    assert out.startswith("seven.png: 7 (p=")
    out = run_example("predict_my_digit.py", [], monkeypatch, capsys)
    assert [line.split(": ")[1][0] for line in out.splitlines()] == ["7", "2", "1", "0", "4"]


def test_read_a_number_reads_the_digits_it_wrote(in_tmp, monkeypatch, capsys):
    out = run_example("read_a_number.py", [], monkeypatch, capsys)
    assert out.startswith("read: 72104  (written: 72104)")
    assert len(out.splitlines()) == 6  # the number, then one line per digit


@pytest.mark.slow
def test_train_and_evaluate_trains_reports_and_saves(in_tmp, monkeypatch, capsys):
    out = run_example(
        "train_and_evaluate.py", ["--recipe", "fast", "--limit", "3000", "--out", "mine"], monkeypatch, capsys
    )
    accuracy = float(out.split("test accuracy: ")[1].split()[0])
    assert accuracy > 0.5  # 3,000 images, one epoch: about 0.9
    assert "macro avg" in out and "confusion matrix" in out
    matrix = out.split("confusion matrix (rows: true digit, columns: predicted):")[1].split("saved in")[0]
    counts = np.array(matrix.replace("[", " ").replace("]", " ").split(), int)
    assert counts.shape == (100,) and counts.sum() == 10_000  # every test image counted once
    assert (in_tmp / "mine" / "model.safetensors").is_file() and (in_tmp / "mine" / "config.json").is_file()


@pytest.mark.slow
def test_walkthrough_notebook_runs(in_tmp, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason="nbformat is not installed (pip install -e '.[test]')")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is not installed (pip install -e '.[test]')")
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        pytest.skip("no python3 Jupyter kernel (pip install ipykernel)")
    # The kernel must import this checkout's package, as the test process does.
    src = str(ROOT / "src")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    nb = nbformat.read(ROOT / "notebooks" / "walkthrough.ipynb", as_version=4)
    nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(in_tmp)}}
    ).execute()
    text = "\n".join(
        o.get("text", "") for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])
    )
    accuracy = float(text.split("test accuracy: ")[1].split()[0])
    assert accuracy > 0.9  # fast, three epochs on 4,000 images: about 0.97
    assert "macro avg" in text  # the classification report
    assert "my_digit.png: [7] written: 7" in text
    assert "read: 72104 written: 72104" in text
    images = [o for cell in nb.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    # The training digits, the loss and accuracy curves, the confusion matrix, the predictions, the number read.
    assert len(images) == 5
