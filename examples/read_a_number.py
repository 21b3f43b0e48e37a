"""Read a number: every handwritten digit in a picture, left to right, line by line.

python examples/read_a_number.py postcode.jpg [--model runs/NAME]
python examples/read_a_number.py          # no file: a number written with MNIST test digits
"""

import argparse

import numpy as np

import mnist_cnn


def number_from_mnist(count: int = 5) -> tuple[np.ndarray, str]:
    """MNIST test digits side by side, dark ink on white paper as on a page, and what they say."""
    data = mnist_cnn.load_mnist()
    digits = [255 - d for d in data.test_images[:count].numpy()]
    page = np.full((48, 28 * count + 20), 255, np.uint8)
    page[10:38, 10:-10] = np.hstack(digits)
    return page, "".join(str(int(label)) for label in data.test_labels[:count])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image", nargs="?", help="image file (default: a number made of MNIST test digits)")
    parser.add_argument("--model", default=None, help="model folder (default: the model that ships with mnist-cnn)")
    args = parser.parse_args()

    image, written = (args.image, None) if args.image else number_from_mnist()
    reading = mnist_cnn.read_digits(mnist_cnn.load_model(args.model), image)
    print(f"read: {reading.text or '(no digit found)'}" + (f"  (written: {written})" if written else ""))
    for digit in reading.digits:
        print(f"  {digit.label} at {digit.box} (p={digit.confidence:.3f}{', unsure' if digit.uncertain else ''})")


if __name__ == "__main__":
    main()
