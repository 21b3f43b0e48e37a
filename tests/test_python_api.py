"""The Python API forgives: predict takes paths, PIL images, arrays of any size and lists, reads a
dark-on-light 28x28 array as the user meant it, and answers a wrong type with a hint (issue 14)."""

import numpy as np
import pytest
import torch
from PIL import Image

import mnist_cnn
from mnist_cnn.inputs import as_mnist_images


@pytest.fixture(scope="module")
def clf():
    return mnist_cnn.load_model()  # the default model that ships with the package


@pytest.fixture(scope="module")
def digits(mnist):
    return mnist.test_images[:40].numpy(), mnist.test_labels[:40].numpy()


@pytest.fixture
def scan(tmp_path, digits):
    """A test digit as a user has it: a 200x200 PNG, dark ink on white."""
    path = tmp_path / "seven.png"
    Image.fromarray(255 - digits[0][0]).resize((200, 200), Image.Resampling.BILINEAR).save(path)
    return path


def test_a_path_a_pil_image_and_a_big_array_are_read_like_the_cli_reads_them(clf, scan, digits):
    expected = clf.predict_proba(mnist_cnn.preprocess_image(scan).array)
    assert expected.argmax() == digits[1][0]
    rgb = np.array(Image.open(scan).convert("RGB"))
    for source in (str(scan), scan, Image.open(scan), rgb, np.asarray(Image.open(scan)), torch.from_numpy(rgb)):
        np.testing.assert_allclose(clf.predict_proba(source), expected, atol=1e-6)


def test_a_list_mixes_paths_images_and_arrays_in_order(clf, scan, digits):
    images, labels = digits
    got = clf.predict([scan, images[1], Image.open(scan), images[2:4].astype(np.float32) / 255])
    assert got.tolist() == [labels[0], labels[1], labels[0], labels[2], labels[3]]


def test_mnist_format_arrays_go_to_the_model_unchanged(digits):
    images = digits[0]
    bold = np.zeros((28, 28), np.uint8)
    bold[4:24, 4:24] = 255  # brighter than half on average, but on black like any MNIST frame
    for same in (images, images[0], images[:, None], torch.from_numpy(images), images.astype(np.float32) / 255, bold):
        assert as_mnist_images(same) is same


@pytest.mark.parametrize("variant", ["uint8", "float", "tensor", "batch"])
def test_a_dark_on_light_28x28_array_is_not_misread(clf, digits, variant):
    images, labels = digits
    inverted = 255 - images
    given = {"uint8": inverted, "float": inverted.astype(np.float32) / 255, "tensor": torch.from_numpy(inverted),
             "batch": np.concatenate([images[:20], inverted[20:]])}[variant]  # fmt: skip
    assert float(inverted.mean()) > 127  # what the model would have misread before
    assert (clf.predict(given) == labels).mean() >= 0.95
    assert (clf.predict(images) == labels).mean() >= 0.95


@pytest.mark.parametrize("bad,kind,message", [
    (None, TypeError, "object of type NoneType: pass a path, a PIL image"),
    ({"image": 1}, TypeError, "object of type dict"),
    (3.5, TypeError, "object of type float"),
    (np.array(["a.png", "b.png"]), TypeError, "object of type ndarray"),
    (np.zeros((2, 3, 4, 5, 6), np.uint8), ValueError, r"shaped \(2, 3, 4, 5, 6\) are not images"),
    ([[1, 2], [3]], ValueError, "ragged"),
    (np.full((28, 28), 255.0, np.float32), ValueError, "float images must be in 0-1.*divide by 255"),
])  # fmt: skip
def test_a_wrong_input_gets_an_error_with_a_hint_never_a_raw_torch_error(clf, bad, kind, message):
    with pytest.raises(kind, match=message):
        clf.predict(bad)


def test_a_missing_file_says_so(clf, tmp_path):
    with pytest.raises(mnist_cnn.ImageError, match="no such file"):
        clf.predict(tmp_path / "nothing.png")


def test_tta_takes_the_same_inputs(scan, digits):
    assert mnist_cnn.load_model(tta=True).predict(scan).tolist() == [digits[1][0]]


def test_help_shows_how_to_start():
    doc = mnist_cnn.__doc__
    for needed in ("load_model()", "default model", 'predict("', "train_run", "mnist-cnn train", "predict_proba"):
        assert needed in doc, needed


def test_load_model_takes_a_run_as_a_person_names_it(tmp_path, monkeypatch):
    """What each run's model card tells its reader: load_model("NAME") with the runs in ./runs, or "latest"."""
    from mnist_cnn.folder import ModelFolder, save_model

    runs = tmp_path / "runs"
    for name, created in [("fast-20261201-041509", "2026-12-01T04:15:09+0000"),
                          ("fast-20261201-050000", "2026-12-01T05:00:00+0000")]:  # fmt: skip
        save_model(runs / name, mnist_cnn.create_model("fast"), {"architecture": "fast"})
        ModelFolder(runs / name).update(created=created)
    monkeypatch.chdir(tmp_path)
    image = np.zeros((28, 28), np.uint8)
    expected = mnist_cnn.load_model(runs / "fast-20261201-050000").predict_proba(image)
    for name in ("latest", "fast-20261201-050000", "runs/fast-20261201-050000/model.safetensors"):
        np.testing.assert_array_equal(mnist_cnn.load_model(name).predict_proba(image), expected)
    np.testing.assert_array_equal(mnist_cnn.load_model("latest", runs_dir=runs).predict_proba(image), expected)
    with pytest.raises(mnist_cnn.ModelFolderError, match="did you mean: runs/fast-20261201-050000"):
        mnist_cnn.load_model("fastt")
