"""Experiment trackers (:mod:`dfkd.trackers`): each metrics.jsonl row is handed to them
after it reached the file, so a tracker never holds an epoch its run could compute again."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dfkd.run.callbacks.base import Callback
from dfkd.run.callbacks.metrics import new_rows
from dfkd.trackers.hub import Tracking

if TYPE_CHECKING:
    from dfkd.run.trainer import Trainer


class Trackers(Callback):
    def __init__(self, tracking: Tracking) -> None:
        self.tracking = tracking
        self.rows_sent = 0

    def running(self, trainer: Trainer) -> contextlib.AbstractContextManager:
        return self.tracking.session(trainer)

    def on_checkpoint(self, trainer: Trainer,
                      state: dict[str, Any]) -> Callable[[], None] | None:
        start, self.rows_sent = self.rows_sent, len(state["history"])
        if not self.tracking:   # no tracker: nothing to hand over
            return None
        rows = new_rows(state["history"], start)
        return (lambda: self.tracking.saved(rows)) if rows else None

    def on_resume(self, trainer: Trainer) -> None:
        self.rows_sent = len(trainer.history)   # the session sends the earlier ones
