"""Experiment trackers: what TensorBoard, MLflow and W&B hold, read back with their own
readers, equals metrics.jsonl value by value, each epoch once, across kills and resumes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from conftest import TIMING

import dfkd
from dfkd.api import build_trainer
from dfkd.config import flatten, load_config
from dfkd.errors import ConfigError
from dfkd.trackers import check_trackers, require_installed
from dfkd.trackers.hub import STATE_FILE, Tracking
from dfkd.trackers.wandb_tracker import offline_files, read_history

pytestmark = pytest.mark.usefixtures("one_thread", "offline_wandb")

TINY = {"epochs": 3, "rounds": 1, "g_steps": 1, "kd_steps": 2, "batch_size": 16,
        "eval_batch_size": 2048, "sample_grid": 4, "synthetic_probe": 0, "method": "dafl"}
ALL = ["tensorboard", "mlflow", "wandb"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}


@pytest.fixture(scope="module")
def offline_wandb():
    """W&B never reaches a server here, and keeps its settings out of the home folder."""
    saved = {k: os.environ.get(k) for k in ("WANDB_MODE", "WANDB_SILENT")}
    os.environ.update(WANDB_MODE="offline", WANDB_SILENT="true")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def mlflow_db(tmp_path_factory) -> Path:
    """An MLflow database made once: a new one spends ~10 s on its schema migrations. The
    module's runs share it (each test reads its own run by the id dfkd recorded)."""
    mlflow = pytest.importorskip("mlflow")
    path = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    template = path.with_name("template.db")
    template.write_bytes(path.read_bytes())
    return path


def _uri(db: Path) -> str:
    return f"sqlite:///{db}"


def _run(teacher, out: Path, trackers: list[str], stop: int | None = None,
         overwrite: bool = False, **extra):
    raw = {**TINY, "teacher": str(teacher), "tracker": trackers, **extra}
    resume = (out / "checkpoint.pt").is_file() and not overwrite
    trainer = build_trainer(raw, out, resume=resume, overwrite=not resume, progress=False)
    trainer.fit(stop_after_epoch=stop)
    return trainer


def _rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _numbers(row: dict) -> dict[str, float]:
    return {k: v for k, v in row.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


# ---------------------------------------------------------------- the readers
def tensorboard_scalars(out: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def tensorboard_images(out: Path) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    return [e.step for e in acc.Images("samples")]


def mlflow_run(out: Path, tracking_uri: str | None = None):
    from mlflow import MlflowClient

    state = json.loads((out / STATE_FILE).read_text())["trackers"]["mlflow"]
    client = MlflowClient(tracking_uri=tracking_uri or state["tracking_uri"])
    return client, client.get_run(state["run_id"])


def mlflow_history(out: Path, keys) -> dict[str, list[tuple[int, float]]]:
    client, run = mlflow_run(out)
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k))
            for k in keys}


def wandb_history(out: Path) -> list[dict]:
    key = json.loads((out / STATE_FILE).read_text())["key"]
    return [row for path in offline_files(out, key) for row in read_history(path)]


def check_every_epoch_once(out: Path, reference: list[dict] | None = None) -> None:
    """Each tracker holds each epoch of metrics.jsonl once, with its values (and those of
    ``reference``, an uninterrupted run's rows, for everything but wall-clock figures)."""
    rows = _rows(out)
    epochs = [r["epoch"] for r in rows]
    if reference is not None:
        assert [{k: v for k, v in r.items() if k not in TIMING} for r in rows] == reference
    keys = set().union(*(_numbers(r) for r in rows))
    # TensorBoard stores 32-bit floats.
    tb = tensorboard_scalars(out)
    assert set(tb) == keys
    for key in keys:
        want = [(r["epoch"], np.float32(r[key])) for r in rows if key in r]
        assert [(s, np.float32(v)) for s, v in tb[key]] == want, key
    assert tensorboard_images(out) == epochs
    # MLflow stores doubles: exact.
    for key, history in mlflow_history(out, keys).items():
        assert history == [(r["epoch"], float(r[key])) for r in rows if key in r], key
    # W&B: one history step per epoch, with the sample grid.
    history = wandb_history(out)
    assert [h["_step"] for h in history] == epochs
    for h, r in zip(history, rows):
        assert {k: h[k] for k in _numbers(r)} == _numbers(r)
        assert h["samples/_type"] == "image-file"   # nested keys come flattened


# ---------------------------------------------------------------- one full run
@pytest.fixture(scope="module")
def tracked(fmnist_teacher, tmp_path_factory, mlflow_db):
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    out = tmp_path_factory.mktemp("tracked") / "run"
    _run(fmnist_teacher, out, ALL, tracker_uri=_uri(mlflow_db))
    return out


def test_each_tracker_holds_metrics_jsonl_value_by_value(tracked):
    rows = _rows(tracked)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and "acc1" in rows[0] and "loss_s" in rows[0]
    check_every_epoch_once(tracked)


def test_tensorboard_files_are_in_the_run_folder(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert list((tracked / "tensorboard").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(tracked / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    assert "config/text_summary" in acc.Tags()["tensors"]


def test_mlflow_run_has_params_tags_summary_and_student(tracked):
    client, run = mlflow_run(tracked)
    config = load_config(json.loads(json.dumps(
        json.loads((tracked / "summary.json").read_text())["config"])))
    params = flatten(config.to_dict())
    assert run.data.params == {k: "null" if v is None else str(v) for k, v in params.items()}
    assert run.info.status == "FINISHED" and run.info.run_name == "run"
    assert run.data.tags["method"] == "dafl" and run.data.tags["seed"] == "0"
    assert run.data.tags["teacher"] == "teacher.pt"
    summary = json.loads((tracked / "summary.json").read_text())
    assert run.data.metrics["final_acc1"] == summary["final_acc1"]
    assert run.data.metrics["acc1"] == summary["final_acc1"]   # the last epoch's
    files = {a.path for a in client.list_artifacts(run.info.run_id, "student")}
    assert files == {"student/student.pt", "student/student.safetensors"}
    samples = {a.path for a in client.list_artifacts(run.info.run_id, "samples")}
    assert samples == {f"samples/epoch_00{e}.png" for e in (1, 2, 3)}
    top = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"summary.json", "config.yaml"} <= top


def test_wandb_offline_run_has_config_summary_and_artifact(tracked):
    key = json.loads((tracked / STATE_FILE).read_text())["key"]
    files = offline_files(tracked, key)
    assert len(files) == 1
    from dfkd.trackers.wandb_tracker import read_records

    records = read_records(files[0])
    kinds = [r.WhichOneof("record_type") for r in records]
    assert "artifact" in kinds and kinds[-1] == "exit"
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.run_id == key and run.project == "dfkd"
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    assert config["method"] == "dafl" and config["epochs"] == 3
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({i.key: json.loads(i.value_json) for i in r.summary.update})
    assert summary["final_acc1"] == json.loads((tracked / "summary.json").read_text())[
        "final_acc1"]


# ------------------------------------------------------------- exactly once
def test_an_epoch_logged_but_not_recorded_is_not_logged_again(fmnist_teacher, tmp_path, mlflow_db):
    """A kill after a tracker logged epoch 2 but before dfkd recorded it: the resumed run
    asks the tracker (MLflow's store, W&B's files) or purges (TensorBoard), never doubles."""
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    first = _run(fmnist_teacher, out, ALL, stop=2, tracker_uri=_uri(mlflow_db))
    first.tracking.close("stopped")
    state = json.loads((out / STATE_FILE).read_text())
    assert {n: s["logged"] for n, s in state["trackers"].items()} == dict.fromkeys(ALL, 2)
    for own in state["trackers"].values():
        own["logged"] = 1
    (out / STATE_FILE).write_text(json.dumps(state))
    _run(fmnist_teacher, out, ALL, tracker_uri=_uri(mlflow_db))
    check_every_epoch_once(out)
    assert len(offline_files(out, state["key"])) == 2   # one W&B run id, two starts


def test_a_tracker_added_on_resume_gets_the_earlier_epochs(fmnist_teacher, tmp_path, mlflow_db):
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    _run(fmnist_teacher, out, [], stop=2)
    _run(fmnist_teacher, out, ALL, tracker_uri=_uri(mlflow_db))
    check_every_epoch_once(out)


def test_overwrite_starts_new_tracker_runs(fmnist_teacher, tmp_path, mlflow_db):
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    out = tmp_path / "run"
    _run(fmnist_teacher, out, ALL, epochs=2, tracker_uri=_uri(mlflow_db))
    key = json.loads((out / STATE_FILE).read_text())["key"]
    # a new run in the same folder
    _run(fmnist_teacher, out, ALL, overwrite=True, seed=1, tracker_uri=_uri(mlflow_db))
    assert json.loads((out / STATE_FILE).read_text())["key"] != key
    check_every_epoch_once(out)


KILLED = {"method": "dafl", "epochs": 5, "rounds": 2, "kd_steps": 2, "batch_size": 16,
          "sample_grid": 4, "synthetic_probe": 0}


def _cli(teacher: Path, out: Path, db: Path, *extra: str) -> subprocess.Popen:
    args = ["--resume", str(out)] if extra == ("resume",) else [
        "--teacher", str(teacher), "--out", str(out), "--no-progress",
        *[a for k, v in KILLED.items() for a in ("--set", f"{k}={v}")],
        *[a for name in ALL for a in ("--tracker", name)],
        "--tracker-uri", _uri(db), *extra]
    return subprocess.Popen([sys.executable, "-m", "dfkd", "distill", *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _lines(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


def test_three_kill_9_then_resume_hold_each_epoch_once(fmnist_teacher, tmp_path, mlflow_db):
    """SIGKILL three times (as a row reaches metrics.jsonl, while the trackers log it, a
    little later), resume each time: every tracker holds epochs 1-5 once, with the values
    of an uninterrupted run."""
    pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    pytest.importorskip("wandb")
    ref = tmp_path / "ref"   # as the command runs it (from the recipe of its images)
    build_trainer({**KILLED, "teacher": str(fmnist_teacher)}, ref, progress=False,
                  base_recipe=True).fit()
    reference = [{k: v for k, v in r.items() if k not in TIMING} for r in _rows(ref)]
    out = tmp_path / "killed" / "run"
    proc = _cli(fmnist_teacher, out, mlflow_db)
    for delay in (0.0, 0.3, 0.8):
        target = _lines(out) + 1
        deadline = time.time() + 300
        while _lines(out) < target and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()[1]
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc = _cli(fmnist_teacher, out, mlflow_db, "resume")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "warning" not in err, err
    check_every_epoch_once(out, reference)


# ------------------------------------------------------------- faults and servers
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dead_mlflow_server_warns_once_and_the_run_finishes(fmnist_teacher, tmp_path,
                                                               capfd):
    pytest.importorskip("mlflow")
    out = tmp_path / "run"
    start = time.perf_counter()
    _run(fmnist_teacher, out, ["mlflow"], tracker_uri=f"http://127.0.0.1:{_free_port()}")
    seconds = time.perf_counter() - start
    err = capfd.readouterr().err
    warnings = [line for line in err.splitlines() if "tracker stopped logging" in line]
    assert len(warnings) == 1 and "mlflow" in warnings[0], err
    assert [r["epoch"] for r in _rows(out)] == [1, 2, 3]
    assert (out / "summary.json").is_file()
    assert seconds < 60


def _get(url: str, timeout: float = 10) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:   # 127.0.0.1 only
        return json.loads(response.read())


def _post(url: str, body: dict, timeout: float = 10) -> dict:
    request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


@pytest.mark.slow   # the server takes 30-60 s to start on a busy 2-core machine
def test_a_real_mlflow_server_over_http(fmnist_teacher, tmp_path, mlflow_db):
    server_db = tmp_path / "server.db"   # an empty database, its schema made already
    server_db.write_bytes(mlflow_db.with_name("template.db").read_bytes())
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", _uri(server_db),
         "--artifacts-destination", str(tmp_path / "artifacts"), "--workers", "1"],
        cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    break
            except OSError:
                assert server.poll() is None, server.communicate()[1]
                assert time.time() < deadline, "mlflow server did not start in 120 s"
                time.sleep(0.5)
        out = tmp_path / "run"
        _run(fmnist_teacher, out, ["mlflow"], tracker_uri=base)
        rows = _rows(out)
        api = f"{base}/api/2.0/mlflow"
        experiment = _get(f"{api}/experiments/get-by-name?experiment_name=dfkd")["experiment"]
        runs = _post(f"{api}/runs/search", {"experiment_ids": [experiment["experiment_id"]]})
        assert len(runs["runs"]) == 1
        run = runs["runs"][0]
        assert run["info"]["status"] == "FINISHED"
        for key in ("acc1", "loss_s", "lr", "epoch"):
            query = urllib.parse.urlencode({"run_id": run["info"]["run_id"], "metric_key": key})
            history = _get(f"{api}/metrics/get-history?{query}")["metrics"]
            assert sorted((m["step"], m["value"]) for m in history) == \
                [(r["epoch"], r[key]) for r in rows], key
        query = urllib.parse.urlencode({"run_id": run["info"]["run_id"], "path": "student"})
        files = _get(f"{api}/artifacts/list?{query}")["files"]
        assert {f["path"] for f in files} == {"student/student.pt", "student/student.safetensors"}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


# ------------------------------------------------------------- settings and errors
def test_settings_cli_and_errors(fmnist_teacher, tmp_path, monkeypatch):
    # The engine checks the setting when it builds a run (dfkd.trackers builds on config).
    assert check_trackers("mlflow") == ["mlflow"]
    assert check_trackers(["wandb", "tensorboard", "wandb"]) == ["wandb", "tensorboard"]
    assert "tracker" not in load_config({}).to_dict()   # old runs' configs still compare equal
    with pytest.raises(ConfigError, match="unknown tracker 'mlfow'. Did you mean 'mlflow'"):
        check_trackers("mlfow")
    with pytest.raises(ConfigError, match="tracker name or a list"):
        check_trackers(3)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'dfkd\[wandb\]'$"):
        require_installed(["wandb"])
    with pytest.raises(ConfigError, match="needs a run folder"):
        Tracking(["tensorboard"], None, None)
    # Unknown names fail before any work, from the CLI too, in one line.
    from dfkd.commands import main

    code = main(["distill", "--teacher", str(fmnist_teacher), "--out", str(tmp_path / "x"),
                 "--tracker", "tensorbord"])
    assert code == 2


def test_api_tracker_argument(tmp_path):
    pytest.importorskip("tensorboard")
    import torch

    from dfkd.models import create_model

    torch.manual_seed(0)
    teacher, student = create_model("lenet5", 10, 1), create_model("lenet5_half", 10, 1)
    images = torch.randint(0, 255, (64, 1, 32, 32), dtype=torch.uint8)
    labels = torch.randint(0, 10, (64,))
    summary, _ = dfkd.distill(teacher, student, num_classes=10, image_shape=(1, 32, 32),
                              mean=(0.5,), std=(0.5,), method="dafl", recipe=None,
                              test_data=(images, labels), out_dir=tmp_path / "run",
                              progress=False, tracker="tensorboard", check_teacher=False,
                              **{k: v for k, v in TINY.items() if k != "method"})
    assert summary["config"]["tracker"] == ["tensorboard"]
    tb = tensorboard_scalars(tmp_path / "run")
    assert [s for s, _ in tb["acc1"]] == [1, 2, 3]


# ------------------------------------------------------------- bench and tune
def test_bench_groups_its_runs_with_tags(fmnist_teacher, tmp_path, mlflow_db):
    import yaml
    from mlflow import MlflowClient

    from dfkd.bench import run_bench

    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump({"base": {**TINY, "teacher": str(fmnist_teacher),
                                               "epochs": 2, "sample_grid": 0}}))
    out = tmp_path / "mybench"
    tracking = [f"tracker={json.dumps(['mlflow'])}", f"tracker_uri={_uri(mlflow_db)}"]
    run_bench(str(config), ["dafl"], [0, 1], out, overrides=tracking, progress=False)
    client = MlflowClient(_uri(mlflow_db))
    experiment = client.get_experiment_by_name("bench-mybench")
    runs = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["dafl/seed0", "dafl/seed1"]
    for run in runs:
        seed = run.info.run_name[-1]
        assert run.data.tags["method"] == "dafl" and run.data.tags["seed"] == seed
        assert run.data.tags["teacher"] == "teacher.pt" and run.data.tags["row"] == "dafl"
        rows = _rows(out / "dafl" / f"seed{seed}")
        history = client.get_metric_history(run.info.run_id, "acc1")
        assert sorted((m.step, m.value) for m in history) == [(r["epoch"], r["acc1"])
                                                              for r in rows]
    # Where runs are logged is no part of their config: the bench without --tracker
    # finds them done instead of refusing them.
    assert all(r["state"] == "done" for r in run_bench(str(config), ["dafl"], [0, 1], out,
                                                       dry_run=True))
    run_bench(str(config), ["dafl"], [0, 1], out, progress=False)


def test_tune_logs_each_trial_as_a_run(fmnist_teacher, tmp_path, mlflow_db):
    pytest.importorskip("optuna")
    import yaml
    from mlflow import MlflowClient

    from dfkd.tune import run_tune

    recipe = tmp_path / "study.yaml"
    recipe.write_text(yaml.safe_dump({
        **TINY, "epochs": 2, "sample_grid": 0,
        "search": {"generator.lr": {"low": 1e-3, "high": 2e-2, "log": True}}}))
    study = run_tune(str(recipe), str(fmnist_teacher), 2, tmp_path / "tune",
                     overrides=["tracker=mlflow", f"tracker_uri={_uri(mlflow_db)}"],
                     progress=False)
    client = MlflowClient(_uri(mlflow_db))
    experiment = client.get_experiment_by_name("tune-study")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(runs) == ["trial-0000", "trial-0001"]
    for trial in study.trials:
        run = runs[f"trial-{trial.number:04d}"]
        assert float(run.data.params["generator.lr"]) == trial.params["generator.lr"]
        assert run.data.params["eval_split"] == "val"
        assert run.data.metrics["final_acc1"] == trial.value
        assert run.info.status == "FINISHED"


def test_only_rank_0_logs(fmnist_teacher, tmp_path, monkeypatch):
    """Under torchrun every rank runs the loop; a rank other than 0 starts no tracker."""
    pytest.importorskip("tensorboard")
    from dfkd import distributed

    monkeypatch.setattr(distributed, "current", lambda: distributed.DistInfo(rank=1))
    out = tmp_path / "run"
    out.mkdir()
    trainer = build_trainer({**TINY, "teacher": str(fmnist_teacher), "epochs": 1,
                             "tracker": ["tensorboard"]}, out, progress=False)
    assert not trainer.tracking
    trainer.fit()
    assert not (out / "tensorboard").exists() and not (out / STATE_FILE).exists()


def test_tracker_flags_become_settings():
    from argparse import Namespace

    from dfkd.commands.flags import tracker_sets
    from dfkd.config import parse_overrides

    sets = tracker_sets(Namespace(tracker=["mlflow", "wandb"], tracker_uri="http://h:5000"))
    assert parse_overrides(sets) == {"tracker": ["mlflow", "wandb"],
                                     "tracker_uri": "http://h:5000"}
    assert tracker_sets(Namespace(tracker=None, tracker_uri=None)) == []
