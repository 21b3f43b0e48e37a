"""mnist-cnn: train, evaluate, inspect and use convolutional networks that read handwritten digits.

A model is a folder (``model.safetensors`` + ``config.json``); one ships with the package, so
nothing needs training or downloading to start:

>>> import mnist_cnn
>>> clf = mnist_cnn.load_model()                  # the default model (src/mnist_cnn/pretrained)  # doctest: +SKIP
>>> clf.predict("my_digit.jpg")                   # a photo, a scan, a drawing: any size  # doctest: +SKIP
array([7])
>>> clf.predict_proba(mnist_cnn.load_mnist().test_images[:2].numpy()).shape   # doctest: +SKIP
(2, 10)
>>> mnist_cnn.read_digits(clf, "phone_number.jpg")   # several digits in a row  # doctest: +SKIP

``predict`` and ``predict_proba`` take paths, ``PIL.Image`` objects, arrays of any size or lists of
them (preprocessed as by the CLI: :func:`preprocess_image`), and MNIST-format arrays as they are:
28x28, white digit on black, uint8 0-255 or float 0-1 (a 28x28 array with a light border, dark ink
on light paper, is inverted and re-framed, not misread). ``load_model("runs/NAME")`` (or ``"NAME"``, or
``"latest"``) loads a model you trained, and
``load_model(folder, runtime="onnxruntime")`` its exported ``model.onnx``.

Training: ``mnist-cnn train --recipe basic`` on the command line, or

>>> from mnist_cnn.train import train_run                                   # doctest: +SKIP
>>> train_run(mnist_cnn.get_recipe("basic").config, mnist_cnn.load_mnist(), "runs/mine")  # doctest: +SKIP

``mnist-cnn --help`` lists every command; docs/python-api.md is the guide to this API.
"""

from ._version import __version__ as __version__

# Each public name and the module that holds it, imported on first use (PEP 562): ``import mnist_cnn`` stays
# light, so the processes that preprocess images in parallel (mnist_cnn.parallel) never load PyTorch.
_PUBLIC = {
    "RECIPES": "config", "TrainConfig": "config", "get_recipe": "config",
    "load_mnist": "data", "read_idx": "data",
    "DataError": "errors", "MnistCnnError": "errors", "ModelFolderError": "errors",
    "Classifier": "inference", "default_model_dir": "inference", "load_model": "inference",
    "create_model": "models", "list_models": "models",
    "ImageError": "preprocess", "NoDigitError": "preprocess", "preprocess_image": "preprocess",
    "read_digits": "reading",
}  # fmt: skip

__all__ = sorted([*_PUBLIC, "__version__"])


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'mnist_cnn' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value  # once imported, an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
