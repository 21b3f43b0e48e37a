"""mnist_cnn.keras_import: Keras files written here by hand with h5py (TensorFlow is not needed), in
both formats, from a torch model's weights converted the other way by an independent path.

The reference: a NumPy forward pass with Keras' semantics (channels-last convolutions, pooling and
Flatten) on the Keras arrays must give the torch model's logits, which proves the fixture is what
Keras would compute; then the imported folder must give them too.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mnist_cnn import cli, create_model, load_model
from mnist_cnn.errors import KerasImportError, ModelFolderError
from mnist_cnn.keras_import import KERAS_ARCHITECTURES, import_keras

ROOT = Path(__file__).resolve().parents[1]

# The seed tutorials' models as their Keras code builds them: (class, config) per layer.
CONV = {"kernel_size": [3, 3], "strides": [1, 1], "padding": "valid", "data_format": "channels_last", "use_bias": True}
POOL = ("MaxPooling2D", {"pool_size": [2, 2], "strides": [2, 2], "padding": "valid", "data_format": "channels_last"})
KERAS_LAYERS = {
    "basic": [("Conv2D", {"filters": 32, "activation": "relu", **CONV}), POOL,
              ("Conv2D", {"filters": 64, "activation": "relu", **CONV}), POOL, ("Flatten", {}),
              ("Dense", {"units": 128, "activation": "relu", "use_bias": True}),
              ("Dense", {"units": 10, "activation": "softmax", "use_bias": True})],
    "dropout": [("Conv2D", {"filters": 32, "activation": "relu", **CONV}), POOL,
                ("Conv2D", {"filters": 64, "activation": "relu", **CONV}), POOL, ("Flatten", {}),
                ("Dropout", {"rate": 0.5}), ("Dense", {"units": 10, "activation": "softmax", "use_bias": True})],
    "three-conv": [("Conv2D", {"filters": 32, "activation": "relu", **CONV}), POOL,
                   ("Conv2D", {"filters": 64, "activation": "relu", **CONV}), POOL,
                   ("Conv2D", {"filters": 64, "activation": "relu", **CONV}), ("Flatten", {}),
                   ("Dense", {"units": 64, "activation": "relu", "use_bias": True}),
                   ("Dense", {"units": 10, "activation": None, "use_bias": True})],
}  # fmt: skip


def keras_arrays(model: torch.nn.Module) -> list[list[np.ndarray]]:
    """The torch weights in Keras' layouts, one list per weighted layer, index by index."""
    out, flatten_shape = [], None
    with torch.no_grad():
        _, c, h, w = model.features(torch.zeros(1, 1, 28, 28)).shape
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            weight = m.weight.detach().numpy()  # (O, I, kh, kw)
            kernel = np.zeros(weight.shape[2:] + weight.shape[1::-1], np.float32)  # (kh, kw, I, O)
            for o, i, y, x in np.ndindex(*weight.shape):
                kernel[y, x, i, o] = weight[o, i, y, x]
        elif isinstance(m, torch.nn.Linear):
            weight = m.weight.detach().numpy()  # (out, in)
            kernel = np.zeros(weight.shape[::-1], np.float32)
            for j in range(weight.shape[1]):
                # Keras' Flatten numbers (y, x, channel) channel-fastest; torch (channel, y, x) x-fastest.
                if flatten_shape is None:
                    ch, rest = divmod(j, h * w)
                    y, x = divmod(rest, w)
                    kernel[(y * w + x) * c + ch] = weight[:, j]
                else:
                    kernel[j] = weight[:, j]
            flatten_shape = (h, w, c)
        else:
            continue
        out.append([kernel, m.bias.detach().numpy().copy()])
    return out


def keras_forward(layers, arrays, x: np.ndarray) -> np.ndarray:
    """Keras' computation on channels-last input (N, 28, 28, 1), softmax left out: the logits."""
    weights = iter(arrays)
    for kind, cfg in layers:
        if kind == "Conv2D":
            kernel, bias = next(weights)
            windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))  # (N, H', W', C, 3, 3)
            x = np.einsum("nhwcij,ijco->nhwo", windows, kernel) + bias
        elif kind == "MaxPooling2D":
            n, h, w, c = x.shape
            x = x[:, : h // 2 * 2, : w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
        elif kind == "Flatten":
            x = x.reshape(len(x), -1)
        elif kind == "Dense":
            kernel, bias = next(weights)
            x = x @ kernel + bias
        if cfg.get("activation") == "relu":
            x = np.maximum(x, 0)
    return x


def write_keras3(path, layers, arrays, prefix: str = "layers") -> None:
    """A Keras 3 ``.keras`` zip: config.json, metadata.json and model.weights.h5."""
    specs = [{"module": "keras.layers", "class_name": "InputLayer",
              "config": {"batch_shape": [None, 28, 28, 1], "dtype": "float32", "name": "input_layer"}}]  # fmt: skip
    for i, (kind, cfg) in enumerate(layers):
        specs.append({"module": "keras.layers", "class_name": kind, "config": {"name": f"layer_{i}", **cfg}})
    config = {"module": "keras", "class_name": "Sequential", "config": {"name": "sequential", "layers": specs}}
    weights, counts = iter(arrays), {}
    h5_path = path.with_suffix(".weights.h5")
    with h5py.File(h5_path, "w") as f:
        for kind, _ in layers:  # Keras 3 names the groups by class: conv2d, conv2d_1, max_pooling2d, ...
            snake = {"Conv2D": "conv2d", "MaxPooling2D": "max_pooling2d", "Dense": "dense"}.get(kind, kind.lower())
            counts[snake] = counts.get(snake, -1) + 1
            group = f.create_group(f"{prefix}/{snake}" + (f"_{counts[snake]}" if counts[snake] else "") + "/vars")
            if kind in ("Conv2D", "Dense"):
                for k, array in enumerate(next(weights)):
                    group.create_dataset(str(k), data=array)
        f.create_group("optimizer/vars")
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("metadata.json", json.dumps({"keras_version": "3.6.0", "date_saved": "2026-12-01@10:00:00"}))
        z.writestr("config.json", json.dumps(config))
        z.write(h5_path, "model.weights.h5")


def write_keras2(path, layers, arrays, *, with_config: bool = True) -> None:
    """A Keras 2 ``.h5``: model_config, and model_weights/<layer>/<layer>/kernel:0 and bias:0."""
    specs = [{"class_name": "InputLayer", "config": {"batch_input_shape": [None, 28, 28, 1], "name": "input_1"}}]
    names = [f"{kind.lower()}_{i}" for i, (kind, _) in enumerate(layers)]
    specs += [{"class_name": kind, "config": {"name": n, **cfg}} for n, (kind, cfg) in zip(names, layers, strict=True)]
    weights = iter(arrays)
    with h5py.File(path, "w") as f:
        if with_config:
            f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": {"name": "s", "layers": specs}})
        f.attrs["keras_version"] = b"2.15.0"
        group = f.create_group("model_weights")
        group.attrs["layer_names"] = [n.encode() for n in names]
        for n, (kind, _) in zip(names, layers, strict=True):
            g = group.create_group(n)
            wnames = [f"{n}/kernel:0", f"{n}/bias:0"] if kind in ("Conv2D", "Dense") else []
            g.attrs["weight_names"] = [w.encode() for w in wnames]
            for wname, array in zip(wnames, next(weights) if wnames else [], strict=True):
                g.create_dataset(wname, data=array)


WRITERS = {
    "keras": write_keras3,
    "keras-2.15": lambda *a: write_keras3(*a, prefix="_layer_checkpoint_dependencies"),  # .keras of Keras 2.13-2.15
    "h5": write_keras2,
}


@pytest.fixture(scope="module")
def images(mnist) -> np.ndarray:
    return mnist.test_images[:16].numpy()  # (16, 28, 28) uint8


@pytest.mark.parametrize("fmt", sorted(WRITERS))
@pytest.mark.parametrize("name", KERAS_ARCHITECTURES)
def test_import_gives_the_torch_models_logits(tmp_path, images, name, fmt):
    torch.manual_seed(0)
    model = create_model(name).eval()
    layers, arrays = KERAS_LAYERS[name], keras_arrays(model)
    x = images.astype(np.float32) / 255  # what the Keras tutorials feed their models
    with torch.no_grad():
        expected = model(torch.from_numpy(x[:, None])).numpy()
    np.testing.assert_allclose(keras_forward(layers, arrays, x[..., None]), expected, atol=1e-4)  # the fixture is right

    path = tmp_path / f"model.{fmt.split('-')[0]}"
    WRITERS[fmt](path, layers, arrays)
    out = import_keras(path, tmp_path / "run")
    clf = load_model(out)
    assert clf.config["architecture"] == name
    assert clf.config["normalization"] == {"mean": 0.0, "std": 1.0}
    np.testing.assert_allclose(clf.logits(images), expected, atol=1e-4)
    if name == "dropout":
        assert clf.config["model_kwargs"]["dropout"] == 0.5


def test_cli_imports_and_refuses_an_existing_folder(tmp_path, capsys):
    torch.manual_seed(1)
    path = tmp_path / "seed.h5"
    write_keras2(path, KERAS_LAYERS["basic"], keras_arrays(create_model("basic")))
    assert cli.main(["import-keras", str(path), "--out", str(tmp_path / "run")]) == 0
    assert "architecture basic" in capsys.readouterr().out
    assert cli.main(["import-keras", str(path), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    with pytest.raises(ModelFolderError, match="already exists"):
        import_keras(path, tmp_path / "run")
    assert import_keras(path, tmp_path / "run", overwrite=True).is_dir()


def _mlp(tmp_path):
    path = tmp_path / "mlp.keras"
    layers = [("Flatten", {}), ("Dense", {"units": 128, "activation": "relu"}), ("Dense", {"units": 10, "activation": "softmax"})]  # fmt: skip
    arrays = [[np.zeros((784, 128), np.float32), np.zeros(128, np.float32)],
              [np.zeros((128, 10), np.float32), np.zeros(10, np.float32)]]  # fmt: skip
    write_keras3(path, layers, arrays)
    return path


def _damaged(tmp_path):
    path = tmp_path / "damaged.keras"
    write_keras3(path, KERAS_LAYERS["basic"], keras_arrays(create_model("basic")))
    path.write_bytes(path.read_bytes()[:2000])
    return path


def _weights_only(tmp_path):
    path = tmp_path / "weights.h5"
    write_keras2(path, KERAS_LAYERS["basic"], keras_arrays(create_model("basic")), with_config=False)
    return path


def _other_zip(tmp_path):
    path = tmp_path / "photos.keras"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a.txt", "hello")
    return path


def _text(tmp_path):
    path = tmp_path / "notes.h5"
    path.write_text("not a model")
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (_mlp, "none of the architectures that can be imported"),
        (_damaged, "damaged or not a saved Keras model|neither a Keras 3"),
        (_weights_only, "holds weights only"),
        (_other_zip, "not a Keras 3 model"),
        (_text, "neither a Keras 3 .keras archive nor a Keras 2 .h5 file"),
    ],
    ids=["foreign-architecture", "truncated", "weights-only", "other-zip", "text-file"],
)
def test_a_file_that_cannot_be_imported_gives_one_clear_line(tmp_path, capsys, make, message):
    path = make(tmp_path)
    with pytest.raises(KerasImportError, match=message):
        import_keras(path, tmp_path / "run")
    assert cli.main(["import-keras", str(path), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", KERAS_ARCHITECTURES)
def test_files_tensorflow_saves_give_tensorflows_outputs(tmp_path, mnist, name):
    """With TensorFlow installed (the keras-reference extra; skipped otherwise): the Keras model of each seed
    architecture, built and saved by Keras itself in both formats, imports to a folder whose probabilities on
    MNIST test digits are Keras' own within 1e-5. benchmarks/keras_import.py does the same on trained models."""
    import importlib.util

    pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    spec = importlib.util.spec_from_file_location("keras_import_bench", ROOT / "benchmarks" / "keras_import.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    keras.utils.set_random_seed(0)
    model = bench.build(keras, name)
    digits = mnist.test_images[:500].numpy()
    expected = model.predict(digits[..., None].astype("float32") / 255, verbose=0)
    for suffix in (".keras", ".h5"):
        model.save(tmp_path / f"m{suffix}")
        got = load_model(import_keras(tmp_path / f"m{suffix}", tmp_path / suffix[1:])).predict_proba(digits)
        np.testing.assert_allclose(got, expected, atol=bench.TOLERANCE, rtol=0)
