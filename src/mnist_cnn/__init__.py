"""mnist-cnn: train, evaluate, inspect and use convolutional networks that read handwritten digits."""

from ._version import __version__
from .config import RECIPES, TrainConfig, get_recipe
from .data import load_mnist, read_idx
from .errors import DataError, MnistCnnError, ModelFolderError
from .inference import Classifier, default_model_dir, load_model
from .models import create_model, list_models
from .preprocess import ImageError, NoDigitError, preprocess_image
from .reading import read_digits

__all__ = [
    "RECIPES", "Classifier", "DataError", "ImageError", "MnistCnnError", "ModelFolderError", "NoDigitError",
    "TrainConfig", "__version__", "create_model", "default_model_dir", "get_recipe", "list_models", "load_mnist", "load_model",
    "preprocess_image", "read_digits", "read_idx",
]  # fmt: skip
