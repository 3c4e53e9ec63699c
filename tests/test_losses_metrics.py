"""Loss terms, BN hooks and metrics against hand computation."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfkd import losses
from dfkd.config import load_config
from dfkd.errors import ConfigError
from dfkd.generators import Generator, default_generator_size
from dfkd.hooks import BNStatsHook
from dfkd.methods import MethodContext
from dfkd.metrics import fidelity_metrics, run_summary


def test_kd_terms_hand_values():
    s = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    t = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert losses.kd_l1(s, t).item() == pytest.approx((0.5 + 1.0) / 2)
    assert losses.kd_l1(s, t, per_sample=True).tolist() == pytest.approx([0.5, 1.0])
    # KL(uniform || softmax([0, 1])) for row 0 at tau=1
    p_s = F.softmax(s[0], 0)
    expect0 = (0.5 * (math.log(0.5) - p_s.log())).sum().item()
    p_s1 = F.softmax(s[1], 0)
    expect1 = (0.5 * (math.log(0.5) - p_s1.log())).sum().item()
    assert losses.kd_kl(s, t, 1.0, per_sample=True).tolist() == pytest.approx([expect0, expect1])
    assert losses.kd_kl(s, t, 2.0).item() == pytest.approx(
        4 * losses.kd_kl(s / 2, t / 2, 1.0).item())


def test_entropy_onehot_and_masked_adversarial():
    t = torch.tensor([[10.0, 0.0], [0.0, 10.0]])
    assert losses.entropy_of_mean(t).item() == pytest.approx(math.log(2), abs=1e-3)
    same = torch.tensor([[5.0, 0.0], [5.0, 0.0]])
    assert losses.entropy_of_mean(same).item() < 0.05
    assert losses.onehot_ce(t).item() == pytest.approx(F.cross_entropy(t, torch.tensor([0, 1])))
    s = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # agrees on sample 0 only
    kl0 = losses.kd_kl(s[:1], t[:1], 3.0).item()
    assert losses.masked_adversarial(s, t).item() == pytest.approx(-kl0 / 2)


def test_js_divergence_bounds():
    p = torch.tensor([[1.0, 0.0], [0.3, 0.7]])
    q = torch.tensor([[0.0, 1.0], [0.3, 0.7]])
    jsd = losses.js_divergence(p, q)
    assert jsd[0].item() == pytest.approx(math.log(2))
    assert jsd[1].item() == pytest.approx(0.0, abs=1e-7)


def test_bn_term_is_zero_when_batch_matches_running_stats():
    bn = nn.BatchNorm2d(3)
    x = torch.randn(256, 3, 4, 4) * torch.tensor([1.0, 2.0, 0.5]).view(1, 3, 1, 1) + 3.0
    bn.running_mean.copy_(x.mean((0, 2, 3)))
    bn.running_var.copy_(x.var((0, 2, 3), unbiased=False))
    model = nn.Sequential(nn.Identity(), bn).eval()
    hook = BNStatsHook(model)
    with hook:
        model(x)
    assert hook.loss().item() == pytest.approx(0.0, abs=1e-5)
    with hook:
        model(x + 1.0)  # mean off by 1 in each of 3 channels -> ||.||_2 = sqrt(3)
    assert hook.loss().item() == pytest.approx(math.sqrt(3), rel=1e-4)
    model(x)  # inactive outside the context: records nothing
    with pytest.raises(RuntimeError):
        hook.loss()


def test_generator_shapes_and_init():
    g = Generator(64, 16, (1, 32, 32))
    out = g(torch.randn(5, 64))
    assert out.shape == (5, 1, 32, 32) and out.min() >= 0 and out.max() <= 1
    g3 = Generator(32, 8, (3, 64, 64))
    assert g3(torch.randn(2, 32)).shape == (2, 3, 64, 64)
    big = Generator(512, 64, (3, 32, 32))
    assert big.project.weight.std().item() == pytest.approx(0.02, rel=0.05)
    gammas = torch.cat([m.weight for m in big.modules() if isinstance(m, nn.BatchNorm2d)])
    assert gammas.mean().item() == pytest.approx(1.0, abs=0.01)


def _default_generator(shape: tuple[int, int, int]) -> Generator:
    nz, ngf, width, stages = default_generator_size(shape)
    return Generator(nz, ngf, shape, width, stages)


def _conv_channels(g: Generator) -> list[tuple[int, int]]:
    return [(m.in_channels, m.out_channels) for m in g.body if isinstance(m, nn.Conv2d)]


def test_generator_official_shapes():
    # CIFAR (SPEC.md): Linear(512 -> 4*64 x 8x8), convs 256 -> 128 -> 64 -> 3.
    cifar = _default_generator((3, 32, 32))
    assert cifar.project.out_features == 256 * 8 * 8
    assert _conv_channels(cifar) == [(256, 128), (128, 64), (64, 3)]
    # Tiny-ImageNet: Linear(1024 -> 8*64 x 8x8), one more stage: 512 -> 256 -> 128 -> 64 -> 3.
    tiny = _default_generator((3, 64, 64))
    assert tiny.nz == 1024 and tiny.project.out_features == 512 * 8 * 8
    assert _conv_channels(tiny) == [(512, 256), (256, 128), (128, 64), (64, 3)]
    assert tiny(torch.randn(2, 1024)).shape == (2, 3, 64, 64)
    # The small grey default is unchanged: 2*16 channels at 8x8, convs 32 -> 32 -> 16 -> 1.
    grey = _default_generator((1, 32, 32))
    assert grey.project.out_features == 32 * 8 * 8
    assert _conv_channels(grey) == [(32, 32), (32, 16), (16, 1)]
    with pytest.raises(ConfigError, match="divisible by 8"):
        Generator(64, 16, (1, 28, 28), stages=3)


def test_generator_settings_reach_the_methods():
    cfg = load_config({"generator": {"width": 8, "stages": 3}})
    ctx = MethodContext(teacher=nn.Identity(), student=nn.Identity(), student_raw=nn.Identity(),
                        num_classes=10, image_shape=(3, 64, 64), mean=torch.zeros(1, 3, 1, 1),
                        std=torch.ones(1, 3, 1, 1), device=torch.device("cpu"), batch_size=2,
                        epochs=1, generator=cfg.generator)
    g = ctx.make_generator()
    assert (g.nz, g.ngf, g.in_channels, g.base) == (1024, 64, 512, (8, 8))
    with pytest.raises(ConfigError, match="'generator.stages' must be >= 1"):
        load_config({"generator": {"stages": 0}})


def test_fidelity_metrics_hand_values():
    labels = torch.tensor([0, 1, 2, 3])
    teacher = torch.eye(6)[[0, 1, 2, 4]] * 10
    student = torch.eye(6)[[0, 1, 3, 4]] * 10
    m = fidelity_metrics(student, teacher, labels)
    assert m["acc1"] == 50.0          # right on 0 and 1
    assert m["agreement"] == 75.0     # differs from teacher on sample 2
    assert m["acc5"] == 100.0
    same = fidelity_metrics(teacher, teacher, labels)
    assert same["loyalty"] == pytest.approx(1.0) and same["loyalty_official"] == pytest.approx(1.0)
    assert 0.0 <= m["loyalty"] <= 1.0 and m["loyalty_official"] < m["loyalty"]


def test_loyalty_hand_values():
    # Worked by hand (softmax, then JSD in nats per row, then the mean of 1 - JSD^(1/2) and
    # of the official 1 - JSD^(1/4)); the two rows disagree on the class of row 1.
    s = torch.tensor([[1.0, 0.5, -1.0], [1.0, 0.0, 0.0]])
    t = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    m = fidelity_metrics(s, t, torch.tensor([0, 1]))
    assert m["loyalty"] == pytest.approx(0.744192, abs=1e-6)
    assert m["loyalty_official"] == pytest.approx(0.495774, abs=1e-6)
    assert m["agreement"] == 50.0


def test_js_divergence_is_accurate_for_near_identical_rows():
    # For q = p + d with small d, JSD = sum_i d_i^2 / (8 p_i) + O(d^3). Here JSD ~ 1e-12:
    # float32 rounding of the logs (~1e-7) would swamp it, and JSD^(1/4) would magnify it.
    p = torch.tensor([[0.5, 0.3, 0.2]], dtype=torch.float64)
    d = torch.tensor([[2e-6, -1e-6, -1e-6]], dtype=torch.float64)
    jsd = losses.js_divergence(p.float(), (p + d).float())
    assert jsd.dtype == torch.float64
    q32 = (p + d).float().double()  # the rows as float32 holds them
    expected = ((q32 - p.float().double()) ** 2 / (8 * p)).sum().item()
    assert jsd.item() == pytest.approx(expected, rel=1e-3)
    # Identical logits give loyalty exactly 1, differing ones strictly less.
    t = torch.tensor([[3.0, -1.0, 0.5]])
    assert fidelity_metrics(t, t, torch.tensor([0]))["loyalty_official"] == 1.0
    assert fidelity_metrics(t + torch.tensor([[1e-3, 0, 0]]), t,
                            torch.tensor([0]))["loyalty_official"] < 1.0


def test_run_summary_stability_and_convergence():
    acc = [10.0, 50.0, 80.0, 89.0, 90.0]
    s = run_summary(acc, [1.0, 2.0, 3.0, 4.0, 5.0])
    assert s["acc1_mean"] == pytest.approx(63.8)
    assert s["acc1_var"] == pytest.approx(torch.tensor(acc).var(unbiased=False).item())
    # 90% of the final 90 is 81: first reached by 89 in epoch 4; 99% (89.1) only in epoch 5.
    assert s["epochs_to_90pct"] == 4 and s["seconds_to_90pct"] == 4.0
    assert s["epochs_to_99pct"] == 5
    assert s["acc1_mean_last10pct"] == 90.0 and s["acc1_var_last10pct"] == 0.0
