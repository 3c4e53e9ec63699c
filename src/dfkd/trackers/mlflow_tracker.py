"""MLflow: one MLflow run per dfkd run, in experiment ``dfkd`` (a bench or tune: its own).

Where: ``--tracker-uri`` (or the ``tracker_uri`` setting), else ``MLFLOW_TRACKING_URI``,
else MLflow's own default, ``sqlite:///mlflow.db`` in the current folder (``mlflow ui``
started there shows it). The URI is recorded in the run folder, so a resume from another
folder continues the same MLflow run.

Logged: the resolved config as parameters, every metrics.jsonl row at step = epoch, the
sample grids as artifacts ``samples/epoch_NNN.png``, and at the end summary.json's numbers
(as metrics at the last step), summary.json, config.yaml and the student files (artifacts
under ``student/``). Exactly once: each row is one ``log_batch`` whose last metric is
``epoch``; a resumed run asks the store for the highest step of ``epoch`` and logs only
later rows.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from dfkd.trackers import register_tracker
from dfkd.trackers.base import Image, RunInfo, Tracker, numeric

# MLflow's HTTP client retries 7 times with a doubling back-off and a 120 s timeout by
# default: minutes against a server that is down. A failed call switches the tracker off
# (dfkd.trackers.hub), so one short retry is enough. A user's own settings win.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
RUN_KEY_TAG = "dfkd.run_key"
_STATUS = {"finished": "FINISHED", "stopped": "KILLED", "failed": "FAILED"}


def tracking_uri(setting: str | None) -> str:
    """--tracker-uri, else MLFLOW_TRACKING_URI, else MLflow's default local database."""
    uri = setting or os.environ.get("MLFLOW_TRACKING_URI")
    return uri or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


@register_tracker
class MlflowTracker(Tracker):
    name = "mlflow"
    requires = "mlflow"
    extra = "mlflow"

    def __init__(self) -> None:
        self.client = None
        self.run_id = ""

    def start(self, run: RunInfo, state: dict[str, Any]) -> int:
        for key, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(key, value)
        from mlflow import MlflowClient
        from mlflow.entities import Param

        if not run.resumed:
            state.clear()
        uri = state.get("tracking_uri") or tracking_uri(run.uri)
        client = MlflowClient(tracking_uri=uri)
        run_id = state.get("run_id") or self._find_or_create(client, run)
        state.update(tracking_uri=uri, run_id=run_id)
        client.update_run(run_id, status="RUNNING")
        self.client, self.run_id = client, run_id
        # Parameters are immutable in MLflow: log the ones the run does not hold yet.
        held_params = client.get_run(run_id).data.params
        params = [Param(k, _param(v)) for k, v in run.params.items() if k not in held_params]
        for i in range(0, len(params), 100):   # log_batch takes at most 100 parameters
            client.log_batch(run_id, params=params[i:i + 100])
        history = client.get_metric_history(run_id, "epoch")
        return max((int(m.step) for m in history), default=0)

    @staticmethod
    def _find_or_create(client, run: RunInfo) -> str:
        """The run tagged with this dfkd run's key (created by a start that was killed
        before dfkd recorded its id), or a new one."""
        experiment = client.get_experiment_by_name(run.experiment)
        if experiment is None:
            try:
                experiment_id = client.create_experiment(run.experiment)
            except Exception:   # another process (a bench's worker) created it just now
                experiment = client.get_experiment_by_name(run.experiment)
                if experiment is None:
                    raise
                experiment_id = experiment.experiment_id
        else:
            experiment_id = experiment.experiment_id
        found = client.search_runs([experiment_id],
                                   filter_string=f"tags.`{RUN_KEY_TAG}` = '{run.key}'",
                                   max_results=1)
        if found:
            return found[0].info.run_id
        tags = {**run.tags, RUN_KEY_TAG: run.key}
        if run.group:
            tags["dfkd.group"] = run.group
        return client.create_run(experiment_id, run_name=run.name, tags=tags).info.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        values = numeric(metrics)
        values["epoch"] = values.pop("epoch", float(step))   # last: it marks the row logged
        stamp = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, stamp, step)
                                                    for k, v in values.items()])

    def log_image(self, name: str, image: Image, step: int) -> None:
        if isinstance(image, (str, Path)):
            # Same file name on a re-log: it replaces the artifact instead of adding one.
            self.client.log_artifact(self.run_id, str(image), artifact_path=name)
        else:
            self.client.log_image(self.run_id, image, artifact_file=f"{name}/{step:03d}.png")

    def log_summary(self, summary: dict[str, Any]) -> None:
        from mlflow.entities import Metric

        step = int(summary.get("epochs", 0))
        # A fixed timestamp: logging the same summary again (a finished run resumed) adds
        # nothing, as MLflow's database stores a (key, step, time, value) once.
        metrics = [Metric(k, v, 0, step) for k, v in numeric(summary).items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def log_artifacts(self, paths: list[Path]) -> None:
        for path in paths:
            where = "student" if path.name.startswith("student") else None
            self.client.log_artifact(self.run_id, str(path), artifact_path=where)

    def finish(self, status: str) -> None:
        if self.client is not None:
            self.client.set_terminated(self.run_id, status=_STATUS.get(status, "FINISHED"))
            self.client = None


def _param(value: Any) -> str:
    text = "null" if value is None else str(value)
    return text[:6000]   # MLflow's limit on a parameter's value
