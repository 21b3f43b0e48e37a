"""The ``mnist-cnn`` command. Only this package prints and chooses exit codes.

Exit status: 0 success; 1 some inputs failed (a file ``predict`` or ``read`` could not read; the
others are still processed, and an image with no ink is an answer — "no digit found" — not a
failure); 2 a usage or data error (bad flag, an image or run that does not exist, missing data
folder, corrupt file); 130 interrupted.

One module per group of commands, each holding the commands' sub-parsers (``add_NAME``) and
their work (``cmd_NAME``): ``training`` (train, tune, recipes, runs, show), ``evaluation``
(evaluate, calibrate, gate, ensemble, export, import-keras), ``images`` (predict, read, preprocess) and ``serve``;
``common`` holds the flags and steps several of them share. This module puts the parser together
and runs a command.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import MnistCnnError
from .common import _add_verbosity_flags
from .evaluation import (
    add_calibrate,
    add_ensemble,
    add_evaluate,
    add_export,
    add_gate,
    add_import_keras,
    cmd_calibrate,
    cmd_ensemble,
    cmd_evaluate,
    cmd_export,
    cmd_gate,
    cmd_import_keras,
)
from .images import add_predict, add_preprocess, add_read, cmd_predict, cmd_preprocess, cmd_read
from .serve import add_serve, cmd_serve
from .training import (
    add_recipes,
    add_runs,
    add_show,
    add_train,
    add_tune,
    cmd_recipes,
    cmd_runs,
    cmd_show,
    cmd_train,
    cmd_tune,
    torch_device,
)

__all__ = ["COMMANDS", "SUBPARSERS", "build_parser", "main", "torch_device"]

# The order of `mnist-cnn --help`.
SUBPARSERS = (
    add_train,
    add_evaluate,
    add_ensemble,
    add_predict,
    add_export,
    add_import_keras,
    add_serve,
    add_read,
    add_preprocess,
    add_calibrate,
    add_gate,
    add_show,
    add_recipes,
    add_runs,
    add_tune,
)

COMMANDS = {
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "ensemble": cmd_ensemble,
    "predict": cmd_predict,
    "export": cmd_export,
    "import-keras": cmd_import_keras,
    "serve": cmd_serve,
    "read": cmd_read,
    "preprocess": cmd_preprocess,
    "calibrate": cmd_calibrate,
    "gate": cmd_gate,
    "show": cmd_show,
    "recipes": cmd_recipes,
    "runs": cmd_runs,
    "tune": cmd_tune,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnist-cnn", description="Train, evaluate and use CNNs that read handwritten digits."
    )
    _add_verbosity_flags(parser, suppress=False)
    common = argparse.ArgumentParser(add_help=False)
    _add_verbosity_flags(common, suppress=True)  # after the command they override only when given
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBPARSERS:
        add(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr)
    try:
        return COMMANDS[args.command](args)
    except MnistCnnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ValueError as exc:  # invalid settings, e.g. --val-split 70000
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except OSError as exc:  # e.g. cannot write the run folder or output file
        print(f"error: {exc.strerror or exc}: {exc.filename or ''}", file=sys.stderr)
        return 1
