"""The digit gate ("is this a digit at all?"): fitted and saved in a model folder, loaded with it, and
what predict and the service answer when it says no."""

import json

import numpy as np
import pytest
import torch

import mnist_cnn
from mnist_cnn.classifier import features_and_logits
from mnist_cnn.cli.images import _prediction_row
from mnist_cnn.errors import ModelFolderError
from mnist_cnn.folder import GATE, ModelFolder
from mnist_cnn.gate import GATE_REFUSES, DigitGate, fit_run_gate
from mnist_cnn.serve.service import answer_rows, prediction
from test_cli import cli
from test_default_model import small_run  # noqa: F401 (a fixture)
from test_serve import _ready

RECORD = {"threshold": 0.5, "fitted_on": "400 training digits, 300 generated not-digits",
          "validation_digits_refused": 0.005, "held_out_not_digits_refused": 0.9}  # fmt: skip


def _random_gate(run) -> DigitGate:
    clf = mnist_cnn.load_model(run)
    feats, _ = features_and_logits(clf.model, torch.zeros(1, 1, 28, 28))
    torch.manual_seed(0)
    return DigitGate(feats.shape[1])


def test_a_gate_is_fitted_on_training_digits_and_refuses_what_its_record_says(small_run, mnist):  # noqa: F811
    clf = mnist_cnn.load_model(small_run)
    gate, record = fit_run_gate(clf, mnist, digits=400, not_digits=300, held_out=100)
    assert abs(record["validation_digits_refused"] - GATE_REFUSES) < 0.002
    assert record["fitted_on"].startswith("400 training digits")
    ModelFolder(small_run).save_gate(gate.state_dict(), record)

    gated = mnist_cnn.load_model(small_run)
    assert gated.gate is not None and gated.gate_threshold == record["threshold"]
    val = mnist.train_images.numpy()[:300]
    probs, passes = gated.frame_answers(val)
    assert np.array_equal(probs, gated.frame_proba(val)) and passes.dtype == bool and passes.shape == (300,)
    assert mnist_cnn.load_model(small_run, runtime="torch", tta=True).frame_answers(val)[1].tolist() == passes.tolist()
    plain, everything = clf.frame_answers(val)  # no gate: every frame passes
    assert everything.all() and np.array_equal(plain, probs)


def test_a_damaged_or_stale_gate_is_one_clear_error(small_run):  # noqa: F811
    folder, state = ModelFolder(small_run), _random_gate(small_run).state_dict()
    folder.save_gate(state, RECORD)
    assert mnist_cnn.load_model(small_run).gate is not None
    path = small_run / GATE
    path.write_bytes(path.read_bytes()[:-8] + b"damaged!")
    with pytest.raises(ModelFolderError, match="damaged or was replaced.*mnist-cnn gate"):
        mnist_cnn.load_model(small_run)
    folder.save_gate(state, RECORD)
    config = json.loads((small_run / "config.json").read_text())
    config["digit_gate"]["model_weights_sha256"] = "0" * 64
    (small_run / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFolderError, match="fitted to other weights"):
        mnist_cnn.load_model(small_run)


def test_what_the_gate_refuses_is_not_a_digit_but_keeps_its_guess():
    probs = np.full(10, 0.01)
    probs[7] = 0.91
    row, text = _prediction_row(mnist_cnn.load_model(), "x.png", probs, False, 0.5)
    assert (row["label"], row["uncertain"], row["not_a_digit"]) == (7, False, True)
    assert text == "x.png: not sure — is this a digit? best guess 7 (p=0.910)"
    row, text = _prediction_row(mnist_cnn.load_model(), "x.png", probs, True, 0.5)
    assert (row["uncertain"], row["not_a_digit"], text) == (False, False, "x.png: 7 (p=0.910)")
    answer = prediction(probs, np.zeros((28, 28)), 0.5, looks_like_digit=False)
    assert (answer["label"], answer["uncertain"], answer["confident"], answer["not_a_digit"]) == (7, False, True, True)


def test_the_service_batches_the_gate_with_the_probabilities():
    clf = mnist_cnn.load_model()
    frames = np.zeros((3, 28, 28), np.float32)
    frames[1, 6:22, 13:15] = 1.0  # a 1
    rows = answer_rows(clf, frames)
    probs, passes = clf.frame_answers(frames)
    assert rows.shape == (3, 11) and np.allclose(rows[:, :10], probs) and rows[:, 10].tolist() == passes.tolist()


def test_the_gate_command_refuses_nonsense_sizes(small_run):  # noqa: F811
    r = cli("gate", small_run, "--digits", "5")
    assert r.returncode == 2 and "--digits must be at least 100, got 5" in r.stderr


def test_the_default_model_ships_its_run_s_gate(small_run, mnist, tmp_path):  # noqa: F811
    from mnist_cnn import default_model

    out = tmp_path / "pretrained"
    (out).mkdir()
    (out / GATE).write_bytes(b"an old gate")
    default_model.make_default_model(small_run, mnist, out)  # a run with no gate: the old one goes
    assert not (out / GATE).exists() and mnist_cnn.load_model(out).gate is None

    ModelFolder(small_run).save_gate(_random_gate(small_run).state_dict(), RECORD)
    config = default_model.make_default_model(small_run, mnist, out)
    assert config["default_model"]["training_commands"][-1] == "mnist-cnn gate runs/fast-small"
    assert (out / GATE).read_bytes() == (small_run / GATE).read_bytes()
    frames = mnist.test_images.numpy()[:100]
    shipped, original = mnist_cnn.load_model(out), mnist_cnn.load_model(small_run)
    assert np.array_equal(shipped.frame_answers(frames)[1], original.frame_answers(frames)[1])
    shipped_gate, original_gate = shipped.gate.state_dict(), original.gate.state_dict()
    assert shipped_gate.keys() == original_gate.keys()
    assert all(torch.equal(shipped_gate[k], original_gate[k]) for k in shipped_gate)


def test_an_exported_graph_carries_the_gate_and_a_stale_one_says_export_again(small_run, mnist):  # noqa: F811
    pytest.importorskip("onnxruntime")
    from mnist_cnn.export import export_onnx

    gate, record = fit_run_gate(mnist_cnn.load_model(small_run), mnist, digits=300, not_digits=200, held_out=50)
    ModelFolder(small_run).save_gate(gate.state_dict(), record)
    export_onnx(small_run)
    frames = mnist.test_images.numpy()[:200].copy()
    frames[:20] = 255 - frames[:20]  # some that the gate may refuse
    torch_probs, torch_passes = mnist_cnn.load_model(small_run).frame_answers(frames)
    onnx = mnist_cnn.load_model(small_run, runtime="onnxruntime")
    onnx_probs, onnx_passes = onnx.frame_answers(frames)
    assert onnx.has_gate and np.allclose(onnx_probs, torch_probs, atol=1e-5)
    assert np.array_equal(onnx_passes, torch_passes)
    assert np.allclose(onnx.frame_proba(frames), onnx_probs)  # the logits are still the first output

    state = {k: v + 0.01 if k == "linear.bias" else v for k, v in gate.state_dict().items()}
    ModelFolder(small_run).save_gate(state, record)  # fitted again after the export
    with pytest.raises(ModelFolderError, match="exported before the folder's digit gate.*mnist-cnn export"):
        mnist_cnn.load_model(small_run, runtime="onnxruntime")


def test_the_service_says_not_a_digit_when_the_gate_says_no_and_describes_the_gate(small_run, mnist):  # noqa: F811
    from fastapi.testclient import TestClient

    from mnist_cnn.serve import Settings, create_app

    ModelFolder(small_run).save_gate(_random_gate(small_run).state_dict(), {**RECORD, "threshold": 1.5})
    pixels = mnist.test_images[0].tolist()
    with TestClient(create_app(small_run, Settings(runtime="torch"))) as client:
        _ready(client)
        info = client.get("/v1/model").json()
        answer = client.post("/v1/predict", json={"pixels": pixels, "min_confidence": 0}).json()
    assert info["digit_gate"] == RECORD | {"threshold": 1.5}
    assert answer["uncertain"] is False and answer["not_a_digit"] is True and 0 <= answer["label"] <= 9
