"""DFME: the logit recovery, the sphere directions, the forward-difference estimate by hand and
against autograd, the generator and student steps, the queries each step costs, the shared
multistep schedule, and a differential test against the official code when it is at hand
(DFKD_OFFICIAL_DFME: a checkout of cake-lab/datafree-model-extraction)."""

from __future__ import annotations

import ast
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfkd.api import build_trainer
from dfkd.config import load_config
from dfkd.methods.dfme import (
    DFMEGenerator,
    disagreement,
    estimate_gradient,
    recover_logits,
    sphere_directions,
)
from dfkd.run.student import schedule_factor

pytestmark = pytest.mark.usefixtures("one_thread")


def dfme_trainer(teacher, tmp_path, **settings):
    raw = {"epochs": 2, "rounds": 2, "g_steps": 1, "kd_steps": 3, "batch_size": 8,
           "sample_grid": 0, "synthetic_probe": 0, "method": "dfme", "teacher": str(teacher),
           "generator": {"nz": 16, "ngf": 8}, "dfme": settings}
    return build_trainer(raw, tmp_path, progress=False)


# ------------------------------------------------------------------ the terms by hand
def test_logits_are_recovered_from_probabilities_up_to_a_constant():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    want = logits - logits.mean(1, keepdim=True)
    torch.testing.assert_close(recover_logits(logits, "mean"), want)
    # A service that answers probabilities (dfkd hands their log on) gives the same targets.
    torch.testing.assert_close(recover_logits(logits.softmax(1).log(), "mean"), want)
    logp = logits.log_softmax(1)
    torch.testing.assert_close(recover_logits(logits, "min"),
                               logp - logp.min(1, keepdim=True).values)
    torch.testing.assert_close(recover_logits(logits, "none"), logp)


def test_disagreement_by_hand():
    s = torch.tensor([[1.0, 2.0, 3.0]])
    t = torch.tensor([[0.0, 0.0, 3.0]])
    tl = t.log_softmax(1)
    want = (s - (tl - tl.mean())).abs().mean()
    torch.testing.assert_close(disagreement(s, t, "l1", "mean"), want.view(1))
    p = t.softmax(1)
    kl = (p * (p.log() - s.log_softmax(1))).sum()
    torch.testing.assert_close(disagreement(s, t, "kl", "mean"), kl.view(1))


def test_directions_are_on_the_unit_sphere():
    torch.manual_seed(0)
    u = sphere_directions(3, 4, (2, 5, 5), torch.device("cpu"))
    assert u.shape == (3, 4, 2, 5, 5)
    torch.testing.assert_close(u.flatten(2).norm(dim=2), torch.ones(3, 4))


def toy_query(w_s: torch.Tensor, w_t: torch.Tensor):
    """Linear student and teacher on flattened images: (S logits, T answers)."""
    return lambda images: (images.flatten(1) @ w_s, images.flatten(1) @ w_t)


def test_the_estimate_is_the_forward_difference_formula_by_hand():
    torch.manual_seed(0)
    n, m, k, shape, eps = 2, 3, 4, (1, 2, 2), 1e-2
    x = torch.randn(n, *shape)
    u = sphere_directions(n, m, shape, torch.device("cpu"))
    w_s, w_t = torch.randn(4, k), torch.randn(4, k)
    query = toy_query(w_s, w_t)
    grad, objective = estimate_gradient(x, u, query, eps, "l1", "mean", k)

    def value(img):   # the objective of one sample: -l1(S, recovered T)
        s, t = query(torch.tanh(img)[None])
        return -(s - recover_logits(t, "mean")).abs().mean()

    d = 4
    for i in range(n):
        want = sum((value(x[i] + eps * u[i, j]) - value(x[i])) / eps * u[i, j]
                   for j in range(m)) * d / m / (k * n)
        torch.testing.assert_close(grad[i], want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(objective, torch.stack([value(x[i]) for i in range(n)]).mean())


@pytest.mark.parametrize("loss", ["l1", "kl"])
def test_with_many_directions_the_estimate_is_the_true_gradient(loss):
    """E[d (g . u) u] = g for u uniform on the sphere: with 20k directions and a small step
    the estimate is autograd's gradient of each sample's objective (over K N for l1: the
    official scaling)."""
    torch.manual_seed(0)
    n, k, shape = 2, 3, (1, 2, 2)
    x = torch.randn(n, *shape, dtype=torch.float64)
    w_s, w_t = torch.randn(4, k, dtype=torch.float64), torch.randn(4, k, dtype=torch.float64)
    query = toy_query(w_s, w_t)
    u = sphere_directions(n, 20000, shape, torch.device("cpu")).double()
    grad, _ = estimate_gradient(x, u, query, 1e-5, loss, "mean", k)
    xg = x.clone().requires_grad_(True)
    s, t = query(torch.tanh(xg))
    (-disagreement(s, t, loss, "mean").double().sum()).backward()
    scale = k * n if loss == "l1" else 1
    cos = F.cosine_similarity(grad.flatten() * scale, xg.grad.flatten(), dim=0)
    assert cos > 0.97
    torch.testing.assert_close(grad * scale, xg.grad, atol=0.06 * xg.grad.abs().max().item(),
                               rtol=0)


def test_the_multistep_schedule_by_hand():
    opt = load_config({"student_optim": {"schedule": "multistep"}}).student_optim
    # 20 epochs: x0.3 from 1-based epochs 2, 6 and 10 on (0-based 1, 5, 9).
    got = [schedule_factor(opt, 20, e) for e in range(12)]
    want = [1.0] + [0.3] * 4 + [0.09] * 4 + [0.027] * 3
    assert got == pytest.approx(want)


# ------------------------------------------------------------------ in a run
def test_steps_cost_their_queries_and_g_follows_the_students_schedule(fmnist_teacher,
                                                                    tmp_path):
    trainer = dfme_trainer(fmnist_teacher, tmp_path, grad_m=2)
    summary = trainer.fit()
    # Per round: 1 generator step of 8 x (2 + 1) points, 3 student steps of 8.
    per_round = 8 * 3 + 3 * 8
    rows = trainer.history
    assert [r["teacher_queries"] for r in rows] == [2 * per_round, 4 * per_round]
    assert summary["teacher_queries"] == 4 * per_round
    lr_g = trainer.method.opt_g.param_groups[0]["lr"]
    assert lr_g == pytest.approx(trainer.cfg.generator.lr *
                                 trainer.method.ctx.lr_factor(1))


def test_a_generator_step_backpropagates_the_estimate_into_g(fmnist_teacher, tmp_path):
    trainer = dfme_trainer(fmnist_teacher, tmp_path)
    method = trainer.method
    before = [p.detach().clone() for p in method.generator.parameters()]
    student = {k: v.clone() for k, v in method.ctx.student_raw.state_dict().items()}
    torch.manual_seed(3)
    logs = method.generator_step()
    assert logs["loss_g"] == pytest.approx(-logs["g_disagreement"])
    assert any(not torch.equal(a, b) for a, b in zip(before, method.generator.parameters()))
    # The student's weights and its BN statistics are untouched by the generator step, and
    # it is back in train mode.
    after = method.ctx.student_raw.state_dict()
    assert all(torch.equal(student[k], after[k]) for k in student)
    assert method.ctx.student_raw.training


def test_the_student_loss_is_l1_on_the_recovered_logits(fmnist_teacher, tmp_path):
    trainer = dfme_trainer(fmnist_teacher, tmp_path)
    method = trainer.method
    state = torch.get_rng_state()
    loss, _ = method.student_loss()
    torch.set_rng_state(state)
    x = method.fresh_images()
    with torch.no_grad():
        t = method.ctx.teacher(x)
        s = method.ctx.student(x)
    torch.testing.assert_close(loss.detach(), (s - recover_logits(t, "mean")).abs().mean())


def test_batched_g_is_one_forward_per_step_in_train_mode(fmnist_teacher, tmp_path):
    trainer = dfme_trainer(fmnist_teacher, tmp_path)
    trainer.method.queue_fresh_images(3)
    assert trainer.method._queued == []


def test_image_sides_must_be_divisible_by_four():
    with pytest.raises(Exception, match="divisible by 4"):
        DFMEGenerator(8, 4, (1, 30, 30))


# ------------------------------------------------------------------ the official code
def official_folder() -> Path:
    root = os.environ.get("DFKD_OFFICIAL_DFME")
    folder = Path(root or "") / "dfme"
    if not root or not (folder / "approximate_gradients.py").is_file():
        pytest.skip("set DFKD_OFFICIAL_DFME to a checkout of cake-lab/datafree-model-extraction")
    return folder


def official_names(path: Path, names: tuple[str, ...], namespace: dict) -> dict:
    """The file's top-level functions and classes ``names``, run as written (the files import
    ipdb, scipy, matplotlib and torchvision, which these do not use)."""
    tree = ast.parse(path.read_text())
    module = ast.Module([n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))
                         and n.name in names], type_ignores=[])
    exec(compile(module, str(path), "exec"), namespace)
    return namespace


def test_the_generator_estimate_and_student_loss_equal_the_official_code(monkeypatch):
    """Same weights, same directions: GeneratorA's images and pre-activations,
    estimate_gradient_objective's gradient and loss_G, and the student's l1 on the corrected
    teacher logits equal dfkd's within 1e-5."""
    folder = official_folder()
    ns = {"torch": torch, "nn": nn, "F": F, "np": np}
    official_names(folder / "network" / "gan.py", ("GeneratorA",), ns)
    official_names(folder / "approximate_gradients.py", ("estimate_gradient_objective",), ns)
    torch.manual_seed(0)
    ours = DFMEGenerator(16, 8, (3, 32, 32))
    theirs = ns["GeneratorA"](nz=16, ngf=8, nc=3, img_size=32, activation=torch.tanh)
    theirs.load_state_dict(ours.state_dict())
    z = torch.randn(4, 16)
    torch.testing.assert_close(ours(z), theirs(z))
    torch.testing.assert_close(ours(z, pre_x=True), theirs(z, pre_x=True))

    teacher = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).eval()
    student = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10))
    x = ours(z, pre_x=True).detach()
    n, m = 4, 3
    dim = x[0].numel()
    rng = np.random.default_rng(0)
    draws = rng.standard_normal(n * m * dim)
    monkeypatch.setattr(np.random, "randn", lambda size: draws[:size].copy())
    for loss in ("l1", "kl"):
        args = SimpleNamespace(G_activation=torch.tanh, loss=loss, no_logits=1,
                               logit_correction="mean", forward_differences=1)
        want_grad, want_loss = ns["estimate_gradient_objective"](
            args, teacher, student, x, epsilon=1e-3, m=m, num_classes=10, pre_x=True)
        u = draws.reshape(-1, m, dim)
        u = torch.Tensor(u / np.sqrt((u ** 2).sum(2, keepdims=True))).view(n, m, *x.shape[1:])

        def query(images):
            with torch.no_grad():
                return student.eval()(images), teacher(images)
        grad, objective = estimate_gradient(x, u, query, 1e-3, loss, "mean", 10)
        torch.testing.assert_close(grad, want_grad, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(objective, want_loss, rtol=1e-5, atol=1e-6)

    # The student step: l1 between S's logits and the corrected log-probabilities.
    images = ours(z).detach()
    t = F.log_softmax(teacher(images), dim=1)
    t = t - t.mean(dim=1).view(-1, 1)
    s = student(images)
    torch.testing.assert_close((s - recover_logits(teacher(images), "mean")).abs().mean(),
                               F.l1_loss(s, t.detach()))
