"""The bank-based methods (deepinv/ADI, cmi, fast): their terms by hand, the bank,
a short real run each and an exact resume with the bank in the checkpoint."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import metrics_rows
from torch import nn

from dfkd.api import build_trainer
from dfkd.augment import crop_flip, random_crop_flip
from dfkd.bank import SampleBank
from dfkd.checkpoint import safe_load
from dfkd.errors import ConfigError
from dfkd.hooks import MomentumBNHook
from dfkd.losses import info_nce, total_variation
from dfkd.methods import base as base_module
from dfkd.methods import cmi as cmi_module
from dfkd.methods import get_method, list_methods
from dfkd.methods.cmi import CMISettings, contrastive_loss, random_resized_crop, resized_crop
from dfkd.methods.deepinv import competition, jitter

pytestmark = pytest.mark.usefixtures("one_thread")
BANK_METHODS = [m for m in list_methods() if issubclass(get_method(m), base_module.BankMethod)]
# The methods whose bank holds images (SpaceshipNet's hold generator maps: its own tests)
IMAGE_BANKS = [m for m in BANK_METHODS if m != "spaceshipnet"]


# ------------------------------------------------------------------ loss terms by hand
def test_total_variation_by_hand():
    x = torch.tensor([[0.0, 1.0], [2.0, 4.0]]).view(1, 1, 2, 2)
    # right: (1, 2); down: (2, 3); lower-right: 4 - 0; upper-right: 1 - 2
    expected = math.sqrt(1 + 4) + math.sqrt(4 + 9) + 4 + 1
    assert total_variation(x).item() == pytest.approx(expected)
    assert total_variation(torch.full((3, 2, 5, 5), 0.7)).item() == 0


def test_info_nce_by_hand():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])  # normalised inside: (1, 0), (0, 1)
    e = math.e
    # Without negatives the logits are the identity: each row -log(e / (e + 1)).
    assert info_nce(a, a, None, 1.0).item() == pytest.approx(math.log(1 + 1 / e), abs=1e-6)
    neg = torch.tensor([[3.0, 0.0]])
    row0 = -math.log(e / (e + 1 + e))   # logits (1, 0 | 1)
    row1 = -math.log(e / (1 + e + 1))   # logits (0, 1 | 0)
    assert info_nce(a, a, neg, 1.0).item() == pytest.approx((row0 + row1) / 2, abs=1e-6)
    # The temperature divides every logit.
    t = 0.5
    row0 = -math.log(e**2 / (e**2 + 1 + e**2))
    row1 = -math.log(e**2 / (1 + e**2 + 1))
    assert info_nce(a, a, neg, t).item() == pytest.approx((row0 + row1) / 2, abs=1e-6)


def test_adi_competition_by_hand():
    t = torch.tensor([[2.0, 0.0]])
    assert competition(t, t, 3.0).item() == pytest.approx(1.0)
    # One-hot-like distributions that disagree: JS -> ln 2.
    far = competition(torch.tensor([[-60.0, 60.0]]), torch.tensor([[60.0, -60.0]]), 1.0)
    assert far.item() == pytest.approx(1 - math.log(2), abs=1e-6)


# ------------------------------------------------------------------ the bank
def test_bank_is_bounded_first_in_first_out_and_round_trips():
    bank = SampleBank(5)
    with pytest.raises(RuntimeError, match="empty"):
        bank.sample(2)
    bank.add(torch.arange(3.0).view(3, 1))
    bank.add(torch.arange(3.0, 7.0).view(4, 1))
    assert len(bank) == 5
    assert bank.latest(5).flatten().tolist() == [2, 3, 4, 5, 6]  # 0 and 1 were dropped
    assert bank.latest(2).flatten().tolist() == [5, 6]
    drawn = bank.sample(100)
    assert drawn.shape == (100, 1) and set(drawn.flatten().tolist()) <= {2, 3, 4, 5, 6}
    copy = SampleBank(5)
    copy.load_state_dict(bank.state_dict(), torch.device("cpu"))
    assert torch.equal(copy.latest(5), bank.latest(5)) and copy.next == bank.next
    copy.add(torch.tensor([[7.0]]))
    assert copy.latest(5).flatten().tolist() == [3, 4, 5, 6, 7]
    bank.add(torch.arange(10.0, 18.0).view(8, 1))  # more than the capacity at once
    assert bank.latest(5).flatten().tolist() == [13, 14, 15, 16, 17]
    with pytest.raises(ConfigError, match="bank_size"):
        SampleBank(-1)


def test_unbounded_bank_keeps_every_row_and_draws_distinct_negatives():
    bank = SampleBank(0)  # the originals' image pool keeps every batch
    for start in range(0, 50, 10):
        bank.add(torch.arange(start, start + 10.0).view(10, 1))
    assert len(bank) == 50 and len(bank.data) >= 50
    assert bank.latest(50).flatten().tolist() == list(range(50))
    copy = SampleBank(0)
    copy.load_state_dict(bank.state_dict(), torch.device("cpu"))
    copy.add(torch.tensor([[50.0]]))
    assert copy.latest(51).flatten().tolist() == list(range(51))
    drawn = bank.sample_distinct(30).flatten().tolist()
    assert len(drawn) == 30 and len(set(drawn)) == 30 and set(drawn) <= set(range(50))
    assert sorted(bank.sample_distinct(4096).flatten().tolist()) == list(range(50))


def test_jitter_moves_pixels_without_changing_them():
    x = torch.arange(2 * 16.0).view(2, 1, 4, 4)
    torch.manual_seed(3)
    y = jitter(x, 2)
    assert torch.equal(y.flatten(1).sort(1).values, x.flatten(1).sort(1).values)
    assert torch.equal(jitter(x, 0, flip=False), x)


def test_bank_settings_are_checked():
    from dfkd.config import load_config
    with pytest.raises(ConfigError, match="cmi.cr_tau"):
        load_config({"method": "cmi", "cmi": {"cr_tau": 0}})
    with pytest.raises(ConfigError, match="deepinv.bank_size"):
        load_config({"method": "deepinv", "deepinv": {"bank_size": -1}})
    with pytest.raises(ConfigError, match="fast.bn_mmt"):
        load_config({"method": "fast", "fast": {"bn_mmt": 1.0}})
    with pytest.raises(ConfigError, match="cmi.local_scale"):
        load_config({"method": "cmi", "cmi": {"local_scale": [0.5, 0.25]}})


# ------------------------------------------------------------------ real runs
SHORT = {
    "deepinv": {"rounds": 4, "g_steps": 30, "kd_steps": 25,
                "deepinv": {"w_adv": 1.0, "tau": 4.0}},
    "cmi": {"rounds": 4, "g_steps": 30, "kd_steps": 25, "generator": {"lr": 0.01},
            "cmi": {"tau": 4.0}},
    "fast": {"rounds": 20, "g_steps": 3, "kd_steps": 5, "fast": {"tau": 4.0, "warmup": 0}},
    "nayer": {"rounds": 4, "g_steps": 10, "kd_steps": 25,
              "nayer": {"tau": 4.0, "warmup": 0, "loops": 1}},
    "spaceshipnet": {"rounds": 4, "g_steps": 10, "kd_steps": 25,
                     "spaceshipnet": {"tau": 4.0, "w_cam": 0.0}},
}


@pytest.mark.parametrize("method", BANK_METHODS)
def test_short_run_learns(fmnist_teacher, tmp_path, method):
    """100 student steps on the bank, from the real Fashion-MNIST teacher: well above
    chance (10%); the checkpoint holds the bank as float images in [0, 1] (SpaceshipNet's:
    float generator maps, one bank per level)."""
    raw = {"epochs": 1, "batch_size": 64, "sample_grid": 0, **SHORT[method],
           "teacher": str(fmnist_teacher), "method": method}
    summary = build_trainer(raw, tmp_path, progress=False).fit()
    assert summary["final_agreement"] > 20, summary["final_agreement"]
    state = safe_load(tmp_path / "checkpoint.pt")["method"]
    if method == "spaceshipnet":
        shapes = {k: (b["data"].dtype, tuple(b["data"].shape)) for k, b in state["banks"].items()}
        rows = raw["rounds"] * 64
        assert shapes == {0: (torch.float32, (rows, 32, 8, 8)),
                          1: (torch.float32, (rows, 32, 16, 16)),
                          2: (torch.float32, (rows, 16, 32, 32))}
        return
    bank = state["bank"]["data"]
    assert bank.dtype == torch.float32 and bank.shape == (raw["rounds"] * 64, 1, 32, 32)
    assert 0 <= bank.min() and bank.max() <= 1 and bank.std() > 0.05


@pytest.mark.parametrize("method", BANK_METHODS)
def test_resume_is_exact(fmnist_teacher, tmp_path, method):
    """Banks (and CMI's head and feature bank, Fast's meta generator, BN running
    averages and its one-time l0 reset, NAYER's generator across its re-draws) are in
    the checkpoint: a run stopped after
    epoch 2 and resumed matches an uninterrupted one."""
    raw = {"epochs": 3, "rounds": 2, "g_steps": 2, "kd_steps": 2, "batch_size": 16,
           "sample_grid": 4, "method": method, "teacher": str(fmnist_teacher),
           method: {"bank_size": 40}}  # 16 per round: the bank wraps around
    if method == "fast":  # the student learns from epoch 2; G_meta's l0 is reset in epoch 2
        raw["fast"].update(warmup=1, reset_l0_epoch=1)
    if method == "nayer":  # the student learns from epoch 2; G is re-drawn in epochs 1, 2
        raw["nayer"].update(warmup=1, warmup_loops=2, g_life=2)
    build_trainer(raw, tmp_path / "full", progress=False).fit()
    build_trainer(raw, tmp_path / "split", progress=False).fit(stop_after_epoch=2)
    resumed = build_trainer(raw, tmp_path / "split", resume=True, progress=False)
    assert len(resumed.method.bank) == 40
    resumed.fit()
    assert metrics_rows(tmp_path / "split") == \
        metrics_rows(tmp_path / "full")




def make_method(teacher, tmp_path, method: str, raw: dict | None = None, **settings):
    """A freshly built method (one round of one step per epoch) to drive by hand."""
    config = {"epochs": 1, "rounds": 1, "g_steps": 1, "kd_steps": 1, "batch_size": 8,
              "sample_grid": 0, "method": method, "teacher": str(teacher), method: settings,
              **(raw or {})}
    return build_trainer(config, tmp_path, progress=False).method


def run_round(method, steps: int) -> list[dict[str, torch.Tensor]]:
    method.start_synthesis()
    terms = [method.generator_step() for _ in range(steps)]
    method.end_synthesis()
    return terms


# ------------------------------------------------------------------ student augmentation
def test_crop_flip_by_hand():
    x = torch.arange(2 * 2 * 3 * 3.0).view(2, 2, 3, 3) + 1
    padded = F.pad(x, (2, 2, 2, 2))
    out = crop_flip(x, 2, torch.tensor([0, 3]), torch.tensor([4, 1]),
                    torch.tensor([False, True]))
    assert torch.equal(out[0], padded[0, :, 0:3, 4:7])
    assert torch.equal(out[1], padded[1, :, 3:6, 1:4].flip(2))


def test_random_crop_flip_draws_a_crop_and_a_flip_per_sample():
    torch.manual_seed(0)
    x = (torch.rand(64, 2, 6, 6) + 1).requires_grad_()  # no zeros: the padding shows
    out = random_crop_flip(x, 3)
    padded = F.pad(x.detach(), (3,) * 4)
    found = []
    for i in range(64):
        matches = [(dy, dx, mirror) for dy in range(7) for dx in range(7)
                   for mirror in (False, True)
                   if torch.equal(out[i].detach(), padded[i, :, dy:dy + 6, dx:dx + 6].flip(2)
                                  if mirror else padded[i, :, dy:dy + 6, dx:dx + 6])]
        assert len(matches) == 1, i  # each row is one crop of its own padded image
        found.append(matches[0])
    assert len({(dy, dx) for dy, dx, _ in found}) > 10  # not one shift for the whole batch
    assert {mirror for *_, mirror in found} == {False, True}
    out.sum().backward()  # differentiable: Fast's and CMI's synthesis views use it
    assert x.grad is not None
    assert torch.equal(random_crop_flip(x, 0, flip=False), x)


@pytest.mark.parametrize("method", IMAGE_BANKS)
def test_student_batches_are_cropped_and_flipped_per_sample(fmnist_teacher, tmp_path,
                                                            monkeypatch, method):
    settings = {"warmup": 0} if method == "fast" else {}
    m = make_method(fmnist_teacher, tmp_path, method, **settings)
    m.bank.add(torch.rand(20, 1, 32, 32))
    calls = []

    def spy(images, padding, flip=True):
        out = random_crop_flip(images, padding, flip)
        calls.append((padding, flip, out))
        return out

    monkeypatch.setattr(base_module, "random_crop_flip", spy)
    seen = []
    handle = m.ctx.student_raw.register_forward_pre_hook(lambda _m, a: seen.append(a[0]))
    m.student_loss()
    handle.remove()
    (padding, flip, out), = calls
    assert (padding, flip) == (4, True)  # RandomCrop(32, padding=4) + RandomHorizontalFlip
    assert torch.equal(seen[0], m.ctx.normalize(out))


# ------------------------------------------------------------------ Fast
def first_bn(generator: nn.Module) -> nn.BatchNorm2d:
    return next(m for m in generator.modules() if isinstance(m, nn.BatchNorm2d))


def test_fast_meta_learns_the_projection_and_redraws_it_once(fmnist_teacher, tmp_path):
    m = make_method(fmnist_teacher, tmp_path, "fast", warmup=1, reset_l0_epoch=2)
    def proj(g):
        return g.project.weight.detach().clone()
    initial = proj(m.meta)
    m.on_epoch_start(0)
    run_round(m, 2)
    m.start_synthesis()  # round 2 starts from the meta-learned projection, not a new draw
    assert torch.equal(proj(m.fast), proj(m.meta)) and not torch.equal(proj(m.meta), initial)
    m.generator_step()
    m.end_synthesis()
    # 0-based epoch warmup + reset_l0_epoch - 1 = 2: the original's ep == 120 + warmup.
    m.on_epoch_start(2)
    learned = proj(m.meta)
    m.start_synthesis()
    bn = first_bn(m.meta)
    assert m.l0_reset_done and not torch.equal(proj(m.meta), learned)
    assert m.meta.project.weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert not m.meta.project.bias.any() and not bn.bias.any()
    assert bn.weight.abs().max() < 0.15  # gamma ~ N(0, 0.02) too, as the original
    assert torch.equal(proj(m.fast), proj(m.meta))
    m.generator_step()
    m.end_synthesis()
    m.start_synthesis()  # no second reset: the meta step has moved the zeroed biases
    assert m.meta.project.bias.any() and torch.equal(proj(m.fast), proj(m.meta))


def test_fast_banks_the_lowest_loss_batch_of_the_round(fmnist_teacher, tmp_path):
    apart = []  # rounds whose lowest-loss images are not the last step's: they tell them apart
    for seed in range(1, 6):  # which rounds those are depends on the CPU's arithmetic
        m = make_method(fmnist_teacher, tmp_path / str(seed), "fast",
                        raw={"generator": {"lr": 0.5}}, warmup=0, lr_z=1.0)
        torch.manual_seed(seed)
        m.start_synthesis()
        losses, images = [], []
        for _ in range(4):
            with torch.no_grad():
                images.append(m.fast(m.z).clone())  # train-mode BN: what the step will see
            losses.append(m.generator_step()["loss_g"].item())
        m.end_synthesis()
        best = min(range(4), key=losses.__getitem__)
        banked = m.bank.latest(8)
        assert torch.allclose(banked, images[best], atol=1e-6), (seed, losses)
        if not torch.allclose(images[best], images[3], atol=1e-3):
            apart.append(seed)
    assert apart, "in every round the lowest-loss images were the last step's"


def test_fast_fomaml_meta_step_by_hand(fmnist_teacher, tmp_path):
    """The scripts' is_maml 1: G_meta's gradient is the sum of G_fast's over the round,
    and its Adam lr is generator.lr x g_steps; Adam's first step is lr * g / (|g| + eps)."""
    m = make_method(fmnist_teacher, tmp_path, "fast", warmup=0)
    before = {k: v.clone() for k, v in m.meta.state_dict().items()}
    total = {k: torch.zeros_like(p) for k, p in m.fast.named_parameters()}
    m.start_synthesis()
    for _ in range(3):
        m.generator_step()
        for k, p in m.fast.named_parameters():
            total[k] += p.grad
    m.end_synthesis()
    lr = m.ctx.generator.lr * 3
    for name in ("project.weight", "project.bias", "body.2.weight"):
        g = total[name]
        moved = m.meta.state_dict()[name] - before[name]
        assert torch.allclose(moved, -lr * g / (g.abs() + 1e-8), atol=1e-7), name


def test_fast_reptile_moves_the_meta_generator_towards_the_round(fmnist_teacher, tmp_path):
    m = make_method(fmnist_teacher, tmp_path, "fast", warmup=0, meta="reptile",
                    meta_lr=0.005)
    before = {k: v.clone() for k, v in m.meta.state_dict().items()}
    m.start_synthesis()
    for _ in range(3):
        m.generator_step()
    fast = {k: v.detach().clone() for k, v in m.fast.state_dict().items()}
    m.end_synthesis()
    after = m.meta.state_dict()
    assert len(m.bank) == 8
    # Every layer, the latent projection included: Adam's first step moves each weight
    # by meta_lr towards where the round's steps took it.
    for name in ("project.weight", "body.2.weight"):
        moved, wanted = after[name] - before[name], fast[name] - before[name]
        assert torch.equal(moved.sign(), wanted.sign())
        assert moved.abs().max().item() == pytest.approx(0.005, rel=1e-3)


def test_bn_momentum_by_hand():
    """The original's DeepInversionHook(mmt_rate): the first round matches plain batch
    statistics; later rounds blend them with a running average over earlier rounds."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(2).eval()
    bn.running_mean.copy_(torch.tensor([0.5, -1.0]))
    bn.running_var.copy_(torch.tensor([2.0, 0.5]))
    hook = MomentumBNHook(bn, 0.9)
    a, b, c = (torch.randn(4, 2, 3, 3) * k + k for k in (1.0, 2.0, 3.0))

    def stats(x):
        return x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)

    def term(mean, var):
        return (torch.linalg.vector_norm(mean - bn.running_mean)
                + torch.linalg.vector_norm(var - bn.running_var)).item()

    def bn_loss(x):
        with hook:
            bn(x)
            return hook.loss().item()

    (ma, va), (mb, vb), (mc, vc) = stats(a), stats(b), stats(c)
    assert bn_loss(a) == pytest.approx(term(ma, va))
    hook.update()  # round 1 ends: the running average starts at round 1's statistics
    assert bn_loss(b) == pytest.approx(term(0.1 * mb + 0.9 * ma, 0.1 * vb + 0.9 * va))
    hook.update()
    run_mean, run_var = 0.9 * ma + 0.1 * mb, 0.9 * va + 0.1 * vb
    assert torch.allclose(hook.running[0][0], run_mean)
    assert torch.allclose(hook.running[0][1], run_var)
    assert bn_loss(c) == pytest.approx(term(0.1 * mc + 0.9 * run_mean, 0.1 * vc + 0.9 * run_var))
    plain = MomentumBNHook(bn, 0.0)  # bn_mmt 0: the plain term, whatever came before
    with plain:
        bn(a)
    plain.update()
    with plain:
        bn(c)
        assert plain.loss().item() == pytest.approx(term(mc, vc))


def test_fast_warmup_epochs_synthesise_only(fmnist_teacher, tmp_path):
    """warmup 1: in epoch 1 the bank fills and G_meta learns, but the student stays as it
    was (not even weight decay or BN statistics) and G has no adversarial term."""
    raw = {"epochs": 2, "rounds": 2, "g_steps": 2, "kd_steps": 2, "batch_size": 8,
           "sample_grid": 0, "method": "fast", "teacher": str(fmnist_teacher),
           "fast": {"warmup": 1}}
    trainer = build_trainer(raw, tmp_path, progress=False)
    student = {k: v.clone() for k, v in trainer.method.ctx.student_raw.state_dict().items()}
    meta = trainer.method.meta.project.weight.detach().clone()
    trainer.fit(stop_after_epoch=1)
    now = trainer.method.ctx.student_raw.state_dict()
    assert all(torch.equal(now[k], v) for k, v in student.items())
    assert not torch.equal(trainer.method.meta.project.weight, meta)
    assert len(trainer.method.bank) == 16
    trainer.fit()
    first, second = metrics_rows(tmp_path)
    assert "g_adv" not in first and "loss_s" not in first
    assert "g_adv" in second and second["loss_s"] > 0
    # The engine held the LR schedule through the warm-up: the cosine starts after it.
    assert first["lr"] == second["lr"] == 0.1
    assert trainer.optimiser.sched.T_max == 1
    summary = trainer.summary()  # 1 epoch of 2 rounds x 2 student steps of 8 samples
    assert summary["student_samples_per_second"] == pytest.approx(
        2 * 2 * 8 / trainer.timers["student_seconds"])
    now = trainer.method.ctx.student_raw.state_dict()
    assert not all(torch.equal(now[k], v) for k, v in student.items())


# ------------------------------------------------------------------ CMI
def test_cmi_defaults_are_the_originals():
    s = CMISettings()
    assert (s.head_dim, s.negatives, s.feature_bank_size, s.bank_size) == (256, 4096, 40960, 0)
    assert (s.w_bn, s.w_ce, s.w_adv, s.w_cr, s.cr_tau, s.local_scale) == \
        (1.0, 1.0, 0.5, 0.8, 0.2, (0.25, 1.0))


def test_cmi_features_are_the_teachers_bn_input_means(fmnist_teacher, tmp_path):
    m = make_method(fmnist_teacher, tmp_path, "cmi")
    layers = [mod for mod in m.ctx.teacher.modules() if isinstance(mod, nn.BatchNorm2d)]
    seen = []
    handles = [layer.register_forward_hook(lambda _m, i, _o: seen.append(i[0].mean((2, 3))))
               for layer in layers]
    with torch.no_grad():
        _, features = m.features(m.ctx.teacher, torch.randn(5, 1, 32, 32))
    for h in handles:
        h.remove()
    width = sum(layer.num_features for layer in layers)
    assert width == 6 + 16 + 120 and features.shape == (5, width)
    assert torch.allclose(features, torch.cat(seen, 1))
    assert m.head.net[0].in_features == width and m.head.net[-1].out_features == 256
    run_round(m, 2)
    assert m.feature_bank.data.shape[1] == 2 * width  # local and global features per row


def test_cmi_contrastive_loss_by_hand_with_detached_keys():
    local_rows = [[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]]
    global_rows = [[0.8, 0.6], [0.0, 1.0], [1.0, 0.0]]
    local = torch.tensor(local_rows, requires_grad=True)
    keys = torch.tensor(global_rows, requires_grad=True)
    tau = 0.5

    def row_loss(i, n):
        logits = [sum(a * b for a, b in zip(local_rows[i], global_rows[j])) / tau
                  for j in range(n)]
        return math.log(sum(math.exp(v) for v in logits)) - logits[i]

    # Two current rows and one banked row: mean over the current + mean over the banked.
    loss = contrastive_loss(local, keys, 2, tau)
    expected = (row_loss(0, 3) + row_loss(1, 3)) / 2 + row_loss(2, 3)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    loss.backward()
    assert keys.grad is None and local.grad is not None  # the global side is detached
    no_bank = contrastive_loss(local[:2], keys[:2], 2, tau)
    assert no_bank.item() == pytest.approx((row_loss(0, 2) + row_loss(1, 2)) / 2, abs=1e-6)


def test_resized_crop_by_hand():
    """Bilinear resampling of a ramp I(y, x) = x + 10 y is the ramp at the sampled point,
    clamped to the image: output pixel j samples left + (j + 0.5) bw / W - 0.5."""
    h = w = 8
    ramp = (torch.arange(w).float().view(1, w) + 10 * torch.arange(h).float().view(h, 1))
    images = ramp.expand(2, 1, h, w)
    boxes = torch.tensor([[1.0, 2.0, 4.0, 6.0], [0.0, 0.5, 8.0, 4.0]])  # top, left, h, w
    mirror = [False, True]
    out = resized_crop(images, boxes, torch.tensor(mirror))
    j = torch.arange(w).float()
    for i, (top, left, bh, bw) in enumerate(boxes.tolist()):
        cols = w - 1 - j if mirror[i] else j
        x_in = (left + (cols + 0.5) * bw / w - 0.5).clamp(0, w - 1)
        y_in = (top + (j + 0.5) * bh / h - 0.5).clamp(0, h - 1)
        assert torch.allclose(out[i, 0], x_in.view(1, w) + 10 * y_in.view(h, 1), atol=1e-4)


def test_random_resized_crop_is_per_sample():
    torch.manual_seed(0)
    images = torch.rand(1, 1, 16, 16).expand(32, 1, 16, 16)
    out = random_resized_crop(images, (0.25, 1.0))
    assert len({tuple(row.flatten().tolist()) for row in out}) == 32  # one draw per sample
    whole = random_resized_crop(images, (1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    assert torch.allclose(whole, images, atol=1e-5)


def test_cmi_bn_ce_and_adversarial_terms_use_the_crop_view(fmnist_teacher, tmp_path,
                                                           monkeypatch):
    m = make_method(fmnist_teacher, tmp_path, "cmi")
    views = []

    def spy(images, padding, flip=True):
        views.append(random_crop_flip(images, padding, flip))
        return views[-1]

    monkeypatch.setattr(cmi_module, "random_crop_flip", spy)
    to_teacher, to_student = [], []
    h1 = m.ctx.teacher.register_forward_pre_hook(lambda _m, a: to_teacher.append(a[0]))
    h2 = m.ctx.student_raw.register_forward_pre_hook(lambda _m, a: to_student.append(a[0]))
    m.start_synthesis()
    m.generator_step()
    h1.remove()
    h2.remove()
    global_view = m.ctx.normalize(views[0]).detach()
    assert len(views) == 1 and len(to_teacher) == 2
    assert torch.equal(to_teacher[0].detach(), global_view)   # BN and CE terms
    assert torch.equal(to_student[0].detach(), global_view)   # adversarial term
    assert not torch.equal(to_teacher[1].detach(), global_view)  # the resized-crop view
