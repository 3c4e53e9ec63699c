"""The baseline methods (DAFL, DFAD, ZSKT, DFQ): their terms by hand, a short real run
each, the plain-module API path and an exact resume."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import metrics_rows
from torch import nn

import dfkd
from dfkd.api import build_trainer
from dfkd.config import GeneratorConfig, load_config
from dfkd.engine import FrozenTeacher
from dfkd.errors import ConfigError
from dfkd.losses import activation_l1, attention_map, attention_transfer, entropy_of_mean, kd_l1
from dfkd.methods import MethodContext, get_method
from dfkd.methods.dafl import teacher_features
from dfkd.methods.zskt import stage_outputs
from dfkd.models import create_model

LN3 = math.log(3.0)


pytestmark = pytest.mark.usefixtures("one_thread")


class Const(nn.Module):
    """Outputs a fixed tensor whatever the input; ``0 * x`` keeps the input in the graph."""

    def __init__(self, value: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("value", value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value + 0 * x.sum()


class Fixed(nn.Module):
    """A classifier with fixed logits, penultimate features and one stage's feature maps."""

    def __init__(self, logits, features=None, maps=None, bn: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))
        self.head = Const(logits)
        self.stage = Const(maps) if maps is not None else None
        self.bn = nn.BatchNorm2d(1) if bn else None
        self.features = features
        self.modes: list[bool] = []

    def forward(self, x, return_features: bool = False):
        self.modes.append(self.training)
        if self.bn is not None:
            self.bn(x)
        if self.stage is not None:
            self.stage(x)
        logits = self.head(x) + 0 * self.weight
        return (logits, self.features + 0 * x.sum()) if return_features else logits


def _method(name: str, teacher: nn.Module, student: nn.Module, **settings):
    teacher.eval().requires_grad_(False)
    ctx = MethodContext(teacher=teacher, student=student, student_raw=student, num_classes=2,
                        image_shape=(1, 8, 8), mean=torch.zeros(1, 1, 1, 1),
                        std=torch.ones(1, 1, 1, 1), device=torch.device("cpu"), batch_size=2,
                        epochs=1, generator=GeneratorConfig(nz=8, ngf=4))
    cls = get_method(name)
    return cls(ctx, cls.Settings(**settings))


# Teacher probabilities [.75, .25] / [.25, .75]: CE to own argmax = -ln .75, H(p_bar) = ln 2.
T_SPLIT = torch.tensor([[LN3, 0.0], [0.0, LN3]])
# KL between uniform and [.75, .25] (the same for both rows of T_SPLIT), both ways round.
KL_UNIFORM_SPLIT = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
KL_SPLIT_UNIFORM = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)


# ------------------------------------------------------------------ terms by hand
def test_dafl_terms_and_composition():
    feats = torch.tensor([[1.0, -2.0], [3.0, 0.0]])
    assert activation_l1(feats).item() == pytest.approx(6 / 4)
    assert entropy_of_mean(T_SPLIT).item() == pytest.approx(math.log(2))
    m = _method("dafl", Fixed(T_SPLIT, features=feats), Fixed(torch.zeros(2, 2)))
    logs = m.generator_step()
    expected = -math.log(0.75) - 0.1 * 1.5 - 5 * math.log(2)
    assert logs["loss_g"].item() == pytest.approx(expected, abs=1e-5)
    assert logs["g_act"].item() == pytest.approx(1.5)
    assert m.ctx.student.modes == []  # DAFL's generator never looks at the student
    loss, _ = m.student_loss()  # KL(T || S) at tau 1 with S uniform
    assert loss.item() == pytest.approx(KL_SPLIT_UNIFORM, abs=1e-5)


def test_dafl_reads_features_of_a_plain_module():
    plain = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    x = torch.randn(5, 1, 2, 2)
    logits, feats = teacher_features(plain)(x)
    assert torch.equal(logits, plain(x)) and torch.allclose(feats, plain[:3](x))
    # A dfkd model inside the engine's wrapper is asked for its features, not hooked.
    lenet = create_model("lenet5", 10, 1).eval()
    x = torch.randn(2, 1, 32, 32)
    _, feats = teacher_features(FrozenTeacher(lenet))(x)
    assert torch.equal(feats, lenet(x, return_features=True)[1])
    assert not lenet.fc2._forward_pre_hooks


def test_dfad_l1_game_leaves_the_student_alone():
    s, t = torch.tensor([[1.0, 2.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    assert kd_l1(s, t).item() == pytest.approx((1.5 + 1.0) / 2)
    student = Fixed(s)
    m = _method("dfad", Fixed(t), student)
    logs = m.generator_step()
    assert logs["loss_g"].item() == pytest.approx(-1.25)
    assert student.modes == [False] and student.training  # eval in the G step, then restored
    assert student.weight.grad is None and student.weight.requires_grad
    assert all(p.grad is not None for p in m.generator.parameters())  # G was in the graph
    loss, logs = m.student_loss()
    assert loss.item() == pytest.approx(1.25) and loss.requires_grad
    assert student.modes[-1] is True


def test_attention_map_and_transfer_by_hand():
    # channel means of squares: [[1, 2], [0, 0]] -> [1, 2, 0, 0] / sqrt(5)
    fs = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]], [[1.0, 2.0], [0.0, 0.0]]]])
    ft = torch.ones(1, 1, 2, 2)  # uniform map: 1/2 everywhere
    assert torch.allclose(attention_map(fs), torch.tensor([[1.0, 2.0, 0.0, 0.0]]) / 5**0.5)
    one = (2 - 3 / 5**0.5) / 4  # mean((a_s - a_t)^2) over 4 positions
    assert attention_transfer([fs], [ft]).item() == pytest.approx(one)
    assert attention_transfer([fs, fs], [ft, ft]).item() == pytest.approx(2 * one)  # summed
    # A 4x4 student map is average-pooled to the teacher's 2x2: [4, 0, 0, 0] -> [1, 0, 0, 0].
    big = torch.zeros(1, 1, 4, 4)
    big[..., :2, :2] = 2.0
    assert attention_transfer([big], [ft]).item() == pytest.approx((0.25 + 3 * 0.25) / 4)


def test_zskt_terms_and_automatic_layers():
    fs = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 2.0], [0.0, 0.0]]]).expand(2, 2, 2, 2)
    teacher = Fixed(torch.zeros(2, 2), maps=torch.ones(2, 1, 2, 2))
    student = Fixed(T_SPLIT, maps=fs.clone())
    m = _method("zskt", teacher, student)
    assert m.layers == [("stage", "stage")]
    logs = m.generator_step()
    assert logs["loss_g"].item() == pytest.approx(-KL_UNIFORM_SPLIT, abs=1e-5)
    assert student.weight.grad is None and student.modes[-1] is False and student.training
    loss, logs = m.student_loss()
    at = (2 - 3 / 5**0.5) / 4
    assert logs["at"].item() == pytest.approx(at, abs=1e-6)
    assert loss.item() == pytest.approx(KL_UNIFORM_SPLIT + 250 * at, abs=1e-4)
    # Stage ends found by a probe forward; shared modules (LeNet's relu/pool) are skipped.
    lenet = create_model("lenet5", 10, 1)
    assert stage_outputs(lenet, (1, 32, 32), "cpu") == {(28, 28): "bn1", (10, 10): "bn2"}
    assert lenet.training  # the probe restores the mode
    resnet = create_model("resnet18", 10, 3)
    assert list(stage_outputs(resnet, (3, 32, 32), "cpu").values()) == [
        "layer1", "layer2", "layer3", "layer4"]


def test_zskt_layer_settings_are_checked():
    with pytest.raises(ConfigError, match="must be given together"):
        load_config({"method": "zskt", "zskt": {"teacher_layers": ["bn1"]}})
    with pytest.raises(ConfigError, match="no module 'bn_1'.*Did you mean 'bn1'"):
        _method("zskt", create_model("lenet5", 2, 1), create_model("lenet5_half", 2, 1),
                teacher_layers=["bn_1"], student_layers=["bn1"])
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(64, 2))
    student = Fixed(torch.zeros(2, 2), maps=torch.ones(2, 1, 2, 2))
    with pytest.raises(ConfigError, match="no layers of equal spatial size"):
        _method("zskt", mlp, student)
    assert _method("zskt", mlp, student, beta=0.0).layers == []


def test_dfq_ce_to_sampled_targets():
    s = T_SPLIT.flip(1)  # [.25, .75] / [.75, .25]
    teacher = Fixed(torch.tensor([[LN3, 0.0], [LN3, 0.0]]), bn=True)  # p = [.75, .25]
    m = _method("dfq", teacher, Fixed(s))
    torch.manual_seed(3)
    torch.randn(2, m.nz)  # the step draws z, then the targets
    targets = torch.randint(0, 2, (2,))
    ce = sum(-math.log(0.75 if y == 0 else 0.25) for y in targets.tolist()) / 2
    # Row 1 of S matches T (KL 0); row 0: KL([.75, .25] || [.25, .75]) = .75 ln 3 - .25 ln 3.
    kl = (0.75 * math.log(3) - 0.25 * math.log(3)) / 2
    torch.manual_seed(3)
    logs = m.generator_step()
    assert logs["g_ce"].item() == pytest.approx(ce, abs=1e-5)
    assert logs["g_adv"].item() == pytest.approx(-kl, abs=1e-5)
    assert logs["g_bn"].item() > 0
    assert logs["loss_g"].item() == pytest.approx(logs["g_bn"].item() + ce - kl, abs=1e-4)


# ------------------------------------------------------------------ real runs
SHORT = {"epochs": 1, "rounds": 20, "g_steps": 2, "kd_steps": 5, "batch_size": 64,
         "sample_grid": 0, "generator": {"lr": 0.01}}


@pytest.mark.parametrize("method", ["dafl", "dfad", "zskt", "dfq"])
def test_short_run_learns(fmnist_teacher, tmp_path, method):
    """100 student steps from the real Fashion-MNIST teacher: well above chance (10%)."""
    raw = {**SHORT, "teacher": str(fmnist_teacher), "method": method}
    summary = build_trainer(raw, tmp_path, progress=False).fit()
    assert summary["final_agreement"] > 20, summary["final_agreement"]
    assert method in summary["config"]


@pytest.mark.parametrize("method, settings", [
    ("dfad", {}), ("dafl", {}),
    ("zskt", {"teacher_layers": ["1"], "student_layers": ["bn1"]}),  # 28x28 maps
])
def test_python_api_with_a_plain_teacher(method, settings):
    """A user's nn.Sequential (no BatchNorm, no return_features) works as the teacher."""
    teacher = nn.Sequential(nn.Conv2d(1, 4, 5), nn.ReLU(), nn.Flatten(),
                            nn.Linear(4 * 28 * 28, 16), nn.ReLU(), nn.Linear(16, 10))
    student = create_model("lenet5_half", 10, 1)
    test_x = torch.randint(0, 255, (64, 1, 32, 32), dtype=torch.uint8)
    test_y = torch.randint(0, 10, (64,))
    summary, trained = dfkd.distill(
        teacher, student, method=method, num_classes=10, image_shape=(1, 32, 32),
        mean=(0.5,), std=(0.5,), test_data=(test_x, test_y), epochs=1, rounds=2, kd_steps=2,
        batch_size=8, progress=False, **settings)
    assert trained is student and summary["method"] == method
    assert 0 <= summary["final_acc1"] <= 100


def test_zskt_resume_is_exact(fmnist_teacher, tmp_path):
    raw = {"epochs": 3, "rounds": 2, "g_steps": 1, "kd_steps": 2, "batch_size": 32,
           "sample_grid": 4, "method": "zskt", "teacher": str(fmnist_teacher)}
    build_trainer(raw, tmp_path / "full", progress=False).fit()
    build_trainer(raw, tmp_path / "split", progress=False).fit(stop_after_epoch=2)
    resumed = build_trainer(raw, tmp_path / "split", resume=True, progress=False)
    assert resumed.epoch == 2
    assert resumed.method.layers == [("bn1", "bn1"), ("bn2", "bn2")]  # LeNet's conv blocks
    resumed.fit()
    full = metrics_rows(tmp_path / "full")
    assert metrics_rows(tmp_path / "split") == full
    assert all(row["at"] > 0 for row in full)  # the attention term is on
