"""Which digit is in my picture? A photo, a scan or a drawing, any size, with the model that ships
with mnist-cnn (no training needed) or one you trained.

    python examples/predict_my_digit.py my_digit.jpg [more.png ...]
    python examples/predict_my_digit.py my_digit.jpg --model runs/NAME
    python examples/predict_my_digit.py                 # no file: five digits of the MNIST test set
"""

import argparse

import mnist_cnn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="*", help="image files (default: five MNIST test digits)")
    parser.add_argument("--model", default=None, help="model folder (default: the model that ships with mnist-cnn)")
    args = parser.parse_args()

    clf = mnist_cnn.load_model(args.model)  # None: the default model
    if args.images:
        names, images = args.images, args.images  # paths are read and preprocessed like the CLI does
    else:
        data = mnist_cnn.load_mnist()
        images = data.test_images[:5].numpy()  # MNIST-format arrays are used as they are
        names = [f"test image {i} (a {int(label)})" for i, label in enumerate(data.test_labels[:5])]
    for name, probs in zip(names, clf.predict_proba(images), strict=True):
        print(f"{name}: {probs.argmax()} (p={probs.max():.3f})")


if __name__ == "__main__":
    main()
