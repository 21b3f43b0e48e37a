"""The service's settings: :class:`mnist_cnn.config.ServeSettings` (each field a flag of ``mnist-cnn serve``)."""

from __future__ import annotations

import dataclasses

from ..config import ServeSettings as Settings

__all__ = ["Settings", "settings_from"]


def settings_from(values: dict) -> Settings:
    """Settings from a dict (e.g. parsed CLI flags), ignoring keys that are not fields and values of None."""
    names = {f.name for f in dataclasses.fields(Settings)}
    return Settings(**{k: v for k, v in values.items() if k in names and v is not None})
