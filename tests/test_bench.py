"""dfkd bench: plan, run, skip finished runs, aggregate over seeds."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import metrics_rows

from dfkd.bench import (
    SIGN_SEEDS,
    collect,
    compare,
    interval95,
    paired_differences,
    plan,
    run_bench,
    run_config,
    threads_per_job,
    usable_cores,
)
from dfkd.errors import ConfigError


def _config(tmp_path, teacher) -> str:
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump({
        "base": {"teacher": str(teacher), "student": "lenet5_half", "epochs": 2, "rounds": 2,
                 "kd_steps": 2, "batch_size": 32, "sample_grid": 0},
        "references": {"epochs": 1},
    }))
    return str(path)


def test_bench_runs_skips_and_aggregates(fmnist_teacher, tmp_path):
    config = _config(tmp_path, fmnist_teacher)
    out = tmp_path / "bench"
    runs = run_bench(config, ["cudfkd", "scratch"], [0, 1], out, dry_run=True)
    assert [(r["method"], r["seed"], r["state"]) for r in runs] == [
        ("cudfkd", 0, "new"), ("cudfkd", 1, "new"), ("scratch", 0, "new"), ("scratch", 1, "new")]
    assert not out.exists()  # a dry run touches nothing
    run_bench(config, ["cudfkd", "scratch"], [0, 1], out, progress=False)
    for name in ("results.md", "results.csv", "results.json"):
        assert (out / name).is_file()
    results = json.loads((out / "results.json").read_text())
    rows = results["methods"]
    assert [r["method"] for r in rows] == ["cudfkd", "scratch"]
    cud = rows[0]
    finals = [json.loads((out / "cudfkd" / f"seed{s}" / "summary.json").read_text())["final_acc1"]
              for s in (0, 1)]
    assert cud["seeds"] == 2
    assert cud["final_acc1"] == pytest.approx(sum(finals) / 2)
    # Sample std of two values: |a - b| / sqrt(2); 95% t-interval with 1 dof: 12.706 std / sqrt 2.
    assert cud["final_acc1_std"] == pytest.approx(abs(finals[0] - finals[1]) / math.sqrt(2))
    assert cud["final_acc1_ci95"] == pytest.approx(12.706 * cud["final_acc1_std"] / math.sqrt(2))
    assert cud["final_loyalty_official"] < cud["final_loyalty"]
    assert rows[1]["final_acc1"] > 50  # one real epoch of supervised training
    scratch = [json.loads((out / "scratch" / f"seed{s}" / "result.json").read_text())
               ["final_acc1"] for s in (0, 1)]
    # scratch's result has no curve columns (time to 90%, variance over epochs) to pair
    assert {p["column"] for p in results["paired"]} == {"final_acc1"}
    (paired,) = [p for p in results["paired"] if p["column"] == "final_acc1"]
    diffs = [a - b for a, b in zip(finals, scratch)]
    assert paired["versus"] == "scratch" and paired["seeds"] == 2
    assert paired["mean_difference"] == pytest.approx(sum(diffs) / 2)
    assert paired["verdict"] in ("scratch better", "undecided", "cudfkd better")
    assert "paired difference" in (out / "results.md").read_text()
    # Everything is finished now: a second call plans nothing to run.
    again = plan(yaml.safe_load(open(config)), ["cudfkd", "scratch"], [0, 1], out)
    assert {r["state"] for r in again} == {"done"}
    assert collect(out, ["cudfkd"], [0, 1])[0]["final_acc1"] == cud["final_acc1"]


def test_bench_interrupted_run_is_resumed(fmnist_teacher, tmp_path):
    config = _config(tmp_path, fmnist_teacher)
    out = tmp_path / "bench"
    from dfkd.api import build_trainer
    from dfkd.bench import _method_config
    raw = _method_config(yaml.safe_load(open(config)), "cudfkd", 0)
    build_trainer(raw, out / "cudfkd" / "seed0", progress=False).fit(stop_after_epoch=1)
    runs = run_bench(config, ["cudfkd"], [0], out, dry_run=True)
    assert runs[0]["state"] == "resume"
    # --report-only writes the table of what is finished (nothing yet) and runs nothing.
    run_bench(config, ["cudfkd"], [0], out, report_only=True)
    assert json.loads((out / "results.json").read_text())["methods"][0]["seeds"] == 0
    assert len((out / "cudfkd" / "seed0" / "metrics.jsonl").read_text().splitlines()) == 1
    run_bench(config, ["cudfkd"], [0], out, progress=False)
    lines = (out / "cudfkd" / "seed0" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


def test_bench_rejects_unknown_method(fmnist_teacher, tmp_path):
    with pytest.raises(ConfigError, match="unknown method 'cudfdk'"):
        run_bench(_config(tmp_path, fmnist_teacher), ["cudfdk"], [0], tmp_path / "b",
                  dry_run=True)


def test_a_recipe_row_runs_its_method_with_its_settings(fmnist_teacher, tmp_path):
    """recipes: {cudfkd_paper: FILE} is a row of its own that runs FILE's method."""
    recipe = tmp_path / "paper.yaml"
    recipe.write_text(yaml.safe_dump({"method": "cudfkd", "epochs": 20,
                                      "cudfkd": {"tau": 7.0}}))
    config = yaml.safe_load(open(_config(tmp_path, fmnist_teacher)))
    config["recipes"] = {"cudfkd_paper": str(recipe)}
    rows = plan(config, ["cudfkd", "cudfkd_paper"], [0], tmp_path / "b")
    assert [r["folder"].parent.name for r in rows] == ["cudfkd", "cudfkd_paper"]
    own, paper = (run_config(config, name, 0) for name in ("cudfkd", "cudfkd_paper"))
    assert own["method"] == paper["method"] == "cudfkd"
    assert (own["cudfkd"]["tau"], paper["cudfkd"]["tau"]) == (20.0, 7.0)
    assert paper["epochs"] == 2  # the base's budget wins over the recipe's
    config["recipes"] = {"dafl": str(recipe)}  # a method's own row runs that method
    with pytest.raises(ConfigError, match="recipes.dafl is a 'cudfkd' recipe"):
        plan(config, ["dafl"], [0], tmp_path / "b")
    config["recipes"] = {"mine": str(tmp_path / "bench.yaml")}  # no method: the name's
    with pytest.raises(ConfigError, match="unknown method 'mine'"):
        plan(config, ["mine"], [0], tmp_path / "b")


def test_bench_teacher_and_set_options_replace_the_configs(fmnist_teacher, tmp_path):
    """--teacher (the robustness table's noisy teacher) and --set win over the base."""
    config = _config(tmp_path, tmp_path / "no_such_teacher.pt")
    out = tmp_path / "bench"
    run_bench(config, ["dfad"], [0], out, teacher=str(fmnist_teacher), overrides=["epochs=1"],
              progress=False)
    summary = json.loads((out / "dfad" / "seed0" / "summary.json").read_text())
    assert summary["config"]["teacher"] == str(fmnist_teacher)
    assert summary["epochs"] == 1  # --set epochs=1 over the config's 2


def test_bench_device_and_data_root_flags_reach_the_base(monkeypatch, tmp_path):
    import dfkd.bench
    from dfkd.commands import main

    seen = {}
    monkeypatch.setattr(dfkd.bench, "run_bench", lambda *a, **kw: seen.update(kw) or [])
    assert main(["bench", "--config", "configs/fashion_mnist/bench.yaml", "--methods", "dfad",
                 "--dry-run", "--out", str(tmp_path), "--device", "cpu",
                 "--data-root", "~/my data", "--set", "epochs=1"]) == 0
    # before --set, so an explicit --set device=... still wins
    assert seen["overrides"] == ["device=cpu", 'data_root="~/my data"', "epochs=1"]


def test_interval_and_paired_verdict_by_hand(tmp_path):
    mean, std, half = interval95([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (mean, std) == (3.0, pytest.approx(math.sqrt(2.5)))
    assert half == pytest.approx(2.776 * math.sqrt(2.5) / math.sqrt(5))
    # a beats b by 2 +- 0.1 on every seed (decided); a and c differ by +-1 (undecided).
    for seed, (a, b, c) in enumerate([(80.0, 78.0, 79.0), (81.0, 78.9, 82.0), (79.0, 77.1, 78.0)]):
        for name, value in (("a", a), ("b", b), ("c", c)):
            folder = tmp_path / name / f"seed{seed}"
            folder.mkdir(parents=True)
            (folder / "result.json").write_text(json.dumps({"final_acc1": value}))
    paired = paired_differences(tmp_path, ["a", "b", "c"], [0, 1, 2], ["final_acc1"])
    assert [(p["versus"], p["verdict"]) for p in paired] == [("b", "a better"),
                                                            ("c", "undecided")]
    assert paired[0]["mean_difference"] == pytest.approx(2.0)
    assert paired[0]["low"] > 0


def test_paired_verdict_where_lower_is_better(tmp_path):
    # a reaches 90% of its final Acc@1 later than b on every seed: b converges faster.
    for seed, (a, b) in enumerate([(50.0, 30.0), (52.0, 31.0), (49.0, 30.5)]):
        for name, value in (("a", a), ("b", b)):
            folder = tmp_path / name / f"seed{seed}"
            folder.mkdir(parents=True)
            (folder / "summary.json").write_text(json.dumps({"seconds_to_90pct": value,
                                                             "final_acc1": 80.0}))
    (conv,) = paired_differences(tmp_path, ["a", "b"], [0, 1, 2], ["seconds_to_90pct"])
    assert conv["mean_difference"] == pytest.approx(59.5 / 3)
    assert conv["verdict"] == "b better"
    # equal accuracy on every seed: zero spread, nothing decided
    (acc,) = paired_differences(tmp_path, ["a", "b"], [0, 1, 2], ["final_acc1"])
    assert acc["mean_difference"] == 0 and acc["verdict"] == "undecided"


def test_a_flat_difference_decides_only_from_six_seeds():
    # one epoch earlier on every seed: a zero-width interval, which a t-test would call
    # decided at any number of seeds; an exact sign test needs 6 (p = 2 / 2**6)
    def verdict(n: int) -> str:
        return compare("a", "b", {s: 3.0 for s in range(n)}, {s: 4.0 for s in range(n)},
                       higher_is_better=False)["verdict"]
    assert [verdict(n) for n in (2, 5, SIGN_SEEDS)] == ["undecided", "undecided", "a better"]
    # float noise in a constant difference (81.0 - 78.9 and 80.0 - 77.9) is still flat
    assert compare("a", "b", {0: 81.0, 1: 80.0}, {0: 78.9, 1: 77.9})["verdict"] == "undecided"


def test_bench_refuses_a_run_with_another_config(fmnist_teacher, tmp_path):
    config = _config(tmp_path, fmnist_teacher)
    out = tmp_path / "bench"
    run_bench(config, ["dfad"], [0], out, overrides=["epochs=1"], progress=False)
    with pytest.raises(ConfigError, match="was run with rounds=2, but the bench now asks for "
                                          "rounds=3"):
        run_bench(config, ["dfad"], [0], out, overrides=["epochs=1", "rounds=3"])
    # A setting added to dfkd after the run was made is absent from its config.yaml: the
    # run had its default, so the run still counts, unless the bench now asks for another
    # value of it.
    stored_file = out / "dfad" / "seed0" / "config.yaml"
    stored = yaml.safe_load(stored_file.read_text())
    assert stored.pop("deterministic") is False     # the default
    stored_file.write_text(yaml.safe_dump(stored))
    run_bench(config, ["dfad"], [0], out, overrides=["epochs=1"])   # done: nothing to redo
    with pytest.raises(ConfigError, match="was run with deterministic=False, but the "
                                          "bench now asks for deterministic=True"):
        run_bench(config, ["dfad"], [0], out, overrides=["epochs=1", "deterministic=true"])


def test_bench_jobs_runs_the_queue_in_worker_processes(fmnist_teacher, tmp_path):
    config = _config(tmp_path, fmnist_teacher)
    serial, pooled = tmp_path / "serial", tmp_path / "pooled"
    threads = torch.get_num_threads()
    torch.set_num_threads(threads_per_job(2))  # each of 2 workers' share
    try:
        run_bench(config, ["dfad"], [0, 1], serial, overrides=["epochs=1"], progress=False)
    finally:
        torch.set_num_threads(threads)
    run_bench(config, ["dfad"], [0, 1], pooled, overrides=["epochs=1"], jobs=2)
    for seed in (0, 1):
        # Same seeds, same runs: a worker process gives the serial run's metrics.
        assert metrics_rows(pooled / "dfad" / f"seed{seed}") == \
            metrics_rows(serial / "dfad" / f"seed{seed}")
    with pytest.raises(ConfigError, match="--jobs must be >= 1"):
        run_bench(config, ["dfad"], [0], pooled, jobs=0)


def test_usable_cores_follows_the_affinity_mask(monkeypatch):
    # taskset or a SLURM cpuset gives a process 3 of the machine's 64 cores: 3 workers'
    # worth, not 64 (which would run 21 threads per core)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert usable_cores() == 3
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # no mask (macOS)
    assert usable_cores() == 64


def _state_and_parent(pid: int | str) -> tuple[str, int] | None:
    """A process's state letter and parent pid from /proc, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], int(fields[1])


def _alive(pids) -> list[int]:
    """The pids that name a live (non-zombie) process."""
    return [int(p) for p in pids if (info := _state_and_parent(p)) and info[0] != "Z"]


def _alive_children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid``."""
    children = [e for e in filter(str.isdigit, os.listdir("/proc"))
                if (info := _state_and_parent(e)) and info[1] == pid]
    return _alive(children)


def _bench_under_way(config: str, out: Path, stderr=subprocess.DEVNULL) -> subprocess.Popen:
    """``dfkd bench --jobs 2`` of two long runs, once the first has finished an epoch."""
    bench = subprocess.Popen(
        [sys.executable, "-m", "dfkd", "bench", "--config", config, "--methods", "dfad",
         "--seeds", "0,1", "--set", "epochs=50", "--jobs", "2", "--out", str(out),
         "--no-progress"], stdout=subprocess.DEVNULL, stderr=stderr, text=True)
    metrics = out / "dfad" / "seed0" / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.is_file() and metrics.read_text().strip()):
        assert bench.poll() is None and time.time() < deadline
        time.sleep(0.1)
    return bench


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
def test_killed_bench_takes_its_workers_with_it(fmnist_teacher, tmp_path):
    out = tmp_path / "bench"
    bench = _bench_under_way(_config(tmp_path, fmnist_teacher), out)
    workers = _alive_children(bench.pid)
    assert len(workers) >= 2  # the queue runs in worker processes
    bench.kill()  # SIGKILL: the bench cannot tell its workers
    bench.wait()
    deadline = time.time() + 20
    while _alive(workers):
        assert time.time() < deadline, f"orphan bench workers: {_alive(workers)}"
        time.sleep(0.1)
    assert (out / "dfad" / "seed0" / "checkpoint.pt").is_file()  # resumable


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc lists the workers")
def test_sigterm_stops_the_bench_after_its_workers_checkpoint(fmnist_teacher, tmp_path):
    out = tmp_path / "bench"
    bench = _bench_under_way(_config(tmp_path, fmnist_teacher), out, stderr=subprocess.PIPE)
    workers = [p for p in _alive_children(bench.pid)  # not Python's resource tracker
               if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(workers) == 2
    bench.terminate()
    _, stderr = bench.communicate(timeout=60)
    # The bench waited for its workers, which saved their rounds; it exits as SIGTERM's
    # convention says, with no traceback and none of Python's leaked-semaphore warnings.
    assert bench.returncode == 143, stderr
    assert not _alive(workers)
    for seed in (0, 1):
        assert (out / "dfad" / f"seed{seed}" / "checkpoint.pt").is_file()
    assert "the same command resumes them" in stderr
    assert "leaked" not in stderr and "Traceback" not in stderr, stderr
