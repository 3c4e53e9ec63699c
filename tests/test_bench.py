"""dfkd bench: plan, run, skip finished runs, aggregate over seeds."""

from __future__ import annotations

import json

import pytest
import yaml

from dfkd.bench import collect, plan, run_bench
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
    rows = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in rows] == ["cudfkd", "scratch"]
    cud = rows[0]
    finals = [json.loads((out / "cudfkd" / f"seed{s}" / "summary.json").read_text())["final_acc1"]
              for s in (0, 1)]
    assert cud["seeds"] == 2
    assert cud["final_acc1"] == pytest.approx(sum(finals) / 2)
    assert cud["final_acc1_std"] == pytest.approx(abs(finals[0] - finals[1]) / 2)
    assert rows[1]["final_acc1"] > 50  # one real epoch of supervised training
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
    assert json.loads((out / "results.json").read_text())[0]["seeds"] == 0
    assert len((out / "cudfkd" / "seed0" / "metrics.jsonl").read_text().splitlines()) == 1
    run_bench(config, ["cudfkd"], [0], out, progress=False)
    lines = (out / "cudfkd" / "seed0" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]


def test_bench_rejects_unknown_method(fmnist_teacher, tmp_path):
    with pytest.raises(ConfigError, match="unknown method 'cudfdk'"):
        run_bench(_config(tmp_path, fmnist_teacher), ["cudfdk"], [0], tmp_path / "b",
                  dry_run=True)


def test_bench_teacher_and_set_options_replace_the_configs(fmnist_teacher, tmp_path):
    """--teacher (the robustness table's noisy teacher) and --set win over the base."""
    config = _config(tmp_path, tmp_path / "no_such_teacher.pt")
    out = tmp_path / "bench"
    run_bench(config, ["dfad"], [0], out, teacher=str(fmnist_teacher), overrides=["epochs=1"],
              progress=False)
    summary = json.loads((out / "dfad" / "seed0" / "summary.json").read_text())
    assert summary["config"]["teacher"] == str(fmnist_teacher)
    assert summary["epochs"] == 1  # --set epochs=1 over the config's 2
