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
