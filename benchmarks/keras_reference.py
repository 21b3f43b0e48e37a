"""The seeds' own Keras model, trained and timed on this machine, so every comparison is a ratio.

    pip install -e ".[keras-reference]"      # tensorflow-cpu; not a dependency of mnist-cnn
    python benchmarks/keras_reference.py --seeds 0 1 2 --epochs 10 --eval-every 100

The model is the most common seed, layer for layer: Conv32-Pool-Conv64-Pool-Dense128-Dense10
(225,034 parameters), Adam (Keras defaults), batch 32, categorical cross-entropy, inputs scaled to
0-1. It trains on the same 55,000 images as our recipes (the same seeded validation split, taken
from mnist-cnn's verified loader). As in train_speed.py, test accuracy is measured every
``--eval-every`` batches only to report when 98.5 / 99.0 / 99.5 / 99.7% was first reached; that
time is excluded from the clock. Then ``model.predict`` throughput and latency are measured at
batch sizes 1, 64 and 1,024, which benchmarks/inference.py measures for our models.
Prints one JSON line per seed, a JSON summary and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np
from train_speed import seconds_to, threshold_summary  # the same thresholds and summary as our recipes


def build(keras):
    return keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Conv2D(32, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Conv2D(64, 3, activation="relu"),
            keras.layers.MaxPooling2D(2),
            keras.layers.Flatten(),
            keras.layers.Dense(128, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def load(seed: int):
    from mnist_cnn import load_mnist
    from mnist_cnn.data import split_validation

    data = load_mnist()
    train_idx, _ = split_validation(len(data.train_images), "5000", seed)
    x = data.train_images.numpy()[train_idx.numpy()][..., None].astype("float32") / 255.0
    y = data.train_labels.numpy()[train_idx.numpy()]
    xt = data.test_images.numpy()[..., None].astype("float32") / 255.0
    return x, y, xt, data.test_labels.numpy()


def train_once(seed: int, epochs: int, eval_every: int) -> tuple[dict, object, np.ndarray]:
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    x, y, xt, yt = load(seed)
    model = build(keras)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    class Trace(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.start, self.paused, self.step, self.points = 0.0, 0.0, 0, []

        def on_train_begin(self, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.step += 1
            if self.step % eval_every == 0:
                t = time.perf_counter()
                seconds = t - self.start - self.paused
                probs = self.model.predict(xt, batch_size=1024, verbose=0)
                acc = float((probs.argmax(1) == yt).mean())
                self.points.append({"step": self.step, "seconds": round(seconds, 3), "test_accuracy": acc})
                self.paused += time.perf_counter() - t

    trace = Trace()
    start = time.perf_counter()
    model.fit(x, y, batch_size=32, epochs=epochs, shuffle=True, verbose=0, callbacks=[trace])
    train_seconds = time.perf_counter() - start - trace.paused
    final = float((model.predict(xt, batch_size=1024, verbose=0).argmax(1) == yt).mean())
    row = {
        "model": "keras basic",
        "seed": seed,
        "epochs": epochs,
        "train_seconds": round(train_seconds, 2),
        "final_test_accuracy": final,
        "seconds_to": seconds_to(trace.points),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
    }
    return row, model, xt


def predict_speed(model, xt: np.ndarray, repeats: int) -> dict:
    out = {}
    for batch in (1, 64, 1024):
        n = {1: 200, 64: 64 * 40, 1024: 10240}[batch]
        x = np.resize(xt, (n, 28, 28, 1))
        model.predict(x[: batch * 2], batch_size=batch, verbose=0)  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            model.predict(x, batch_size=batch, verbose=0)
            times.append(time.perf_counter() - t)
        best = statistics.median(times)
        out[str(batch)] = {"images_per_second": round(n / best, 1), "ms_per_batch": round(1000 * best / (n / batch), 3)}
    # model(x) without predict()'s per-call machinery, the fastest way Keras offers for one image
    one = xt[:1]
    model(one, training=False)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(100):
            model(one, training=False)
        times.append((time.perf_counter() - t) / 100)
    out["1_call"] = {
        "images_per_second": round(1 / statistics.median(times), 1),
        "ms_per_batch": round(1000 * statistics.median(times), 3),
    }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="one run per seed (default: 0 1 2)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs, as the seed trained (default: 10)")
    parser.add_argument(
        "--eval-every", type=int, default=200, help="measure test accuracy every K batches (default: 200)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timing repeats for predict (default: 5)")
    args = parser.parse_args()
    rows, model, xt = [], None, None
    for seed in args.seeds:
        row, model, xt = train_once(seed, args.epochs, args.eval_every)
        print(json.dumps(row), flush=True)
        rows.append(row)
    speed = predict_speed(model, xt, args.repeats)
    final = [r["final_test_accuracy"] for r in rows]
    summary = {
        "model": "keras basic",
        "seeds": args.seeds,
        "final_test_accuracy_mean": statistics.fmean(final),
        "final_test_accuracy_min": min(final),
        "final_test_accuracy_max": max(final),
        "train_seconds_median": statistics.median(r["train_seconds"] for r in rows),
        "predict": speed,
        "cpu": _cpu(),
        "cores": os.cpu_count(),
    }
    summary.update(threshold_summary(rows))
    print(json.dumps(summary))
    print()
    keys = list(rows[0]["seconds_to"])
    cells = [f"{summary[f'seconds_to_{k}_median']:.1f}" if summary[f"seconds_to_{k}_median"] is not None
             else f"- ({summary[f'seeds_reaching_{k}']}/{len(rows)})" for k in keys]  # fmt: skip
    print("| model | seeds | " + " | ".join(f"s to {k}%" for k in keys) + " | final test acc (min-max) | train s |")
    print("|" + "---|" * (len(keys) + 4))
    print(f"| keras basic | {len(rows)} | " + " | ".join(cells) + f" | {summary['final_test_accuracy_mean'] * 100:.2f}% "
          f"({summary['final_test_accuracy_min'] * 100:.2f}-{summary['final_test_accuracy_max'] * 100:.2f}) | "
          f"{summary['train_seconds_median']:.1f} |")  # fmt: skip
    print()
    print("| model.predict batch | images/s | ms per batch |")
    print("|---|---|---|")
    for batch, s in speed.items():
        print(f"| {batch} | {s['images_per_second']:,.0f} | {s['ms_per_batch']:.2f} |")


def _cpu() -> str:
    from recipes import cpu_name

    return cpu_name()


if __name__ == "__main__":
    main()
