"""One writer per folder: a second distill, resume, overwrite, bench or tune on a folder
that another process holds is refused with one line naming the holder, and writes nothing."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dfkd import runlock
from dfkd.api import build_trainer
from dfkd.bench import run_bench
from dfkd.runlock import FolderInUse

HOLD = ("import sys, time\nfrom dfkd import runlock\nrunlock.hold(sys.argv[1])\n"
        "print('held', flush=True)\ntime.sleep(600)\n")


@pytest.fixture
def held(tmp_path):
    """A folder whose lock another process holds (as a running distillation would)."""
    folder = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    yield folder, proc
    proc.kill()
    proc.wait()


def _listing(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_second_writer_is_refused_and_writes_nothing(fmnist_teacher, held):
    folder, proc = held
    pid = proc.pid
    (folder / "metrics.jsonl").write_text('{"epoch": 1}\n')  # what the holder has written
    (folder / "checkpoint.pt").write_bytes(b"the holder's checkpoint")
    before = _listing(folder)
    raw = {"teacher": str(fmnist_teacher), "epochs": 1, "rounds": 1}
    holder = f"pid {pid} on {socket.gethostname()}, since "
    for kwargs in ({}, {"overwrite": True}, {"resume": True}):
        with pytest.raises(FolderInUse, match=f"'{folder}' is in use by another dfkd process "
                                              f"\\({holder}"):
            build_trainer(raw, folder, progress=False, **kwargs)
    config = folder.parent / "bench.yaml"
    config.write_text(yaml.safe_dump({"base": raw}))
    with pytest.raises(FolderInUse, match="in use by another dfkd process"):
        run_bench(str(config), ["dfad"], [0], folder)
    assert _listing(folder) == before


def test_the_lock_dies_with_its_process(held):
    folder, proc = held
    proc.kill()  # SIGKILL: no chance to clean up
    proc.wait()
    runlock.hold(folder)  # no stale lock to clean by hand
    runlock.hold(folder)  # re-entrant within a process
    runlock.release(folder)


def test_command_line_names_the_holder(fmnist_teacher, held):
    folder, proc = held
    result = subprocess.run([sys.executable, "-m", "dfkd", "distill", "--teacher",
                             str(fmnist_teacher), "--out", str(folder), "--overwrite"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("dfkd: error:") and f"pid {proc.pid}" in line
