"""Training for real input: photographed training digits, and "not sure" on parts of digits."""

import numpy as np
import pytest
import torch

from mnist_cnn.config import RECIPES, TrainConfig
from mnist_cnn.inference import Classifier
from mnist_cnn.synthetic import NOT_DIGIT_KINDS, _draw_not_digit, digit_parts, not_digits, photographed, training_fonts
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


def test_robust_recipe_fine_tunes_a_best_run_with_every_corruption_and_junk(tmp_path, capsys):
    from mnist_cnn.cli import main

    robust = RECIPES["robust"]
    config = robust.config
    assert robust.fine_tunes and config.model == "best"
    aug = config.augmentation
    assert min(aug.stroke, aug.pencil, aug.blur, aug.lowres, aug.crop, aug.rotate, aug.shear) > 0
    assert config.not_digits > 0 and config.reject_weight > 0 and config.photo_digits > 0
    assert main(["train", "--recipe", "robust", "--runs-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "pass --init RUN" in err and "Traceback" not in err


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


@pytest.mark.parametrize(
    "change", [{"photo_digits": -1}, {"pen_digits": -1}, {"reject_weight": -0.5}, {"not_digits": -1}]
)
def test_negative_photo_digits_or_reject_weight_is_refused(change):
    with pytest.raises(ValueError, match="photo_digits, pen_digits, reject_weight and not_digits must be >= 0"):
        TrainConfig(**change)


def test_not_digits_without_the_reject_loss_are_refused():
    with pytest.raises(ValueError, match="give reject_weight > 0 as well"):
        TrainConfig(not_digits=100)


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


def _box(frame: np.ndarray) -> tuple[int, int]:
    rows, cols = np.nonzero(frame.max(1) > 40)[0], np.nonzero(frame.max(0) > 40)[0]
    return int(np.ptp(rows)) + 1, int(np.ptp(cols)) + 1


@pytest.mark.slow  # starts worker processes: about 10 s
def test_not_digits_are_preprocessed_junk_and_repeat_with_any_worker_count():
    one = not_digits(28, seed=5, workers=1, chunk=10)
    assert one.dtype == np.uint8 and one.shape[1:] == (28, 28) and 20 <= len(one) <= 28
    np.testing.assert_array_equal(one, not_digits(28, seed=5, workers=2, chunk=10))
    assert not np.array_equal(one[:20], not_digits(28, seed=6, workers=1, chunk=10)[:20])
    assert all(max(_box(f)) <= 21 for f in one)  # framed by preprocess_image like a digit


def test_a_dot_arrives_as_a_filled_blob_and_a_dash_as_a_flat_bar():
    dots, dashes = not_digits(6, seed=0, kinds=("dot",), workers=1), not_digits(6, seed=0, kinds=("dash",), workers=1)
    for dot in dots:  # what preprocessing makes of a dot: it fills the 20 px box
        h, w = _box(dot)
        assert min(h, w) >= 14 and (dot > 128).sum() > 0.5 * h * w  # a disc fills pi/4 of its box
    for dash in dashes:  # near horizontal, never a steep stroke that would be a 1
        h, w = _box(dash)
        assert w >= 19 and h < 0.7 * w  # measured: at most 0.6 (25 degrees and a thick pen)


def test_not_digit_kinds_are_checked_and_letters_come_from_sans_fonts_only():
    with pytest.raises(ValueError, match="unknown not-digit kinds"):
        not_digits(4, seed=0, kinds=("dot", "digit"))
    fonts = [f.rsplit("/", 1)[-1] for f in training_fonts()]
    assert "DejaVuSans.ttf" in fonts and "DejaVuSansMono.ttf" in fonts
    assert not any("Serif" in f or "STIX" in f or "Display" in f for f in fonts)  # held out for evaluation
    assert set(NOT_DIGIT_KINDS) >= {"dot", "dash", "cross", "scribble", "scratch", "coil", "smudge", "letter", "noise"}


def _crossings(line: np.ndarray) -> int:
    """How many separate runs of ink a row or column of coverage crosses."""
    ink = line > 0.5
    return int(ink[0]) + int((ink[1:] & ~ink[:-1]).sum())


def test_a_crossing_out_has_many_passes_and_a_coil_many_loops():
    """Not a Z (a 2 or a 7 to the model) and not a 0 or an 8: junk that looks like no digit."""
    rng, fonts = np.random.default_rng(3), training_fonts()
    for _ in range(10):
        scratch = _draw_not_digit("scratch", 120, rng, fonts)
        assert _crossings(scratch[:, 60]) >= 5  # a vertical line through the middle meets 5+ passes
        coil = _draw_not_digit("coil", 120, rng, fonts)
        rows, cols = np.nonzero(coil > 0.5)
        assert max(_crossings(coil[r]) for r in range(rows.min(), rows.max() + 1)) >= 4


def test_not_digits_join_the_reject_images(mnist):
    config = TrainConfig(limit=600, val_split="500", reject_weight=0.5)
    parts = reject_tensor(config, mnist, torch.device("cpu"))
    both = reject_tensor(config.replace(not_digits=30), mnist, torch.device("cpu"))
    assert 20 <= len(both) - len(parts) <= 30
    assert torch.equal(both[: len(parts)], parts)  # the parts are drawn as before


@pytest.mark.slow
def test_not_digits_teach_the_model_to_be_unsure_of_junk(mnist, tmp_path):
    """A short real run with the reject loss, with and without not-digits: junk it never saw reads far less surely."""
    base = TrainConfig(model="basic", epochs=1, batch_size=64, limit=3000, val_split="1000", reject_weight=1.0)
    held_out = not_digits(140, seed=99)  # another seed than training's
    confidence, accuracy = {}, {}
    for count in (0, 1500):
        result = train_run(base.replace(not_digits=count), mnist, tmp_path / f"n{count}", device="cpu", progress=False)
        clf = Classifier(result.model, result.config)
        confidence[count] = float(clf.predict_proba(held_out).max(1).mean())
        accuracy[count] = float((clf.predict(mnist.test_images[:2000]) == mnist.test_labels[:2000].numpy()).mean())
    # measured: 0.32 -> 0.23 (parts of digits alone already teach some doubt)
    assert confidence[1500] < 0.3 and confidence[1500] < confidence[0] - 0.05, confidence
    assert accuracy[1500] > accuracy[0] - 0.02, accuracy
