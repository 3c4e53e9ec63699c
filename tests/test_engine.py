"""The distillation engine: outputs, exact resume, config handling, the Python API."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import metrics_rows

import dfkd
from dfkd.api import build_trainer
from dfkd.checkpoint import safe_load
from dfkd.config import load_config, parse_overrides
from dfkd.data import load_split
from dfkd.errors import ConfigError, DfkdError
from dfkd.methods import BankMethod, get_method, list_methods
from dfkd.models import create_model
from dfkd.report import result_table
from dfkd.run.callbacks.evaluation import Evaluation

TINY = {"epochs": 3, "rounds": 2, "g_steps": 1, "kd_steps": 2, "batch_size": 32,
        "sample_grid": 4, "cudfkd": {"grad_adv": 0.5, "begin": 0.0, "end": 1.0}}


def _run(teacher, out, **extra):
    raw = {**TINY, "teacher": str(teacher), **extra}
    return build_trainer(raw, out, overwrite=True, progress=False)


def test_run_writes_every_output(fmnist_teacher, tmp_path):
    summary = _run(fmnist_teacher, tmp_path).fit()
    rows = metrics_rows(tmp_path)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for key in ("acc1", "acc5", "agreement", "loyalty", "loyalty_official", "lambda",
                "adv_weight", "loss_s", "loss_g", "g_bn", "g_entropy", "g_onehot", "g_adv",
                "kd", "sp_weight", "lr"):
        assert key in rows[0], key
    # The adversarial ramp (begin 0, end 1, +0.5 after each epoch e with 0 < e < 3) and the
    # pace (+1e-4 per step).
    assert [r["adv_weight"] for r in rows] == [0.0, 0.0, 0.5]
    assert rows[-1]["lambda"] == pytest.approx(2.0 + 1e-4 * 3 * 2 * 2)
    for name in ("epoch_001.png", "epoch_003.png"):
        assert (tmp_path / "samples" / name).is_file()
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    for key in ("final_acc1", "final_agreement", "final_loyalty", "acc1_mean", "acc1_var",
                "epochs_to_90pct", "synthesis_seconds", "student_seconds", "teacher_acc1"):
        assert key in on_disk, key
    assert on_disk["config"]["cudfkd"]["curriculum"] == "log"
    assert summary["final_acc1"] == rows[-1]["acc1"]
    assert summary["teacher_acc1"] > 70


@pytest.mark.parametrize("extra", [{}, {"student_ema": 0.9}], ids=["plain", "student_ema"])
def test_resume_is_exact(fmnist_teacher, tmp_path, extra):
    _run(fmnist_teacher, tmp_path / "full", **extra).fit()
    first = _run(fmnist_teacher, tmp_path / "split", **extra)
    first.fit(stop_after_epoch=2)
    # A killed run may have written a metrics line after its last checkpoint.
    with open(tmp_path / "split" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "acc1": -1}\n')
    raw = {**TINY, "teacher": str(fmnist_teacher), **extra}
    resumed = build_trainer(raw, tmp_path / "split", resume=True, progress=False)
    assert resumed.epoch == 2
    resumed.fit()
    assert metrics_rows(tmp_path / "split") == metrics_rows(tmp_path / "full")
    saved = [safe_load(tmp_path / run / "student.pt")["state_dict"] for run in ("split", "full")]
    assert all(torch.equal(saved[0][k], saved[1][k]) for k in saved[1])


def test_student_ema_averages_every_step_and_is_the_kept_student(fmnist_teacher, tmp_path):
    decay = 0.6
    trainer = _run(fmnist_teacher, tmp_path, epochs=2, student_ema=decay)
    live = []   # the live student's float weights and buffers after each student step
    update = trainer.optimiser.ema.update_parameters

    def record(model):
        live.append([t.detach().clone() for t in (*model.parameters(), *model.buffers())
                     if t.is_floating_point()])
        update(model)

    trainer.optimiser.ema.update_parameters = record
    summary = trainer.fit()
    assert len(live) == 2 * TINY["rounds"] * TINY["kd_steps"]
    expected = live[0]   # the first update copies, then e <- d e + (1 - d) w, with the
    for n, weights in enumerate(live[1:], start=1):   # decay d ramped up from 0.2
        d = min(decay, (1 + n) / (10 + n))
        expected = [d * e + (1 - d) * w for e, w in zip(expected, weights)]
    kept = trainer.kept_student
    assert kept is not trainer.student
    kept_floats = [t for t in (*kept.parameters(), *kept.buffers()) if t.is_floating_point()]
    for e, k in zip(expected, kept_floats, strict=True):
        torch.testing.assert_close(k, e)
    assert not all(torch.equal(k, w) for k, w in zip(kept_floats, live[-1]))
    # The average is what student.pt holds and what acc1 measures; raw_acc1 is the live one.
    saved = safe_load(tmp_path / "student.pt")["state_dict"]
    assert all(torch.equal(saved[k], v) for k, v in kept.state_dict().items())
    row = metrics_rows(tmp_path)[-1]
    assert summary["final_acc1"] == row["acc1"] and "raw_acc1" in row
    _run(fmnist_teacher, tmp_path / "plain", epochs=1).fit()
    assert "raw_acc1" not in metrics_rows(tmp_path / "plain")[-1]
    with pytest.raises(ConfigError, match="'student_ema' 1 would keep the initial student"):
        load_config({"student_ema": 1})


def test_refuses_to_overwrite_a_run_without_flag(fmnist_teacher, tmp_path):
    _run(fmnist_teacher, tmp_path, epochs=1).fit()
    raw = {**TINY, "teacher": str(fmnist_teacher)}
    with pytest.raises(DfkdError, match="--resume .* or --overwrite"):
        build_trainer(raw, tmp_path)


def test_config_validation_messages():
    with pytest.raises(ConfigError, match="Did you mean 'epochs'"):
        load_config({"epochs_": 3})
    with pytest.raises(ConfigError, match="Did you mean 'curriculum'"):
        load_config({"cudfkd": {"curriculm": "log"}})
    with pytest.raises(ConfigError, match="'batch_size' must be an integer"):
        load_config({"batch_size": "big"})
    with pytest.raises(ConfigError, match="'rounds' must be >= 1"):
        load_config({"rounds": 0})
    with pytest.raises(ConfigError, match="must be one of none, hard, soft, log"):
        load_config({"cudfkd": {"curriculum": "easy"}})
    with pytest.raises(ConfigError, match="unknown method 'cudfk'.*Did you mean 'cudfkd'"):
        load_config({"method": "cudfk"})
    cfg = load_config(parse_overrides(["epochs=1", "rounds=2", "cudfkd.tau=4",
                                       "generator.betas=[0.5, 0.999]"]))
    assert (cfg.epochs, cfg.rounds, cfg.method_settings.tau) == (1, 2, 4.0)
    assert cfg.generator.betas == (0.5, 0.999)


def test_python_api_and_bn_requirement():
    teacher = create_model("lenet5", 10, 1)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student = create_model("lenet5_half", 10, 1)
    test_x = torch.randint(0, 255, (64, 1, 32, 32), dtype=torch.uint8)
    test_y = torch.randint(0, 10, (64,))
    summary, trained = dfkd.distill(
        teacher, student, num_classes=10, image_shape=(1, 32, 32), mean=(0.5,), std=(0.5,),
        test_data=(test_x, test_y), epochs=1, rounds=1, kd_steps=1, batch_size=8,
        curriculum="soft", progress=False, check_teacher=False)   # a random teacher
    assert trained is student and summary["config"]["cudfkd"]["curriculum"] == "soft"
    # The teacher is frozen: its weights and BN statistics never move on synthetic data.
    assert not teacher.training
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    # The summary's accuracy is the returned student's, on the given uint8 test images.
    with torch.no_grad():
        logits = trained.eval()((test_x.float() / 255 - 0.5) / 0.5)
    assert summary["final_acc1"] == pytest.approx(
        100 * (logits.argmax(1) == test_y).float().mean().item())
    with pytest.raises(ConfigError, match="unknown setting 'tua'.*Did you mean 'tau'"):
        dfkd.distill(teacher, student, num_classes=10, image_shape=(1, 32, 32), mean=(0.5,),
                     std=(0.5,), tua=3)
    no_bn = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(1024, 10))
    with pytest.raises(DfkdError, match=r"no BatchNorm layer; set cudfkd\.w_bn=0"):
        dfkd.distill(no_bn, student, method="cudfkd", num_classes=10, image_shape=(1, 32, 32),
                     mean=(0.5,), std=(0.5,), epochs=1)


def test_short_fashion_mnist_run_beats_chance_widely(fmnist_teacher, tmp_path):
    # The shipped recipe, cut to 24 rounds (~200 student steps, seconds on 2 cores; its
    # quantile pace weighs the first steps by about 0.5, so it needs more than the paper).
    from dfkd.config import merge, read_yaml
    raw = merge(read_yaml("configs/fashion_mnist/cudfkd_lenet5.yaml"),
                {"teacher": str(fmnist_teacher), "epochs": 1, "rounds": 24, "sample_grid": 0})
    summary = build_trainer(raw, tmp_path, progress=False).fit()
    assert summary["final_agreement"] > 35.0   # chance is 10%
    assert summary["final_acc1"] > 35.0


def test_compile_option_runs_and_learns_the_same_way(fmnist_teacher, tmp_path):
    pytest.importorskip("torch._inductor")
    summary = _run(fmnist_teacher, tmp_path / "compiled", epochs=1, compile=True).fit()
    eager = _run(fmnist_teacher, tmp_path / "eager", epochs=1).fit()
    assert summary["config"]["compile"] is True
    # Same seeds, same steps: compiled kernels differ from eager ones by rounding only.
    assert summary["final_agreement"] == pytest.approx(eager["final_agreement"], abs=2.0)
    rows, eager_rows = metrics_rows(tmp_path / "compiled"), metrics_rows(tmp_path / "eager")
    assert rows[0]["loss_s"] == pytest.approx(eager_rows[0]["loss_s"], rel=1e-2)


def test_resume_refuses_another_device(fmnist_teacher, tmp_path):
    _run(fmnist_teacher, tmp_path, epochs=2).fit(stop_after_epoch=1)
    state = safe_load(tmp_path / "checkpoint.pt")
    assert state["device_type"] == "cpu"
    state["device_type"] = "cuda"  # as if it had been checkpointed on a GPU
    raw = {**TINY, "teacher": str(fmnist_teacher), "epochs": 2}
    with pytest.raises(DfkdError, match="checkpointed on cuda and would resume on cpu.*"
                                        "--device cuda"):
        build_trainer(raw, tmp_path, resume=True, progress=False, state=state)


def test_deterministic_switch(fmnist_teacher, tmp_path):
    assert load_config({}).deterministic is False
    try:
        _run(fmnist_teacher, tmp_path, epochs=1, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_bank_methods_refuse_zero_synthesis_steps():
    for method in (m for m in list_methods() if issubclass(get_method(m), BankMethod)):
        with pytest.raises(ConfigError, match=f"method '{method}'.*'g_steps' must be >= 1"):
            load_config({"method": method, "g_steps": 0})
    assert load_config({"method": "cudfkd", "g_steps": 0}).g_steps == 0  # a KD-only ablation


def test_eval_split_val_measures_on_the_held_out_training_images(fmnist_teacher, tmp_path):
    trainer = _run(fmnist_teacher, tmp_path, epochs=1, rounds=1, eval_split="val")
    val_x, val_y = load_split("fashion_mnist", "val")
    assert torch.equal(trainer.eval_data.labels, val_y)
    summary = trainer.fit()
    assert summary["eval_split"] == "val"
    # The teacher's accuracy is measured on val too (the fixture's metadata has test only).
    teacher_logits = trainer.callback(Evaluation).teacher_logits
    assert summary["teacher_acc1"] == pytest.approx(
        100 * (teacher_logits.argmax(1) == val_y).float().mean().item())
    assert "(val)" in result_table(summary)
    with pytest.raises(ConfigError, match="'eval_split' must be one of val, test"):
        load_config({"eval_split": "train"})
