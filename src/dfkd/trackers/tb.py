"""TensorBoard: event files in ``<run>/tensorboard/`` (``tensorboard --logdir <run>``).

Scalars are written by TensorBoard's own writer (``torch.utils.tensorboard``), which
stores them as 32-bit floats. Exactly once: dfkd records the last epoch whose events
were flushed; a resumed run opens a new event file with ``purge_step`` = that epoch + 1,
so TensorBoard's reader drops anything a killed run wrote past it, and logs again from
there.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from dfkd.trackers import register_tracker
from dfkd.trackers.base import Image, RunInfo, Tracker, numeric

FOLDER = "tensorboard"


@register_tracker
class TensorBoardTracker(Tracker):
    name = "tensorboard"
    requires = "tensorboard"
    extra = "tensorboard"

    def __init__(self) -> None:
        self.writer = None

    def start(self, run: RunInfo, state: dict[str, Any]) -> int:
        from torch.utils.tensorboard import SummaryWriter

        logdir = run.folder / FOLDER
        if not run.resumed:   # a new run in this folder: a previous run's events go
            shutil.rmtree(logdir, ignore_errors=True)
            state.clear()
        held = int(state.get("logged", 0)) if run.resumed else 0
        fresh = not any(logdir.glob("events.out.tfevents.*"))
        # Events past the last flushed epoch (a kill between the write and dfkd's record)
        # are dropped by TensorBoard's reader once this file's purge event is read.
        self.writer = SummaryWriter(str(logdir), purge_step=None if fresh else held + 1,
                                    flush_secs=30)
        if fresh:
            lines = "\n".join(f"    {k}: {json.dumps(v)}" for k, v in run.params.items())
            self.writer.add_text("config", lines, global_step=0)
        return held

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for key, value in numeric(metrics).items():
            self.writer.add_scalar(key, value, global_step=step)

    def log_image(self, name: str, image: Image, step: int) -> None:
        self.writer.add_image(name, _array(image), global_step=step, dataformats="HWC")

    def flush(self, step: int) -> None:
        self.writer.flush()

    def log_summary(self, summary: dict[str, Any]) -> None:
        lines = "\n".join(f"    {k}: {v}" for k, v in numeric(summary).items())
        self.writer.add_text("summary", lines, global_step=int(summary.get("epochs", 0)))
        self.writer.flush()

    def finish(self, status: str) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _array(image: Image) -> np.ndarray:
    if isinstance(image, (str, Path)):
        from PIL import Image as PILImage

        with PILImage.open(image) as img:
            return np.asarray(img.convert("RGB"))
    array = np.asarray(image)
    return array[..., None] if array.ndim == 2 else array
