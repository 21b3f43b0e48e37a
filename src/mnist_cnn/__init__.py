"""mnist-cnn: train, evaluate, inspect and use convolutional networks that read handwritten digits."""

__version__ = "0.1.0"

from .config import RECIPES, TrainConfig, get_recipe  # noqa: E402
from .data import load_mnist, read_idx  # noqa: E402
from .errors import DataError, MnistCnnError, ModelFolderError  # noqa: E402
from .inference import Classifier, default_model_dir, load_model  # noqa: E402
from .models import create_model, list_models  # noqa: E402
from .preprocess import ImageError, NoDigitError, preprocess_image  # noqa: E402
from .reading import read_digits  # noqa: E402

__all__ = [
    "RECIPES", "Classifier", "DataError", "ImageError", "MnistCnnError", "ModelFolderError", "NoDigitError",
    "TrainConfig", "create_model", "default_model_dir", "get_recipe", "list_models", "load_mnist", "load_model",
    "preprocess_image", "read_digits", "read_idx",
]  # fmt: skip
