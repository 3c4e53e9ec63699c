"""The data-free signal: a fixed, balanced synthetic probe that no student step uses, measured
every epoch, kept across a resume, changing nothing else in a run; the warnings it drives
fire once on runs built to fail and stay silent on the quick start; Spearman's rho."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import metrics_rows

from dfkd.api import build_trainer
from dfkd.checkpoint import safe_load
from dfkd.config import merge, read_yaml
from dfkd.frozen_teacher import FrozenTeacher
from dfkd.health import MIN_STEPS, agreement_threshold
from dfkd.probe import (
    _CACHE,
    KEYS,
    build_probe,
    correlation_of_runs,
    signal_correlation,
    spearman,
)
from dfkd.run.callbacks.probe import Probe
from dfkd.run.callbacks.progress import epoch_line

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = {"epochs": 2, "rounds": 2, "g_steps": 1, "kd_steps": 2, "batch_size": 16,
        "sample_grid": 0}
# Runs built to fail: enough student steps for the warnings to judge (MIN_STEPS).
FAILING = {"epochs": 3, "rounds": 10, "g_steps": 1, "kd_steps": 10, "batch_size": 16,
           "sample_grid": 0}


def _run(teacher, out, *, recipe: bool = False, **extra):
    raw = {**TINY, "teacher": str(teacher), **extra}
    if recipe:
        raw = merge(read_yaml("configs/fashion_mnist/cudfkd_lenet5.yaml"), raw)
    return build_trainer(raw, out, overwrite=True, progress=False)


def _without_signal(rows):
    return [{k: v for k, v in r.items() if k not in KEYS} for r in rows]


def test_probe_is_fixed_balanced_and_uses_no_random_numbers(fmnist_teacher):
    from dfkd.checkpoint import load_model_checkpoint

    model, meta = load_model_checkpoint(fmnist_teacher)
    teacher = FrozenTeacher(model)
    mean = torch.tensor(meta["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(meta["std"]).view(1, -1, 1, 1)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    _CACHE.clear()
    first = build_probe(teacher, (1, 32, 32), 10, mean, std, torch.device("cpu"), 200)
    assert torch.equal(torch.get_rng_state(), before)   # the caller's stream is untouched
    _CACHE.clear()
    again = build_probe(teacher, (1, 32, 32), 10, mean, std, torch.device("cpu"), 200)
    assert torch.equal(first["images"], again["images"])  # made from its own seed
    assert first["images"].dtype == torch.uint8 and first["images"].shape == (200, 1, 32, 32)
    # Balanced as far as the candidates allow (a class the generator makes rarely gives all
    # it has; test_balanced_takes_classes_in_turns checks the rule): every class, near 20 each
    counts = torch.bincount(first["logits"].argmax(1), minlength=10)
    assert counts.min() >= 10 and counts.max() - counts.min() <= 5, counts.tolist()
    # The stored logits are the teacher's on the stored (8-bit) images.
    with torch.no_grad():
        logits = teacher((first["images"].float() / 255 - mean) / std)
    assert torch.allclose(logits, first["logits"], atol=1e-5)
    assert first["images"].float().std() > 10   # images, not a constant


def test_balanced_takes_classes_in_turns():
    from dfkd.probe import _balanced

    classes = torch.tensor([0, 0, 0, 0, 1, 2, 2, 2])   # class 1 has one candidate only
    assert _balanced(classes, 6, 3).tolist() == [0, 1, 2, 4, 5, 6]   # 0, 1, 2, 0, 2, 0
    assert _balanced(classes, 3, 3).tolist() == [0, 4, 5]
    assert _balanced(classes, 20, 3).tolist() == list(range(8))     # all there are


def test_signal_is_logged_each_epoch_on_a_fixed_set(fmnist_teacher, tmp_path):
    trainer = _run(fmnist_teacher, tmp_path)
    trainer.fit(stop_after_epoch=1)
    probe_after_1 = safe_load(tmp_path / "checkpoint.pt")["probe"]
    trainer.fit()
    state = safe_load(tmp_path / "checkpoint.pt")
    assert torch.equal(state["probe"]["images"], probe_after_1["images"])
    assert torch.equal(state["probe"]["logits"], probe_after_1["logits"])
    assert len(state["probe"]["images"]) == 1024
    rows = metrics_rows(tmp_path)
    for row in rows:
        assert 0 <= row["synthetic_agreement"] <= 100 and 0 <= row["synthetic_loyalty"] <= 1
        assert row["synthetic_kl"] >= 0
        for key in ("synthetic_agreement", "synthetic_loyalty"):
            assert key in epoch_line(row, 2)
    # The logged agreement is the student's on the stored probe.
    student = trainer.student.eval()
    with torch.no_grad():
        s = student((state["probe"]["images"].float() / 255 - trainer.mean) / trainer.std)
    agreement = 100 * (s.argmax(1) == state["probe"]["logits"].argmax(1)).float().mean().item()
    assert rows[-1]["synthetic_agreement"] == pytest.approx(agreement)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["final_synthetic_agreement"] == rows[-1]["synthetic_agreement"]
    assert summary["final_synthetic_loyalty"] == rows[-1]["synthetic_loyalty"]
    assert summary["synthetic_probe"]["size"] == 1024 and summary["warnings"] == []
    assert summary["synthetic_probe"]["initial"]["synthetic_agreement"] >= 0


@pytest.mark.parametrize("method, extra", [
    ("cudfkd", {"cudfkd": {"begin": 0.0, "end": 1.0, "grad_adv": 0.5}}),   # adversarial too
    ("deepinv", {"g_steps": 2}),                                          # a bank method
])
def test_signal_changes_nothing_else_in_the_run(fmnist_teacher, tmp_path, method, extra):
    on = _run(fmnist_teacher, tmp_path / "on", method=method, **extra)
    on.fit()
    off = _run(fmnist_teacher, tmp_path / "off", method=method, synthetic_probe=0, **extra)
    off.fit()
    rows_on, rows_off = metrics_rows(tmp_path / "on"), metrics_rows(tmp_path / "off")
    assert all("synthetic_agreement" in r for r in rows_on)
    assert not any(k in r for r in rows_off for k in KEYS)
    assert _without_signal(rows_on) == rows_off
    for key, value in on.student.state_dict().items():
        assert torch.equal(value, off.student.state_dict()[key]), key


def test_resume_keeps_the_probe_and_stays_exact(fmnist_teacher, tmp_path):
    _run(fmnist_teacher, tmp_path / "full", epochs=3).fit()
    _run(fmnist_teacher, tmp_path / "split", epochs=3).fit(stop_after_epoch=1)
    probe = safe_load(tmp_path / "split" / "checkpoint.pt")["probe"]
    _CACHE.clear()   # the resumed run must read its probe, not remake it
    raw = {**TINY, "teacher": str(fmnist_teacher), "epochs": 3}
    resumed = build_trainer(raw, tmp_path / "split", resume=True, progress=False)
    kept = resumed.callback(Probe).probe
    assert torch.equal(kept.images, probe["images"])
    assert kept.initial == probe["initial"]
    resumed.fit()
    assert metrics_rows(tmp_path / "split") == metrics_rows(tmp_path / "full")
    assert not _CACHE   # never rebuilt


def _warnings(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("dfkd: warning:")]


def test_a_student_that_does_not_learn_is_told_once(fmnist_teacher, tmp_path, capfd):
    trainer = _run(fmnist_teacher, tmp_path, **FAILING, student_optim={"lr": 0.0})
    summary = trainer.fit()
    lines = _warnings(capfd.readouterr().err)
    assert len(lines) == 1, lines   # 3 epochs, said once
    assert "not learning" in lines[0] and "--set student_optim.lr=0.1" in lines[0]
    assert [(w["kind"], w["epoch"]) for w in summary["warnings"]] == \
        [("student_not_learning", 2)]   # judged after 2 epochs
    assert 2 * FAILING["rounds"] * FAILING["kd_steps"] >= MIN_STEPS
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["warnings"] == summary["warnings"]


def test_a_generator_that_does_not_learn_is_told_once(fmnist_teacher, tmp_path, capfd):
    trainer = _run(fmnist_teacher, tmp_path, **FAILING, recipe=True, generator={"lr": 0.0})
    trainer.fit(stop_after_epoch=2)
    summary = trainer.summary()
    lines = _warnings(capfd.readouterr().err)
    assert len(lines) == 1, lines
    assert "near chance (10.0%)" in lines[0] and "--set generator.lr=0.005" in lines[0]
    assert [w["kind"] for w in summary["warnings"]] == ["agreement_at_chance"]
    assert trainer.history[-1]["synthetic_agreement"] < agreement_threshold(10) == 15.0
    # A resumed run remembers what it said: one more epoch, no second warning.
    raw = {**TINY, **FAILING, "teacher": str(fmnist_teacher), "generator": {"lr": 0.0}}
    raw = merge(read_yaml("configs/fashion_mnist/cudfkd_lenet5.yaml"), raw)
    resumed = build_trainer(raw, tmp_path, resume=True, progress=False)
    assert [w["kind"] for w in resumed.fit()["warnings"]] == ["agreement_at_chance"]
    assert _warnings(capfd.readouterr().err) == []


def test_the_quick_start_is_silent(fmnist_teacher, tmp_path, capfd):
    # The shipped recipe on a small budget: 2 epochs of 13 rounds (208 student steps).
    trainer = _run(fmnist_teacher, tmp_path, recipe=True, epochs=2, rounds=13,
                   batch_size=64, kd_steps=8, g_steps=2)
    summary = trainer.fit()
    assert 2 * 13 * 8 >= MIN_STEPS   # long enough to be judged
    assert summary["warnings"] == [] and _warnings(capfd.readouterr().err) == []
    assert summary["final_synthetic_agreement"] > agreement_threshold(10) + 10


def test_spearman_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # Ties take their mean rank: x ranks 1, 2.5, 2.5, 4; y ranks 1, 2, 3, 4; Pearson's r of
    # the ranks: 4.5 / sqrt(4.5 * 5).
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    # A classic example: d = (0, -1, 1, 0, 0) so rho = 1 - 6 * 2 / (5 * 24) = 0.9.
    assert spearman([1, 2, 3, 4, 5], [1, 3, 2, 4, 5]) == pytest.approx(0.9)
    assert math.isnan(spearman([1, 2], [2, 1])) and math.isnan(spearman([1, 1, 1], [1, 2, 3]))
    assert signal_correlation([(1, 2), (None, 3), (2, 3), (3, 5), (math.nan, 1)]) == \
        {"n": 3, "spearman": pytest.approx(1.0)}


def test_correlation_of_finished_runs(tmp_path):
    for i, (agreement, loyalty, acc) in enumerate([(50, 0.6, 70), (60, 0.5, 75), (70, 0.7, 80),
                                                   (None, None, 90)]):
        folder = tmp_path / "bench" / f"run{i}"
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps(
            {"final_synthetic_agreement": agreement, "final_synthetic_loyalty": loyalty,
             "final_acc1": acc, "eval_split": "val"}))
    out = correlation_of_runs([tmp_path / "bench"])
    assert out["runs"] == 4 and out["eval_splits"] == ["val"]
    assert out["synthetic_agreement"] == {"n": 3, "spearman": pytest.approx(1.0)}
    assert out["synthetic_loyalty"]["spearman"] == pytest.approx(0.5)


def test_tune_reports_the_signals_rank_correlation(fmnist_teacher, tmp_path):
    pytest.importorskip("optuna")
    import csv

    import yaml

    from dfkd.tune import run_tune

    recipe = {"method": "cudfkd", "student": "lenet5_half", "epochs": 1, "rounds": 2,
              "g_steps": 1, "kd_steps": 2, "batch_size": 16, "eval_batch_size": 2500,
              "generator": {"nz": 32, "ngf": 8, "lr": 0.005},
              "search": {"student_optim.lr": {"low": 1e-3, "high": 0.2, "log": True}}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    run_tune(str(path), str(fmnist_teacher), 3, tmp_path / "study", progress=False)
    with open(tmp_path / "study" / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and all(0 <= float(r["synthetic_agreement"]) <= 100 for r in rows)
    signal = json.loads((tmp_path / "study" / "signal.json").read_text())
    pairs = [(float(r["synthetic_agreement"]), float(r["val_acc1"])) for r in rows
             if r["state"] == "COMPLETE"]
    assert signal["synthetic_agreement"]["n"] == len(pairs)
    expected = spearman(*map(list, zip(*pairs))) if len(pairs) >= 3 else math.nan
    got = signal["synthetic_agreement"]["spearman"]
    assert (got is None and math.isnan(expected)) or got == pytest.approx(expected)


@pytest.mark.parametrize("shape", [(1, 30, 30), (3, 20, 24)])
def test_probe_of_any_image_size(shape, monkeypatch):
    import dfkd.probe as probe_module

    monkeypatch.setattr(probe_module, "PROBE_STEPS", 3)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(shape[0], 4, 3, padding=1),
                              torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 5))
    zeros, ones = torch.zeros(1, shape[0], 1, 1), torch.ones(1, shape[0], 1, 1)
    probe = build_probe(FrozenTeacher(net), shape, 5, zeros, ones, torch.device("cpu"), 40)
    assert probe["images"].shape == (40, *shape) and probe["logits"].shape == (40, 5)


def test_hints_name_settings_from_the_run():
    from dfkd.config import load_config
    from dfkd.health import hints_for

    cfg = load_config({"method": "cudfkd", "student_optim": {"lr": 0.1}})   # engine defaults
    hints = hints_for(cfg, generator_method=True, recipe_name="configs/fashion_mnist/x.yaml",
                      student_lr=0.1)
    text = " ".join(hints["agreement_at_chance"])
    assert "--config configs/fashion_mnist/x.yaml" in text
    assert "--set cudfkd.kd_loss=kl --set cudfkd.tau=4" in text   # l1 at tau 20
    assert "--set generator.lr=0.005" in text and "student_optim" not in text
    started = load_config({"base_recipe": "configs/fashion_mnist/x.yaml",
                           "cudfkd": {"kd_loss": "kl", "tau": 4.0}, "generator": {"lr": 0.005}})
    text = " ".join(hints_for(started, generator_method=True, recipe_name="configs/x.yaml",
                              student_lr=0.0)["agreement_at_chance"])
    assert "--config" not in text and "kd_loss" not in text       # already its settings
    assert "--set generator.lr=0.001" in text and "student_optim.lr=0.1" in text
    bank = load_config({"method": "deepinv", "g_steps": 50})
    text = " ".join(hints_for(bank, generator_method=False, recipe_name=None,
                              student_lr=0.1)["agreement_at_chance"])
    assert "--set g_steps=100" in text
