"""ONNX export: ONNX Runtime reproduces PyTorch on the test set, for any batch size and every architecture."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import mnist_cnn
from mnist_cnn import ModelFolderError, create_model, list_models, load_model
from mnist_cnn.export import ExportError, export_onnx, verify_onnx
from mnist_cnn.folder import ModelFolder, read_config
from mnist_cnn.inference import save_model
from mnist_cnn.runtime import available_cores


def test_exported_model_matches_pytorch_on_the_test_set(exported_run, mnist):
    config = json.loads((exported_run / "config.json").read_text())
    verified = config["onnx"]["verified"]
    assert (exported_run / "model.onnx").is_file()
    assert verified["images"] == 10_000 and verified["max_abs_logit_diff"] <= 1e-4
    assert verified["labels_disagree"] == 0
    # An independent check of what verify_onnx recorded.
    images = mnist.test_images.numpy()
    torch_probs = load_model(exported_run).predict_proba(images)
    onnx_probs = load_model(exported_run, runtime="onnxruntime").predict_proba(images)
    assert np.abs(torch_probs - onnx_probs).max() <= 1e-5
    assert (onnx_probs.argmax(1) == mnist.test_labels.numpy()).mean() == pytest.approx(
        config["metrics"]["test_accuracy"]
    )


@pytest.mark.parametrize("batch", [1, 7, 1000, 1001])
def test_the_batch_dimension_is_dynamic(exported_run, mnist, batch):
    images = mnist.test_images[:batch].numpy()
    clf = load_model(exported_run, runtime="onnxruntime")
    probs = clf.predict_proba(images, batch_size=1000)
    assert probs.shape == (batch, 10)
    np.testing.assert_allclose(probs, load_model(exported_run).predict_proba(images), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_architecture_exports(tmp_path, name):
    torch.manual_seed(0)
    folder = save_model(tmp_path / name, create_model(name), {"architecture": name})
    export_onnx(folder)
    images = np.random.default_rng(0).integers(0, 256, (64, 28, 28), dtype=np.uint8)
    assert verify_onnx(folder, images) <= 1e-4


def test_load_model_gives_onnx_runtime_the_threads_asked_for(exported_run):
    assert load_model(exported_run, runtime="onnxruntime", threads=3).threads == 3
    assert load_model(exported_run, runtime="onnxruntime").threads == available_cores()
    clf = load_model(exported_run, runtime="onnxruntime", threads=1)
    assert clf.threads == 1 and clf.session.get_session_options().intra_op_num_threads == 1


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_a_batch_cut_into_chunks_on_several_threads_keeps_its_order(exported_run, mnist, threads):
    images = mnist.test_images[:300].numpy()
    clf = load_model(exported_run, runtime="onnxruntime", threads=threads)
    whole = clf.predict_proba(images, batch_size=300)
    np.testing.assert_allclose(clf.predict_proba(images, batch_size=7), whole, atol=1e-6)  # 43 chunks
    np.testing.assert_array_equal(clf.predict(images), whole.argmax(1))


def test_onnx_runtime_refuses_bad_input_like_pytorch(exported_run):
    clf = load_model(exported_run, runtime="onnxruntime")
    with pytest.raises(ValueError, match="float images must be in 0-1"):
        clf.predict(np.full((28, 28), 2.0, np.float32))
    assert clf.predict(np.zeros((0, 28, 28), np.uint8)).shape == (0,)


def test_missing_or_stale_onnx_file_gets_a_clear_error(tmp_path, exported_run):
    torch.manual_seed(0)
    folder = save_model(tmp_path / "m", create_model("basic"), {"architecture": "basic"})
    with pytest.raises(ModelFolderError, match="has no model.onnx; create it with: mnist-cnn export"):
        load_model(folder, runtime="onnxruntime")
    export_onnx(folder)
    torch.manual_seed(1)
    save_model(folder, create_model("basic"), {**json.loads((folder / "config.json").read_text())})  # retrained
    with pytest.raises(ModelFolderError, match="exported from other weights.*re-export"):
        load_model(folder, runtime="onnxruntime")
    (folder / "model.onnx").write_bytes(b"not a model")
    (folder / "config.json").write_text(json.dumps({"architecture": "basic"}))
    with pytest.raises(ModelFolderError, match="cannot be loaded by ONNX Runtime"):
        load_model(folder, runtime="onnxruntime")
    with pytest.raises(ValueError, match="unknown runtime 'tensorrt'"):
        load_model(folder, runtime="tensorrt")


@pytest.mark.slow
def test_verify_fails_when_the_onnx_file_is_another_model(tmp_path):
    folders = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        folders.append(save_model(tmp_path / str(seed), create_model("dropout"), {"architecture": "dropout"}))
        export_onnx(folders[-1])
    (folders[0] / "model.onnx").write_bytes((folders[1] / "model.onnx").read_bytes())
    images = np.random.default_rng(0).integers(0, 256, (8, 28, 28), dtype=np.uint8)
    with pytest.raises(ModelFolderError, match="model.onnx is damaged or was replaced"):  # its recorded SHA-256
        verify_onnx(folders[0], images)
    onnx_section = read_config(folders[0])["onnx"]
    del onnx_section["sha256"]  # as exported before the digest was recorded: verifying still catches it
    ModelFolder(folders[0]).update(onnx=onnx_section)
    with pytest.raises(ExportError, match="differs from PyTorch by up to .* \\(more than 0.0001\\)"):
        verify_onnx(folders[0], images)


def _cli(*args, env_data):
    env = {**os.environ, "MNIST_CNN_DATA": str(env_data)}
    return subprocess.run([sys.executable, "-m", "mnist_cnn", *args], capture_output=True, text=True, env=env, timeout=300)  # fmt: skip


def test_cli_export_then_predict_and_evaluate_with_onnxruntime(tmp_path, trained_run, mnist_dir, mnist):
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(trained_run[0].run_dir, folder)
    image = tmp_path / "x.png"
    Image.fromarray(mnist.test_images[0].numpy()).save(image)  # an image that exists: the missing model is the error
    r = _cli("predict", str(folder), str(image), "--runtime", "onnxruntime", env_data=mnist_dir)
    assert r.returncode == 2 and "no model.onnx; create it with: mnist-cnn export" in r.stderr, r.stderr
    r = _cli("export", str(folder), "--format", "onnx", env_data=mnist_dir)
    assert r.returncode == 0, r.stderr
    assert "ONNX Runtime matches PyTorch on the 10,000 test images" in r.stdout
    digit = tmp_path / "digit.png"
    Image.fromarray(255 - mnist.test_images[0].numpy()).save(digit)  # dark on light, like a scan
    out = {rt: _cli("predict", str(folder), str(digit), "--json", "--runtime", rt, env_data=mnist_dir) for rt in ("torch", "onnxruntime")}  # fmt: skip
    answers = {rt: json.loads(r.stdout) for rt, r in out.items()}
    assert answers["torch"]["label"] == answers["onnxruntime"]["label"] == int(mnist.test_labels[0])
    np.testing.assert_allclose(answers["torch"]["probabilities"], answers["onnxruntime"]["probabilities"], atol=2e-6)


# ------------------------------------------------------------------ the contract model.onnx carries (issue 14)


@pytest.fixture(scope="module")
def default_exported(tmp_path_factory):
    """A copy of the default model with model.onnx exported."""
    import shutil

    from mnist_cnn import default_model_dir

    folder = tmp_path_factory.mktemp("default") / "model"
    shutil.copytree(default_model_dir(), folder)
    export_onnx(folder)
    return folder


def test_the_graph_takes_raw_pixels_and_says_so_in_its_metadata(default_exported, mnist):
    import onnxruntime as ort

    images, labels = mnist.test_images[:500].numpy(), mnist.test_labels[:500].numpy()
    session = ort.InferenceSession(str(default_exported / "model.onnx"), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    config = json.loads((default_exported / "config.json").read_text())
    assert (
        meta["normalization_in_graph"] == "true" and "0-1" in meta["input"] and "white digit on black" in meta["input"]
    )
    assert json.loads(meta["normalization"]) == config["normalization"]
    assert json.loads(meta["labels"]) == [str(d) for d in range(10)]
    assert (meta["architecture"], meta["recipe"]) == (config["architecture"], config["recipe"])
    assert meta["mnist_cnn_version"] == mnist_cnn.__version__
    assert float(meta["temperature"]) == pytest.approx(config["calibration"]["temperature"])
    # Pixels / 255 straight into ONNX Runtime, no normalisation by the caller: PyTorch's logits.
    logits = session.run(None, {"images": (images[:, None] / 255).astype(np.float32)})[0]
    np.testing.assert_allclose(logits, load_model(default_exported).logits(images).numpy(), atol=1e-4)
    assert (logits.argmax(1) == labels).mean() >= 0.99


def test_onnx_classifier_does_not_normalise_twice(default_exported, mnist):
    images = mnist.test_images[:200].numpy()
    clf = load_model(default_exported, runtime="onnxruntime")
    assert clf.graph_normalizes
    np.testing.assert_allclose(clf.predict_proba(images), load_model(default_exported).predict_proba(images), atol=1e-5)


def test_an_onnx_file_exported_before_the_normalisation_moved_into_the_graph_still_works(tmp_path, mnist):
    from mnist_cnn.export import OPSET, _export

    torch.manual_seed(0)
    folder = save_model(tmp_path / "old", create_model("basic"), {"architecture": "basic"})
    export_onnx(folder)  # records the weights' digest; then the graph is replaced by an old-style one
    model = load_model(folder).model.eval().to(memory_format=torch.contiguous_format)
    _export(model, torch.zeros(2, 1, 28, 28), folder / "model.onnx", OPSET, "basic")  # normalised input, no metadata
    onnx_section = read_config(folder)["onnx"]
    del onnx_section["sha256"]  # an old export recorded no digest of model.onnx
    ModelFolder(folder).update(onnx=onnx_section)
    clf = load_model(folder, runtime="onnxruntime")
    assert not clf.graph_normalizes
    images = mnist.test_images[:100].numpy()
    np.testing.assert_allclose(clf.predict_proba(images), load_model(folder).predict_proba(images), atol=1e-5)
    assert verify_onnx(folder, images) <= 1e-4


def test_an_ensemble_exports_as_one_graph_and_knows_when_a_member_changes(tmp_path, mnist_dir, mnist):
    from mnist_cnn.ensemble import make_ensemble

    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        runs.append(save_model(tmp_path / str(seed), create_model("basic"), {"architecture": "basic"}))
    folder = make_ensemble(runs, tmp_path / "ens")
    r = _cli("export", str(folder), env_data=mnist_dir)
    assert r.returncode == 0, r.stderr
    assert "ONNX Runtime matches PyTorch on the 10,000 test images" in r.stdout
    images = mnist.test_images[:100].numpy()
    np.testing.assert_allclose(
        load_model(folder, runtime="onnxruntime").predict_proba(images),
        load_model(folder).predict_proba(images),
        atol=1e-5,
    )
    torch.manual_seed(2)
    member = folder / "members" / "1"
    save_model(member, create_model("basic"), json.loads((member / "config.json").read_text()))  # retrained
    with pytest.raises(ModelFolderError, match="exported from other weights.*re-export"):
        load_model(folder, runtime="onnxruntime")


def test_export_of_a_folder_with_no_weights_is_one_clear_line(tmp_path, mnist_dir):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": "basic"}))
    r = _cli("export", str(folder), env_data=mnist_dir)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
