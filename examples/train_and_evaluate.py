"""Train a small CNN on MNIST, print its test accuracy, a classification report and the confusion
matrix, and save it: the Keras tutorial script, with mnist-cnn.

    python examples/train_and_evaluate.py                     # the tutorials' model: basic, 10 epochs
    python examples/train_and_evaluate.py --recipe fast       # one epoch, a few seconds, ~99%
    python examples/train_and_evaluate.py --epochs 1 --limit 5000   # a quick try on 5,000 images
"""

import argparse
import dataclasses
import time

from sklearn.metrics import classification_report, confusion_matrix

import mnist_cnn
from mnist_cnn.train import train_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="basic", help="training recipe, see `mnist-cnn recipes` (default: basic)")
    parser.add_argument("--epochs", type=int, default=0, help="epochs (default: 0 = the recipe's)")
    parser.add_argument("--limit", type=int, default=0, help="train on the first N images (default: 0 = all)")
    parser.add_argument("--out", default=None, help="model folder to write (default: runs/example-DATE-TIME)")
    args = parser.parse_args()

    # 1. Load MNIST: 60,000 training and 10,000 test images, 28x28, white digit on black.
    data = mnist_cnn.load_mnist()
    print(f"train {tuple(data.train_images.shape)}, test {tuple(data.test_images.shape)}")

    # 2. Train: a recipe is the model, optimiser and schedule; change any field you like.
    config = mnist_cnn.get_recipe(args.recipe).config
    config = dataclasses.replace(config, epochs=args.epochs or config.epochs, limit=args.limit)
    out = args.out or time.strftime(f"runs/example-{args.recipe}-%Y%m%d-%H%M%S")
    train_run(config, data, out, recipe=args.recipe, progress=False)  # saves model.safetensors + config.json

    # 3. Evaluate on the test set, as model.evaluate and sklearn.metrics do in the tutorials.
    clf = mnist_cnn.load_model(out)
    predicted = clf.predict(data.test_images.numpy())
    truth = data.test_labels.numpy()
    print(f"test accuracy: {(predicted == truth).mean():.4f}")
    print(classification_report(truth, predicted, digits=4))
    print("confusion matrix (rows: true digit, columns: predicted):")
    print(confusion_matrix(truth, predicted))
    print(f"saved in {out}; use it with: mnist-cnn predict {out} my_digit.png")


if __name__ == "__main__":
    main()
