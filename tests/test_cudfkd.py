"""CuDFKD's generator and student losses against values worked by hand."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import Const
from torch import nn

from dfkd.config import GeneratorConfig
from dfkd.methods import MethodContext
from dfkd.methods.cudfkd import CuDFKD, CuDFKDSettings

# Teacher logits of a 2-sample, 3-class batch; the student agrees on sample 0 only.
T = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
S = torch.tensor([[1.0, 0.5, -1.0], [1.0, 0.0, 0.0]])


def _softmax(row: list[float], tau: float = 1.0) -> list[float]:
    e = [math.exp(v / tau) for v in row]
    return [v / sum(e) for v in e]


def _kl(p: list[float], q: list[float]) -> float:
    return sum(a * math.log(a / b) for a, b in zip(p, q))


def _method(epochs: int = 4, **settings) -> CuDFKD:
    teacher = nn.Sequential(nn.BatchNorm2d(1), Const(T)).eval().requires_grad_(False)
    student = nn.Sequential(nn.Flatten(), Const(S))
    ctx = MethodContext(teacher=teacher, student=student, student_raw=student, num_classes=3,
                        image_shape=(1, 8, 8), mean=torch.zeros(1, 1, 1, 1),
                        std=torch.ones(1, 1, 1, 1), device=torch.device("cpu"), batch_size=2,
                        epochs=epochs, generator=GeneratorConfig(nz=8, ngf=4))
    return CuDFKD(ctx, CuDFKDSettings(**settings))


def test_generator_loss_by_hand():
    # w_ent is negative (class balance is maximised) and H(p_bar) is taken at tau.
    tau = 5.0
    p = [_softmax(row, tau) for row in T.tolist()]
    p_bar = [(a + b) / 2 for a, b in zip(*p)]
    entropy = -sum(v * math.log(v) for v in p_bar)
    onehot = -(math.log(_softmax(T[0].tolist())[0]) + math.log(_softmax(T[1].tolist())[1])) / 2
    method = _method(tau=tau, w_ent=-20.0, w_oh=1.0, w_bn=0.0, w_adv0=0.0)
    terms = method.generator_step()
    assert terms["g_entropy"].item() == pytest.approx(entropy, rel=1e-5)
    assert entropy != pytest.approx(-sum(v * math.log(v) for v in [
        (a + b) / 2 for a, b in zip(*[_softmax(r) for r in T.tolist()])]), rel=1e-3)
    assert terms["g_onehot"].item() == pytest.approx(onehot, rel=1e-5)
    # The ramp is at 0 in epoch 0: the adversarial term is gated off.
    assert terms["g_adv"].item() == 0.0
    assert terms["loss_g"].item() == pytest.approx(-20.0 * entropy + onehot, rel=1e-5)


def test_adversarial_term_is_masked_and_weighted_by_hand():
    # L_adv = -mean_i 1[argmax s_i == argmax t_i] * 9 * KL(softmax(t_i/3) || softmax(s_i/3)):
    # only sample 0 counts, and the batch mean divides by 2.
    adv = -9.0 * _kl(_softmax(T[0].tolist(), 3.0), _softmax(S[0].tolist(), 3.0)) / 2
    method = _method(w_ent=0.0, w_oh=0.0, w_bn=0.0, w_adv0=0.7, grad_adv=1.0, begin=0.0,
                     end=1.0)
    method.on_epoch_start(2)  # after epoch 1 (0 < 1 < 4) the weight grew by 1
    assert method.adv_weight == pytest.approx(1.7)
    terms = method.generator_step()
    assert terms["g_adv"].item() == pytest.approx(adv, rel=1e-5)
    assert terms["loss_g"].item() == pytest.approx(1.7 * adv, rel=1e-5)


def test_curriculum_none_keeps_the_constant_adversarial_weight():
    # The ablation stops the ramp only: w_adv stays at w_adv0 (official code), v = 1.
    method = _method(curriculum="none", w_adv0=0.5, grad_adv=1.0, begin=0.0, end=1.0)
    for epoch in range(4):
        method.on_epoch_start(epoch)
        assert method.adv_weight == 0.5
    ramped = _method(curriculum="log", w_adv0=0.5, grad_adv=1.0, begin=0.0, end=1.0)
    ramped.on_epoch_start(3)
    assert ramped.adv_weight == 2.5


def _student_loss(method: CuDFKD) -> tuple[float, dict]:
    s = S.clone().requires_grad_(True)
    method.student_teacher_logits = lambda: (s, T)
    loss, logs = method.student_loss()
    loss.backward()
    assert s.grad is not None
    return loss.item(), logs


def _log_weight(loss: float, lam: float) -> float:
    return (1 + math.exp(-lam)) / (1 + math.exp(loss - lam))


def test_student_loss_by_hand():
    l1 = [sum(abs(a - b) for a, b in zip(s, t)) / 3 for s, t in zip(S.tolist(), T.tolist())]
    lam = 0.7
    # batch: one weight for the batch-mean loss (official code).
    mean = sum(l1) / 2
    loss, logs = _student_loss(_method(kd_loss="l1", lambda_0=lam, weighting="batch"))
    assert loss == pytest.approx(_log_weight(mean, lam) * mean, rel=1e-5)
    assert logs["sp_weight"].item() == pytest.approx(_log_weight(mean, lam), rel=1e-5)
    # sample: one weight per sample, then the mean of v_i l_i.
    loss, logs = _student_loss(_method(kd_loss="l1", lambda_0=lam, weighting="sample"))
    expect = sum(_log_weight(v, lam) * v for v in l1) / 2
    assert loss == pytest.approx(expect, rel=1e-5)
    assert logs["sp_weight"].item() == pytest.approx(
        sum(_log_weight(v, lam) for v in l1) / 2, rel=1e-5)
    # none: v = 1.
    loss, logs = _student_loss(_method(kd_loss="l1", curriculum="none"))
    assert loss == pytest.approx(mean, rel=1e-5) and logs["sp_weight"].item() == 1.0
    # kl at tau 4: tau^2 * KL(softmax(t/4) || softmax(s/4)), batch mean; hard regulariser.
    kl = [16 * _kl(_softmax(t, 4.0), _softmax(s, 4.0)) for s, t in zip(S.tolist(), T.tolist())]
    kl_mean = sum(kl) / 2
    lam = kl_mean * 0.9  # just below the loss: the hard weight is 0
    loss, _ = _student_loss(_method(kd_loss="kl", tau=4.0, curriculum="hard", lambda_0=lam))
    assert loss == 0.0
    loss, _ = _student_loss(_method(kd_loss="kl", tau=4.0, curriculum="hard",
                                    lambda_0=kl_mean * 1.1))
    assert loss == pytest.approx(kl_mean, rel=1e-5)


def test_pace_counts_student_steps():
    method = _method(lambda_0=2.0, pace=0.5)
    for _ in range(3):
        _student_loss(method)
    assert method.lam == pytest.approx(3.5)
    state = method.state_dict()
    fresh = _method(lambda_0=2.0, pace=0.5)
    fresh.load_state_dict(state)
    assert fresh.lam == pytest.approx(3.5)
