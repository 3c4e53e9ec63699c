"""SIGKILL the torchrun launcher of a 2-process gloo run at random moments, resume after each
kill, and say what was lost: whether the final metrics equal an uninterrupted run's, and how
long the workers outlived their launcher. tests/test_distributed.py kills 3 times;
benchmarks/torchrun_kills.py 20 times."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import metrics_rows


def torchrun_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
            "-m", "dfkd", "distill", *args]


def workers_of(folder: Path) -> list[int]:
    """Live (non-zombie) processes whose command line names ``folder``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(folder) in cmd.split("\0") and state != "Z":
            pids.append(int(entry))
    return pids


def kill_and_resume(teacher: Path, out: Path, kills: int, run: list[str], seed: int = 0,
                    max_wait: float = 6.0, exit_deadline: float = 30.0) -> dict:
    """Run ``dfkd distill TEACHER RUN`` uninterrupted, and again with the launcher killed
    ``kills`` times, both in ``out``; return what happened."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    full, split = out / "full", out / "split"
    subprocess.run(torchrun_cmd("--teacher", str(teacher), "--out", str(full), *run), env=env,
                   check=True, capture_output=True, timeout=1800)
    rng = random.Random(seed)
    exit_seconds, starts = [], 0

    def start_args() -> list[str]:  # a kill during start-up may leave no checkpoint yet
        if (split / "checkpoint.pt").is_file():
            return ["--resume", str(split), "--no-progress"]
        return ["--teacher", str(teacher), "--out", str(split), *run]

    for _ in range(kills):
        launcher = subprocess.Popen(torchrun_cmd(*start_args()), env=env,
                                    stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
        starts += 1
        time.sleep(rng.uniform(0.5, max_wait))  # start-up, training or a checkpoint write
        if launcher.poll() is not None:  # finished before its kill: the run is complete
            break
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        killed_at = time.time()
        while workers_of(split):
            if time.time() - killed_at > exit_deadline:
                raise RuntimeError(f"orphan workers alive {exit_deadline} s after the kill: "
                                   f"{workers_of(split)}")
            time.sleep(0.1)
        exit_seconds.append(time.time() - killed_at)
    final = subprocess.run(torchrun_cmd(*start_args()), env=env, capture_output=True, text=True,
                           timeout=1800)
    if final.returncode != 0:
        errors = [x for x in final.stderr.splitlines() if "dfkd: error" in x or "Error" in x]
        raise RuntimeError(f"the final run failed: {errors[-5:]}")
    got, want = metrics_rows(split), metrics_rows(full)
    return {"kills": len(exit_seconds), "starts": starts + 1,
            "max_exit_seconds": max(exit_seconds, default=0.0),
            "mean_exit_seconds": sum(exit_seconds) / max(len(exit_seconds), 1),
            "rows": len(got), "expected_rows": len(want), "identical": got == want,
            "leftover_processes": len(workers_of(split)) + len(workers_of(full))}
