"""Experiment trackers: TensorBoard, MLflow and Weights & Biases (``--tracker NAME``).

Each tracker is one file with one :class:`~dfkd.trackers.base.Tracker` subclass,
registered here by name; :mod:`dfkd.trackers.hub` runs them for the engine. A new
tracker is a new file and one import line below.
"""

from __future__ import annotations

import difflib
import importlib.util
from typing import Any

from dfkd.errors import ConfigError
from dfkd.trackers.base import RunInfo, Tracker

_TRACKERS: dict[str, type[Tracker]] = {}
# The run settings that say where a run is logged, not what it computes: a bench or a tune
# may add or change them for runs it already holds.
SETTINGS = ("tracker", "tracker_uri")


def register_tracker(cls: type[Tracker]) -> type[Tracker]:
    _TRACKERS[cls.name] = cls
    return cls


def list_trackers() -> list[str]:
    """The names ``--tracker`` accepts, sorted."""
    return sorted(_TRACKERS)


def get_tracker(name: str) -> type[Tracker]:
    if name not in _TRACKERS:
        close = difflib.get_close_matches(str(name), _TRACKERS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"unknown tracker '{name}'.{hint} Known trackers: "
                          f"{', '.join(list_trackers())}.")
    return _TRACKERS[name]


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


# The trackers (their libraries are imported only when a run starts them).
from dfkd.trackers import mlflow_tracker, tb, wandb_tracker  # noqa: E402,F401

__all__ = ["RunInfo", "Tracker", "check_trackers", "get_tracker", "list_trackers",
           "register_tracker", "require_installed"]
