"""The model that ships with the package, and the command that makes it from a trained run.

``mnist_cnn.load_model()`` with no folder, and ``mnist-cnn predict IMAGE`` / ``read IMAGE`` / ``serve``
with no RUN, use the model folder ``mnist_cnn/pretrained/`` (:func:`mnist_cnn.inference.default_model_dir`).
In a checkout, make it from a finished training run and commit the files it writes:

    make default-model RUN=runs/best-seed0      # = python -m mnist_cnn.default_model runs/best-seed0

It copies the run's weights (float32, as trained) and the part of its ``config.json`` that inference and
provenance need — no path of the machine it ran on —, records the exact ``mnist-cnn train`` commands
that reproduce the run, evaluates the copy on the 10,000 MNIST test images, exports ``model.onnx`` (with
the ``onnx`` extra; ``serve``'s runtime) and writes a model card (``README.md``).
``python -m mnist_cnn.default_model`` with no RUN evaluates the installed default model and prints the
row that README.md quotes.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from .errors import MnistCnnError, ModelFolderError
from .folder import GATE, GATE_SECTION
from .inference import CONFIG, DEFAULT_MODEL_DIR, WEIGHTS, load_model, read_config, write_json

log = logging.getLogger(__name__)

# The weights travel inside every wheel: a `best` network (142k parameters, float32) is 0.57 MB.
MAX_BYTES = 1_000_000
CARD = "README.md"


def describe(config: dict) -> str:
    """One line naming a model folder from its config: ``best-seed0 (recipe best, test accuracy 99.71%)``."""
    name = (config.get("default_model") or {}).get("name") or config.get("architecture", "?")
    accuracy = (config.get("metrics") or {}).get("test_accuracy")
    measured = f"test accuracy {accuracy:.2%}" if accuracy is not None else "test accuracy not measured"
    return f"{name} (recipe {config.get('recipe') or 'none'}, {measured})"


def training_commands(config: dict, name: str, runs_dir: str = "runs") -> list[str]:
    """The ``mnist-cnn train`` command(s) that made a run: its recipe, then each setting that differs
    from the recipe's. A fine-tuned run (``--init``) comes after the command of the run it started from,
    when that folder can still be read."""
    from .config import RECIPES

    train_config = dict(config.get("train_config") or {})
    recipe = config.get("recipe")
    base = RECIPES[recipe].config if recipe in RECIPES else None
    commands = []
    init = train_config.get("init") or ""
    if init:
        init_name, commands = _init_commands(init, name, runs_dir)
        train_config["init"] = f"{runs_dir}/{init_name}"
    flags = [f"--recipe {recipe}"] if base is not None else []
    for f in dataclasses.fields(base or _default_config()):
        value = train_config.get(f.name, f.default)
        if base is None or value != getattr(base, f.name):
            flags.append(_flag(f.name, value))
    if (config.get("training") or {}).get("deterministic"):
        flags.append("--deterministic")
    flags.append(f"--runs-dir {runs_dir} --name {name}")
    return [*commands, " ".join(["mnist-cnn train", *[f for f in flags if f]])]


def _init_commands(init: str, name: str, runs_dir: str) -> tuple[str, list[str]]:
    """(name, commands) of the run a fine-tuned run started from. A shipped default model (it started
    from the package's own) carries its name and commands; a run folder is read; otherwise none."""
    try:
        config = read_config(init)
    except ModelFolderError:
        log.warning("the run %s started from, %s, cannot be read: its command is not recorded", name, init)
        return Path(init).name, []
    shipped = config.get("default_model") or {}
    if shipped.get("name") and shipped.get("training_commands"):
        return shipped["name"], list(shipped["training_commands"])
    return Path(init).name, training_commands(config, Path(init).name, runs_dir)


def _default_config():
    from .config import TrainConfig

    return TrainConfig()


def _flag(field: str, value) -> str:
    flag = "--" + field.replace("_", "-")
    if value is None:
        return ""
    if isinstance(value, bool):
        return flag if value else "--no-" + flag[2:]
    return f"{flag} {value}"


def shipped_config(run_dir: Path) -> dict:
    """The run's ``config.json`` as it ships: without paths of the machine, with where it came from."""
    config = read_config(run_dir)
    if config["architecture"] == "ensemble":
        raise MnistCnnError(f"{run_dir} is an ensemble; the default model must be one network (a run folder)")
    name = run_dir.resolve().name
    config.pop("onnx", None)  # the run's export, if any: the copy gets its own (_ship_onnx)
    if isinstance(config.get("data"), dict):
        config["data"].pop("source", None)  # a folder of the machine; the SHA-256 of the files says which data
    commands = training_commands(config, name)
    if GATE_SECTION in config:
        commands.append(f"mnist-cnn gate runs/{name}")
    if (config.get("train_config") or {}).get("init"):
        config["train_config"]["init"] = f"runs/{Path(config['train_config']['init']).name}"
    git = config.get("git") or {}
    config["default_model"] = {
        "name": name,
        "made": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "made_with": f"make default-model RUN=runs/{name}",
        "trained_at_commit": git.get("commit"),
        "uncommitted_changes": git.get("dirty"),
        "training_commands": commands,
    }
    return config


def evaluate_on_test(folder: Path, data) -> dict:
    """Accuracy of the model folder on the 10,000 MNIST test images, with no test-time augmentation."""
    clf = load_model(folder)
    labels = data.test_labels.numpy()
    wrong = int((clf.predict(data.test_images.numpy()) != labels).sum())
    return {"test_accuracy": 1 - wrong / len(labels), "test_errors": wrong, "test_images": len(labels)}


def make_default_model(run: str | os.PathLike, data, out: str | os.PathLike | None = None) -> dict:
    """Copy ``run``'s weights and shipped config into ``out`` (default: the package's ``pretrained/``),
    evaluate the copy on ``data``'s test images and write its model card; returns the shipped config."""
    run_dir, out = Path(run), Path(out) if out is not None else DEFAULT_MODEL_DIR
    config = shipped_config(run_dir)
    size = (run_dir / WEIGHTS).stat().st_size if (run_dir / WEIGHTS).is_file() else None
    if size is None:
        raise ModelFolderError(f"{run_dir} has no {WEIGHTS}")
    if size > MAX_BYTES:
        raise MnistCnnError(f"{run_dir / WEIGHTS} is {size:,} bytes; the default model must stay under {MAX_BYTES:,}")
    out.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS, GATE) if GATE_SECTION in config else (WEIGHTS,):
        tmp = out / f".{name}.tmp"
        shutil.copyfile(run_dir / name, tmp)
        os.replace(tmp, out / name)
    if GATE_SECTION not in config:
        (out / GATE).unlink(missing_ok=True)
    write_json(out / CONFIG, config)
    fresh = evaluate_on_test(out, data)
    recorded = (config.get("metrics") or {}).get("test_accuracy")
    if recorded is not None and abs(recorded - fresh["test_accuracy"]) > 1e-9:
        log.warning("the run recorded test accuracy %.4f, the copy measures %.4f", recorded, fresh["test_accuracy"])
    config["metrics"] = {**(config.get("metrics") or {}), **fresh}
    write_json(out / CONFIG, config)
    if _ship_onnx(out, data):
        config = read_config(out)  # with its "onnx" section
    (out / CARD).write_text(model_card(config, size))
    return config


def _ship_onnx(folder: Path, data) -> bool:
    """Write ``model.onnx`` into the default model's folder, checked against PyTorch on the test images, so that
    ``mnist-cnn serve`` answers on ONNX Runtime out of the box (about 1.9x the JSON requests per second at
    concurrency 1, 1.3-1.5x at 16, docs/serving.md); without the ``onnx`` extra the model ships without it,
    and ``serve`` uses PyTorch. False when not written."""
    from .classifier import require_onnx
    from .export import ONNX_FILE, export_onnx, verify_onnx

    try:
        require_onnx()
    except MnistCnnError as exc:
        log.warning("%s; the default model ships without %s", exc, ONNX_FILE)
        (folder / ONNX_FILE).unlink(missing_ok=True)
        return False
    export_onnx(folder)
    verify_onnx(folder, data.test_images.numpy())
    return True


def docs_row(config: dict) -> str:
    """The row of README.md's default-model table (tests/test_default_model.py checks it against a fresh evaluation)."""
    m, name = config["metrics"], (config.get("default_model") or {}).get("name", config["architecture"])
    return (
        f"| `{name}` | `{config.get('recipe')}` | **{m['test_accuracy']:.2%}** "
        f"| {m['test_errors']} of {m['test_images']:,} |"
    )


def _gate_row(config: dict) -> str:
    gate = config.get(GATE_SECTION)
    if not gate:
        return "none"
    return (
        f"threshold {gate['threshold']:.4g}, fitted on {gate['fitted_on']}; refuses "
        f"{gate['validation_digits_refused']:.1%} of validation digits, {gate['held_out_not_digits_refused']:.1%} of not-digits drawn apart"
    )


def _onnx_row(config: dict) -> str:
    verified = (config.get("onnx") or {}).get("verified")
    if not verified:
        return "none (the onnx extra was not installed): `serve` uses PyTorch"
    return (
        f"`model.onnx`, the same network and gate; logits within {verified['max_abs_logit_diff']:.1e} of PyTorch's "
        f"on {verified['images']:,} test images, {verified['labels_disagree']} labels differ"
    )


def model_card(config: dict, size: int) -> str:
    made, m = config["default_model"], config["metrics"]
    commit = made.get("trained_at_commit") or "unknown"
    if made.get("uncommitted_changes"):
        commit += " (with uncommitted changes: the commit alone may not reproduce it)"
    val = m.get("val_accuracy")
    commands = "\n".join(made["training_commands"])
    return f"""# The default model of mnist-cnn

`mnist_cnn.load_model()` with no folder, and `mnist-cnn predict IMAGE`, `mnist-cnn read IMAGE` and
`mnist-cnn serve` with no RUN, use this model. Generated by `{made["made_with"]}` on {made["made"]}.

| | |
|---|---|
| name | `{made["name"]}` |
| recipe | `{config.get("recipe")}` (architecture `{config["architecture"]}`) |
| test accuracy, 10,000 MNIST test images | **{m["test_accuracy"]:.2%}** ({m["test_errors"]} wrong) |
| validation accuracy (chose the epoch) | {f"{val:.2%}" if val is not None else "not recorded"} |
| calibration temperature (fitted on validation) | {(config.get("calibration") or {}).get("temperature", "none")} |
| digit gate ("is this a digit?", `{GATE}`) | {_gate_row(config)} |
| weights | `{WEIGHTS}`, {size / 1e6:.2f} MB, float32 |
| ONNX (`mnist-cnn serve`'s runtime) | {_onnx_row(config)} |
| trained at commit | {commit} |

Trained with:

```sh
{commands}
```
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mnist_cnn.default_model",
        description="Make the package's default model from a trained run (RUN), or, with no RUN, evaluate the "
        "installed one; prints the row README.md quotes.",
    )
    parser.add_argument("run", type=Path, nargs="?", default=None, help="finished run folder (default: evaluate)")
    parser.add_argument("--out", type=Path, default=None, help=f"folder to write (default: {DEFAULT_MODEL_DIR})")
    parser.add_argument("--data-dir", type=Path, default=None, help="MNIST folder (default: as mnist-cnn train)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    from .data import load_mnist
    from .inference import default_model_dir

    try:
        data = load_mnist(args.data_dir)
        if args.run is None:
            folder = args.out or default_model_dir()
            config = read_config(folder)
            config["metrics"] = {**(config.get("metrics") or {}), **evaluate_on_test(folder, data)}
        else:
            config = make_default_model(args.run, data, args.out)
            print(
                f"wrote {args.out or DEFAULT_MODEL_DIR}: {WEIGHTS}, {CONFIG}, {CARD} (and model.onnx when exported)",
                file=sys.stderr,
            )
    except MnistCnnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(docs_row(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
