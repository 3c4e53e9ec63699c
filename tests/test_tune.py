"""dfkd tune: the search space is checked, the objective reads the val split only, a killed
study resumes to the promised trial count, and best.yaml runs as a recipe."""

from __future__ import annotations

import csv
import gzip
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import metrics_rows

from dfkd.api import build_trainer
from dfkd.config import read_yaml
from dfkd.errors import ConfigError
from dfkd.methods import list_methods

optuna = pytest.importorskip("optuna")
from dfkd.tune import parse_search, recipe_values, run_tune  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
FMNIST = Path("/usr/share/datasets/fashion-mnist")

# A tiny trial: one epoch of 2 rounds x (1 G step + 2 student steps) of 16 samples.
RECIPE = {
    "method": "cudfkd", "student": "lenet5_half", "epochs": 1, "rounds": 2, "g_steps": 1,
    "kd_steps": 2, "batch_size": 16, "eval_batch_size": 2500,
    "generator": {"nz": 32, "ngf": 8, "lr": 0.005},
    "cudfkd": {"tau": 4.0, "kd_loss": "kl"},
    "search": {"generator.lr": {"low": 1e-3, "high": 2e-2, "log": True},
               "cudfkd.tau": {"low": 1, "high": 8},
               "kd_steps": {"low": 1, "high": 3, "int": True},
               "cudfkd.kd_loss": {"choices": ["l1", "kl"]}},
}


def _recipe(tmp_path: Path, **changes) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump({**RECIPE, **changes}))
    return str(path)


def _trials(out: Path) -> list[dict[str, str]]:
    with open(out / "trials.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("search, message", [
    (None, "has no 'search:' section"),
    ({"cudfkd.taux": {"low": 1, "high": 2}}, "search.cudfkd.taux.*unknown config key"),
    ({"generator.lr": {"low": 0.1, "high": 0.1}}, "search.generator.lr.*range .* is empty"),
    ({"generator.lr": {"low": 0.0, "high": 0.1, "log": True}}, "log range needs low > 0"),
    ({"kd_steps": {"low": 1, "high": 2.5, "int": True}}, "whole-number bounds"),
    ({"cudfkd.kd_loss": {"choices": []}}, "non-empty list"),
    ({"cudfkd.kd_loss": {"choices": ["l1", "l3"]}}, "must be one of l1, kl"),
    ({"epochs": {"low": 0, "high": 3, "int": True}}, "'epochs' must be >= 1"),
    ({"epochs": {"lo": 1, "high": 3}}, "unknown field"),
])
def test_search_space_errors_name_the_key(tmp_path, search, message):
    recipe = {k: v for k, v in RECIPE.items() if k != "search"}
    if search is not None:
        recipe["search"] = search
    with pytest.raises(ConfigError, match=message):
        parse_search(recipe, "recipe.yaml")


def test_recipe_value_outside_its_range_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="recipe's cudfkd.tau = 10.0 lies outside"):
        run_tune(_recipe(tmp_path, cudfkd={"tau": 10.0}), "t.pt", 1, tmp_path / "s")


def test_recipe_with_search_runs_with_distill(fmnist_teacher, tmp_path):
    raw = {**read_yaml(_recipe(tmp_path)), "teacher": str(fmnist_teacher)}
    trainer = build_trainer(raw, tmp_path / "run", progress=False)
    assert trainer.cfg.epochs == 1  # 'search:' is the tuner's; a run ignores it


def test_study_writes_best_recipe_that_runs(fmnist_teacher, tmp_path):
    out = tmp_path / "study"
    study = run_tune(_recipe(tmp_path), str(fmnist_teacher), 3, out,
                     overrides=["eval_batch_size=1000"], progress=False)
    rows = _trials(out)
    assert [r["state"] for r in rows] == ["COMPLETE"] * 3
    # Trial 0 is the recipe as written: the study's best is never below it.
    assert study.trials[0].params == {"generator.lr": 0.005, "cudfkd.tau": 4.0,
                                      "kd_steps": 2, "cudfkd.kd_loss": "kl"}
    assert study.best_value >= study.trials[0].value
    for row in rows:  # the value is the final epoch's val Acc@1 of the trial's own run
        summary = (out / "trials" / f"{int(row['number']):04d}" / "summary.json")
        assert summary.is_file()
        assert float(row["val_acc1"]) == pytest.approx(
            metrics_rows(summary.parent)[-1]["acc1"])
        assert read_yaml(summary.parent / "config.yaml")["eval_split"] == "val"
    best = read_yaml(out / "best.yaml")
    assert best["generator"]["lr"] == study.best_params["generator.lr"]
    assert best["cudfkd"]["kd_loss"] == study.best_params["cudfkd.kd_loss"]
    header = (out / "best.yaml").read_text()
    assert "Tuned on the val split" in header
    # The trials' --set (their budget) is named in the header, not written into the recipe
    assert "# Each trial ran it with --set eval_batch_size=1000." in header
    assert best["eval_batch_size"] == 2500
    assert "teacher" not in best and "eval_split" not in best
    # Continuing the study with another fixed part (here the batch) is refused up front.
    with pytest.raises(ConfigError, match="started with batch_size=16, but the recipe and "
                                          "--set now give batch_size=8"):
        run_tune(_recipe(tmp_path), str(fmnist_teacher), 4, out,
                 overrides=["eval_batch_size=1000", "batch_size=8"], progress=False)
    assert len(study.trials) == 3
    summary = build_trainer({**best, "teacher": str(fmnist_teacher)}, tmp_path / "best_run",
                            progress=False).fit()
    assert summary["eval_split"] == "test" and summary["final_acc1"] is not None
    # A finished study is not run again: the same command only rewrites the outputs.
    again = run_tune(_recipe(tmp_path), str(fmnist_teacher), 3, out,
                     overrides=["eval_batch_size=1000"], progress=False)
    assert len(again.trials) == 3


def _copy_fmnist(dest: Path, poison_test_labels: bool) -> Path:
    dest.mkdir()
    for f in FMNIST.iterdir():
        shutil.copy(f, dest / f.name)
    if poison_test_labels:
        raw = bytearray(gzip.decompress((FMNIST / "t10k-labels-idx1-ubyte.gz").read_bytes()))
        raw[8:] = bytes((b + 1) % 10 for b in raw[8:])  # every test label wrong
        (dest / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    return dest


def test_objective_never_reads_the_test_labels(fmnist_teacher, tmp_path):
    values = []
    for poison in (False, True):
        root = _copy_fmnist(tmp_path / f"data{int(poison)}", poison)
        study = run_tune(_recipe(tmp_path), str(fmnist_teacher), 2, tmp_path / f"s{int(poison)}",
                         overrides=[f"data_root={root}"], progress=False)
        values.append([t.value for t in study.trials])
    assert values[0] == values[1]


def test_killed_study_resumes_to_the_promised_count(fmnist_teacher, tmp_path):
    recipe = _recipe(tmp_path, epochs=3)
    out = tmp_path / "study"
    cmd = [sys.executable, "-m", "dfkd", "tune", "--config", recipe, "--teacher",
           str(fmnist_teacher), "--trials", "3", "--out", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    target = out / "trials" / "0001" / "metrics.jsonl"  # trial 1 finished one epoch of three
    deadline = time.time() + 240
    while not (target.is_file() and target.read_text().strip()) and proc.poll() is None:
        assert time.time() < deadline, "trial 1 never reached its first epoch"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = _trials(out)
    finished = [r for r in rows if r["state"] in ("COMPLETE", "PRUNED")]
    failed = [r for r in rows if r["state"] == "FAIL"]
    assert len(finished) == 3 and len(failed) == 1 and failed[0]["number"] == "1"
    # The killed trial's values ran again, continuing its own run folder exactly once.
    retry = next(r for r in finished if r["retry_of"] == "1")
    keys = [k for k in rows[0] if "." in k or k == "kd_steps"]
    assert [retry[k] for k in keys] == [failed[0][k] for k in keys]
    # Trials 0, 1 (killed, run again as 2) and 3: three distinct value sets, none lost.
    origins = sorted(int(r["retry_of"] or r["number"]) for r in finished)
    assert origins == [0, 1, 3]
    values = {tuple(r[k] for k in keys) for r in finished}
    assert len(values) == 3, "the continued study sampled a finished trial's values again"
    assert [r["epoch"] for r in metrics_rows(out / "trials" / "0001")] == [1, 2, 3]


@pytest.mark.parametrize("method", list_methods())
def test_every_fashion_mnist_recipe_has_a_valid_search_space(method):
    path = f"configs/fashion_mnist/{method}_lenet5.yaml"
    recipe = read_yaml(path)
    space = parse_search(recipe, path)
    recipe_values(recipe, space, path)  # trial 0, the recipe itself, lies in the space
    assert "student_optim.lr" in space   # shared by every method
    # ... and so are the generator steps per round, but for DFME, whose study searched its
    # directions per step instead: both set what a generator step costs in queries.
    assert ("g_steps" if method != "dfme" else "dfme.grad_m") in space


def test_search_plot_draws_complete_and_pruned_trials(tmp_path):
    pytest.importorskip("matplotlib")
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from dfkd.tune import plot_search

    study = optuna.create_study(direction="maximize")
    dist = {"cudfkd.tau": FloatDistribution(1, 8)}
    study.add_trial(create_trial(params={"cudfkd.tau": 2.0}, distributions=dist, value=80.0))
    study.add_trial(create_trial(params={"cudfkd.tau": 6.0}, distributions=dist,
                                 state=TrialState.PRUNED, intermediate_values={0: 50.0}))
    assert plot_search(study, tmp_path)
    assert (tmp_path / "search.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
