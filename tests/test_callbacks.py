"""The callbacks' order is the run's contract: the epoch is measured before the health watch
reads it, and a checkpoint's writes come before the metrics row's, which come before the
trackers' (a row exists only once its checkpoint is on disk)."""

from __future__ import annotations

from dfkd.run.callbacks import standard_callbacks
from dfkd.run.callbacks.checkpoint import CheckpointFiles
from dfkd.run.callbacks.evaluation import Evaluation
from dfkd.run.callbacks.health import HealthWatch
from dfkd.run.callbacks.metrics import MetricsFile
from dfkd.run.callbacks.probe import Probe
from dfkd.run.callbacks.progress import ProgressBar
from dfkd.run.callbacks.samples import SampleGrid
from dfkd.run.callbacks.trackers import Trackers
from dfkd.trackers.hub import Tracking


def _kinds(writes: bool) -> list[type]:
    callbacks = standard_callbacks(eval_data=None, out_dir=None, writes=writes,
                                   tracking=Tracking(None), progress=False,
                                   student_arch=None, recipe_hint=None)
    return [type(c) for c in callbacks]


def test_the_callbacks_run_in_the_documented_order():
    assert _kinds(writes=True) == [Evaluation, Probe, HealthWatch, SampleGrid, CheckpointFiles,
                                   MetricsFile, Trackers, ProgressBar]


def test_a_process_that_writes_nothing_has_no_file_callbacks():
    assert _kinds(writes=False) == [Evaluation, Probe, HealthWatch, SampleGrid, ProgressBar]


def test_the_health_watch_reads_the_runs_probe():
    callbacks = standard_callbacks(eval_data=None, out_dir=None, writes=False,
                                   tracking=Tracking(None), progress=False,
                                   student_arch=None, recipe_hint="r")
    probe = next(c for c in callbacks if isinstance(c, Probe))
    health = next(c for c in callbacks if isinstance(c, HealthWatch))
    assert health.probe is probe and health.recipe_hint == "r"
