"""CuDFKD's generator and student losses against values worked by hand."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import Const
from torch import nn

from dfkd.config import GeneratorConfig, load_config
from dfkd.errors import ConfigError
from dfkd.losses import similarity_preserving, top2_tie_ce
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


def _method(epochs: int = 4, nz: int = 8, **settings) -> CuDFKD:
    teacher = nn.Sequential(nn.BatchNorm2d(1), Const(T)).eval().requires_grad_(False)
    student = nn.Sequential(nn.Flatten(), Const(S))
    ctx = MethodContext(teacher=teacher, student=student, student_raw=student, num_classes=3,
                        image_shape=(1, 8, 8), mean=torch.zeros(1, 1, 1, 1),
                        std=torch.ones(1, 1, 1, 1), device=torch.device("cpu"), batch_size=2,
                        epochs=epochs, generator=GeneratorConfig(nz=nz, ngf=4))
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
    method.student_teacher_logits = lambda **_: (s, T)
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


def test_class_balance_weights_samples_by_their_class_share():
    # T's argmax: class 0 for sample 0, class 1 for sample 1; 3 classes.
    l1 = [sum(abs(a - b) for a, b in zip(s, t)) / 3 for s, t in zip(S.tolist(), T.tolist())]
    method = _method(kd_loss="l1", curriculum="none", weighting="sample", class_balance=True,
                     balance_decay=0.5)
    shares = [1 / 3, 1 / 3, 1 / 3]
    for _ in range(2):
        shares = [0.5 * v + 0.5 * seen for v, seen in zip(shares, [0.5, 0.5, 0.0])]
        loss, logs = _student_loss(method)
        expect = sum((1 / 3) / shares[c] * v for c, v in enumerate(l1)) / 2
        assert loss == pytest.approx(expect, rel=1e-5)
        assert logs["kd"].item() == pytest.approx(sum(l1) / 2, rel=1e-5)  # unweighted
    assert method.class_share.tolist() == pytest.approx(shares)  # [5/12, 5/12, 1/6]
    other = _method(kd_loss="l1", weighting="sample", class_balance=True)
    other.load_state_dict(method.state_dict())
    assert other.class_share.tolist() == pytest.approx(shares)
    with pytest.raises(ConfigError, match="needs cudfkd.weighting: sample"):
        CuDFKDSettings(class_balance=True).validate()


def test_pace_counts_student_steps():
    method = _method(lambda_0=2.0, pace=0.5)
    for _ in range(3):
        _student_loss(method)
    assert method.lam == pytest.approx(3.5)
    state = method.state_dict()
    fresh = _method(lambda_0=2.0, pace=0.5)
    fresh.load_state_dict(state)
    assert fresh.lam == pytest.approx(3.5)


def _losses_method(losses: torch.Tensor, **settings) -> CuDFKD:
    """A method whose per-sample KD losses are exactly ``losses`` (l1 loss of 3 logits)."""
    method = _method(kd_loss="l1", weighting="sample", **settings)
    st = torch.zeros(len(losses), 3)
    t = torch.stack([3 * losses, torch.zeros_like(losses), torch.zeros_like(losses)], 1)
    method.student_teacher_logits = lambda: (st.clone().requires_grad_(True), t)
    return method


def test_quantile_pace_admits_the_same_fraction_at_any_loss_scale():
    losses = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    weights = {}
    for scale in (1.0, 100.0):
        method = _losses_method(scale * losses, pace_mode="quantile", curriculum="hard",
                                q0=0.5, q_end=0.5)
        _, logs = method.student_loss()
        # hard: admitted iff l < the median of the window (this batch): 4 of 8 samples.
        assert logs["sp_weight"].item() == 0.5 and logs["sp_below_half"].item() == 0.5
        assert method.lam == pytest.approx(scale * 0.45)
        soft = _losses_method(scale * losses, pace_mode="quantile", curriculum="log",
                              q0=0.5, q_end=0.5, lambda_0=2.0)
        _, logs = soft.student_loss()
        weights[scale] = logs["sp_weight"].item()
    # log: v*(2 l / lambda_q; 2), the same weights whatever the scale
    expect = sum(_log_weight(2 * v / 0.45, 2.0) for v in losses.tolist()) / 8
    assert weights[1.0] == pytest.approx(expect, rel=1e-5)
    assert weights[100.0] == pytest.approx(expect, rel=1e-5)
    # The linear pace at lambda 2 sees 100x losses as all too hard, and 1x as all easy.
    lin = _losses_method(100 * losses, curriculum="hard", lambda_0=2.0)
    assert lin.student_loss()[1]["sp_weight"].item() == 0.0


def test_quantile_pace_with_batch_weighting_uses_batch_means():
    method = _method(kd_loss="l1", weighting="batch", pace_mode="quantile", curriculum="hard",
                     q0=0.5, q_end=0.5)
    means = []
    for k in (1.0, 3.0, 2.0):
        t = torch.tensor([[3 * k, 0.0, 0.0]])
        method.student_teacher_logits = lambda t=t: (torch.zeros(1, 3, requires_grad=True), t)
        method.student_loss()
        means.append(k)
    assert method.lam == pytest.approx(2.0)  # median of the batch means 1, 3, 2
    assert method.quantile.count == 3


def test_quantile_q_grows_over_the_epochs_and_is_logged():
    method = _method(epochs=5, pace_mode="quantile", q0=0.2, q_end=1.0)
    method.on_epoch_start(0)
    assert method.status()["q"] == pytest.approx(0.2)
    method.on_epoch_start(4)
    assert method.status()["q"] == pytest.approx(1.0)
    assert "q" not in _method().status()


def _generator_method(**settings) -> CuDFKD:
    """A CuDFKD with a real (tiny) generator and a teacher/student that record their input."""
    seen: dict[str, list[torch.Tensor]] = {"teacher": [], "student": []}

    class Record(nn.Module):
        def __init__(self, key):
            super().__init__()
            self.key = key
            self.lin = nn.Linear(64, 3)

        def forward(self, x):
            seen[self.key].append(x.detach().clone())
            return self.lin(x.flatten(1))

    teacher = Record("teacher").eval().requires_grad_(False)
    student = Record("student")
    ctx = MethodContext(teacher=teacher, student=student, student_raw=student, num_classes=3,
                        image_shape=(1, 8, 8), mean=torch.zeros(1, 1, 1, 1),
                        std=torch.ones(1, 1, 1, 1), device=torch.device("cpu"), batch_size=8,
                        epochs=2, generator=GeneratorConfig(nz=8, ngf=4))
    method = CuDFKD(ctx, CuDFKDSettings(**settings))
    for p in method.generator.parameters():  # images far apart, not all near 0.5
        nn.init.normal_(p)
    method.seen = seen
    return method


def test_replay_mixes_a_bounded_pool_into_student_batches():
    method = _generator_method(replay=12, replay_frac=0.25)
    fresh, pools = [], []
    for step in range(3):
        pools.append(None if method.replay.data is None else method.replay.data.clone())
        torch.manual_seed(step)
        method.student_loss()
        torch.manual_seed(step)
        method.generator.eval()
        fresh.append(method.generator(method.sample_z()).detach())
        method.generator.train()
    # Step 1 has no past images: all 8 fresh ones are used and kept.
    assert torch.equal(method.seen["student"][0], fresh[0])
    # Later steps: 6 fresh images, then 2 drawn from the pool as it was (past images only).
    batch = method.seen["student"][-1]
    assert batch.shape == (8, 1, 8, 8)
    assert torch.equal(batch[:6], fresh[-1][:6])
    for img in batch[6:]:
        assert any(torch.equal(img, row) for row in pools[-1])
    assert torch.equal(method.seen["teacher"][-1], batch)  # T and S see the same images
    # 8 + 6 + 6 fresh images were added; the pool keeps the latest 12.
    assert len(method.replay) == 12
    assert torch.equal(method.replay.latest(6), fresh[-1][:6])
    # The pool is checkpointed: a resumed method holds the same rows.
    other = _generator_method(replay=12, replay_frac=0.25)
    other.load_state_dict(method.state_dict())
    assert torch.equal(other.replay.latest(12), method.replay.latest(12))


def _student_batch_and_plain(method: CuDFKD) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch of one student step, which the teacher saw too, and G's plain images of
    the same draws (after which the RNG is where the step's own transforms drew from)."""
    torch.manual_seed(0)
    method.student_loss()
    torch.manual_seed(0)
    method.generator.eval()
    plain = method.generator(method.sample_z()).detach()
    batch = method.seen["student"][-1]
    assert torch.equal(method.seen["teacher"][-1], batch)
    assert not torch.allclose(batch, plain)
    return batch, plain


def test_augment_crops_and_flips_each_sample_for_student_and_teacher():
    batch, plain = _student_batch_and_plain(_generator_method(augment=True, padding=2))
    # Every view is a shifted (zero-padded) and maybe mirrored copy of its own image.
    padded = torch.nn.functional.pad(plain, (2, 2, 2, 2))
    for i in range(len(batch)):
        views = [padded[i, :, r:r + 8, c:c + 8] for r in range(5) for c in range(5)]
        views += [v.flip(-1) for v in views]
        assert any(torch.equal(batch[i], v) for v in views)


def test_mix_pairs_mixes_each_image_with_one_partner():
    from dfkd.methods.cudfkd import mix_pairs

    # Image k is 1 at pixel k only, so a mixed image shows its two weights and partners.
    n = 64
    images = torch.eye(n).view(n, 1, 8, 8)
    torch.manual_seed(0)
    mixed = mix_pairs(images, 0.4).view(n, n)
    assert torch.allclose(mixed.sum(1), torch.ones(n))  # a convex combination
    own = mixed.diagonal()
    assert ((own >= 0) & (own <= 1)).all()
    partner = (mixed - torch.diag(own)).argmax(1)
    moved = own < 1 - 1e-6  # a sample drawn as its own partner stays itself
    assert torch.allclose(mixed[moved, partner[moved]], 1 - own[moved])
    # Beta(0.4, 0.4) puts most weights near 0 or 1, and is symmetric about 1/2.
    assert ((own < 0.2) | (own > 0.8)).float().mean() > 0.5
    assert abs(own.mean().item() - 0.5) < 0.15
    # The partners are a permutation: every image is used as a partner once.
    torch.manual_seed(0)
    m = torch.distributions.Beta(torch.tensor(0.4), torch.tensor(0.4)).sample((n,))
    perm = torch.randperm(n)
    assert torch.allclose(own[perm != torch.arange(n)], m[perm != torch.arange(n)])
    assert torch.equal(partner[moved], perm[moved])


def test_mixup_feeds_the_same_mixed_batch_to_student_and_teacher():
    from dfkd.methods.cudfkd import mix_pairs

    batch, plain = _student_batch_and_plain(_generator_method(mixup=1.0))
    assert torch.equal(batch, mix_pairs(plain, 1.0))  # the next draws of the same RNG


def test_g_cosine_sets_the_generator_rate_from_the_epoch():
    method = _method(epochs=4, g_cosine=True)
    lr0 = method.ctx.generator.lr
    rates = []
    for epoch in (0, 1, 2, 3, 2):   # the last: a resume sets its epoch's rate again
        method.on_epoch_start(epoch)
        rates.append(method.opt_g.param_groups[0]["lr"])
    assert rates == pytest.approx([lr0, lr0 * (1 + 2 ** -0.5) / 2, lr0 / 2,
                                   lr0 * (1 - 2 ** -0.5) / 2, lr0 / 2])
    constant = _method(epochs=4)
    constant.on_epoch_start(3)
    assert constant.opt_g.param_groups[0]["lr"] == lr0
    # g_cosine_start 0.5 of 4 epochs: full rate for epochs 0-2, then the cosine over 2 epochs
    late = _method(epochs=4, g_cosine=True, g_cosine_start=0.5)
    rates = []
    for epoch in range(4):
        late.on_epoch_start(epoch)
        rates.append(late.opt_g.param_groups[0]["lr"])
    assert rates == pytest.approx([lr0, lr0, lr0, lr0 / 2])
    # g_cosine_end: the cosine reaches 0 at that share and stays; start = end freezes G there
    for end, expected in ((0.75, [lr0, lr0, lr0, 0.0]), (0.5, [lr0, lr0, 0.0, 0.0])):
        frozen = _method(epochs=4, g_cosine=True, g_cosine_start=0.5, g_cosine_end=end)
        rates = []
        for epoch in range(4):
            frozen.on_epoch_start(epoch)
            rates.append(frozen.opt_g.param_groups[0]["lr"])
        assert rates == pytest.approx(expected)


def test_attention_transfer_adds_the_teachers_feature_maps_to_the_student_loss():
    """at_weight: the student's loss gains at_weight * AT (ZSKT's term, by hand as in
    tests/test_baselines.py) on the layers of equal spatial size, found automatically; the
    teacher runs itself (its hooks), never its captured forward."""
    fs = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[1.0, 2.0], [0.0, 0.0]]]).expand(2, 2, 2, 2)
    at = (2 - 3 / 5**0.5) / 4

    def method(**settings) -> CuDFKD:
        teacher = nn.Sequential(nn.BatchNorm2d(1), Const(torch.ones(2, 1, 2, 2)), Const(T))
        student = nn.Sequential(Const(fs.clone()), nn.Flatten(), Const(S))
        ctx = MethodContext(teacher=teacher.eval().requires_grad_(False), student=student,
                            student_raw=student, num_classes=3, image_shape=(1, 8, 8),
                            mean=torch.zeros(1, 1, 1, 1), std=torch.ones(1, 1, 1, 1),
                            device=torch.device("cpu"), batch_size=2, epochs=4,
                            generator=GeneratorConfig(nz=8, ngf=4), teacher_infer=captured)
        return CuDFKD(ctx, CuDFKDSettings(kd_loss="kl", tau=4.0, **settings))

    def captured(x):
        raise AssertionError("the captured teacher runs no hooks")

    m = method(at_weight=250.0)
    assert m.attention.layers == [("1", "0")]   # the 2x2 maps; the teacher's BN is 8x8
    loss, logs = m.student_loss()
    assert logs["at"].item() == pytest.approx(at, abs=1e-6)
    plain = method(curriculum="none")
    plain.student_teacher_logits = lambda **_: (S, T)
    loss_plain, logs_plain = plain.student_loss()
    assert "at" not in logs_plain and plain.attention is None
    m2 = method(at_weight=250.0, curriculum="none")
    assert m2.student_loss()[0].item() == pytest.approx(loss_plain.item() + 250 * at, rel=1e-5)
    # at_until: the weight falls linearly to 0 at that share of the (4) epochs, then stays.
    fading = method(at_weight=250.0, at_until=0.5, curriculum="none")
    weights = []
    for epoch in range(4):
        fading.on_epoch_start(epoch)
        weights.append(fading.status()["at_weight"])
    assert weights == [250.0, 125.0, 0.0, 0.0]
    fading.on_epoch_start(1)
    assert fading.student_loss()[0].item() == pytest.approx(
        loss_plain.item() + 125 * at, rel=1e-5)
    fading.on_epoch_start(2)  # weight 0: the term is skipped, the captured teacher serves
    with pytest.raises(AssertionError, match="captured teacher"):
        fading.student_loss()
    # feature_match: similarity: the same layers and weight, SP's term on them
    # (the two samples' maps must differ: SP compares samples with each other)
    sp = method(at_weight=250.0, curriculum="none", feature_match="similarity")
    maps = torch.stack([fs[0], fs[0].flip(-1)])
    sp.ctx.student_raw[0].value = maps
    sp_term = similarity_preserving([maps], [torch.ones(2, 1, 2, 2)]).item()
    assert sp_term > 0 and sp.student_loss()[0].item() == pytest.approx(
        loss_plain.item() + 250 * sp_term, rel=1e-5)
    named = method(at_weight=1.0, at_teacher_layers=["1"], at_student_layers=["0"])
    assert named.attention.layers == [("1", "0")]
    with pytest.raises(ConfigError, match="cudfkd.at_student_layers: the model has no module"):
        method(at_weight=1.0, at_teacher_layers=["1"], at_student_layers=["9"])


def test_at_stages_last_keeps_only_the_deepest_pair():
    """LeNet-5's two stages pair up (bn1 at 28x28, bn2 at 10x10); ``last`` keeps bn2 alone,
    hooked alone, so an explicit [bn2] pair and ``at_stages: last`` compute the same term."""
    from types import SimpleNamespace

    from dfkd.attention import AttentionPairs
    from dfkd.models import create_model

    ctx = SimpleNamespace(teacher=create_model("lenet5", 10, 1).eval(),
                          student_raw=create_model("lenet5_half", 10, 1),
                          image_shape=(1, 32, 32), device=torch.device("cpu"))
    keys = ("t", "s")
    both = AttentionPairs(ctx, None, None, keys)
    assert both.layers == [("bn1", "bn1"), ("bn2", "bn2")]
    both.t_hook.remove()
    both.s_hook.remove()
    last = AttentionPairs(ctx, None, None, keys, last=True)
    assert last.layers == [("bn2", "bn2")]
    x = torch.randn(4, 1, 32, 32)
    ctx.teacher(x), ctx.student_raw(x)
    assert set(last.t_hook.outputs) == {"bn2"} and set(last.s_hook.outputs) == {"bn2"}
    at_last = last.loss()
    last.t_hook.remove()
    last.s_hook.remove()
    named = AttentionPairs(ctx, ["bn2"], ["bn2"], keys)
    ctx.teacher(x), ctx.student_raw(x)
    assert named.loss().item() == pytest.approx(at_last.item(), rel=1e-6) and at_last > 0


def test_new_settings_are_validated():
    for bad in ({"q0": 0.0}, {"q_end": 1.5}, {"window": 0}, {"replay": -1},
                {"replay_frac": 1.0}, {"padding": -1}, {"mixup": -0.1}, {"balance_decay": 1.0},
                {"g_cosine_start": 1.0}, {"at_weight": -1.0}, {"at_until": 0.0},
                {"at_teacher_layers": ["a"]},
                {"at_teacher_layers": ["a"], "at_student_layers": ["a", "b"]},
                {"g_cosine_start": 0.5, "g_cosine_end": 0.4}, {"g_cosine_end": 1.1}):
        with pytest.raises(ConfigError):
            load_config({"cudfkd": bad})


def test_resume_is_exact_with_every_addition_beyond_the_paper(fmnist_teacher, tmp_path):
    from conftest import metrics_rows

    from dfkd.api import build_trainer

    raw = {"teacher": str(fmnist_teacher), "epochs": 3, "rounds": 2, "g_steps": 1,
           "kd_steps": 2, "batch_size": 16, "sample_grid": 0,
           "cudfkd": {"pace_mode": "quantile", "weighting": "sample", "window": 40,
                      "replay": 40, "augment": True, "mixup": 0.4, "g_cosine": True,
                      "class_balance": True, "class_code": True,
                      "ent_tau": 1.0, "at_weight": 250.0}}
    build_trainer(raw, tmp_path / "full", overwrite=True, progress=False).fit()
    build_trainer(raw, tmp_path / "split", overwrite=True, progress=False).fit(
        stop_after_epoch=1)
    build_trainer(raw, tmp_path / "split", resume=True, progress=False).fit()
    rows = metrics_rows(tmp_path / "full")
    assert metrics_rows(tmp_path / "split") == rows
    # The curriculum is logged each epoch: lambda (a loss quantile), q, v* statistics.
    assert [r["q"] for r in rows] == pytest.approx([0.5, 0.7, 0.9])
    for r in rows:
        assert 0 < r["sp_weight"] <= 1 and 0 <= r["sp_below_half"] <= 1 and r["lambda"] > 0


def test_ent_tau_sets_the_temperature_of_the_balance_term_alone():
    p = [_softmax(row, 1.0) for row in T.tolist()]
    p_bar = [(a + b) / 2 for a, b in zip(*p)]
    entropy = -sum(v * math.log(v) for v in p_bar)
    terms = _method(tau=5.0, ent_tau=1.0, w_bn=0.0).generator_step()
    assert terms["g_entropy"].item() == pytest.approx(entropy, rel=1e-5)
    with pytest.raises(ConfigError, match="ent_tau"):
        load_config({"cudfkd": {"ent_tau": 0.0}})


def test_boundary_asks_the_first_share_of_the_batch_for_a_top2_tie():
    # boundary 0.5 of a batch of 2: sample 0 gets -(log p_1 + log p_2) / 2 over its two
    # most likely classes, sample 1 keeps CE(t, argmax t); the term is their mean.
    p0, p1 = _softmax(T[0].tolist()), _softmax(T[1].tolist())
    tie = -(math.log(p0[0]) + math.log(p0[1])) / 2
    confident = -math.log(p1[1])
    terms = _method(boundary=0.5, w_bn=0.0).generator_step()
    assert terms["g_onehot"].item() == pytest.approx((tie + confident) / 2, rel=1e-5)
    # The tie is best (log 2) when the top two share all the probability.
    assert top2_tie_ce(torch.tensor([[5.0, 5.0, -30.0]])).item() == pytest.approx(math.log(2))
    assert top2_tie_ce(torch.tensor([[5.0, 5.0, 4.0]])) > top2_tie_ce(
        torch.tensor([[5.0, 5.0, 0.0]]))
    assert top2_tie_ce(torch.tensor([[9.0, 5.0, 0.0]])) > top2_tie_ce(
        torch.tensor([[5.0, 5.0, 0.0]]))
    for bad in ({"boundary": 1.0}, {"boundary": -0.1}, {"boundary": 0.3, "class_code": True}):
        with pytest.raises(ConfigError, match="boundary"):
            load_config({"cudfkd": bad})


def test_class_codes_write_a_uniform_class_into_z_and_steer_the_confidence_term():
    method = _method(class_code=True, w_bn=0.0, w_ent=0.0)
    torch.manual_seed(0)
    z = method.sample_z(4000)
    labels = method.code_labels
    code = z[:, :3]
    # one-hot rows scaled to sqrt(nz - K) = sqrt(5); the other dims stay N(0, 1)
    assert torch.equal(code.argmax(1), labels)
    assert torch.allclose(code.sum(1), torch.full((4000,), math.sqrt(5)))
    assert (code > 0).sum(1).eq(1).all()
    assert abs(z[:, 3:].std().item() - 1) < 0.05
    counts = torch.bincount(labels, minlength=3).float() / 4000
    assert torch.allclose(counts, torch.full((3,), 1 / 3), atol=0.03)
    # The confidence term is CE(t, y) against the codes' classes (T is the same for every
    # batch, so the codes alone move it), not CE(t, argmax t).
    torch.manual_seed(1)
    terms = method.generator_step()
    y = method.code_labels.tolist()
    assert y != T.argmax(1).tolist()  # so the two terms differ
    expected = -sum(math.log(_softmax(T[i].tolist())[c]) for i, c in enumerate(y)) / 2
    assert terms["g_onehot"].item() == pytest.approx(expected, rel=1e-5)
    # The sample grid is made class by class: image i for class i mod K.
    seen = []
    method._eval_forward = lambda z: seen.append(z) or torch.zeros(len(z), 1, 8, 8)
    method.preview(6)
    assert seen[0][:, :3].argmax(1).tolist() == [0, 1, 2, 0, 1, 2]
    with pytest.raises(ConfigError, match="w_oh"):
        CuDFKDSettings(class_code=True, w_oh=0.0).validate()
    with pytest.raises(ConfigError, match="nz"):
        _method(nz=3, class_code=True)
