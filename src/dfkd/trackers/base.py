"""The interface every experiment tracker implements, and what it is told about a run.

A tracker is a thin adapter around one logging library. It never decides *what* to log
or *when*: :mod:`dfkd.trackers.hub` calls it from one background thread, in order, with
rows whose checkpoint is already on disk, and turns any exception it raises into one
warning (the tracker is then switched off for the rest of the run). A tracker only has to
say, when it starts, which epochs its store already holds, so that a resumed run logs
every epoch exactly once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np


@dataclass
class RunInfo:
    """One dfkd run as the trackers see it."""

    folder: Path                  # the run folder (metrics.jsonl, samples/, checkpoint.pt)
    key: str                      # stable across resumes: W&B run id, MLflow tag dfkd.run_key
    name: str                     # display name (the folder's name; bench: method/seedK)
    experiment: str = "dfkd"      # MLflow experiment; W&B project
    group: str | None = None      # W&B group (a bench, a tune study)
    tags: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)   # the resolved config, flat
    uri: str | None = None        # --tracker-uri: MLflow's tracking URI
    resumed: bool = False         # continues a checkpoint (False: a new run in this folder)


Image = Path | np.ndarray   # a PNG file, or an HxWxC uint8 array


class Tracker(ABC):
    """One experiment tracker. Subclasses set the class attributes and register with
    :func:`dfkd.trackers.register_tracker`; heavy imports happen inside :meth:`start`."""

    name: ClassVar[str]       # what --tracker accepts
    requires: ClassVar[str]   # the module that must be importable
    extra: ClassVar[str]      # pip install 'dfkd[<extra>]'

    @abstractmethod
    def start(self, run: RunInfo, state: dict[str, Any]) -> int:
        """Open the tracker's run, or continue the one ``state`` names (what this tracker
        stored in ``state`` last time; store ids in it now). Returns the last epoch its
        store already holds (0: none), so that only later epochs are logged."""

    @abstractmethod
    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """One metrics.jsonl row, at step = its epoch."""

    @abstractmethod
    def log_image(self, name: str, image: Image, step: int) -> None:
        """An image of epoch ``step`` (the sample grid); called before that epoch's
        :meth:`log_metrics`."""

    def flush(self, step: int) -> None:
        """Make epoch ``step`` durable; called after its metrics, before dfkd records that
        the epoch was logged."""
        return None

    @abstractmethod
    def log_summary(self, summary: dict[str, Any]) -> None:
        """summary.json's values, at the end of the run."""

    def log_artifacts(self, paths: list[Path]) -> None:
        """Files of the finished run (the student); trackers without files ignore them."""
        return None

    @abstractmethod
    def finish(self, status: str) -> None:
        """Close the run: ``status`` is ``finished``, ``stopped`` (interrupted or a time
        slice; a resume continues it) or ``failed``."""


def numeric(values: dict[str, Any]) -> dict[str, float]:
    """The numbers of a row or summary (trackers store numbers; bools and None are not)."""
    return {k: float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}
