"""Augmentation on batched tensors: shapes, value ranges, seeded repeatability, labels kept."""

from __future__ import annotations

import math

import pytest
import torch

from mnist_cnn.augment import Augmentation, affine_matrices, augment, elastic_offsets
from mnist_cnn.config import TrainConfig
from mnist_cnn.inference import load_model, to_model_input

STRONG = Augmentation(rotate=15, scale=0.15, shear=10, translate=0.1, elastic=2.0)


def _blobs(n: int = 16) -> torch.Tensor:
    x = torch.zeros(n, 1, 28, 28)
    x[:, :, 10:18, 12:16] = 1.0
    return x


def test_shape_dtype_and_range_are_kept():
    x = torch.rand(32, 1, 28, 28)
    out = augment(x, STRONG, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    # bilinear sampling mixes input pixels with the fill value: never outside their range
    assert out.min() >= -1e-6 and out.max() <= 1 + 1e-6
    fill = -0.4242
    out = augment(x * 3 + fill, STRONG, torch.Generator().manual_seed(0), fill=fill)
    assert out.min() >= fill - 1e-5 and out.max() <= 3 + fill + 1e-5


def test_background_stays_background_where_nothing_moves_in():
    fill = -0.4242  # a blank normalised MNIST pixel
    x = torch.full((8, 1, 28, 28), fill)
    out = augment(x, STRONG, torch.Generator().manual_seed(1), fill=fill)
    assert torch.allclose(out, x, atol=1e-5)


def test_same_seed_same_batch_other_seed_other_batch():
    x = torch.rand(16, 1, 28, 28)
    a = augment(x, STRONG, torch.Generator().manual_seed(3))
    b = augment(x, STRONG, torch.Generator().manual_seed(3))
    c = augment(x, STRONG, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # each sample gets its own draw
    same = augment(x[:1].repeat(16, 1, 1, 1), STRONG, torch.Generator().manual_seed(3))
    assert not torch.allclose(same[0], same[1])


def test_no_augmentation_is_the_identity():
    x = torch.rand(4, 1, 28, 28)
    assert augment(x, Augmentation(), torch.Generator().manual_seed(0)) is x
    assert not Augmentation().active and STRONG.active


def test_translation_moves_the_digit_by_at_most_the_range():
    x = _blobs(64)
    out = augment(x, Augmentation(translate=0.1), torch.Generator().manual_seed(0))
    grid = torch.arange(28.0)

    def centre(img):
        m = img[:, 0]
        total = m.sum(dim=(1, 2))
        return torch.stack([(m.sum(1) * grid).sum(1) / total, (m.sum(2) * grid).sum(1) / total], 1)

    shift = (centre(out) - centre(x)).abs()
    assert shift.max() <= 0.1 * 28 + 0.5  # 2.8 px, plus interpolation
    assert (shift.amax(1) > 0.5).float().mean() > 0.5  # and it really moves most of them
    assert out.sum(dim=(1, 2, 3)).sub(x.sum(dim=(1, 2, 3))).abs().max() < 1.0  # ink is kept, not cropped


def test_rotation_matrices_are_rotations_within_range():
    theta = affine_matrices(500, Augmentation(rotate=10), torch.Generator().manual_seed(0))
    a = theta[:, :, :2]
    assert torch.allclose(torch.linalg.det(a), torch.ones(500, dtype=a.dtype), atol=1e-9)
    angles = torch.atan2(a[:, 1, 0], a[:, 0, 0]).abs()
    assert angles.max() <= math.radians(10) + 1e-9 and angles.max() > math.radians(8)


def test_elastic_displacement_is_bounded_and_smooth():
    aug = Augmentation(elastic=3.0, elastic_sigma=4.0)
    off = elastic_offsets(8, 28, 28, aug, torch.Generator().manual_seed(0))
    assert off.shape == (8, 28, 28, 2)
    pixels = off * 14  # back to pixels
    assert pixels.abs().max() <= 3.0 + 1e-4
    # neighbours move together: unsmoothed noise of the same peak would differ by up to 6 px
    assert (pixels[:, 1:] - pixels[:, :-1]).abs().max() < 1.5


def test_labels_are_preserved_a_trained_model_still_reads_augmented_digits(trained_run, mnist):
    result, metrics = trained_run
    clf = load_model(result.run_dir)
    x = to_model_input(mnist.test_images[:2000])
    y = mnist.test_labels[:2000]
    fill = float(x.min())
    # Rotation, zoom and shear keep a digit's identity; this model never saw them (nor shifts,
    # which MNIST's centring makes it sensitive to), yet it still reads almost all of them.
    aug = Augmentation(rotate=10, scale=0.1, shear=10)
    out = augment(x, aug, torch.Generator().manual_seed(0), fill=fill)
    with torch.inference_mode():
        acc = (clf.model(out).argmax(1) == y).float().mean().item()
    assert acc > metrics["test_accuracy"] - 0.04, acc


def test_augmentation_runs_on_the_batch_device_and_dtype():
    x = torch.rand(4, 1, 28, 28, dtype=torch.float64)
    out = augment(x, STRONG, torch.Generator().manual_seed(0))
    assert out.dtype == torch.float64 and out.device == x.device


@pytest.mark.parametrize("change,message", [
    ({"aug_rotate": -1}, "rotate must be >= 0"),
    ({"aug_scale": 1.5}, "scale must be < 1"),
    ({"ema": 1.0}, "must each be in"),
])  # fmt: skip
def test_invalid_augmentation_settings_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**change)


def test_non_batch_input_is_refused():
    with pytest.raises(ValueError, match="batch of shape"):
        augment(torch.rand(28, 28), STRONG)
