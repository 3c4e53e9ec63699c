"""AdaDFKD: the negative queue's windowed InfoNCE, the student's InfoNCE and the window's
schedule by hand, a generator step's and a student step's terms, the classifier features,
an exact resume, and a differential test against the official code when it is at hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfkd import curriculum as cur
from dfkd.api import build_trainer
from dfkd.errors import ConfigError
from dfkd.losses import entropy_of_mean, kd_kl, onehot_ce
from dfkd.methods.adadfkd import (
    NegativeQueue,
    classifier_layer,
    fit_width,
    hard_factor,
    info_nce_pairs,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def ada_trainer(teacher, tmp_path, **settings):
    raw = {"epochs": 4, "rounds": 2, "g_steps": 1, "kd_steps": 2, "batch_size": 8,
           "sample_grid": 0, "method": "adadfkd", "teacher": str(teacher),
           "adadfkd": {"negatives": 20, "length": 0.5, "tau": 4.0, **settings}}
    return build_trainer(raw, tmp_path, progress=False)


# ------------------------------------------------------------------ the terms by hand
def test_the_queue_loss_keeps_a_window_of_negatives_by_hand():
    queue = NegativeQueue(4, 2, torch.device("cpu"))
    queue.rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    f_t = torch.tensor([[2.0, 0.0]])                  # q = (1, 0)
    f_s = torch.tensor([[1.0, 1.0]])                  # k = (1, 1)/sqrt 2
    # similarities to the queue: 1, 0, -1, 0; sorted ascending: -1, 0, 0, 1
    pos = 1 / math.sqrt(2)
    for hard, window in [(0.0, [-1.0, 0.0]), (0.5, [0.0, 1.0])]:
        saved = queue.rows.clone()
        loss = queue.loss(f_t, f_s, hard, 0.5, 0.1)
        logits = torch.tensor([pos, *window]) / 0.1
        assert loss.item() == pytest.approx((-logits.log_softmax(0)[0]).item(), rel=1e-5)
        # the key replaced the oldest row, then the pointer moved on
        assert torch.allclose(queue.rows[(queue.next - 1) % 4], F.normalize(f_s, dim=1)[0])
        queue.rows = saved
    assert queue.next == 2


def test_the_queue_wraps_around_when_the_batch_does_not_divide_it():
    queue = NegativeQueue(5, 3, torch.device("cpu"))
    assert torch.allclose(queue.rows.norm(dim=1), torch.ones(5))   # random unit rows
    keys = torch.eye(3)
    queue.add(keys)
    queue.add(keys)   # rows 3, 4, then 0
    assert queue.next == 1
    assert torch.equal(queue.rows[[3, 4, 0]], keys)


def test_the_students_info_nce_by_hand():
    f_t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    f_s = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    sim = torch.tensor([[1.0, 1 / math.sqrt(2)], [0.0, 1 / math.sqrt(2)]]) / 0.5
    by_hand = -(sim.log_softmax(1)[0, 0] + sim.log_softmax(1)[1, 1]) / 2
    assert info_nce_pairs(f_t, f_s, 0.5).item() == pytest.approx(by_hand.item(), rel=1e-6)


@pytest.mark.parametrize("epoch, expected", [(0, 0.0), (75, 0.0), (150, 0.05), (224, 0.0993),
                                             (225, 0.1), (299, 0.1)])
def test_the_window_slides_from_easy_to_hard(epoch, expected):
    # the C10 R34->R18 script: 300 epochs, begin 0.25, end 0.75, length 0.9
    assert hard_factor(epoch, 300, 0.25, 0.75, 0.9) == pytest.approx(expected, abs=1e-4)


def test_features_are_the_classifier_input_and_widths_are_fitted():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert classifier_layer(model, "teacher") is model[3]
    torch.manual_seed(0)
    assert fit_width(torch.randn(5, 3), 3).shape == (5, 3)
    assert fit_width(torch.randn(5, 3), 7).shape == (5, 7)
    with pytest.raises(ConfigError, match="adadfkd.w_hard=0 and adadfkd.s_nce=0"):
        classifier_layer(nn.Sequential(nn.Conv2d(1, 2, 3)), "student")


def test_settings_are_checked():
    from dfkd.config import load_config
    with pytest.raises(ConfigError, match="adadfkd.begin/end"):
        load_config({"method": "adadfkd", "adadfkd": {"begin": 0.8, "end": 0.2}})
    with pytest.raises(ConfigError, match="adadfkd.length"):
        load_config({"method": "adadfkd", "adadfkd": {"length": 0.0}})


# ------------------------------------------------------------------ one step of each
def test_a_generator_step_is_its_terms_by_hand(fmnist_teacher, tmp_path):
    trainer = ada_trainer(fmnist_teacher, tmp_path, w_adv0=1.0, w_hard=0.1)
    method, ctx, s = trainer.method, trainer.method.ctx, trainer.method.settings
    method.on_epoch_start(0)
    weights = {k: v.clone() for k, v in method.generator.state_dict().items()}
    rows, rng = method.queue.rows.clone(), torch.get_rng_state()
    terms = method.generator_step()
    method.generator.load_state_dict(weights)
    torch.set_rng_state(rng)
    seen = {}
    hooks = [classifier_layer(m, "x").register_forward_hook(
        lambda mod, i, o, key=key: seen.update({key: i[0].flatten(1)}))
        for key, m in (("t", ctx.teacher), ("s", ctx.student_raw))]
    with torch.no_grad():
        x = ctx.normalize(method.generator(method.sample_z()))
        t = ctx.teacher(x)
        ctx.student_raw.eval()
        st = ctx.student_raw(x)
        ctx.student_raw.train()
    for h in hooks:
        h.remove()
    adv = -kd_kl(st, t, 3.0, per_sample=True).mean()   # no agreement mask
    queue = NegativeQueue(20, seen["t"].shape[1], ctx.device)
    queue.rows = rows
    torch.manual_seed(123)   # the fresh projection (84 -> 42 features differ) draws weights
    assert seen["s"].shape[1] != seen["t"].shape[1]
    ent, oh = entropy_of_mean(t, s.tau), onehot_ce(t)
    torch.testing.assert_close(terms["g_entropy"], ent, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms["g_onehot"], oh, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(terms["g_adv"], adv, rtol=1e-5, atol=1e-5)
    total = s.w_ent * ent + s.w_oh * oh + s.w_bn * terms["g_bn"] + 1.0 * adv \
        + 0.1 * terms["g_nce"]
    torch.testing.assert_close(terms["loss_g"], total, rtol=1e-5, atol=1e-4)
    # the NCE term is the window's over the queue as it was (a projection of f_S is only
    # used as keys, which depend on its random draw: checked by its range and the queue)
    assert 0 < terms["g_nce"] and method.queue.next == 8


def test_a_student_step_weights_kd_plus_its_info_nce(fmnist_teacher, tmp_path):
    trainer = ada_trainer(fmnist_teacher, tmp_path, s_nce=0.5, kd_loss="kl")
    method, s = trainer.method, trainer.method.settings
    method.on_epoch_start(0)
    loss, logs = method.student_loss()
    real = logs["kd"] + 0.5 * logs["s_nce"]
    v = cur.v_star(real, cur.Pace(s.lambda_0, s.pace)(0), "log")
    torch.testing.assert_close(loss.detach(), v * real, rtol=1e-5, atol=1e-6)
    assert logs["sp_weight"] == pytest.approx(v.item(), rel=1e-5)


def test_a_short_run_resumes_exactly_with_its_queue(fmnist_teacher, tmp_path):
    from conftest import metrics_rows
    raw = {"epochs": 3, "rounds": 2, "g_steps": 1, "kd_steps": 2, "batch_size": 8,
           "sample_grid": 0, "method": "adadfkd", "teacher": str(fmnist_teacher),
           "adadfkd": {"negatives": 12, "length": 0.5, "begin": 0.0, "end": 1.0}}
    build_trainer(raw, tmp_path / "full", progress=False).fit()
    build_trainer(raw, tmp_path / "split", progress=False).fit(stop_after_epoch=2)
    resumed = build_trainer(raw, tmp_path / "split", resume=True, progress=False)
    resumed.fit()
    full = metrics_rows(tmp_path / "full")
    assert metrics_rows(tmp_path / "split") == full
    assert full[-1]["hard"] > 0 and "g_nce" in full[-1] and "s_nce" in full[-1]


# ------------------------------------------------------------------ the official code
def official_module(relative: str):
    """A module of the official ljrprocc/DFKD checkout named by DFKD_OFFICIAL_ADADFKD, or a
    skip (no network in the suite). Its queue loss calls .cuda(): made a no-op here."""
    import importlib.util
    import os
    from pathlib import Path
    root = os.environ.get("DFKD_OFFICIAL_ADADFKD")
    if not root or not (Path(root) / relative).is_file():
        pytest.skip("set DFKD_OFFICIAL_ADADFKD to a checkout of ljrprocc/DFKD to compare")
    spec = importlib.util.spec_from_file_location(relative.replace("/", "_")[:-3],
                                                  Path(root) / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_terms_equal_the_official_code(monkeypatch):
    """Same inputs: MoCo's windowed InfoNCE (and its queue afterwards), difficulty_mining's
    InfoNCE, the unmasked adversarial KL, the hard factor and the self-paced weight equal
    dfkd's within 1e-5."""
    utils = official_module("datafree/utils/_utils.py")
    criterions = official_module("datafree/criterions.py")
    datasets_utils = official_module("datafree/datasets/utils.py")
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    torch.manual_seed(0)
    theirs = utils.MoCo(dim=6, K=16, T=0.07)
    ours = NegativeQueue(16, 6, torch.device("cpu"))
    ours.rows = theirs.queue.T.clone()
    for hard in (0.0, 0.1, 0.2):
        f_t, f_s = torch.randn(8, 6), torch.randn(8, 6)
        expected = theirs(f_t, f_s, hard_factor=hard, length=0.8)
        got = ours.loss(f_t, f_s, hard, 0.8, 0.07)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
        torch.testing.assert_close(ours.rows, theirs.queue.T, rtol=0, atol=1e-6)
        assert ours.next == int(theirs.queue_ptr)
    f_t, f_s = torch.randn(8, 6), torch.randn(8, 6)
    _, nce = utils.difficulty_mining(f_t, f_s, tau=0.07)
    torch.testing.assert_close(info_nce_pairs(f_t, f_s, 0.07), nce, rtol=0, atol=1e-5)
    s_out, t_out = torch.randn(8, 5), torch.randn(8, 5)
    adv = -(criterions.kldiv(s_out, t_out, reduction="none", T=3).sum(1)).mean()
    torch.testing.assert_close(-kd_kl(s_out, t_out, 3.0, per_sample=True).mean(), adv,
                               rtol=0, atol=1e-5)
    for epoch in (0, 60, 150, 300, 499):   # datafree_kd.py L672, the C100 WRN script's values
        official = min(max(0, (1 - 0.8) * (epoch - int(0.2 * 500)) / int(500 * (0.79 - 0.2))),
                       1 - 0.8)
        assert hard_factor(epoch, 500, 0.2, 0.79, 0.8) == pytest.approx(official, abs=1e-12)
    loss = torch.tensor(1.7)
    _, v = datasets_utils.curr_v(l=loss, lamda=2.2, spl_type="log")
    torch.testing.assert_close(cur.v_star(loss, 2.2, "log"), torch.as_tensor(v).float(),
                               rtol=0, atol=1e-6)
