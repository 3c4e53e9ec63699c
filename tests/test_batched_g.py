"""batched_g (one G forward per round makes all its student batches) and teacher_graph
(the student steps' teacher forward as a CUDA graph; a no-op on CPU)."""

from __future__ import annotations

import pytest
import torch
from conftest import metrics_rows
from torch import nn

from dfkd import distributed
from dfkd.api import build_trainer
from dfkd.config import GeneratorConfig, load_config
from dfkd.errors import ConfigError
from dfkd.frozen_teacher import GraphedForward
from dfkd.methods import MethodContext
from dfkd.methods.dfad import DFAD, DFADSettings
from dfkd.run.signals import Interrupted

pytestmark = pytest.mark.usefixtures("one_thread")

B, STEPS = 64, 8   # a round of 8 student steps of 64 samples each


def _method(seed: int = 0) -> DFAD:
    """DFAD (a plain GeneratorMethod) on 3x8x8 images, its G's BatchNorm running statistics
    far from a batch's own, so G in train mode would give other images than in eval mode."""
    torch.manual_seed(seed)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(192, 3)).eval().requires_grad_(False)
    student = nn.Sequential(nn.Flatten(), nn.Linear(192, 3))
    ctx = MethodContext(teacher=teacher, student=student, student_raw=student, num_classes=3,
                        image_shape=(3, 8, 8), mean=torch.zeros(1, 3, 1, 1),
                        std=torch.ones(1, 3, 1, 1), device=torch.device("cpu"), batch_size=B,
                        epochs=1, generator=GeneratorConfig(nz=8, ngf=4))
    method = DFAD(ctx, DFADSettings())
    for m in method.generator.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1.0, 1.0)
            m.running_var.uniform_(0.2, 3.0)
    return method


def _round(method: DFAD, batched: bool) -> list[torch.Tensor]:
    if batched:
        method.queue_fresh_images(STEPS)
    out = [method.fresh_images() for _ in range(STEPS)]
    assert not method._queued
    return out


def test_queue_is_one_eval_mode_forward_of_fresh_codes():
    method = _method()
    g = method.generator
    before = {k: v.clone() for k, v in g.state_dict().items()}
    calls: list[int] = []
    g.register_forward_hook(lambda _m, inputs, _o: calls.append(len(inputs[0])))
    torch.manual_seed(1)
    batches = _round(method, batched=True)
    assert calls == [STEPS * B]              # one forward for the whole round
    assert g.training                        # back in train mode for the generator steps
    # Eval mode: no BatchNorm running statistic moved (train mode would move them).
    assert all(torch.equal(v, before[k]) for k, v in g.state_dict().items())
    # Exactly G (eval) of one draw of STEPS * B codes, split in order.
    torch.manual_seed(1)
    z = torch.randn(STEPS * B, method.nz)
    g.eval()
    with torch.no_grad():
        assert torch.equal(torch.cat(batches), g(z))
        # Each sample depends on its own z only: a batch alone gives the same images.
        assert torch.allclose(g(z[B:2 * B]), batches[1], atol=1e-6)
    g.train()
    # Every batch is new: no image repeats within the round (same z or same batch reused).
    rows = torch.cat(batches).flatten(1)
    assert len(torch.unique(rows, dim=0)) == STEPS * B
    # The queue is used up; the next call draws a new batch again.
    calls.clear()
    assert method.fresh_images().shape == (B, 3, 8, 8) and calls == [B]


def _z2(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel squared z-scores of the difference of means and of standard deviations
    of two independent samples (n each): ~chi-square(1) per pixel when they share a law."""
    n = len(a)
    ma, mb, sa, sb = a.mean(0), b.mean(0), a.std(0), b.std(0)
    z_mean = (ma - mb) / ((sa ** 2 + sb ** 2) / n).sqrt()
    # var(sample std) ~ sigma^2 (kurtosis - 1) / (4n); the images' own kurtosis is used.
    ka = ((a - ma) ** 4).mean(0) / sa ** 4
    kb = ((b - mb) ** 4).mean(0) / sb ** 4
    z_std = (sa - sb) / (sa ** 2 * (ka - 1) / (4 * n) + sb ** 2 * (kb - 1) / (4 * n)).sqrt()
    return z_mean ** 2, z_std ** 2


def test_student_batches_are_made_under_the_methods_autocast():
    """Under amp, G makes the student's batches in bf16, as in its own steps (on CUDA;
    CPU autocast stands in here), and they come back as float32 for the bank and the grid."""
    method = _method()
    method.ctx.autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)
    dtypes: list[torch.dtype] = []
    conv = next(m for m in method.generator.modules() if isinstance(m, nn.Conv2d))
    conv.register_forward_hook(lambda _m, _i, out: dtypes.append(out.dtype))
    method.queue_fresh_images(STEPS)
    batches = [method.fresh_images() for _ in range(STEPS)] + [method.fresh_images()]
    assert dtypes == [torch.bfloat16, torch.bfloat16]   # the queued round, then one more
    assert all(b.dtype == torch.float32 for b in batches)
    assert method.preview(4).dtype == torch.float32


def test_batched_samples_follow_the_unbatched_distribution():
    """Both paths sample G(z), z ~ N(0, I), G in eval mode: per pixel (192 of them), the
    means and standard deviations of 8 rounds x 8 x 64 = 4096 images each agree within
    sampling error; G in train mode (batch statistics) fails the same test."""
    method = _method()
    rounds = 8
    torch.manual_seed(10)
    plain = torch.cat([torch.cat(_round(method, batched=False)) for _ in range(rounds)])
    torch.manual_seed(20)
    batched = torch.cat([torch.cat(_round(method, batched=True)) for _ in range(rounds)])
    n = rounds * STEPS * B
    assert plain.shape == batched.shape == (n, 3, 8, 8)
    z_mean, z_std = _z2(plain.flatten(1).double(), batched.flatten(1).double())
    # Mean of 192 chi-square(1) values: ~1, but the pixels are correlated, so it spreads
    # like a chi-square of few degrees of freedom (0.5 to 2.5 over seeds): bound 4.
    # No pixel beyond 5.5 sigma. (G in train mode below: ~800 or more.)
    assert z_mean.mean() < 4 and z_mean.max() < 30
    assert z_std.mean() < 4 and z_std.max() < 30
    # Per channel (each image's channel means: one independent value per image), the same.
    zm, zs = _z2(plain.mean((2, 3)).double(), batched.mean((2, 3)).double())
    assert zm.max() < 30 and zs.max() < 30
    # The test has teeth: G in train mode (a batch's own statistics) is far off.
    g = method.generator
    torch.manual_seed(30)
    with torch.no_grad():
        train_mode = torch.cat([g(method.sample_z(STEPS * B)) for _ in range(rounds)])
    z_bad, _ = _z2(plain.flatten(1).double(), train_mode.flatten(1).double())
    assert z_bad.mean() > 100


ROUND_RAW = {"epochs": 1, "rounds": 1, "g_steps": 1, "kd_steps": 3, "batch_size": 16,
             "sample_grid": 0, "synthetic_probe": 0}


@pytest.mark.parametrize("method,settings", [
    ("dfad", {}), ("dafl", {}), ("dfq", {}), ("zskt", {}),
    ("cudfkd", {"replay": 40, "augment": True, "mixup": 0.4})])
def test_one_generator_forward_makes_the_rounds_student_batches(fmnist_teacher, tmp_path,
                                                                 method, settings):
    sizes = {}
    for batched in (False, True):
        raw = {**ROUND_RAW, "teacher": str(fmnist_teacher), "method": method,
               "batched_g": batched, **({method: settings} if settings else {})}
        trainer = build_trainer(raw, tmp_path / str(batched), overwrite=True, progress=False)
        calls: list[int] = []
        trainer.method.generator.register_forward_hook(
            lambda _m, inputs, _o, calls=calls: calls.append(len(inputs[0])))
        trainer._run_round()
        assert not trainer.method._queued
        sizes[batched] = calls
    # The generator steps' forwards are unchanged; the 3 student forwards become one of 48.
    assert sizes[False][-3:] == [16] * 3
    assert sizes[True] == sizes[False][:-3] + [48]


@pytest.mark.parametrize("method,settings", [
    ("dfad", {}),
    ("cudfkd", {"replay": 40, "augment": True, "mixup": 0.4, "pace_mode": "quantile"})])
def test_resume_is_exact_with_batched_g(fmnist_teacher, tmp_path, monkeypatch, method,
                                         settings):
    """Interrupted after round 4 of 9 (mid-epoch 2; the checkpoint is taken between
    rounds), then resumed: the metrics equal an uninterrupted run's."""
    raw = {"teacher": str(fmnist_teacher), "method": method, "epochs": 3, "rounds": 3,
           "g_steps": 1, "kd_steps": 2, "batch_size": 16, "sample_grid": 0,
           "synthetic_probe": 64, "batched_g": True, **({method: settings} if settings else {})}
    build_trainer(raw, tmp_path / "full", overwrite=True, progress=False).fit()

    seen = {"rounds": 0}

    def stop_after_four(flag: bool, device: torch.device) -> bool:
        seen["rounds"] += 1
        return flag or seen["rounds"] == 4

    with monkeypatch.context() as patch:
        patch.setattr(distributed, "any_rank", stop_after_four)
        with pytest.raises(Interrupted):
            build_trainer(raw, tmp_path / "split", overwrite=True, progress=False).fit()
    resumed = build_trainer(raw, tmp_path / "split", resume=True, progress=False)
    assert (resumed.epoch, resumed.round) == (1, 1)
    resumed.fit()
    rows = metrics_rows(tmp_path / "full")
    assert len(rows) == 3 and metrics_rows(tmp_path / "split") == rows


def test_batched_g_is_written_only_when_set_and_refused_for_bank_methods():
    assert "batched_g" not in load_config({}).to_dict()
    assert "teacher_graph" not in load_config({}).to_dict()
    assert load_config({"batched_g": True}).to_dict()["batched_g"] is True
    with pytest.raises(ConfigError, match="batched_g: false"):
        load_config({"method": "cmi", "batched_g": True})


def test_teacher_graph_is_a_no_op_on_cpu(fmnist_teacher, tmp_path):
    teacher = nn.Linear(4, 2)
    graphed = GraphedForward(teacher)
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.equal(graphed(x), teacher(x))
    assert graphed.graph is None
    # In a run on CPU the student steps call the teacher itself: same numbers as without.
    states = []
    for flag in (False, True):
        raw = {**ROUND_RAW, "teacher": str(fmnist_teacher), "teacher_graph": flag,
               "device": "cpu"}
        trainer = build_trainer(raw, tmp_path / str(flag), overwrite=True, progress=False)
        assert trainer.method.ctx.teacher_infer is None
        trainer._run_round()
        states.append(trainer.student.state_dict())
    assert all(torch.equal(v, states[1][k]) for k, v in states[0].items())
