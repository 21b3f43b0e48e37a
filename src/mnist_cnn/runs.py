"""The runs in a folder, as a table: ``mnist-cnn runs [FOLDER]``; and ``run.json``, what a run started with.

Reads each run folder's ``config.json`` and ``metrics.json`` (and, for a run still training or
stopped before it saved a model, its ``run.json``, ``history.json`` and checkpoints); it never loads weights.
``run.json`` is written and read here only (:func:`write_run_settings`, :func:`read_run_settings`), each
field checked against :data:`RUN_FIELDS` where it is read, so a damaged one is one error line.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .config import MAX_THREADS, TrainConfig
from .errors import MnistCnnError, ModelFolderError
from .folder import JSON_NAMES, ModelFolder, write_json

RUN_FILE = "run.json"
# Each field of run.json, the JSON types it may have and, for a number, its range; a run.json from an
# older version may lack some, and fields it does not know are ignored.
RUN_FIELDS = {
    "recipe": ((str, type(None)), None), "train_config": ((dict,), None), "started": ((str,), None),
    "deterministic": ((bool,), None), "threads": ((int,), (1, MAX_THREADS)), "world_size": ((int,), (1, 65_536)),
    "tensorboard": ((bool,), None), "checkpoint_every": ((int,), (0, 2**62)), "keep_checkpoints": ((int,), (1, 2**62)),
}  # fmt: skip
COLUMNS = ("run", "recipe", "model", "epochs", "val_acc", "test_acc", "time_s", "date", "status")


@dataclass
class RunRow:
    run: str  # folder name
    recipe: str | None
    model: str | None
    epochs: str  # "completed/planned", e.g. "10/10"
    val_acc: float | None  # validation accuracy of the kept epoch
    test_acc: float | None  # None until evaluated
    time_s: float | None  # training seconds
    date: str | None  # when the model was saved (ISO 8601)
    status: str  # done, interrupted, not evaluated, in progress or stopped (checkpoints only)


class RunSettingsError(MnistCnnError):
    """A run's ``run.json`` is damaged: not JSON, or a field of the wrong type or out of range."""

    exit_code = 2


def write_run_settings(run_dir: str | os.PathLike, settings: dict) -> None:
    """Write ``run.json``; what could not be read back is refused (ValueError) rather than written."""
    problem = _run_settings_problem(settings)
    if problem:
        raise ValueError(f"{RUN_FILE}: {problem}")
    write_json(Path(run_dir) / RUN_FILE, settings)


def read_run_settings(run_dir: str | os.PathLike) -> dict:
    """What ``run.json`` recorded when the run started (recipe, training config, options), each field checked;
    {} when the folder has none. Raises :class:`RunSettingsError` for a damaged one."""
    path = Path(run_dir) / RUN_FILE
    try:
        settings = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunSettingsError(f"{path} cannot be read: {exc}") from None
    problem = _run_settings_problem(settings)
    if problem:
        raise RunSettingsError(f"{path}: {problem}")
    return settings


def _run_settings_problem(settings) -> str | None:
    if not isinstance(settings, dict):
        return f"must be a JSON object, got {settings!r}"[:200]
    for name, (types, bounds) in RUN_FIELDS.items():
        if name not in settings:
            continue
        value = settings[name]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return f"{name} must be {' or '.join(JSON_NAMES[t] for t in types)}, got {value!r}"[:200]
        if bounds is not None and not bounds[0] <= value <= bounds[1]:
            return f"{name} must be from {bounds[0]} to {bounds[1]}, got {value!r}"
    if "train_config" in settings:
        try:
            TrainConfig.from_saved(settings["train_config"])
        except ValueError as exc:
            return f"train_config: {exc}"
    return None


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def read_run(folder: Path) -> RunRow | None:
    """One row for a run folder, or None when ``folder`` holds no run."""
    try:
        config = ModelFolder(folder).read()
    except ModelFolderError:
        config = None
    metrics = _read_json(folder / "metrics.json")
    history = _read_json(folder / "history.json")
    has_checkpoints = (folder / "checkpoints").is_dir()
    if not isinstance(config, dict):
        if not isinstance(history, list) and not has_checkpoints:
            return None
        # Training has started but no model was saved yet: still running, or killed (resumable).
        rows = [r for r in history if isinstance(r, dict)] if isinstance(history, list) else []
        try:
            started = read_run_settings(folder)
        except RunSettingsError:  # the table shows what it can
            started = {}
        planned = (started.get("train_config") or {}).get("epochs", "?")
        val = [r["val_accuracy"] for r in rows if isinstance(r.get("val_accuracy"), float)]
        return RunRow(
            run=folder.name,
            recipe=started.get("recipe"),
            model=(started.get("train_config") or {}).get("model"),
            epochs=f"{len(rows)}/{planned}",
            val_acc=max(val, default=None),
            test_acc=None,
            time_s=sum(r.get("seconds", 0) for r in rows) or None,
            date=started.get("started"),
            status="in progress or stopped" + (" (resumable)" if has_checkpoints else ""),
        )
    training = config.get("training", {}) or {}
    train_config = config.get("train_config", {}) or {}
    metrics = metrics if isinstance(metrics, dict) else config.get("metrics") or {}
    status = "interrupted" if training.get("interrupted") else "done"
    if metrics.get("test_accuracy") is None:
        status = "not evaluated" if status == "done" else status
    return RunRow(
        run=folder.name,
        recipe=config.get("recipe"),
        model=config.get("architecture"),
        epochs=f"{training.get('epochs_completed', '?')}/{train_config.get('epochs', '?')}",
        val_acc=metrics.get("val_accuracy"),
        test_acc=metrics.get("test_accuracy"),
        time_s=training.get("train_seconds"),
        date=config.get("created"),
        status=status,
    )


def list_runs(folder: str | os.PathLike, sort: str = "date") -> list[RunRow]:
    """Every run directly under ``folder``, oldest first (``sort="date"``) or best validation
    accuracy first (``sort="val"``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MnistCnnError(
            f"runs folder {folder} does not exist (runs are written by: mnist-cnn train --runs-dir DIR)"
        )
    rows = [row for sub in sorted(folder.iterdir()) if sub.is_dir() and (row := read_run(sub)) is not None]
    if sort == "val":
        rows.sort(key=lambda r: -(r.val_acc or -1))
    elif sort == "date":
        rows.sort(key=lambda r: (r.date or "9999", r.run))  # unfinished runs last
    elif sort != "name":
        raise ValueError(f"unknown sort {sort!r}; choose date, val or name")
    return rows


def format_table(rows: list[RunRow]) -> str:
    """A plain-text table with a header; accuracies as percentages, dates to the minute."""

    def cell(row: RunRow, column: str) -> str:
        value = getattr(row, column)
        if value is None:
            return "-"
        if column in ("val_acc", "test_acc"):
            return f"{100 * value:.2f}%"
        if column == "time_s":
            return f"{value:.0f}"
        if column == "date":
            return value[:16].replace("T", " ")
        return str(value)

    table = [list(COLUMNS)] + [[cell(r, c) for c in COLUMNS] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    numeric = {"epochs", "val_acc", "test_acc", "time_s"}
    return "\n".join(
        "  ".join(
            v.rjust(w) if c in numeric else v.ljust(w) for v, w, c in zip(line, widths, COLUMNS, strict=True)
        ).rstrip()
        for line in table
    )


def rows_as_dicts(rows: list[RunRow]) -> list[dict]:
    return [asdict(r) for r in rows]


LATEST = "latest"  # the name that means the newest finished run in the runs folder
_STAMP = re.compile(r"-\d{8}-\d{6}$")  # the time train appends to a run's name: basic-20261201-041509
MODEL_FILE_SUFFIXES = (".safetensors", ".json", ".onnx", ".html", ".md", ".csv")  # files a run folder holds


def _is_model_folder(path: Path) -> bool:
    return (path / "config.json").is_file()


def _finished_runs(runs_dir: Path) -> list[Path]:
    """Run folders with a saved model, oldest first (a runs folder that does not exist holds none)."""
    if not runs_dir.is_dir():
        return []
    return [runs_dir / r.run for r in list_runs(runs_dir, sort="date") if _is_model_folder(runs_dir / r.run)]


def looks_like_run(name: str | os.PathLike, runs_dir: str | os.PathLike = "runs") -> bool:
    """Whether a command's first argument names a run rather than an image: a model folder, ``latest``,
    a run name inside ``runs_dir``, a folder of runs, or a model file inside a run folder."""
    path, runs_dir = Path(name), Path(runs_dir)
    if str(name) == LATEST or _is_model_folder(path) or bool(_finished_runs(path)):
        return True
    if path.is_file():
        return path.suffix.lower() in MODEL_FILE_SUFFIXES and _is_model_folder(path.parent)
    return len(path.parts) == 1 and not path.exists() and _is_model_folder(runs_dir / path)


def resolve_run(name: str | os.PathLike, runs_dir: str | os.PathLike = "runs") -> Path:
    """The model folder a person means by ``name``: a run folder path, a run name inside ``runs_dir``,
    ``latest`` (the newest finished run there), or a file inside a run folder (taken as its folder).

    >>> resolve_run("latest", "runs")  # doctest: +SKIP
    PosixPath('runs/basic-20261201-041509')

    Raises :class:`ModelFolderError` naming the closest runs when nothing matches.
    """
    path, runs_dir = Path(name), Path(runs_dir)
    if str(name) == LATEST and not path.exists():
        finished = _finished_runs(runs_dir)
        if not finished:
            raise ModelFolderError(f"no finished runs in {runs_dir} for 'latest' (train one with: mnist-cnn train)")
        return finished[-1]
    if _is_model_folder(path):
        return path
    if path.is_file() and _is_model_folder(path.parent):
        return path.parent
    if len(path.parts) == 1 and not path.exists() and _is_model_folder(runs_dir / path):
        return runs_dir / path
    inside = _finished_runs(path)
    if inside:
        shown = ", ".join(str(p) for p in inside[-10:])
        raise ModelFolderError(f"{path} holds runs but is not one; name one of: {shown}")
    if not path.exists():
        raise ModelFolderError(_missing_message(path, runs_dir))
    return path  # an existing folder that is not a model: the loader says what it lacks


def _missing_message(path: Path, runs_dir: Path) -> str:
    """``model folder X does not exist``, with the closest run names in its folder (or ``runs_dir``)."""
    where = path.parent if len(path.parts) > 1 and path.parent.is_dir() else runs_dir
    names = [p.name for p in _finished_runs(where)]
    stems = {n: _STAMP.sub("", n) for n in names}  # "fastt" is close to "fast", not to "fast-20261201-050000"
    near = set(difflib.get_close_matches(path.name, set(stems.values()), n=5))
    close = [n for n in names if n.startswith(path.name)] + difflib.get_close_matches(path.name, names, n=5)
    close += [n for n in reversed(names) if stems[n] in near]  # the newest first
    close = list(dict.fromkeys(close))[:5]
    if not close:
        return f"model folder {path} does not exist (train one with: mnist-cnn train)"
    return f"model folder {path} does not exist; did you mean: {', '.join(str(where / n) for n in close)}"
