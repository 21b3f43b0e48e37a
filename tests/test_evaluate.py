"""Evaluating measures and changes nothing; the report is a separate step that leaves matplotlib alone."""

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mnist_cnn.evaluate import HEADLINE, evaluate_run

DATA = Path(__file__).parent / "data"


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}  # fmt: skip


def test_evaluate_run_changes_nothing_in_the_folder(tmp_path, mnist):
    folder = shutil.copytree(DATA / "fast-width8-v1", tmp_path / "m")
    before = _snapshot(folder)
    measured = evaluate_run(folder, mnist)
    assert _snapshot(folder) == before
    assert 0.9 < measured.metrics["test_accuracy"] <= 1 and measured.metrics["test_images"] == 10_000
    assert set(measured.headline) == set(HEADLINE) and measured.metrics["temperature"] == 1.0


def test_the_report_draws_without_switching_the_matplotlib_backend(tmp_path):
    code = (
        "import matplotlib, numpy as np, sys\n"
        "matplotlib.use('svg')\n"
        "from pathlib import Path\n"
        "from mnist_cnn import report\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'report imports pyplot'\n"
        f"report.confusion(np.eye(10, dtype=int), list('0123456789'), Path({str(tmp_path / 'c.png')!r}))\n"
        "print(matplotlib.get_backend())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "svg"
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_evaluated_run_gets_a_model_card_the_hub_reads(trained_run):
    """README.md in the run folder: YAML front matter with the test accuracy, what it is, limits, the command."""
    import yaml

    result, metrics = trained_run
    card = (result.run_dir / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["library_name"] == "mnist-cnn" and meta["datasets"] == ["mnist"]
    reported = meta["model-index"][0]["results"][0]["metrics"][0]
    assert reported["type"] == "accuracy" and reported["value"] == pytest.approx(metrics["test_accuracy"], abs=1e-4)
    assert f"**{metrics['test_accuracy']:.2%}**" in body
    assert "## Limits" in body and "6,000 of MNIST's 60,000 training images, 2000 held out for validation" in body
    assert "mnist-cnn train --recipe basic" in body and "--name basic-small" in body
