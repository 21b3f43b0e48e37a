"""Saved model folders: reload gives bit-identical predictions; bad inputs and damaged folders get clear errors."""

import json
import shutil

import numpy as np
import pytest
import torch

from mnist_cnn import ModelFolderError, create_model, load_model
from mnist_cnn.classifier import features_and_logits
from mnist_cnn.inference import Classifier, batched_logits, save_model, to_model_input


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = create_model("three-conv")
    folder = save_model(tmp_path / "m", model, {"architecture": "three-conv"})
    return model, folder


def test_reload_is_bit_identical(saved, mnist):
    model, folder = saved
    images = mnist.test_images[:500].numpy()
    before = Classifier(model, {"architecture": "three-conv"}).predict_proba(images)
    after = load_model(folder).predict_proba(images)
    assert after.dtype == np.float32 and after.shape == (500, 10)
    assert np.array_equal(before, after)
    np.testing.assert_allclose(after.sum(1), 1.0, rtol=1e-5)


def test_trained_run_reloads_with_its_test_accuracy(trained_run, mnist):
    result, metrics = trained_run
    clf = load_model(result.run_dir)
    preds = clf.predict(mnist.test_images.numpy())
    assert (preds == mnist.test_labels.numpy()).mean() == pytest.approx(metrics["test_accuracy"])
    assert clf.config["metrics"]["test_accuracy"] == pytest.approx(metrics["test_accuracy"])


def test_every_input_layout_and_dtype_gives_the_same_answer(saved, mnist):
    _, folder = saved
    clf = load_model(folder)
    u8 = mnist.test_images[:4].numpy()
    expected = clf.predict_proba(u8)
    for variant in (u8[:, None], u8.astype(np.float32) / 255, torch.from_numpy(u8), u8.astype(np.int64)):
        np.testing.assert_allclose(clf.predict_proba(variant), expected, atol=1e-6)
    single = clf.predict(u8[0])
    assert single.shape == (1,) and single[0] == expected[0].argmax()


def test_a_bfloat16_tensor_reads_as_its_float32_values(saved, mnist):
    clf = load_model(saved[1])
    ink = (mnist.test_images[:4].numpy() > 127).astype(np.float32)  # 0 and 1: exact in bfloat16
    np.testing.assert_array_equal(clf.predict_proba(torch.from_numpy(ink).bfloat16()), clf.predict_proba(ink))


@pytest.mark.parametrize("images,message", [
    (np.zeros((28, 27), np.uint8), r"shaped \(28, 28\), \(N, 28, 28\) or \(N, 1, 28, 28\); got \(28, 27\)"),
    (np.zeros((2, 3, 28, 28), np.uint8), r"got \(2, 3, 28, 28\)"),
    (np.full((28, 28), 255.0, np.float32), "float images must be in 0-1.*divide by 255"),
    (np.full((28, 28), np.nan, np.float32), "NaN"),
    (np.full((28, 28), 300, np.int32), "integer images must be in 0-255"),
    (np.zeros((28, 28), bool), "uint8"),
])  # fmt: skip
def test_bad_images_raise_a_clear_value_error(images, message):
    with pytest.raises(ValueError, match=message):
        to_model_input(images)


def test_missing_and_damaged_folders(saved, tmp_path):
    _, folder = saved
    with pytest.raises(ModelFolderError, match="does not exist"):
        load_model(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelFolderError, match="not a model folder: it has no config.json"):
        load_model(empty)

    broken = shutil.copytree(folder, tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"\x00" * 7)
    with pytest.raises(ModelFolderError, match="model.safetensors is damaged"):
        load_model(broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(ModelFolderError, match="has no model.safetensors"):
        load_model(broken)

    wrong = shutil.copytree(folder, tmp_path / "wrong")
    config = json.loads((wrong / "config.json").read_text())
    (wrong / "config.json").write_text(json.dumps({**config, "architecture": "basic"}))
    with pytest.raises(ModelFolderError, match="does not fit 'basic'"):
        load_model(wrong)
    (wrong / "config.json").write_text(json.dumps({**config, "architecture": "resnet"}))
    with pytest.raises(ModelFolderError, match="unknown model 'resnet'"):
        load_model(wrong)
    (wrong / "config.json").write_text("{not json")
    with pytest.raises(ModelFolderError, match="not valid JSON"):
        load_model(wrong)


def test_weights_file_holds_no_pickle(saved):
    _, folder = saved
    raw = (folder / "model.safetensors").read_bytes()
    header_len = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + header_len])
    assert header["__metadata__"]["architecture"] == "three-conv"
    assert b"\x80\x04" not in raw[:2]  # not a pickle stream


def test_a_folder_that_did_not_record_the_width_loads_at_the_width_of_its_weights(tmp_path, mnist):
    """`best` folders saved (format 1) when its default width was 24 record no model_kwargs; they still load."""
    torch.manual_seed(0)
    narrow = create_model("best", width=24).eval()
    folder = save_model(tmp_path / "best24", narrow, {"architecture": "best"})
    config = json.loads((folder / "config.json").read_text())
    assert config["model_kwargs"] == {"width": 24, "dropout": 0.0} and config["format_version"] == 2
    (folder / "config.json").write_text(json.dumps({**config, "format_version": 1, "model_kwargs": {}}))
    clf = load_model(folder)
    x = mnist.test_images[:64]
    with torch.no_grad():
        expected = narrow(to_model_input(x)).argmax(1).numpy()
    np.testing.assert_array_equal(clf.predict(x), expected)
    assert clf.model.features[0].out_channels == 24


def test_logits_and_features_are_computed_in_eval_mode_and_the_mode_is_given_back():
    torch.manual_seed(0)
    model = create_model("best")
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        expected = model.eval()(x)
    model.train()
    np.testing.assert_allclose(batched_logits(model, x, batch_size=2), expected, atol=1e-5)
    feats, logits = features_and_logits(model, x, batch_size=2)
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    assert feats.shape == (5, 128 * 9) and model.training
    assert batched_logits(model, x[:0]).shape == (0, 10) and features_and_logits(model, x[:0])[1].shape == (0, 10)
