"""Experiment trackers: TensorBoard, MLflow and Weights & Biases (``--tracker NAME``).

Each tracker is one file with one :class:`~dfkd.trackers.base.Tracker` subclass,
registered by name with :func:`register_tracker`; every module of this package is
imported below, so a new tracker is a new file. :mod:`dfkd.trackers.hub` runs them for the
trainer.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from typing import Any

from dfkd.errors import ConfigError
from dfkd.registry import Registry
from dfkd.trackers.base import RunInfo, Tracker

_TRACKERS: Registry[type[Tracker]] = Registry("tracker")
# The run settings that say where a run is logged, not what it computes: a bench or a tune
# may add or change them for runs it already holds.
SETTINGS = ("tracker", "tracker_uri")


def register_tracker(cls: type[Tracker]) -> type[Tracker]:
    return _TRACKERS.add(cls.name, cls)


def list_trackers() -> list[str]:
    """The names ``--tracker`` accepts, sorted."""
    return _TRACKERS.names()


def get_tracker(name: str) -> type[Tracker]:
    """The tracker class registered as ``name``; an unknown name is a one-line
    :class:`~dfkd.errors.ConfigError` with a "did you mean"."""
    return _TRACKERS.get(name)


def check_trackers(value: Any) -> list[str] | None:
    """The ``tracker`` setting, validated: a name or a list of names (None: no tracker)."""
    if value is None or value == "" or value == []:
        return None
    names = [value] if isinstance(value, str) else value
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"'tracker' must be a tracker name or a list of names "
                          f"({', '.join(list_trackers())}), got {value!r}")
    out: list[str] = []
    for name in names:
        get_tracker(name)
        if name not in out:
            out.append(name)
    return out


def require_installed(names: list[str]) -> None:
    """Fail before any work when a tracker's library is missing: one line, the extra."""
    for name in names:
        cls = get_tracker(name)
        if importlib.util.find_spec(cls.requires) is None:
            raise ConfigError(f"--tracker {name} needs the {cls.requires} package: "
                              f"pip install 'dfkd[{cls.extra}]'")


# Every tracker registers itself on import (its library is imported only when a run starts it).
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["RunInfo", "Tracker", "check_trackers", "get_tracker", "list_trackers",
           "register_tracker", "require_installed"]
