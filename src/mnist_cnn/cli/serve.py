"""The ``serve`` command: a saved model over HTTP, its flags derived from ``ServeSettings``."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from .common import _add_runs_dir_flag, _resolve_run


def _add_serve_flags(p: argparse.ArgumentParser) -> None:
    """One flag per ServeSettings field, like the training flags."""
    from ..classifier import RUNTIMES
    from ..config import ServeSettings as Settings

    g = p.add_argument_group("service (limits and batching)")
    for f in dataclasses.fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            g.add_argument(flag, dest=f.name, default=None, action=argparse.BooleanOptionalAction,
                           help=f"{f.metadata['help']} (default: {'on' if f.default else 'off'})")  # fmt: skip
            continue
        extra = {"choices": RUNTIMES} if f.name == "runtime" else {}
        g.add_argument(flag, dest=f.name, type=type(f.default), default=None, metavar=f.name.upper(),
                       help=f"{f.metadata['help']} (default: {f.default})", **extra)  # fmt: skip


def add_serve(sub, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("serve", parents=[common], help="serve a saved model over HTTP: REST API and drawing page")
    p.add_argument("run", type=Path, nargs="?", default=None,
                   help="run (model) folder, run name in --runs-dir, or latest (default: the model that ships with mnist-cnn); served on torch when it has no model.onnx and --runtime is not given")  # fmt: skip
    _add_runs_dir_flag(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    p.add_argument("--graceful-timeout", type=float, default=10.0,
                   help="seconds in-flight requests get to finish on shutdown (default: 10)")  # fmt: skip
    _add_serve_flags(p)


def cmd_serve(args) -> int:
    from ..default_model import describe
    from ..inference import default_model_dir, load_model, read_config
    from ..serve import check_port, run, settings_from

    if args.run is None:
        args.run = default_model_dir()
        what = f"the default model {describe(read_config(args.run))}"
    else:
        args.run = _resolve_run(args.run, args)
        what = args.run
    note = ""
    if args.runtime is None:
        args.runtime, note = default_runtime(args.run)
    settings = settings_from(vars(args))
    load_model(args.run, runtime=settings.runtime)  # a clear error now rather than a server that never gets ready
    if not 0 < args.port < 65536:
        raise ValueError(f"--port must be between 1 and 65535; got {args.port}")
    check_port(args.host, args.port)
    print(f"serving {what} ({settings.runtime} runtime{note}) on http://{args.host}:{args.port}/ (API docs at /docs); "
          "Ctrl-C stops", file=sys.stderr)  # fmt: skip
    run(args.run, settings, host=args.host, port=args.port, graceful_timeout=args.graceful_timeout)
    return 0


def default_runtime(run: Path) -> tuple[str | None, str]:
    """The runtime ``serve`` uses when none is asked for, and why: ONNX Runtime (None: the settings' default) where
    the folder has ``model.onnx`` (the default model ships one) and onnxruntime is installed, else PyTorch."""
    from ..classifier import require_onnx
    from ..errors import MnistCnnError
    from ..export import ONNX_FILE

    if not (run / ONNX_FILE).is_file():
        return "torch", f": no {ONNX_FILE}; `mnist-cnn export` makes one for onnxruntime"
    try:
        require_onnx()
    except MnistCnnError:
        return "torch", ": onnxruntime is not installed (pip install 'mnist-cnn[onnx]')"
    return None, ""
