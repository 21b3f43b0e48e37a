"""The package version, in its own module so that submodules can import it while the package loads."""

__version__ = "0.1.0"
