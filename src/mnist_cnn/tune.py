"""Hyper-parameter search with Optuna: ``mnist-cnn tune``.

One study per recipe lives in a relational database (``--storage``; SQLite by default, PostgreSQL
or MySQL to share it between machines). Every trial trains the recipe with the hyper-parameters
that the TPE sampler proposes, reports the validation accuracy after each epoch, and is stopped
early by the median or Hyperband pruner when it falls behind. The objective is the best
validation accuracy of the trial — the test set is never looked at.

Starting the command again with the same storage and study resumes it; several processes (or
machines) pointed at one database work on the same study together.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .callbacks import AfterEpoch
from .config import TrainConfig
from .data import MNIST
from .errors import MnistCnnError
from .loop import fit
from .models import create_model
from .runtime import select_device
from .train import initial_weights, reject_tensor, split_tensors

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "sqlite:///runs/tune.db"
PRUNERS = ("median", "hyperband", "none")


@dataclass(frozen=True)
class Param:
    """One searched TrainConfig field."""

    name: str  # a TrainConfig field
    kind: str  # "log" (float on a log scale), "float", "int" or "choice"
    low: float = 0.0
    high: float = 0.0
    choices: tuple = ()

    def suggest(self, trial):
        if self.kind == "log":
            return trial.suggest_float(self.name, self.low, self.high, log=True)
        if self.kind == "float":
            return trial.suggest_float(self.name, self.low, self.high)
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high))
        return trial.suggest_categorical(self.name, list(self.choices))

    def describe(self) -> str:
        if self.kind == "choice":
            return f"{self.name}: one of {', '.join(map(str, self.choices))}"
        scale = " (log scale)" if self.kind == "log" else ""
        return f"{self.name}: {self.low:g} to {self.high:g}{scale}"


# What is searched for each recipe. Learning rate and batch size interact (a larger batch wants a
# larger rate), so both are searched; weight decay 0 means plain Adam as the seeds used.
_COMMON = (
    Param("lr", "log", 1e-4, 1e-2),
    Param("batch_size", "choice", choices=(32, 64, 128, 256)),
    Param("weight_decay", "choice", choices=(0.0, 1e-5, 1e-4, 1e-3, 1e-2)),
    Param("lr_schedule", "choice", choices=("constant", "cosine")),
)
# Recipes that train long enough to profit from regularisation also search it: label smoothing, an
# EMA of the weights and augmentation strength (the accuracy recipes' knobs), and the schedule.
_REGULARISED = (
    Param("lr", "log", 3e-4, 2e-2),
    Param("batch_size", "choice", choices=(64, 128, 256, 512)),
    Param("weight_decay", "choice", choices=(0.0, 1e-5, 1e-4, 1e-3, 1e-2)),
    Param("lr_schedule", "choice", choices=("constant", "cosine", "onecycle")),
    Param("label_smoothing", "choice", choices=(0.0, 0.05, 0.1)),
    Param("ema", "choice", choices=(0.0, 0.99, 0.999)),
    Param("aug_rotate", "float", 0.0, 15.0),
    Param("aug_translate", "float", 0.0, 0.15),
)
SEARCH_SPACES: dict[str, tuple[Param, ...]] = {
    "basic": _COMMON,
    "dropout": _COMMON,
    "three-conv": _COMMON,
    "deep": _REGULARISED,  # batch norm lets it use larger rates and batches
}
DEFAULT_SPACE = _REGULARISED  # recipes not listed above


def search_space(recipe: str, fixed: dict | None = None) -> tuple[Param, ...]:
    """The documented space for ``recipe`` less the fields the user fixed on the command line."""
    fixed = fixed or {}
    return tuple(p for p in SEARCH_SPACES.get(recipe, DEFAULT_SPACE) if p.name not in fixed)


def _optuna():
    try:
        import optuna
    except ImportError:
        raise MnistCnnError("mnist-cnn tune needs Optuna: pip install 'mnist-cnn[tune]'") from None
    return optuna


def open_storage(url: str):
    """An Optuna RDB storage for ``url``, with heartbeats so that a trial whose worker died is
    marked failed (and retried once) instead of blocking the study."""
    optuna = _optuna()
    engine_kwargs = {}
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # Several workers on one SQLite file wait for each other's writes instead of failing.
        engine_kwargs = {"connect_args": {"timeout": 60}}
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # heartbeats are still marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                if hasattr(optuna.storages, "RetryHeartbeatStaleTrialCallback"):  # renamed in Optuna 4.9
                    retry = {
                        "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1)
                    }
                else:
                    retry = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=1)}
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=30, grace_period=120, **retry
                )
        except ModuleNotFoundError as exc:  # e.g. psycopg2 or pymysql for a server database
            raise MnistCnnError(f"storage {url!r} needs the database driver {exc.name!r}: pip install it") from None
        except Exception as exc:  # SQLAlchemy's errors for a bad URL or an unreachable server
            message = str(exc).splitlines()[0]
            if any(m in message for m in ("already exists", "UNIQUE constraint", "locked")) and attempt < 4:
                # Two workers creating the tables of a new database at once: the loser finds them made.
                time.sleep(0.5 + attempt)
                continue
            hint = (
                " (PostgreSQL needs: pip install psycopg2-binary; MySQL: pip install PyMySQL)"
                if "import" in message
                else ""
            )
            raise MnistCnnError(f"cannot open the study storage {url!r}: {message}{hint}") from None
    raise AssertionError("unreachable")


def _pruner(name: str, epochs: int):
    optuna = _optuna()
    if name == "median":  # stop a trial whose accuracy after epoch k is below the median of earlier trials'
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=0)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1), reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"unknown pruner {name!r}; choose one of: {', '.join(PRUNERS)}")


def load_study(storage: str, study: str):
    """An existing study; a clear error when the storage has no study of that name."""
    optuna = _optuna()
    store = open_storage(storage)
    try:
        return optuna.load_study(study_name=study, storage=store)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(store, include_best_trial=False)]
        raise MnistCnnError(
            f"no study named {study!r} in {storage}; "
            + (f"it holds: {', '.join(names)}" if names else "it holds no study yet (run: mnist-cnn tune)")
        ) from None


def _finished(study) -> int:
    states = _optuna().trial.TrialState
    return sum(t.state in (states.COMPLETE, states.PRUNED) for t in study.trials)


def _open_study(recipe: str, base: TrainConfig, space, storage: str, study_name: str, pruner: str, sampler_seed):
    """The study, created or resumed; a new one records its recipe, search space and base config."""
    optuna = _optuna()
    sampler = optuna.samplers.TPESampler(seed=sampler_seed, constant_liar=True)  # liar: workers spread out
    study = optuna.create_study(
        study_name=study_name,
        storage=open_storage(storage),
        direction="maximize",
        sampler=sampler,
        pruner=_pruner(pruner, base.epochs),
        load_if_exists=True,
    )
    owner = study.user_attrs.get("recipe")
    if owner is not None and owner != recipe:
        raise MnistCnnError(f"study {study_name!r} tunes recipe {owner!r}, not {recipe!r}; choose another --study")
    if owner is None:
        study.set_user_attr("recipe", recipe)
        study.set_user_attr("search_space", [p.describe() for p in space])
        study.set_user_attr("base_config", base.to_dict())
    return study


def run_study(
    recipe: str,
    base: TrainConfig,
    data: MNIST,
    *,
    trials: int,
    storage: str = DEFAULT_STORAGE,
    study_name: str | None = None,
    pruner: str = "median",
    fixed: dict | None = None,
    device: str = "auto",
    sampler_seed: int | None = None,
    timeout: float | None = None,
    progress: bool = False,
):
    """Run trials until the study holds ``trials`` finished (complete or pruned) ones.

    ``base`` is the recipe's config with the user's fixed overrides applied; ``fixed`` names those
    overrides so they are not searched. Returns the Optuna study.
    """
    optuna = _optuna()
    if trials < 1:
        raise ValueError("--trials must be at least 1")
    if base.val_split == 0:
        raise ValueError(
            "tuning needs a validation split (the objective is validation accuracy); --val-split 0 has none"
        )
    space = search_space(recipe, fixed)
    study_name = study_name or f"tune-{recipe}"
    study = _open_study(recipe, base, space, storage, study_name, pruner, sampler_seed)
    done = _finished(study)
    if done >= trials:
        log.info("study %s already holds %d finished trials (asked for %d); nothing to do", study_name, done, trials)
        return study
    log.info("study %s: %d of %d trials finished; searching %s", study_name, done, trials,
             "; ".join(p.describe() for p in space))  # fmt: skip

    dev = select_device(device)
    initial = initial_weights(base) if base.init else None  # every trial fine-tunes the same weights
    train, val = split_tensors(base, data, dev)
    # Not-a-digit images whenever a trial may use them (the base config, or a searched reject_weight).
    weight = base.reject_weight or (1.0 if any(p.name == "reject_weight" for p in space) else 0.0)
    rejects = reject_tensor(base.replace(reject_weight=weight), data, dev)

    def objective(trial) -> float:
        config = base.replace(**{p.name: p.suggest(trial) for p in space})
        trial.set_user_attr("train_config", config.to_dict())
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")

        def report(state):
            row = state.history[-1]
            trial.report(row["val_accuracy"], row["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation accuracy {row['val_accuracy']:.4f} after epoch {row['epoch']}")

        torch.manual_seed(config.seed)
        model = create_model(config.model).to(dev)
        if initial is not None:
            model.load_state_dict(initial)
        result = fit(model, train, val, config, progress=progress, callbacks=[AfterEpoch(report)], rejects=rejects)
        if result.interrupted:
            raise KeyboardInterrupt
        best = max(row["val_accuracy"] for row in result.history)
        trial.set_user_attr("best_epoch", result.best_epoch)
        if not math.isfinite(best):
            raise optuna.TrialPruned("validation accuracy is not finite")
        return best

    stop_at = optuna.study.MaxTrialsCallback(trials, states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))  # fmt: skip
    study.optimize(
        objective,
        n_trials=trials - done,
        timeout=timeout,
        callbacks=[stop_at],
        catch=(FloatingPointError,),
        gc_after_trial=False,
    )
    return study


def best_config(storage: str, study_name: str) -> tuple[str, TrainConfig, object]:
    """(recipe, config, trial) of the study's best complete trial, ready to train."""
    study = load_study(storage, study_name)
    try:
        trial = study.best_trial
    except ValueError:
        raise MnistCnnError(f"study {study_name!r} has no completed trial yet") from None
    return study.user_attrs.get("recipe", "basic"), TrainConfig(**trial.user_attrs["train_config"]), trial


def format_study(storage: str, study_name: str, top: int = 10) -> str:
    """The best ``top`` trials as a table, the trial counts and the command that trains the best."""
    study = load_study(storage, study_name)
    optuna = _optuna()
    states = optuna.trial.TrialState
    counts = {s.name.lower(): sum(t.state == s for t in study.trials) for s in states}
    complete = sorted((t for t in study.trials if t.state == states.COMPLETE), key=lambda t: -t.value)
    recipe = study.user_attrs.get("recipe", "?")
    lines = [
        f"study {study_name} (recipe {recipe}) in {storage}",
        "trials: " + ", ".join(f"{n} {k}" for k, n in counts.items() if n),
        "objective: best validation accuracy of the trial (the test set is not used)",
    ]
    if not complete:
        return "\n".join([*lines, "no completed trial yet"])
    names = sorted({k for t in complete for k in t.params})
    header = ["trial", "val_acc", "epochs", *names]
    rows = [
        [str(t.number), f"{100 * t.value:.2f}%", str(len(t.intermediate_values)),
         *(_fmt(t.params.get(k)) for k in names)]
        for t in complete[:top]
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines += ["", *("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows])]
    quoted = storage if all(c not in storage for c in " '\"$") else f"'{storage}'"
    lines += ["", f"train the best: mnist-cnn train --from-study {study_name} --storage {quoted}"]
    return "\n".join(lines)


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)
