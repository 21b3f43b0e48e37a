"""Drawn digits in other writers' styles (mnist_cnn.pen_digits) and the training flag that adds them."""

import numpy as np
import pytest

from mnist_cnn.config import TrainConfig
from mnist_cnn.pen_digits import TEMPLATES, pen_digits


def test_pen_digits_are_mnist_format_balanced_and_seeded():
    images, labels = pen_digits(50, seed=3)
    assert images.shape == (50, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == [5] * 10
    again, _ = pen_digits(50, seed=3)
    other, _ = pen_digits(50, seed=4)
    assert np.array_equal(images, again) and not np.array_equal(images, other)


def test_pen_digits_sit_in_mnist_geometry():
    images, _ = pen_digits(40, seed=0)
    for img in images:
        rows, cols = np.nonzero(img.max(1))[0], np.nonzero(img.max(0))[0]
        assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 in (19, 20, 21)  # longer side 20 px
        assert img.max() >= 200 and img[img > 0].size < 0.5 * img.size  # bright strokes on black


def test_every_digit_has_the_styles_mnist_rarely_has():
    assert set(TEMPLATES) == set(range(10))
    assert len(TEMPLATES[1]) >= 3 and len(TEMPLATES[7]) >= 2 and len(TEMPLATES[9]) >= 3


def test_pen_digits_flag_is_checked():
    with pytest.raises(ValueError, match="pen_digits"):
        TrainConfig(pen_digits=-1)
