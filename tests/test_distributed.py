"""DDP through torchrun on CPU (gloo): two processes complete, resume exactly, reduce metrics."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import metrics_rows
from launcher_kills import kill_and_resume

from dfkd import distributed

RUN = ["--set", "epochs=2", "--set", "rounds=3", "--set", "kd_steps=2", "--set", "batch_size=32",
       "--set", "sample_grid=4", "--no-progress", "--device", "cpu"]


def torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
           "--standalone", "-m", "dfkd", "distill", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_two_process_run_completes_and_resumes_exactly(fmnist_teacher, tmp_path):
    full = tmp_path / "full"
    result = torchrun("--teacher", str(fmnist_teacher), "--out", str(full), *RUN)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((full / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["epochs"] == 2
    assert (full / "samples" / "epoch_002.png").is_file()
    # Rank 0 alone writes: one line per epoch, not one per rank.
    assert [r["epoch"] for r in metrics_rows(full)] == [1, 2]

    split = tmp_path / "split"
    first = torchrun("--teacher", str(fmnist_teacher), "--out", str(split), *RUN,
                     "--stop-after-epoch", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    assert len(torch.load(split / "checkpoint.pt", weights_only=True)["rng"]) == 2
    resumed = torchrun("--resume", str(split), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert metrics_rows(split) == metrics_rows(full)


def straight_and_resumed(teacher, tmp_path, run: list[str]):
    """The run straight, and stopped after epoch 1 then resumed: both end with the same
    metrics. The straight run's folder."""
    full, split = tmp_path / "full", tmp_path / "split"
    result = torchrun("--teacher", str(teacher), "--out", str(full), *run)
    assert result.returncode == 0, result.stderr[-3000:]
    first = torchrun("--teacher", str(teacher), "--out", str(split), *run,
                     "--stop-after-epoch", "1")
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = torchrun("--resume", str(split), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert metrics_rows(split) == metrics_rows(full)
    return full


@pytest.mark.parametrize("method", ["cmi", "fast"])
def test_bank_methods_share_one_bank_over_two_processes(fmnist_teacher, tmp_path, method):
    """Every rank adds all ranks' samples, so rank 0's checkpoint holds the common bank
    (CMI's head and Fast's meta generator are synchronised too): the resume is exact."""
    run = [*RUN, "--method", method, "--set", "g_steps=2", "--set", f"{method}.bank_size=80"]
    if method == "fast":  # a warm-up epoch, then the student learns and G_meta's layer resets
        run += ["--set", "fast.warmup=1", "--set", "fast.reset_l0_epoch=1"]
    full = straight_and_resumed(fmnist_teacher, tmp_path, run)
    bank = torch.load(full / "checkpoint.pt", weights_only=True)["method"]["bank"]
    assert bank["count"] == 80  # 6 rounds x 32 samples, wrapped at 80


@pytest.mark.parametrize("method, settings", [
    ("nayer", ["nayer.warmup=1", "nayer.warmup_loops=2", "nayer.loops=1",
               "nayer.synthesis_batch=32", "nayer.g_life=1", "nayer.bank_size=80"]),
    ("adadfkd", ["adadfkd.negatives=48", "adadfkd.begin=0", "adadfkd.end=1"]),
    ("spaceshipnet", ["spaceshipnet.bank_size=80", "spaceshipnet.w_cam=0"]),
    ("dfme", ["dfme.grad_m=2", "query_budget=100000"]),
])
def test_the_newer_methods_resume_exactly_over_two_processes(fmnist_teacher, tmp_path,
                                                             method, settings):
    """NAYER's per-rank generators, AdaDFKD's common queue, SpaceshipNet's common
    generator (DDP) and banks of maps, and DFME's generator (DDP through its pre-tanh
    forward) and query count are in the checkpoint: a run
    stopped after epoch 1 and resumed on two processes ends as the straight run."""
    run = [*RUN, "--method", method, "--set", "g_steps=2",
           *[x for kv in settings for x in ("--set", kv)]]
    full = straight_and_resumed(fmnist_teacher, tmp_path, run)
    if method == "nayer":
        state = torch.load(full / "checkpoint.pt", weights_only=True)["method"]
        assert len(state["generators"]) == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reduce_worker(rank: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    value = distributed.all_reduce_mean(torch.tensor([1.0 + 2.0 * rank, 10.0 * rank]))
    flag = distributed.any_rank(rank == 1, torch.device("cpu"))
    gathered = distributed.all_gather_objects(torch.full((rank + 1,), float(rank)))
    rows = distributed.all_gather_cat(torch.full((2, 1), float(rank)))
    queue.put((rank, value.tolist(), flag, [g.tolist() for g in gathered], rows.tolist()))
    dist.destroy_process_group()


def test_collectives_reduce_across_ranks():
    port = _free_port()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_reduce_worker, args=(r, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    for _rank, value, flag, gathered, rows_ in results:
        assert value == pytest.approx([2.0, 5.0])   # means of (1, 3) and (0, 10)
        assert flag is True                          # rank 1's flag reaches rank 0
        assert gathered == [[0.0], [1.0, 1.0]]       # rank order, ragged shapes kept
        assert rows_ == [[0.0], [0.0], [1.0], [1.0]]  # bank rows of every rank, in rank order



@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_three_launcher_kills_lose_nothing_and_leave_no_orphans(fmnist_teacher, tmp_path):
    """SIGKILL the launcher at 3 random moments (start-up, training, checkpointing) and resume
    after each: every worker exits within seconds, and the metrics equal an uninterrupted
    run's (benchmarks/torchrun_kills.py does the same with 20 kills)."""
    run = [*RUN, "--set", "epochs=10", "--set", "rounds=4", "--set", "sample_grid=0"]
    result = kill_and_resume(fmnist_teacher, tmp_path, kills=3, run=run, seed=1)
    assert result["kills"] >= 2, result  # (a run may finish before its last kill)
    assert result["identical"] and result["rows"] == 10, result
    assert result["leftover_processes"] == 0 and result["max_exit_seconds"] < 10, result


def test_distill_leaves_the_process_group_even_when_it_fails(fmnist_teacher, tmp_path, monkeypatch):
    """A gloo group left to interpreter teardown can SIGABRT a run that succeeded, so
    `dfkd distill` destroys it on the way out, on success and on a user error alike."""
    from dfkd.commands import main

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        code = main(["distill", "--teacher", str(fmnist_teacher), "--out", str(tmp_path / "r"),
                     "--set", "no_such_setting=1", "--no-progress", "--device", "cpu"])
        assert code == 2
        assert not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


@pytest.mark.parametrize("failing", [False, True], ids=["succeeds", "fails"])
def test_distill_frees_its_ddp_models_before_the_group(fmnist_teacher, tmp_path, monkeypatch,
                                                        failing):
    """destroy_process_group only unregisters the group; DDP modules keep it alive, and a
    gloo group freed in interpreter teardown can SIGABRT the process. So when `dfkd distill`
    destroys the group, no DDP module of its run is left, on success and on failure; and the
    run's models are gone once main returns."""
    import gc
    import weakref

    from dfkd import commands
    from dfkd.run.callbacks.health import NonFiniteLoss
    from dfkd.run.device import Placement
    from dfkd.run.trainer import Trainer

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    wrapped = []

    def wrap(self, module):  # DDP on a one-process group, as on every rank of a real run
        ddp = torch.nn.parallel.DistributedDataParallel(module)
        wrapped.append(weakref.ref(ddp))
        return ddp

    monkeypatch.setattr(Placement, "wrap", wrap)
    left_at_destroy = []
    destroy = dist.destroy_process_group

    def counting_destroy(*args, **kwargs):
        left_at_destroy.append(sum(r() is not None for r in wrapped))
        return destroy(*args, **kwargs)

    def nan_round(self):  # a NaN loss stops the run after its models exist
        raise NonFiniteLoss("nan")

    monkeypatch.setattr(dist, "destroy_process_group", counting_destroy)
    if failing:
        monkeypatch.setattr(Trainer, "_run_round", nan_round)
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        code = commands.main(["distill", "--teacher", str(fmnist_teacher), "--out",
                              str(tmp_path / "r"), *RUN])
    finally:
        if dist.is_initialized():
            destroy()
    assert code == (2 if failing else 0)
    assert wrapped and not dist.is_initialized()
    if not failing:  # a failure's traceback holds its models until main has reported it
        assert left_at_destroy == [0]
    gc.disable()  # what is gone now went when main returned, not by a later collection
    try:
        assert all(r() is None for r in wrapped)
    finally:
        gc.enable()
