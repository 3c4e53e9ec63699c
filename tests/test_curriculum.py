"""CuDFKD's self-paced machinery against its defining properties."""

import math

import pytest
import torch

from dfkd import curriculum as cur

KINDS = ["hard", "soft", "log"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lam", [0.5, 2.0, 5.0])
def test_v_star_minimises_the_self_paced_objective(kind, lam):
    # Dense grid over v in [0, 1] for many losses: v* must attain the grid minimum.
    v = torch.linspace(0, 1, 20001, dtype=torch.float64)
    losses = torch.linspace(0.0, 3 * lam, 61, dtype=torch.float64)
    for loss in losses:
        objective = v * loss + cur.regulariser(v, lam, kind)
        vs = cur.v_star(loss.view(1), lam, kind)
        at_vstar = vs * loss + cur.regulariser(vs, lam, kind)
        assert 0.0 <= vs.item() <= 1.0
        assert at_vstar.item() <= objective.min().item() + 1e-6, (kind, lam, loss.item())
        # The closed-form latent objective is that minimum.
        latent = cur.latent_objective(loss.view(1), lam, kind).item()
        assert latent == pytest.approx(at_vstar.item(), abs=1e-9)
        assert latent == pytest.approx(objective.min().item(), abs=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_latent_objective_is_concave_with_derivative_v_star(kind):
    lam = 1.5
    l = torch.linspace(0.01, 6.0, 600, dtype=torch.float64, requires_grad=True)
    F = cur.latent_objective(l, lam, kind)
    (grad,) = torch.autograd.grad(F.sum(), l)
    v = cur.v_star(l.detach(), lam, kind)
    mask = (l.detach() - lam).abs() > 1e-2  # hard's derivative jumps at l = lam
    assert torch.allclose(grad[mask], v[mask], atol=1e-9)
    # Concave: derivative non-increasing, and chords lie below the curve.
    assert (v[1:] <= v[:-1] + 1e-12).all()
    Fd = F.detach()
    mid = cur.latent_objective((l.detach()[:-2] + l.detach()[2:]) / 2, lam, kind)
    assert (mid >= (Fd[:-2] + Fd[2:]) / 2 - 1e-12).all()


def test_log_weights_hand_values():
    lam = 2.0
    c = 1 + math.exp(-lam)
    for l in (0.0, 1.0, 2.0, 5.0):
        expect = c / (1 + math.exp(l - lam))
        assert cur.v_star(torch.tensor([l]), lam, "log").item() == pytest.approx(expect)
    assert cur.v_star(torch.tensor([0.0]), lam, "log").item() == pytest.approx(1.0)
    # Saturation: F_lambda for the log regulariser is bounded above as l grows.
    big = cur.latent_objective(torch.tensor([1e3]), lam, "log").item()
    assert big == pytest.approx(c * math.log(c), rel=1e-6)


def test_hard_and_soft_hand_values():
    l = torch.tensor([0.5, 1.0, 3.0])
    assert cur.v_star(l, 2.0, "hard").tolist() == [1.0, 1.0, 0.0]
    assert cur.v_star(l, 2.0, "soft").tolist() == pytest.approx([0.75, 0.5, 0.0])


@pytest.mark.parametrize("kind", KINDS)
def test_mm_iteration_never_increases_the_surrogate(kind):
    # Small robust-regression problem with outliers: per-sample squared errors.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g, dtype=torch.float64)
    y = x @ torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    y[:8] += 10 * torch.randn(8, generator=g, dtype=torch.float64)  # outliers
    w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    lam = 4.0
    history = []
    for _ in range(200):
        losses = (x @ w - y) ** 2
        history.append(cur.latent_objective(losses.detach(), lam, kind).sum().item())
        v = cur.v_star(losses.detach(), lam, kind)            # v-step, closed form
        (grad,) = torch.autograd.grad((v * losses).sum(), w)  # theta-step on sum v_i l_i
        with torch.no_grad():
            w -= 0.002 * grad
    diffs = torch.tensor(history[1:]) - torch.tensor(history[:-1])
    assert (diffs <= 1e-9).all()
    assert history[-1] < history[0]


def test_pace_and_adversarial_ramp_schedule():
    pace = cur.Pace(2.0, 1e-4)
    assert pace(0) == 2.0 and pace(10000) == pytest.approx(3.0)
    # CIFAR-10 R34->R18: 250 epochs, w_adv0 0, grad 0.5, begin/end 0.25/0.75. The official
    # code grows the weight after epoch e only for floor(62.5)=62 < e < floor(187.5)=187,
    # i.e. after epochs 63..186: 124 increments, final weight 62.0.
    ramp = cur.AdversarialRamp(0.0, 0.5, 0.25, 0.75, 250)
    assert ramp(0) == 0.0
    assert ramp(63) == 0.0     # in effect during epoch 63; it grows after it
    assert ramp(64) == 0.5
    assert ramp(100) == pytest.approx(0.5 * 37)
    assert ramp(186) == pytest.approx(0.5 * 123)
    assert ramp(187) == pytest.approx(0.5 * 124)
    assert ramp(249) == pytest.approx(62.0)
    # Tiny-ImageNet recipe: floor(80) = 80 < e < floor(300) = 300, 219 increments.
    ramp2 = cur.AdversarialRamp(1.0, 0.15, 0.2, 0.75, 400)
    assert ramp2(81) == 1.0 and ramp2(82) == pytest.approx(1.15)
    assert ramp2(399) == pytest.approx(1.0 + 0.15 * 219)


def test_quantile_pace_window_quantile_and_schedule():
    pace = cur.QuantilePace(q0=0.5, q_end=0.9, window=4, epochs=5)
    assert [pace.q(e) for e in (0, 2, 4, 9)] == pytest.approx([0.5, 0.7, 0.9, 0.9])
    pace.push(torch.tensor([4.0, 1.0, 3.0]))
    assert pace(0) == pytest.approx(3.0)            # median of 1, 3, 4
    pace.push(torch.tensor([2.0, 10.0]))            # 4.0 (the oldest) drops out
    assert sorted(pace.values.tolist()) == [1.0, 2.0, 3.0, 10.0]
    # torch's linear interpolation: q 0.9 of [1, 2, 3, 10] is 3 + 0.7 * 7
    assert pace(4) == pytest.approx(7.9) and pace.last == pytest.approx(7.9)
    # A resumed pace holds the same window and drops the same oldest values (1, 3) next.
    fresh = cur.QuantilePace(q0=0.5, q_end=0.9, window=4, epochs=5)
    fresh.load_state_dict(pace.state_dict(), torch.device("cpu"))
    for p in (pace, fresh):
        p.push(torch.tensor([0.0, 0.5]))
    assert sorted(fresh.values.tolist()) == sorted(pace.values.tolist()) == [0.0, 0.5, 2.0, 10.0]
    assert fresh(2) == pace(2)
