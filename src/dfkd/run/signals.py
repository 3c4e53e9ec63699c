"""Stopping a run cleanly: SIGINT/SIGTERM finish the current round, checkpoint it and stop."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from dfkd.errors import DfkdError


class Interrupted(DfkdError):
    """Raised after a signal-triggered checkpoint; carries the conventional exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def interrupted(signum: int, epoch: int, round_: int, epochs: int,
                out_dir: object | None) -> Interrupted:
    """What a run stopped by ``signum`` raises once its checkpoint is taken at ``epoch``,
    ``round_`` (0-based; ``epochs``: the run's length)."""
    where = f"epoch {epoch + 1}, round {round_ + 1}" if epoch < epochs else "the end"
    msg = f"interrupted; checkpoint saved at {where}."
    if out_dir is not None:
        msg += f" Resume with: dfkd distill --resume {out_dir}"
    return Interrupted(msg, 128 + signum)


class StopFlag:
    """First SIGINT/SIGTERM asks the loop to stop after the current round; a second
    SIGINT restores the default handler's behaviour and quits at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, _frame) -> None:
        if self.signum is not None:  # already stopping (a bench's pool may send SIGTERM too)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: finishing the current round and "
              "saving a checkpoint (Ctrl-C again to quit at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
