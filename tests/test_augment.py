"""Augmentation on batched tensors: shapes, value ranges, seeded repeatability, labels kept."""

from __future__ import annotations

import math

import pytest
import torch

from mnist_cnn.augment import (
    Augmentation,
    affine_matrices,
    augment,
    cut_edge,
    elastic_offsets,
    gaussian_blur,
    low_resolution,
    pencil,
    stroke_width,
)
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


# ----------------------------------------------------------------------------- corruptions: pens, scanners, crops

ALL = Augmentation(stroke=1.0, pencil=0.5, blur=1.0, lowres=8, crop=0.15, rotate=25, shear=20, corrupt_p=0.5)


def _old_augment(x: torch.Tensor, aug: Augmentation, generator: torch.Generator, fill: float) -> torch.Tensor:
    """The affine/elastic augmentation as it was before the corruptions were added: the reference."""
    n, _, h, w = x.shape
    theta = affine_matrices(n, aug, generator).to(dtype=x.dtype)
    grid = torch.nn.functional.affine_grid(theta, [n, 1, h, w], align_corners=False)
    if aug.elastic > 0:
        grid = grid + elastic_offsets(n, h, w, aug, generator).to(dtype=x.dtype)
    return (
        torch.nn.functional.grid_sample(x - fill, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        + fill
    )


def test_corruptions_off_by_default_leave_training_as_it_was():
    assert TrainConfig().augmentation == Augmentation()
    x, fill = torch.rand(16, 1, 28, 28) - 0.4242, -0.4242
    ours, theirs = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(augment(x, STRONG, ours, fill), _old_augment(x, STRONG, theirs, fill))
    assert torch.equal(ours.get_state(), theirs.get_state())  # nothing more drawn: later batches repeat too


@pytest.mark.parametrize("aug", [
    Augmentation(stroke=1.5), Augmentation(pencil=0.6), Augmentation(blur=1.5), Augmentation(lowres=8),
    Augmentation(crop=0.2), ALL,
], ids=["stroke", "pencil", "blur", "lowres", "crop", "all"])  # fmt: skip
def test_each_corruption_keeps_shape_repeats_for_a_seed_and_draws_per_sample(aug):
    x = _blobs(32) * 2.8 - 0.42
    a = augment(x, aug, torch.Generator().manual_seed(3), fill=-0.42)
    b = augment(x, aug, torch.Generator().manual_seed(3), fill=-0.42)
    c = augment(x, aug, torch.Generator().manual_seed(4), fill=-0.42)
    assert a.shape == x.shape and a.dtype == x.dtype and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    changed = (a - x).abs().amax(dim=(1, 2, 3)) > 1e-4
    # each sample its own draw: about corrupt_p of the batch is hit, not all or none (rotation hits all)
    assert 0.15 < changed.float().mean() < (1.01 if aug.geometric else 0.95)
    corner = a[:, :, :3, :3]  # far from the blob: paper stays paper
    assert torch.allclose(corner, torch.full_like(corner, -0.42), atol=1e-5)


def test_stroke_width_thickens_and_thins():
    x = torch.zeros(3, 1, 28, 28)
    x[:, :, 6:22, 12:16] = 1.0  # a 4 px wide bar
    out = stroke_width(x, torch.tensor([1.0, -1.0, 0.0]))
    width = (out[:, 0, 14] > 0.5).sum(1).tolist()
    assert width == [6, 2, 4]  # one pixel more or less on each side; 0 leaves it as it was
    half = stroke_width(x[:1], torch.tensor([0.5]))
    assert torch.allclose(half[0, 0, 14, 11], torch.tensor(0.5))  # fractions blend


def test_thinning_never_erases_a_digit():
    x = torch.zeros(1, 1, 28, 28)
    x[:, :, 6:22, 14] = 1.0  # one pixel wide: erosion would leave nothing
    assert torch.equal(stroke_width(x, torch.tensor([-2.0])), x)


def test_pencil_fades_the_ink_with_grain():
    x = _blobs(4)
    out = pencil(x, torch.tensor([0.0, 0.4, 0.4, 0.8]), torch.Generator().manual_seed(0))
    ink = out[:, 0, 10:18, 12:16]
    assert torch.equal(out[0], x[0])
    assert abs(ink[1].mean().item() - (1 - 0.75 * 0.4)) < 0.05  # 50-100% of the fade, 75% on average
    assert ink[3].mean() < ink[1].mean() and ink[1].std() > 0.02  # stronger fades, and grainy
    assert (out <= x).all() and (out[:, :, :10] == 0).all()


def test_blur_spreads_a_point_as_a_gaussian_of_that_sigma():
    x = torch.zeros(3, 1, 29, 29)
    x[:, :, 14, 14] = 1.0
    out = gaussian_blur(x, torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64))
    assert torch.allclose(out[0], x[0], atol=1e-6)
    t = torch.arange(29.0) - 14
    for i, sigma in ((1, 1.0), (2, 2.0)):
        assert abs(out[i].sum().item() - 1) < 1e-4  # ink is kept
        variance = (out[i, 0].sum(0) * t**2).sum().item()
        assert abs(variance - sigma**2) < 0.05 * sigma**2


def test_low_resolution_loses_fine_detail_and_keeps_coarse_shapes():
    stripes = torch.zeros(2, 1, 28, 28)
    stripes[:, :, :, ::2] = 1.0  # one-pixel stripes
    block = torch.zeros(2, 1, 28, 28)
    block[:, :, 8:20, 8:20] = 1.0
    out = low_resolution(torch.cat([stripes, block]), torch.tensor([28, 8, 28, 8]))
    assert torch.equal(out[0], stripes[0]) and torch.equal(out[2], block[0])
    assert out[1].std() < 0.05 and abs(out[1].mean() - 0.5) < 0.05  # the stripes are gone
    assert out[3, 0, 14, 14] > 0.95 and out[3, 0, 2, 2] < 0.05  # the block is still there


def test_cut_edge_cuts_one_side_and_frames_the_rest_like_mnist():
    x = torch.zeros(2, 1, 28, 28)
    x[:, :, 4:14, 6:16] = 1.0  # a 10x10 square, off-centre
    out = cut_edge(x, torch.tensor([0.0, 0.5]), torch.tensor([2, 2]))  # half of it cut off at the left
    assert torch.equal(out[0], x[0])
    ink = out[1, 0] > 0.25
    rows, cols = ink.any(1).nonzero().squeeze(1), ink.any(0).nonzero().squeeze(1)
    assert 19 <= len(rows) <= 21 and 9 <= len(cols) <= 11  # 10x5 left, longer side scaled to 20 px
    grid = torch.arange(28.0)
    mass = out[1, 0]
    cy, cx = (mass.sum(1) * grid).sum() / mass.sum(), (mass.sum(0) * grid).sum() / mass.sum()
    assert abs(cy - 14) < 0.6 and abs(cx - 14) < 0.6  # centre of mass at the centre


def test_stronger_slant_and_rotation_are_allowed():
    theta = affine_matrices(500, Augmentation(rotate=25), torch.Generator().manual_seed(0))
    angles = torch.atan2(theta[:, 1, 0], theta[:, 0, 0]).abs()
    assert math.radians(22) < angles.max() <= math.radians(25) + 1e-9


def test_corruption_flags_reach_the_augmentation():
    config = TrainConfig(aug_stroke=1, aug_pencil=0.5, aug_blur=1, aug_lowres=10, aug_crop=0.1, aug_corrupt_p=0.3)
    aug = config.augmentation
    assert (aug.stroke, aug.pencil, aug.blur, aug.lowres, aug.crop, aug.corrupt_p) == (1, 0.5, 1, 10, 0.1, 0.3)
    assert aug.active and not aug.geometric


@pytest.mark.parametrize("change,message", [
    ({"aug_stroke": 4}, "stroke must be <= 3"),
    ({"aug_blur": -1}, "blur must be >= 0"),
    ({"aug_lowres": 2}, "lowres must be 0"),
    ({"aug_lowres": 28}, "lowres must be 0"),
    ({"aug_pencil": 1.0}, r"pencil must be in \[0, 1\)"),
    ({"aug_crop": 0.5 - 1}, r"crop must be in \[0, 1\)"),
    ({"aug_corrupt_p": 0}, r"corrupt_p must be in \(0, 1\]"),
])  # fmt: skip
def test_invalid_corruption_settings_are_refused(change, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**change)
