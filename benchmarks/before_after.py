"""The README's before/after picture: photographed test digits, what the simple pipeline gives the
model, and what the MNIST procedure gives it, with the model's answer under each.

    MNIST_CNN_DATA=../shared/data/mnist python benchmarks/before_after.py runs/basic --out docs/images/preprocess.png
"""

from __future__ import annotations

import argparse

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import mnist_cnn  # noqa: E402
from mnist_cnn.preprocess import preprocess_image, simple_preprocess  # noqa: E402
from mnist_cnn.synthetic import render_digit  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="model folder")
    parser.add_argument(
        "--out", default="docs/images/preprocess.png", help="PNG to write (default: docs/images/preprocess.png)"
    )
    parser.add_argument("--count", type=int, default=6, help="digits to show (default: 6)")
    parser.add_argument("--seed", type=int, default=7, help="which digits and photos (default: 7)")
    args = parser.parse_args()

    clf = mnist_cnn.load_model(args.run)
    data = mnist_cnn.load_mnist(download=False)
    rng = np.random.default_rng(args.seed)
    idx = rng.choice(len(data.test_images), args.count, replace=False)
    fig, axes = plt.subplots(3, args.count, figsize=(1.6 * args.count, 5.2))
    for col, i in enumerate(idx):
        label = int(data.test_labels[i])
        photo = render_digit(data.test_images[i].numpy(), rng)
        rows = [("photo", np.asarray(photo.convert("RGB")), None), ("simple", simple_preprocess(photo), None)]
        rows.append(("MNIST procedure", preprocess_image(photo).array, None))
        for row, (name, img, _) in enumerate(rows):
            ax = axes[row, col]
            ax.imshow(img, cmap=None if img.ndim == 3 else "gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if row:
                p = clf.predict_proba(img)[0]
                ok = int(p.argmax()) == label
                ax.set_title(f"{int(p.argmax())} (p={p.max():.2f})", fontsize=9, color="green" if ok else "red")
            else:
                ax.set_title(f"digit {label}", fontsize=9)
            if col == 0:
                ax.set_ylabel(name, fontsize=9)
    fig.suptitle("What the model sees: simple resize + invert vs. the MNIST procedure", fontsize=10)
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
