"""Exceptions for mistakes a user can make and fix.

The command line catches :class:`MnistCnnError` and prints its message without a traceback;
anything else is a bug in this package.
"""


class MnistCnnError(Exception):
    """A user-facing error: the message says what went wrong and what to do."""

    exit_code = 1


class DataError(MnistCnnError):
    """The MNIST files are missing, unreadable, corrupt or could not be downloaded."""

    exit_code = 2


class ModelFolderError(MnistCnnError):
    """A saved model folder is missing files or holds something this version cannot load."""

    exit_code = 2


class PortInUseError(MnistCnnError):
    """``mnist-cnn serve``: the TCP port is taken by another program."""

    exit_code = 2


class ImageError(MnistCnnError):
    """Input that is not an image this tool can read (missing, corrupt, hostile, unsupported)."""


class MissingImageError(ImageError):
    """An image file or folder named as input that does not exist, or a folder named that holds no images: a
    mistake in the command (exit 2), found before any model loads."""

    exit_code = 2


class UnreadableFolderError(ImageError):
    """A folder of images that cannot be listed (permission denied): said so, never taken for an empty folder."""

    exit_code = 2


class NotAnImageError(ImageError):
    """The data is not an image Pillow can read."""


class FormatNotAcceptedError(NotAnImageError):
    """An image in a format outside :attr:`mnist_cnn.decode.ImageLimits.formats` (the service accepts a few)."""

    def __init__(self, name: str, format: str | None, accepted):
        self.name, self.format, self.accepted = name, format or "?", sorted(accepted)
        super().__init__(f"{name}: image format {self.format} is not accepted; use one of: {', '.join(self.accepted)}")

    def __reduce__(self):  # raised in a decoding process, it comes back whole
        return type(self), (self.name, self.format, self.accepted)


class TooManyPixelsError(ImageError):
    """More pixels than :attr:`mnist_cnn.decode.ImageLimits.max_pixels`, refused from the header before decoding.

    ``width`` and ``height`` are None when Pillow's own decompression-bomb check refused the file first.
    """

    def __init__(self, message: str, limit: int, width: int | None = None, height: int | None = None):
        super().__init__(message)
        self.limit, self.width, self.height = limit, width, height

    def __reduce__(self):  # raised in a decoding process, it comes back whole
        return type(self), (str(self), self.limit, self.width, self.height)


class NoDigitError(ImageError):
    """The image was read, but holds no ink: nothing to classify (the answer is "no digit found")."""


class TooManyMarksError(NoDigitError):
    """So many separate marks that the image does not look like a number (``mnist_cnn.reading.MAX_DIGITS``)."""


class TrainingDivergedError(MnistCnnError):
    """The training loss became NaN or infinite: the weights are garbage, so the run stops instead of saving them."""

    exit_code = 2


class NonFiniteOutputError(MnistCnnError):
    """A model gave NaN or infinite probabilities (broken weights, a zero normalisation std): no answer, not a wrong one."""

    exit_code = 2


class KerasImportError(MnistCnnError):
    """``mnist-cnn import-keras``: the file is damaged, not a saved Keras model, or of an architecture with no counterpart here."""

    exit_code = 2
