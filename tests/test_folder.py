"""The model folder: old formats keep loading and predict exactly as before."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from mnist_cnn import ModelFolderError, create_model, load_model
from mnist_cnn.folder import FORMAT_VERSION, ModelFolder, atomic_write, save_model
from mnist_cnn.inference import to_model_input
from mnist_cnn.models import Basic

DATA = Path(__file__).parent / "data"


def test_format_1_folder_loads_and_predicts_as_before():
    expected = np.load(DATA / "fast-width8-v1-expected.npz")
    clf = load_model(DATA / "fast-width8-v1")
    assert clf.config["format_version"] == 1
    assert clf.model.features[0].out_channels == 8  # taken from the weights: the folder does not say
    np.testing.assert_allclose(clf.logits(expected["images"]).numpy(), expected["logits"], rtol=0, atol=1e-5)
    assert clf.predict(expected["images"]).tolist() == expected["logits"].argmax(1).tolist()


def test_a_saved_folder_records_the_arguments_the_network_was_built_with(tmp_path):
    model = create_model("fast", width=8)
    folder = save_model(tmp_path / "m", model, {"architecture": "fast"})
    config = json.loads((folder / "config.json").read_text())
    assert config["format_version"] == FORMAT_VERSION == 2
    assert config["model_kwargs"] == {"width": 8, "stem_padding": 2}
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        expected = model.eval()(to_model_input(x))
    torch.testing.assert_close(load_model(folder).logits(x), expected, rtol=0, atol=1e-5)


def test_a_format_2_folder_is_built_from_its_record_not_from_its_weights(tmp_path):
    folder = save_model(tmp_path / "m", create_model("fast", width=8), {"architecture": "fast"})
    ModelFolder(folder).update(model_kwargs={"width": 16, "stem_padding": 2})  # a record that lies
    with pytest.raises(ModelFolderError, match="does not fit 'fast'"):
        load_model(folder)


def test_save_needs_the_constructor_arguments_of_a_network_not_built_by_create_model(tmp_path):
    with pytest.raises(ValueError, match="create_model.*model_kwargs"):
        save_model(tmp_path / "m", torch.nn.Linear(2, 2), {"architecture": "basic"})
    folder = save_model(tmp_path / "m", Basic(), {"architecture": "basic", "model_kwargs": {}})
    assert load_model(folder).config["model_kwargs"] == {}


def test_update_changes_the_sections_it_is_given_and_keeps_the_rest(tmp_path):
    folder = ModelFolder(save_model(tmp_path / "m", create_model("basic"), {"architecture": "basic", "recipe": "x"}))
    config = folder.update(calibration={"temperature": 1.5})
    assert config == folder.read()
    assert config["calibration"] == {"temperature": 1.5} and config["recipe"] == "x"


def test_a_folder_from_a_newer_version_is_refused(tmp_path):
    folder = ModelFolder(save_model(tmp_path / "m", create_model("basic"), {"architecture": "basic"}))
    folder.update(format_version=FORMAT_VERSION + 1)
    with pytest.raises(ModelFolderError, match="newer mnist-cnn"):
        folder.read()


def test_atomic_write_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "a.json"
    atomic_write(path, "old")
    atomic_write(path, b"new")
    assert path.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_a_write_that_fails_leaves_the_old_file_whole(tmp_path, monkeypatch):
    path = tmp_path / "a.json"
    atomic_write(path, "old")

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space"):
        atomic_write(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]
