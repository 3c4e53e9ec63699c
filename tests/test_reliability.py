"""Interruptions lose nothing: atomic checkpoints, signals, kill -9, NaN, run folders."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import metrics_rows

from dfkd.api import build_trainer
from dfkd.checkpoint import BackgroundWriter, atomic_save, cpu_snapshot, safe_load
from dfkd.errors import DfkdError

RUN = ["--set", "epochs=4", "--set", "rounds=6", "--set", "kd_steps=2", "--set", "batch_size=32",
       "--set", "sample_grid=0", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def start(teacher: Path, out: Path, *extra: str) -> subprocess.Popen:
    args = ["--resume", str(out)] if extra == ("resume",) else [
        "--teacher", str(teacher), "--out", str(out), *RUN, *extra]
    return subprocess.Popen([sys.executable, "-m", "dfkd", "distill", *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


def wait_for_lines(out: Path, n: int, proc: subprocess.Popen) -> None:
    path = out / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"run ended or stalled before {n} epochs: {proc.poll()}")


@pytest.fixture(scope="module")
def reference(fmnist_teacher, tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ref") / "run"
    code, err = finish(start(fmnist_teacher, out))
    assert code == 0, err
    return metrics_rows(out)


def test_sigint_checkpoints_prints_resume_and_resumes_exactly(fmnist_teacher, tmp_path,
                                                              reference):
    out = tmp_path / "run"
    proc = start(fmnist_teacher, out)
    wait_for_lines(out, 1, proc)
    proc.send_signal(signal.SIGINT)
    code, err = finish(proc)
    assert code == 130, err
    assert "Traceback" not in err
    assert f"dfkd distill --resume {out}" in err
    state = safe_load(out / "checkpoint.pt")
    assert state["epoch"] * 6 + state["round"] >= 6   # at least one epoch of rounds kept
    code, err = finish(start(fmnist_teacher, out, "resume"))
    assert code == 0, err
    assert metrics_rows(out) == reference


def test_sigterm_exits_143_and_double_ctrl_c_quits_at_once(fmnist_teacher, tmp_path):
    out = tmp_path / "term"
    proc = start(fmnist_teacher, out)
    wait_for_lines(out, 1, proc)
    proc.send_signal(signal.SIGTERM)
    code, err = finish(proc)
    assert code == 143 and "--resume" in err, err
    # One long round per epoch, so the second Ctrl-C lands while the first is still
    # waiting for the round to end (signals sent back to back would coalesce).
    out = tmp_path / "twice"
    proc = start(fmnist_teacher, out, "--set", "rounds=1", "--set", "kd_steps=800")
    wait_for_lines(out, 1, proc)
    time.sleep(1.0)  # past epoch 1's checkpoint, inside epoch 2's (multi-second) round
    proc.send_signal(signal.SIGINT)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    code, err = finish(proc)
    assert code == 130 and "Traceback" not in err, err
    assert "dfkd: interrupted" in err


def test_kill_9_at_a_random_moment_then_resume_matches(fmnist_teacher, tmp_path, reference):
    out = tmp_path / "run"
    proc = start(fmnist_teacher, out)
    wait_for_lines(out, 1, proc)
    time.sleep(random.Random().uniform(0.0, 1.5))
    proc.kill()
    proc.communicate()
    code, err = finish(start(fmnist_teacher, out, "resume"))
    assert code == 0, err
    assert metrics_rows(out) == reference


def test_crash_during_checkpoint_write_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    atomic_save({"epoch": 1, "w": torch.ones(3)}, path)

    def broken_save(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"epoch": 2}, path)
    monkeypatch.undo()
    assert safe_load(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_checkpoint_snapshot_is_what_the_epoch_ended_with():
    weights, history = torch.zeros(3), [{"epoch": 1}]
    snap = cpu_snapshot({"w": weights, "history": history, "pair": (weights, 2)})
    weights += 1  # the next epoch trains on
    history.append({"epoch": 2})
    assert snap["w"].tolist() == [0.0, 0.0, 0.0] and snap["pair"][0].tolist() == [0.0] * 3
    assert snap["history"] == [{"epoch": 1}] and snap["pair"][1] == 2


def test_background_writes_run_in_order_and_raise_their_errors():
    writer, done = BackgroundWriter(), []

    def slow(n):
        def write():
            time.sleep(0.05)
            done.append(n)
        return write
    for n in range(3):
        writer.submit(slow(n))
    writer.wait()
    assert done == [0, 1, 2]

    def fails():
        raise OSError("disk full")
    writer.submit(fails)
    with pytest.raises(OSError, match="disk full"):
        writer.submit(slow(3))  # the next write waits for the failed one and reports it
    writer.wait()  # reported once
    assert done == [0, 1, 2]
    writer.close()


def test_closed_writer_holds_nothing_of_its_last_write():
    """``close`` ends the worker thread, whose frame may otherwise still hold the last
    write's closure (in a run: the trainer and its DDP models) after ``wait`` returned."""
    import gc
    import threading
    import weakref

    class Held:
        pass

    writer, held = BackgroundWriter(), Held()
    ref = weakref.ref(held)
    before = set(threading.enumerate())

    def write(obj=held):
        time.sleep(0.01)
    writer.submit(write)
    del write, held
    writer.close()
    gc.disable()   # gone by reference counting, not by a later collection
    try:
        assert ref() is None
        assert set(threading.enumerate()) <= before
    finally:
        gc.enable()
    writer.submit(lambda: None)  # a closed writer starts a new thread when it is used again
    writer.close()


def test_fit_waits_for_its_checkpoint_and_reports_a_failed_write(fmnist_teacher, tmp_path,
                                                                 monkeypatch):
    raw = {"teacher": str(fmnist_teacher), "epochs": 3, "rounds": 2, "kd_steps": 2,
           "batch_size": 16, "sample_grid": 0}
    trainer = build_trainer(raw, tmp_path, progress=False)
    trainer.fit(stop_after_epoch=1)  # returns once the epoch's files are on disk
    saved = safe_load(tmp_path / "checkpoint.pt")
    assert saved["epoch"] == 1 and len(saved["history"]) == 1
    student = trainer.kept_student.state_dict()
    assert all(torch.equal(v.cpu(), saved["student"][k]) for k, v in student.items())
    # The student files hold the kept student, the average with student_ema, key for key.
    averaged = build_trainer({**raw, "student_ema": 0.9}, tmp_path / "ema", progress=False)
    averaged.fit(stop_after_epoch=1)
    kept = averaged.kept_student.state_dict()
    written = safe_load(tmp_path / "ema" / "student.pt")["state_dict"]
    assert written.keys() == kept.keys()
    assert all(torch.equal(v.cpu(), written[k]) for k, v in kept.items())
    assert not all(torch.equal(v, averaged.student.state_dict()[k]) for k, v in kept.items())

    def broken_save(obj, path, *a, **k):
        raise OSError("disk full")
    monkeypatch.setattr("dfkd.run.callbacks.checkpoint.atomic_save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.fit()
    assert safe_load(tmp_path / "checkpoint.pt")["epoch"] == 1


def test_a_metrics_row_follows_its_checkpoint_to_disk(fmnist_teacher, tmp_path, monkeypatch):
    """kill -9 at any moment after an epoch's row is on disk finds its checkpoint there."""
    seen = []
    real_save = atomic_save

    def slow_save(state, path):
        lines = (tmp_path / "metrics.jsonl").read_text().splitlines() \
            if (tmp_path / "metrics.jsonl").exists() else []
        seen.append((state["epoch"], len(lines)))
        time.sleep(0.3)  # a slow disk: the next epoch starts before this write ends
        real_save(state, path)
    monkeypatch.setattr("dfkd.run.callbacks.checkpoint.atomic_save", slow_save)
    raw = {"teacher": str(fmnist_teacher), "epochs": 3, "rounds": 1, "kd_steps": 1,
           "batch_size": 16, "sample_grid": 0}
    build_trainer(raw, tmp_path, progress=False).fit()
    assert seen == [(1, 0), (2, 1), (3, 2)]
    assert len(metrics_rows(tmp_path)) == 3


def test_nan_stops_with_term_and_step_and_keeps_checkpoint(fmnist_teacher, tmp_path):
    raw = {"teacher": str(fmnist_teacher), "epochs": 3, "rounds": 2, "kd_steps": 2,
           "batch_size": 16, "sample_grid": 0}
    trainer = build_trainer(raw, tmp_path, progress=False)
    trainer.fit(stop_after_epoch=1)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    trainer.optimiser.opt.param_groups[0]["lr"] = float("nan")  # poisons the student at once
    with pytest.raises(DfkdError, match=r"non-finite loss: '\w+' .* epoch 2, round \d"):
        trainer.fit()
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_unwritable_or_foreign_output_folder(fmnist_teacher, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    raw = {"teacher": str(fmnist_teacher), "epochs": 1}
    with pytest.raises(DfkdError, match="is not writable"):
        build_trainer(raw, blocker / "run")
    with pytest.raises(DfkdError, match="cannot resume"):
        build_trainer(raw, tmp_path / "empty", resume=True)


def test_teacher_shape_mismatch_names_layers(fmnist_teacher, tmp_path):
    raw = {"teacher": str(fmnist_teacher), "epochs": 1}
    state = safe_load(fmnist_teacher)
    state["state_dict"]["conv2.weight"] = torch.zeros(16, 6, 3, 3)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(DfkdError, match=r"shape mismatch in conv2.weight \(16, 6, 3, 3\)"):
        build_trainer({**raw, "teacher": str(tmp_path / "bad.pt")}, tmp_path / "run")
