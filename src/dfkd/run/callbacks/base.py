"""The one interface of what happens around the loop.

The trainer calls every callback's hook, in the order of
:func:`dfkd.run.callbacks.standard_callbacks`, at these points of a run::

    setup            the run is built (before any training; may refuse the run)
    running          a context around fit (trackers' session, the progress bar)
    on_fit_start     fit begins (also after a resume)
    on_epoch_start   before an epoch's first round (or the resumed round)
    on_round_end     after a round's steps, with its loss sums (may stop the run)
    measure          the epoch's metrics: what a callback adds to the epoch's row
    on_epoch_end     the epoch's row is complete and in the history
    on_checkpoint    a checkpoint is taken: a write to run after the ones before it
    on_resume        the run goes on from a checkpoint
    on_fit_end       fit ends with the run's summary

What must survive a resume is the callback's ``state_dict``, stored in the checkpoint under
its ``state_key``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from dfkd.run.trainer import Trainer


class Callback:
    """A no-op at every point; a callback overrides the hooks it needs."""

    state_key: ClassVar[str | None] = None   # its entry in checkpoint.pt (None: no state)

    def setup(self, trainer: Trainer) -> None:
        pass

    def running(self, trainer: Trainer) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def on_fit_start(self, trainer: Trainer) -> None:
        pass

    def on_epoch_start(self, trainer: Trainer) -> None:
        pass

    def on_round_end(self, trainer: Trainer, values: dict[str, float]) -> None:
        pass

    def measure(self, trainer: Trainer) -> dict[str, Any]:
        return {}

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        pass

    def on_checkpoint(self, trainer: Trainer,
                      state: dict[str, Any]) -> Callable[[], None] | None:
        """A write for the background writer, given the checkpoint's CPU copy (rank 0 only);
        the writes of a checkpoint run one after another in the callbacks' order."""
        return None

    def on_resume(self, trainer: Trainer) -> None:
        pass

    def summarize(self, trainer: Trainer) -> dict[str, Any]:
        """What the callback adds to the run's summary."""
        return {}

    def on_fit_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> Any:
        return None

    def load_state_dict(self, state: Any) -> None:
        pass
