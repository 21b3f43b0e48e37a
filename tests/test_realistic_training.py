"""Training for real input: photographed training digits, and "not sure" on parts of digits."""

import numpy as np
import pytest
import torch

from mnist_cnn.config import RECIPES, TrainConfig
from mnist_cnn.inference import Classifier
from mnist_cnn.synthetic import digit_parts, photographed
from mnist_cnn.train import reject_tensor, train_run


@pytest.mark.slow
def test_photographed_digits_look_like_preprocessed_photos_and_repeat_with_any_worker_count(mnist):
    digits = mnist.train_images[:24].numpy()
    one = photographed(digits, seed=3, workers=1, chunk=8)
    two = photographed(digits, seed=3, workers=2, chunk=8)
    assert one.shape == (24, 28, 28) and one.dtype == np.uint8
    np.testing.assert_array_equal(one, two)  # seeded per chunk, never per process
    assert not np.array_equal(one, photographed(digits, seed=4, workers=1, chunk=8))
    # Still the same digit, in MNIST's geometry: ink inside the 20x20 box around the centre, but not
    # a copy of the clean image (strokes, blur and JPEG changed it).
    for clean, photo in zip(digits, one, strict=True):
        rows, cols = np.nonzero(photo.max(1) > 0)[0], np.nonzero(photo.max(0) > 0)[0]
        assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 <= 21
        assert not np.array_equal(clean, photo)
        corr = np.corrcoef(clean.ravel().astype(float), photo.ravel().astype(float))[0, 1]
        assert corr > 0.3


def test_digit_parts_are_halves_and_touching_pairs_in_mnist_geometry(mnist):
    digits = mnist.train_images[:400].numpy()
    parts = digit_parts(digits, np.random.default_rng(0))
    assert parts.dtype == np.uint8 and parts.shape[1:] == (28, 28)
    assert 200 <= len(parts) <= 270  # about half as many; a 1 has no halves
    halves, pairs = parts[: len(parts) - 133], parts[-133:]  # 400 // 3 digits cut, the rest paired
    width = lambda f: np.ptp(np.nonzero(f.max(0) > 0)[0]) + 1  # noqa: E731
    height = lambda f: np.ptp(np.nonzero(f.max(1) > 0)[0]) + 1  # noqa: E731
    # Two digits side by side are wider than tall, so the 20 px box holds them by their width.
    assert np.mean([width(f) > height(f) for f in pairs]) > 0.9
    assert np.mean([width(f) > height(f) for f in halves]) < 0.2
    np.testing.assert_array_equal(parts, digit_parts(digits, np.random.default_rng(0)))


def test_reader_recipe_fine_tunes_a_best_run_and_says_so_without_one(tmp_path, capsys):
    from mnist_cnn.cli import main

    reader = RECIPES["reader"]
    assert reader.fine_tunes and reader.config.model == "best"
    assert reader.config.photo_digits > 0 and reader.config.reject_weight > 0
    assert main(["train", "--recipe", "reader", "--runs-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "fine-tunes a trained best run: pass --init RUN" in err and "Traceback" not in err


def test_init_starts_from_a_trained_model_and_refuses_another_architecture(trained_run, mnist, tmp_path):
    from mnist_cnn.errors import ModelFolderError

    source = trained_run[0]
    x, y = mnist.test_images[:2000], mnist.test_labels[:2000].numpy()
    before = (Classifier(source.model, source.config).predict(x) == y).mean()
    # A learning rate too small to move anything: what comes out is what went in.
    config = TrainConfig(model="basic", epochs=1, lr=1e-12, limit=500, val_split="500", init=str(source.run_dir))
    result = train_run(config, mnist, tmp_path / "tuned", device="cpu", progress=False)
    assert (Classifier(result.model, result.config).predict(x) == y).mean() == pytest.approx(before, abs=0.002)
    with pytest.raises(ModelFolderError, match="holds a 'basic' model, not 'fast'; train model 'basic' from it"):
        train_run(config.replace(model="fast"), mnist, tmp_path / "wrong", device="cpu", progress=False)


@pytest.mark.parametrize("change", [{"photo_digits": -1}, {"reject_weight": -0.5}])
def test_negative_photo_digits_or_reject_weight_is_refused(change):
    with pytest.raises(ValueError, match="photo_digits and reject_weight must be >= 0"):
        TrainConfig(**change)


@pytest.mark.slow
def test_reject_weight_teaches_the_model_to_be_unsure_of_parts_of_digits(mnist, tmp_path):
    """A short real run with and without the reject loss: same digits, but parts read far less surely."""
    base = TrainConfig(model="basic", epochs=2, batch_size=64, limit=4000, val_split="1000", seed=0)
    held_out = digit_parts(mnist.test_images[:1000].numpy(), np.random.default_rng(1))  # never trained on
    confidence, accuracy = {}, {}
    for weight in (0.0, 1.0):
        config = base.replace(reject_weight=weight)
        result = train_run(config, mnist, tmp_path / f"w{weight}", device="cpu", progress=False)
        clf = Classifier(result.model, result.config)
        confidence[weight] = float(clf.predict_proba(held_out).max(1).mean())
        accuracy[weight] = float((clf.predict(mnist.test_images[:2000]) == mnist.test_labels[:2000].numpy()).mean())
        assert result.config["training"]["reject_images"] == (len(reject_tensor(config, mnist, "cpu")) if weight else 0)
    assert confidence[1.0] < 0.4 and confidence[1.0] < confidence[0.0] - 0.25, confidence  # measured: 0.68 -> 0.27
    assert accuracy[1.0] > accuracy[0.0] - 0.02 and accuracy[1.0] > 0.93, accuracy


@pytest.mark.slow
def test_photo_digits_join_the_training_set(mnist, tmp_path):
    config = TrainConfig(model="basic", epochs=1, batch_size=64, limit=500, val_split="500", photo_digits=100)
    result = train_run(config, mnist, tmp_path / "run", device="cpu", progress=False)
    assert result.config["training"]["train_images"] == 600
    assert result.config["train_config"]["photo_digits"] == 100
    assert torch.isfinite(torch.tensor(result.fit.history[-1]["train_loss"]))
