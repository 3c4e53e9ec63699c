"""NAYER: the noisy-layer generator and each loss term by hand, the schedule (loops per
round, warm-up, g_life re-draws, the student's mode in the adversarial term), the class
embeddings' checks, and a differential test against the official code when it is at hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfkd.api import build_trainer
from dfkd.config import load_config
from dfkd.errors import ConfigError
from dfkd.hooks import batchnorm_layers
from dfkd.methods.nayer import NoisyLayerGenerator, balanced_targets, load_embeddings

pytestmark = pytest.mark.usefixtures("one_thread")


def nayer_trainer(teacher, tmp_path, **settings):
    raw = {"epochs": 3, "rounds": 1, "g_steps": 2, "kd_steps": 2, "batch_size": 8,
           "sample_grid": 0, "method": "nayer", "teacher": str(teacher),
           "nayer": {"warmup": 0, **settings}}
    return build_trainer(raw, tmp_path, progress=False)


# ------------------------------------------------------------------ the generator
def test_targets_are_every_class_in_turn_then_random():
    torch.manual_seed(0)
    t = balanced_targets(25, 10)
    assert t[:20].tolist() == list(range(10)) * 2
    assert len(t) == 25 and 0 <= t[20:].min() and t[20:].max() < 10


def test_each_chunk_of_samples_has_its_own_noisy_layer_by_hand():
    torch.manual_seed(0)
    codes = torch.randn(3, 4)
    g = NoisyLayerGenerator(codes, nz=5, ngf=2, image_shape=(1, 8, 8), batch=7, chunk=3).eval()
    assert len(g.noisy) == math.ceil(7 / 3)
    for layer in g.noisy:   # drawn N(0, 1), zero bias (the official re_init_le)
        assert layer.bias.abs().max() == 0
    seen = {}
    g.body.project.register_forward_hook(lambda m, i, o: seen.update(z=i[0]))
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 1])
    images = g(targets)
    # eval mode: BN1d with its initial running statistics (mean 0, var 1)
    normed = codes[targets] / math.sqrt(1 + g.embed_norm.eps)
    by_hand = torch.cat([normed[0:3] @ g.noisy[0].weight.T, normed[3:6] @ g.noisy[1].weight.T,
                         normed[6:7] @ g.noisy[2].weight.T])
    torch.testing.assert_close(seen["z"], by_hand)
    assert images.shape == (7, 1, 8, 8) and 0 <= images.min() and images.max() <= 1
    # a redraw changes the noise, not the embeddings
    before = g.noisy[0].weight.clone()
    g.redraw_noise()
    assert not torch.equal(before, g.noisy[0].weight)
    assert torch.equal(g.embeddings, codes)


def test_the_whole_generator_is_redrawn_with_default_initialisation():
    g = NoisyLayerGenerator(torch.randn(2, 3), nz=4, ngf=2, image_shape=(1, 8, 8), batch=4,
                            chunk=2)
    bn = g.body.body[0]
    with torch.no_grad():
        bn.weight.fill_(3.0)
        g.embed_norm.running_mean.fill_(5.0)
    g.reinit()
    assert torch.equal(bn.weight, torch.ones_like(bn.weight))   # PyTorch's default: 1
    assert g.embed_norm.running_mean.abs().max() == 0


# ------------------------------------------------------------------ one step by hand
def test_a_generator_step_is_its_terms_by_hand(fmnist_teacher, tmp_path):
    """w_bn R_BN + w_ce CE + w_adv L_adv on x = normalize(G(y)) (no crop, no flip), each term
    computed again from the same weights and noise."""
    trainer = nayer_trainer(fmnist_teacher, tmp_path, padding=0, flip=False, w_adv=1.33,
                            synthesis_batch=10)
    method, ctx = trainer.method, trainer.method.ctx
    method.on_epoch_start(0)
    method.start_synthesis()
    weights = {k: v.clone() for k, v in method.generator.state_dict().items()}
    rng = torch.get_rng_state()
    terms = method.generator_step()
    # the same noise and targets again, from the same state
    method.generator.load_state_dict(weights)
    torch.set_rng_state(rng)
    method.generator.redraw_noise()
    targets = balanced_targets(10, 10)
    assert targets.tolist() == list(range(10))
    captured = []
    layers = batchnorm_layers(ctx.teacher)
    hooks = [m.register_forward_hook(lambda m, i, o: captured.append((m, i[0].detach())))
             for m in layers]
    with torch.no_grad():
        x = ctx.normalize(method.generator(targets))
        t = ctx.teacher(x)
        ctx.student_raw.eval()
        s = ctx.student_raw(x)
        ctx.student_raw.train()
    for h in hooks:
        h.remove()
    bn = sum(torch.linalg.norm(m.running_var - f.transpose(0, 1).flatten(1).var(1, unbiased=False))
             + torch.linalg.norm(m.running_mean - f.transpose(0, 1).flatten(1).mean(1))
             for m, f in captured)
    ce = -(t.log_softmax(1)[torch.arange(10), targets]).mean()
    agree = (s.argmax(1) == t.argmax(1)).float()
    p_t = t.softmax(1)
    kl = (p_t * (p_t.log() - s.log_softmax(1))).sum(1)
    adv = -(agree * kl).mean()
    torch.testing.assert_close(terms["g_bn"], bn, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms["g_ce"], ce, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms["g_adv"], adv, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms["loss_g"], 10 * bn + 0.5 * ce + 1.33 * adv,
                               rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ the schedule
def test_rounds_are_loops_and_the_warmup_has_its_own(fmnist_teacher, tmp_path):
    """Epoch 1 (warm-up): 3 loops of 2 steps, 3 batches banked, no student step; epoch 2:
    2 loops, 2 batches, student steps."""
    trainer = nayer_trainer(fmnist_teacher, tmp_path, warmup=1, warmup_loops=3, loops=2,
                            synthesis_batch=12)
    trainer.fit(stop_after_epoch=1)
    assert len(trainer.method.bank) == 3 * 12
    assert "loss_s" not in trainer.history[0]
    trainer.fit(stop_after_epoch=2)
    assert len(trainer.method.bank) == 5 * 12
    assert "loss_s" in trainer.history[1] and "g_adv" in trainer.history[1]
    assert "g_adv" not in trainer.history[0]


def test_the_generator_is_redrawn_every_g_life_epochs(fmnist_teacher, tmp_path):
    """Official rule: at the start of epoch e when (e - warmup) or e is a multiple of g_life;
    once per epoch, whatever the rounds."""
    trainer = nayer_trainer(fmnist_teacher, tmp_path, warmup=1, g_life=3)
    method, calls = trainer.method, []
    method.generator.reinit = lambda: calls.append(method.epoch)
    for epoch in range(8):
        method.on_epoch_start(epoch)
        for _ in range(2):   # two rounds
            method.start_synthesis()
    assert calls == [0, 1, 3, 4, 6, 7]


def test_the_adversarial_student_is_in_eval_mode_in_the_first_loop_only(fmnist_teacher,
                                                                        tmp_path):
    trainer = nayer_trainer(fmnist_teacher, tmp_path, loops=2)
    method, student = trainer.method, trainer.method.ctx.student_raw
    modes = []
    student.register_forward_pre_hook(lambda m, i: modes.append(m.training))
    method.on_epoch_start(0)
    method.start_synthesis()
    for _ in range(method.generator_steps()):
        method.generator_step()
    assert modes == [False, False, True, True]
    assert all(p.requires_grad for p in student.parameters())


# ------------------------------------------------------------------ class embeddings
def test_embedding_files_and_fallbacks(tmp_path):
    rows = torch.randn(10, 6)
    torch.save(rows, tmp_path / "e.pt")
    np.save(tmp_path / "e.npy", rows.numpy())
    assert torch.equal(load_embeddings(str(tmp_path / "e.pt"), 10, 512), rows)
    assert torch.equal(load_embeddings(str(tmp_path / "e.npy"), 10, 512), rows)
    random = load_embeddings("random", 10, 32)
    assert random.shape == (10, 32) and torch.equal(random, load_embeddings("random", 10, 32))
    assert torch.equal(load_embeddings("onehot", 3, 5), torch.eye(3, 5))


@pytest.mark.parametrize("content, message", [
    (torch.randn(9, 6), r"shape \(9, 6\); it needs one row per class: \(10, dim\)"),
    (torch.randn(60), r"shape \(60,\)"),
    (torch.full((10, 6), float("nan")), "NaN or infinite"),
    (b"not a tensor", "cannot read"),
])
def test_a_bad_embedding_file_gets_one_line(tmp_path, content, message):
    path = tmp_path / "e.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(ConfigError, match=message):
        load_embeddings(str(path), 10, 512)


def test_the_embedding_setting_is_checked_when_the_config_loads(tmp_path):
    with pytest.raises(ConfigError, match="no file"):
        load_config({"method": "nayer", "nayer": {"embeddings": str(tmp_path / "none.pt")}})
    with pytest.raises(ConfigError, match="random, onehot"):
        load_config({"method": "nayer", "nayer": {"embeddings": "clip"}})


def test_a_wrong_embedding_file_stops_the_run_before_the_first_round(fmnist_teacher,
                                                                      tmp_path):
    torch.save(torch.randn(7, 4), tmp_path / "e.pt")
    with pytest.raises(ConfigError, match="one row per class"):
        nayer_trainer(fmnist_teacher, tmp_path / "run", embeddings=str(tmp_path / "e.pt"))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ------------------------------------------------------------------ the official code
def official_module(relative: str):
    """A module of the official NAYER checkout named by DFKD_OFFICIAL_NAYER (a folder), or
    a skip: the test runs where that code is at hand (no network in the suite)."""
    import importlib.util
    import os
    from pathlib import Path
    root = os.environ.get("DFKD_OFFICIAL_NAYER")
    if not root or not (Path(root) / relative).is_file():
        pytest.skip("set DFKD_OFFICIAL_NAYER to a checkout of tmtuan1307/NAYER to compare")
    spec = importlib.util.spec_from_file_location(relative.replace("/", "_")[:-3],
                                                  Path(root) / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generator_and_the_terms_equal_the_official_code():
    """Same weights, same inputs: the official NLGenerator's images, DeepInversionHook's BN
    term (plain, then with momentum 0.9 after an update) and the adversarial KL equal
    dfkd's within 1e-5."""
    generator = official_module("datafree/models/generator.py")
    hooks = official_module("datafree/hooks.py")
    criterions = official_module("datafree/criterions.py")
    torch.manual_seed(0)
    codes = torch.randn(10, 512)
    theirs = generator.NLGenerator(ngf=8, img_size=32, nc=3, nl=10, label_emb=codes,
                                   le_emb_size=20, sbz=25)
    ours = NoisyLayerGenerator(codes, nz=20, ngf=8, image_shape=(3, 32, 32), batch=25, chunk=10)
    theirs.re_init_le()
    mapping = {"n1": "embed_norm", "le1": "noisy", "l1.0": "body.project",
               "conv_blocks": "body.body"}
    state = {}
    for key, value in theirs.state_dict().items():
        for old, new in mapping.items():
            if key.startswith(old + "."):
                state[new + key[len(old):]] = value
    ours.load_state_dict({**state, "embeddings": codes})
    targets = balanced_targets(25, 10)
    images = ours(targets)
    torch.testing.assert_close(images, theirs(targets), rtol=0, atol=1e-5)

    # BN term: the official hook on a BN layer, against dfkd's MomentumBNHook
    from dfkd.hooks import MomentumBNHook
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                        nn.LazyLinear(5))
    net(torch.randn(6, 3, 32, 32))
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
    net.eval()
    official = hooks.DeepInversionHook(net[1], 0.9)
    mine = MomentumBNHook(net, 0.9)
    for _ in range(2):   # plain, then blended with the first pass's statistics
        with mine:
            out = net(images)
            term = mine.loss()
        torch.testing.assert_close(term, official.r_feature, rtol=0, atol=1e-5)
        mine.update()
        official.update_mmt()

    # adversarial KL, masked where S and T agree (T = 1)
    from dfkd.losses import masked_adversarial
    s_out, t_out = torch.randn(25, 5), out.detach()
    s_out[:10] = t_out[:10] + 0.1 * torch.randn(10, 5)   # some agree
    mask = (s_out.max(1)[1] == t_out.max(1)[1]).float()
    theirs_adv = -(criterions.kldiv(s_out, t_out, reduction="none").sum(1) * mask).mean()
    torch.testing.assert_close(masked_adversarial(s_out, t_out, 1.0), theirs_adv,
                               rtol=0, atol=1e-5)
    # CE to one-hot targets (the official custom_cross_entropy)
    ys = F.one_hot(targets[:5].clamp(max=4), 5).float()
    theirs_ce = torch.mean(torch.sum(-ys * t_out[:5].log_softmax(dim=-1), dim=-1))
    torch.testing.assert_close(F.cross_entropy(t_out[:5], targets[:5].clamp(max=4)), theirs_ce)


def test_a_warmup_as_long_as_the_run_is_one_warning(fmnist_teacher, tmp_path, capsys):
    nayer_trainer(fmnist_teacher, tmp_path, warmup=3)
    err = capsys.readouterr().err
    assert "nayer.warmup is 3 epochs and the run has 3: the student never trains" in err
    nayer_trainer(fmnist_teacher, tmp_path / "b", warmup=2)
    assert "never trains" not in capsys.readouterr().err
