"""The model that ships with the package: it loads with no folder, reads MNIST as the docs say, and
predict/read/serve use it when no RUN is named. These tests fail (never skip) when the installation
lacks its weights: make them with ``make default-model RUN=...`` and commit them."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import mnist_cnn
from mnist_cnn import cli as cli_module
from mnist_cnn import default_model, inference
from mnist_cnn.errors import MnistCnnError, ModelFolderError
from mnist_cnn.folder import read_config
from test_cli import cli
from test_serve_process import serve_load

ROOT = Path(__file__).resolve().parents[1]
ABSOLUTE_PATH = re.compile(r"(?:^|[\s=(:])(?:/|[A-Za-z]:\\)[\w.-]+[/\\]")  # a folder of the machine that made it


def strings(value):
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in strings(v)]
    return [value] if isinstance(value, str) else []


def test_the_default_model_loads_with_no_path():
    folder = mnist_cnn.default_model_dir()
    assert folder == Path(mnist_cnn.__file__).resolve().parent / "pretrained"
    clf = mnist_cnn.load_model()
    config = json.loads((folder / "config.json").read_text())
    assert clf.config == config and clf.predict(np.zeros((2, 28, 28), np.uint8)).shape == (2,)
    assert (folder / "model.safetensors").stat().st_size < default_model.MAX_BYTES
    made = config["default_model"]
    assert made["name"] and config["recipe"] and made["trained_at_commit"]
    *trained, gated = made["training_commands"]
    assert trained[-1].startswith(f"mnist-cnn train --recipe {config['recipe']} ")
    assert gated == f"mnist-cnn gate runs/{made['name']}" and clf.gate is not None  # "is this a digit?"
    leaked = [s for s in strings(config) if ABSOLUTE_PATH.search(s)]
    assert not leaked, f"the shipped config.json names folders of the machine that made it: {leaked}"


def test_its_test_accuracy_is_what_the_docs_say(mnist):
    clf = mnist_cnn.load_model()
    labels = mnist.test_labels.numpy()
    wrong = int((clf.predict(mnist.test_images.numpy()) != labels).sum())
    accuracy = 1 - wrong / len(labels)
    config = clf.config
    row = f"| `{config['default_model']['name']}` | `{config['recipe']}` | **{accuracy:.2%}** | {wrong} of 10,000 |"
    readme = (ROOT / "README.md").read_text()
    quoted = [line for line in readme.splitlines() if line.startswith("| `") and " of 10,000 |" in line]
    assert row in readme, f"README.md quotes {quoted}; a fresh evaluation gives {row}"
    card = (mnist_cnn.default_model_dir() / default_model.CARD).read_text()
    assert f"**{accuracy:.2%}** ({wrong} wrong)" in card
    assert accuracy >= 0.996, f"the default model reads {accuracy:.2%} of the MNIST test digits; it must read 99.6%"


def test_a_missing_default_model_is_one_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(inference, "DEFAULT_MODEL_DIR", tmp_path / "pretrained")
    with pytest.raises(ModelFolderError, match="the default model is missing from this installation"):
        mnist_cnn.load_model()
    image = tmp_path / "seven.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    for argv in (["predict", str(image)], ["read", str(image)], ["serve"]):
        assert cli_module.main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: the default model is missing") and err.count("\n") == 1, err


def test_predict_and_read_use_the_default_model_when_no_run_is_named(tmp_path, mnist):
    from mnist_cnn.synthetic import render_digit

    x, y = mnist.test_images.numpy(), mnist.test_labels.numpy()
    rng = np.random.default_rng(5)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"d{i}.jpg")
        render_digit(x[i], rng).save(paths[-1])
    using = f"using the default model {default_model.describe(mnist_cnn.load_model().config)}"
    r = cli("predict", *paths, "--json")
    assert r.returncode == 0 and using in r.stderr, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["file"] for row in rows] == list(map(str, paths))
    assert [row["label"] for row in rows] == list(y[:3])
    r = cli("read", paths[0])
    assert r.returncode == 0 and using in r.stderr
    assert r.stdout.startswith(f"{paths[0]}: {y[0]}  (confidence per digit: ")


def test_serve_uses_the_default_model_when_no_run_is_named():
    port = serve_load.free_port()
    cmd = [sys.executable, "-m", "mnist_cnn", "serve", "--port", str(port), "--no-access-log"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        serve_load.wait_ready(f"http://127.0.0.1:{port}", timeout=120, proc=proc)
    except RuntimeError:
        proc.kill()
        raise AssertionError(f"server did not start: {proc.communicate()[1][-2000:]}") from None
    proc.terminate()
    _, stderr = proc.communicate(timeout=30)
    described = default_model.describe(mnist_cnn.load_model().config)
    assert f"serving the default model {described} (onnxruntime runtime)" in stderr, stderr  # it ships model.onnx
    assert f" on http://127.0.0.1:{port}/" in stderr, stderr


@pytest.fixture
def small_run(tmp_path):
    """A run folder as `mnist-cnn train --recipe fast --epochs 2 --seed 3` writes it, with untrained weights."""
    from mnist_cnn.inference import save_model
    from mnist_cnn.models import create_model

    torch.manual_seed(0)
    train_config = mnist_cnn.get_recipe("fast").config.replace(epochs=2, seed=3).to_dict()
    config = {"architecture": "fast-valid", "recipe": "fast", "train_config": train_config,
              "data": {"source": str(tmp_path / "mnist"), "sha256": {"t10k-images-idx3-ubyte": "0f"}},
              "git": {"commit": "0123abc", "dirty": False}, "training": {"deterministic": True}}  # fmt: skip
    return save_model(tmp_path / "runs" / "fast-small", create_model("fast-valid"), config)


def test_make_default_model_ships_what_inference_needs(small_run, mnist, mnist_dir, tmp_path, monkeypatch, capsys):
    out = tmp_path / "pretrained"
    config = default_model.make_default_model(small_run, mnist, out)
    assert {p.name for p in out.iterdir()} == {"model.safetensors", "config.json", "README.md", "model.onnx"}
    assert json.loads((out / "config.json").read_text()) == config
    assert config["onnx"]["verified"]["images"] == 10_000 and config["onnx"]["verified"]["labels_disagree"] == 0
    assert "`model.onnx`, the same network and gate" in (out / "README.md").read_text()
    assert not [s for s in strings(config) if str(tmp_path) in s or ABSOLUTE_PATH.search(s)]  # no data folder
    assert config["data"]["sha256"] == {"t10k-images-idx3-ubyte": "0f"}
    made = config["default_model"]
    assert made["name"] == "fast-small" and made["trained_at_commit"] == "0123abc"
    assert made["training_commands"] == [
        "mnist-cnn train --recipe fast --epochs 2 --seed 3 --deterministic --runs-dir runs --name fast-small"
    ]
    images = mnist.test_images.numpy()
    shipped, original = mnist_cnn.load_model(out), mnist_cnn.load_model(small_run)
    assert np.array_equal(shipped.predict_proba(images[:200]), original.predict_proba(images[:200]))
    wrong = int((original.predict(images) != mnist.test_labels.numpy()).sum())
    m = config["metrics"]
    assert (m["test_errors"], m["test_images"], m["test_accuracy"]) == (wrong, 10_000, 1 - wrong / 10_000)
    row = f"| `fast-small` | `fast` | **{1 - wrong / 10_000:.2%}** | {wrong} of 10,000 |"
    assert default_model.docs_row(config) == row
    assert f"**{1 - wrong / 10_000:.2%}** ({wrong} wrong)" in (out / "README.md").read_text()
    # With no RUN it evaluates the folder afresh and prints the row README.md quotes.
    assert default_model.main(["--out", str(out), "--data-dir", str(mnist_dir)]) == 0
    assert capsys.readouterr().out == row + "\n"

    monkeypatch.setattr(default_model, "MAX_BYTES", 1000)
    with pytest.raises(MnistCnnError, match="must stay under 1,000"):
        default_model.make_default_model(small_run, mnist, tmp_path / "too-big")


def test_the_default_model_ships_model_onnx_that_matches_its_weights():
    folder = mnist_cnn.default_model_dir()
    onnx_clf = mnist_cnn.load_model(runtime="onnxruntime")  # checks the file's and the weights' SHA-256 and the gate
    assert onnx_clf.has_gate and read_config(folder)["onnx"]["verified"]["labels_disagree"] == 0


def test_serve_picks_onnxruntime_only_where_the_folder_and_the_installation_have_it(small_run, monkeypatch):
    from mnist_cnn import classifier
    from mnist_cnn.cli.serve import default_runtime

    assert default_runtime(mnist_cnn.default_model_dir()) == (None, "")  # the settings' default: onnxruntime
    runtime, note = default_runtime(small_run)  # a run never exported
    assert runtime == "torch" and "no model.onnx" in note

    def missing():
        raise MnistCnnError("the onnxruntime runtime needs the 'onnx' extra")

    monkeypatch.setattr(classifier, "require_onnx", missing)
    runtime, note = default_runtime(mnist_cnn.default_model_dir())
    assert runtime == "torch" and "onnxruntime is not installed (pip install 'mnist-cnn[onnx]')" in note


def test_without_the_onnx_extra_the_default_model_ships_without_model_onnx(small_run, mnist, tmp_path, monkeypatch):
    from mnist_cnn import classifier

    def missing():
        raise MnistCnnError("the onnxruntime runtime needs the 'onnx' extra")

    monkeypatch.setattr(classifier, "require_onnx", missing)
    out = tmp_path / "pretrained"
    config = default_model.make_default_model(small_run, mnist, out)
    assert "onnx" not in config and not (out / "model.onnx").exists()
    assert "none (the onnx extra was not installed)" in (out / "README.md").read_text()


def test_training_commands_of_a_fine_tuned_run_start_with_its_base(small_run):
    train_config = {**mnist_cnn.get_recipe("reader").config.to_dict(), "init": str(small_run), "seed": 4}
    config = {"recipe": "reader", "train_config": train_config}
    base, tuned = default_model.training_commands(config, "reader-4")
    assert base == "mnist-cnn train --recipe fast --epochs 2 --seed 3 --deterministic --runs-dir runs --name fast-small"
    assert tuned == "mnist-cnn train --recipe reader --init runs/fast-small --seed 4 --runs-dir runs --name reader-4"


def test_a_run_fine_tuned_from_the_default_model_keeps_its_whole_chain():
    pretrained = Path(mnist_cnn.__file__).parent / "pretrained"
    shipped = read_config(pretrained)["default_model"]
    train_config = {**mnist_cnn.get_recipe("robust").config.to_dict(), "init": str(pretrained), "pen_digits": 5}
    commands = default_model.training_commands({"recipe": "robust", "train_config": train_config}, "next")
    assert commands[:-1] == shipped["training_commands"]
    assert (
        commands[-1]
        == f"mnist-cnn train --recipe robust --init runs/{shipped['name']} --pen-digits 5 --runs-dir runs --name next"
    )
