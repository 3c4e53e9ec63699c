"""What happens around the loop, one callback a module, in the order the trainer calls them.

The order is the contract: evaluation and the probe measure the epoch before the health
watch reads it; the checkpoint's write comes before the metrics row's, which comes before
the trackers' (a row exists only once its checkpoint is on disk)."""

from __future__ import annotations

from pathlib import Path

from dfkd.run.callbacks.base import Callback
from dfkd.run.callbacks.checkpoint import CheckpointFiles
from dfkd.run.callbacks.evaluation import Evaluation
from dfkd.run.callbacks.health import HealthWatch
from dfkd.run.callbacks.metrics import MetricsFile
from dfkd.run.callbacks.probe import Probe
from dfkd.run.callbacks.progress import ProgressBar
from dfkd.run.callbacks.samples import SampleGrid
from dfkd.run.callbacks.trackers import Trackers
from dfkd.run.spec import EvalData
from dfkd.trackers.hub import Tracking


def standard_callbacks(*, eval_data: EvalData | None, out_dir: Path | None, writes: bool,
                       tracking: Tracking, progress: bool, student_arch: str | None,
                       recipe_hint: str | None) -> list[Callback]:
    """A run's callbacks in their order. ``writes``: this process writes the run folder
    (rank 0 of a run that has one)."""
    probe = Probe()
    callbacks: list[Callback] = [Evaluation(eval_data), probe, HealthWatch(probe, recipe_hint),
                                 SampleGrid()]
    if writes:
        callbacks += [CheckpointFiles(out_dir, student_arch), MetricsFile(out_dir),
                      Trackers(tracking)]
    return [*callbacks, ProgressBar(progress)]


__all__ = ["Callback", "standard_callbacks"]
