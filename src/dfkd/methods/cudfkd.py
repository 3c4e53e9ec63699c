"""CuDFKD: dynamic DFKD with an easy-to-hard curriculum (Li et al., Inf. Sci. 2023).

Generator step (one generator for the whole run, no bank):
    L_G = w_ent H(p_bar) + w_oh CE(t, argmax t) + w_bn L_bn + w_adv(e) L_adv
(``w_bn: 0`` drops L_bn, for a teacher without BatchNorm.)
Student step, on fresh samples from G in eval mode:
    l = KD(s, t);  v = v*(l; lambda_k);  minimise v * l
with lambda_k = lambda_0 + pace * k and w_adv growing by grad_adv after each 0-based
epoch e with floor(E begin) < e < floor(E end). ``curriculum: none`` (the ablation) sets
v = 1 and stops the ramp: w_adv stays at its constant w_adv0, as in the official code.

Beyond the paper (each off by default and in the official recipes):
  * ``pace_mode: quantile``: lambda is a running quantile of recent student losses
    (:class:`dfkd.curriculum.QuantilePace`), so the curriculum admits the same fraction of
    samples at any loss scale; q grows from ``q0`` to ``q_end`` over the run;
  * ``replay``: a bounded pool of the latest ``replay`` synthetic images; a fraction
    ``replay_frac`` of every student batch is drawn from it (against forgetting as G moves);
  * ``augment``: per-sample pad-``padding`` crop (and flip) of the student's batch, as the
    bank methods give their students;
  * ``mixup``: each image of the student's batch becomes ``m x_i + (1 - m) x_j`` with
    another image ``x_j`` of the batch and ``m ~ Beta(mixup, mixup)`` per sample; the
    teacher labels the mixed image, so the student also learns between the samples;
  * ``class_balance``: each sample's loss is weighted by (1/K) / f_c, with f_c a running
    share (decay ``balance_decay`` per student step) of the teacher's argmax class c in the
    student's batches, so classes the generator makes rarely weigh as much as the others
    (needs ``weighting: sample``);
  * ``ent_tau``: the temperature of H(p_bar) alone (otherwise ``tau``);
  * ``class_code``: a class y ~ U{0..K-1} is written into the first K dims of each z and
    G's confidence term is CE(t, y), so G makes every class equally often.
  * ``at_weight``: the student's loss also matches the teacher's spatial attention maps
    on its batch, ``at_weight * AT`` (ZSKT's attention transfer, ``dfkd.losses``, on the
    layer pairs ``at_teacher_layers``/``at_student_layers``, found as ZSKT finds them when
    unset, for any two architectures: ``dfkd.attention``; when they share no stage size the
    term is skipped with one warning, and ``at_weight: 0`` turns it off): a signal from the
    teacher's
    features, beside its logits. The term is not weighted by v*. With ``at_until: u`` its
    weight falls linearly from ``at_weight`` (first epoch) to 0 at the share u of the
    epochs, and stays 0. ``feature_match: similarity``
    makes the term similarity-preserving KD's on the same layers instead (Tung & Mori 2019:
    the batch's sample-to-sample similarities, not the maps); ``at_stages: last`` keeps only
    the deepest layer pair.
The student logs the mean of v* (``sp_weight``) and the fraction of samples with
v* < 0.5 (``sp_below_half``); ``lambda`` (and ``q``) are logged each epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch

from dfkd import curriculum as cur
from dfkd import distributed
from dfkd.attention import AttentionPairs, check_layer_pairs
from dfkd.augment import random_crop_flip
from dfkd.bank import SampleBank
from dfkd.errors import ConfigError
from dfkd.losses import (
    attention_transfer,
    entropy_of_mean,
    kd_kl,
    kd_l1,
    masked_adversarial,
    onehot_ce,
    similarity_preserving,
    top2_tie_ce,
)
from dfkd.methods import register_method
from dfkd.methods.base import GeneratorMethod, OfficialRecipes, Published, warn
from dfkd.ranges import ranged


@dataclass
class CuDFKDSettings:
    tau: float = ranged(20.0, gt=0)  # temperature of H(p_bar) and of the KL KD loss
    # temperature of H(p_bar) alone (None: tau, as in the paper). Near 1, the balance term
    # sees the classes G's images fall in, which a high tau's flat probabilities hide
    ent_tau: float | None = ranged(None, gt=0)
    w_ent: float = -20.0       # negative: generation maximises class balance
    w_oh: float = 1.0          # confidence: CE(t, argmax t)
    w_bn: float = 1.0          # BatchNorm statistics term (0: off; a teacher without BN)
    w_adv0: float = 0.0        # the adversarial weight at the start
    grad_adv: float = 0.5      # added to w_adv after each epoch e, E*begin < e < E*end
    begin: float = ranged(0.25, ge=0, le=1)   # share of the epochs where the ramp starts
    end: float = ranged(0.75, ge=0, le=1)     # ... and where it ends
    adv_tau: float = ranged(3.0, gt=0)  # temperature of the masked adversarial KL
    lambda_0: float = 2.0      # pace: lambda_k = lambda_0 + pace * k
    pace: float = 1e-4         # lambda's growth per student step
    kd_loss: Literal["l1", "kl"] = "l1"   # the student's loss: L1 of logits or KL at tau
    curriculum: Literal["none", "hard", "soft", "log"] = "log"   # self-paced regulariser
    # batch: one weight for the batch-mean loss (official code);
    # sample: one weight per sample (the paper's self-paced framing)
    weighting: Literal["batch", "sample"] = "batch"
    # linear: lambda_k = lambda_0 + pace k (paper); quantile: lambda = q-quantile of the
    # last `window` losses, q from q0 to q_end over the epochs (scale-free; not in the paper)
    pace_mode: Literal["linear", "quantile"] = "linear"
    q0: float = ranged(0.5, gt=0, le=1)      # quantile pace: q in the first epoch
    q_end: float = ranged(0.9, gt=0, le=1)   # ... and in the last
    window: int = ranged(4096, ge=1)         # ... over the last `window` losses
    replay: int = ranged(0, ge=0)  # images kept for replay (0 = off; not in the paper)
    # share of each student batch drawn from the replay pool
    replay_frac: float = ranged(0.5, ge=0, lt=1)
    augment: bool = False      # per-sample crop (pad `padding`) + flip for the student
    padding: int = ranged(2, ge=0)   # augment: zero padding before the crop
    flip: bool = True                # augment: random horizontal flip
    mixup: float = ranged(0.0, ge=0)  # Beta(mixup, mixup) mixing of the student's batch (0 = off)
    class_balance: bool = False  # weight samples by 1/K over their class's running share
    balance_decay: float = ranged(0.99, ge=0, lt=1)   # decay of the running class shares
    # class codes: the first K latent dims of each z carry a one-hot class y ~ U{0..K-1}
    # (scaled to the norm of the rest of z) and the generator's confidence term is
    # CE(t, y), not CE(t, argmax t), so every class is made as often (not in the paper)
    class_code: bool = False
    # boundary: the share of each generator batch (its first samples) whose confidence term
    # asks for a tie between the teacher's top two classes (top2_tie_ce) instead of
    # confidence, so G also makes the ambiguous images between two classes (not in the paper)
    boundary: float = ranged(0.0, ge=0, lt=1)
    # The generator's learning rate follows a cosine from generator.lr (first epoch) towards
    # 0, like the student's, so G slows down as S does (not in the paper; off = constant).
    # g_cosine_start: the share of the epochs G keeps its full rate before its cosine begins
    # (e.g. 0.75, the ramp's end: only the end of the run slows G); g_cosine_end: the share
    # at which the rate reaches 0 and stays there (G frozen; equal to the start: at once).
    g_cosine: bool = False
    g_cosine_start: float = ranged(0.0, ge=0, lt=1)   # see g_cosine
    g_cosine_end: float = ranged(1.0, ge=0, le=1)     # see g_cosine
    # attention transfer from the teacher's features in the student's loss (0: off; ZSKT's
    # beta is 250) and its layer pairs (None: the ends of the stages of equal spatial size,
    # as in zskt; with none, the term is skipped with one warning)
    at_weight: float = ranged(0.0, ge=0)
    at_until: float | None = ranged(None, gt=0, le=1)  # None: constant; u: linear to 0 at u * E
    at_teacher_layers: list[str] | None = None   # the teacher's layers of the pairs
    at_student_layers: list[str] | None = None   # ... and the student's, as many
    # the term on those layers: ZSKT's attention maps, or the similarity-preserving KD's
    # (B, B) similarities of the batch's activations
    feature_match: Literal["attention", "similarity"] = "attention"
    # all the pairs, or only the last (deepest) one: e.g. LeNet's bn2 without bn1
    at_stages: Literal["all", "last"] = "all"

    def kd(self, student: torch.Tensor, teacher: torch.Tensor,
           per_sample: bool = False) -> torch.Tensor:
        """The student's KD loss (``kd_loss``: L1 of logits, or KL at ``tau``)."""
        return kd_l1(student, teacher, per_sample) if self.kd_loss == "l1" else \
            kd_kl(student, teacher, self.tau, per_sample)

    def validate(self) -> None:
        if self.begin > self.end:
            raise ConfigError(f"cudfkd.begin/end must satisfy 0 <= begin <= end <= 1, got "
                              f"{self.begin}/{self.end}")
        if self.curriculum != "none" and self.lambda_0 <= 0:
            raise ConfigError(f"cudfkd.lambda_0 must be > 0, got {self.lambda_0}")
        if self.class_code and self.boundary:
            raise ConfigError("cudfkd.class_code and cudfkd.boundary both set the confidence "
                              "term: use one of them")
        if self.class_code and self.w_oh <= 0:
            raise ConfigError("cudfkd.class_code steers G through the confidence term: it "
                              f"needs cudfkd.w_oh > 0, got {self.w_oh}")
        if self.class_balance and self.weighting != "sample":
            raise ConfigError("cudfkd.class_balance weights each sample: it needs "
                              "cudfkd.weighting: sample")
        check_layer_pairs(self.at_teacher_layers, self.at_student_layers,
                          ("cudfkd.at_teacher_layers", "cudfkd.at_student_layers"),
                          self.at_weight, off="cudfkd.at_weight")
        if self.g_cosine_start > self.g_cosine_end:
            raise ConfigError(f"cudfkd.g_cosine_start and g_cosine_end are shares of the epochs "
                              f"with 0 <= start < 1 and start <= end <= 1, got "
                              f"{self.g_cosine_start}/{self.g_cosine_end}")


def mix_pairs(images: torch.Tensor, alpha: float) -> torch.Tensor:
    """Mixup inside a batch: image i becomes m_i x_i + (1 - m_i) x_p(i), with p a random
    permutation and m_i ~ Beta(alpha, alpha). The draws use the CPU RNG, so a resumed run
    repeats them on any device."""
    n = len(images)
    concentration = torch.tensor(float(alpha))
    m = torch.distributions.Beta(concentration, concentration).sample((n,))
    partner = torch.randperm(n)
    m = m.to(images.device, images.dtype).view(n, *([1] * (images.dim() - 1)))
    return m * images + (1 - m) * images[partner.to(images.device)]


@register_method
class CuDFKD(GeneratorMethod):
    name = "cudfkd"
    Settings = CuDFKDSettings
    title = "CuDFKD"
    paper = ("Li et al., *Dynamic data-free knowledge distillation by easy-to-hard learning "
             "strategy*, Information Sciences 2023 "
             "([arXiv:2208.13648](https://arxiv.org/abs/2208.13648))")
    code = "[ljrprocc/DataFree](https://github.com/ljrprocc/DataFree)"
    docs = "cudfkd.md"
    needs_bn = True
    reads_layers = "its stage ends, with `at_weight` (attention transfer)"
    # Hours: the CuDFKD README's, on one RTX 3090 Ti.
    official = (OfficialRecipes(
        "cudfkd", "CuDFKD", column=0,
        acc1={
            "c10_resnet34_resnet18": Published(95.28, "ljrprocc/DataFree README.md:L33"),
            "c10_wrn40_2_wrn16_1": Published(88.77, "ljrprocc/DataFree README.md:L33"),
            "c10_wrn40_2_wrn40_1": Published(93.18, "ljrprocc/DataFree README.md:L33"),
            "c100_resnet34_resnet18": Published(75.97, "ljrprocc/DataFree README.md:L60"),
            "c100_wrn40_2_wrn16_2": Published(66.26, "ljrprocc/DataFree README.md:L60"),
        },
        hours={
            "c10_resnet34_resnet18": Published(
                5.48, "ljrprocc/DataFree README.md:L35", "batch 256 (the README's words, L45)"),
            "c100_resnet34_resnet18": Published(
                7.5, "ljrprocc/DataFree README.md:L70", "the README's CIFAR-100 cost table does "
                "not name its pair; its best (75.9) is the R34->R18 result (75.97, L60)"),
        }),)

    def __init__(self, ctx, settings: CuDFKDSettings) -> None:
        super().__init__(ctx, settings)
        s = settings
        self.pace = cur.Pace(s.lambda_0, s.pace)
        self.ramp = cur.AdversarialRamp(s.w_adv0, s.grad_adv, s.begin, s.end, ctx.epochs)
        self.student_steps = 0   # k in lambda_k
        self.quantile = cur.QuantilePace(s.q0, s.q_end, s.window, ctx.epochs) \
            if s.pace_mode == "quantile" else None
        self.replay = SampleBank(s.replay) if s.replay else None
        k = ctx.num_classes
        if s.class_code and self.nz <= k:
            raise ConfigError(f"cudfkd.class_code needs generator.nz > {k} (the classes), "
                              f"got {self.nz}")
        self.code_labels: torch.Tensor | None = None  # the classes of the latest sample_z
        self.class_share = torch.full((k,), 1.0 / k, device=ctx.device) \
            if s.class_balance else None
        attention = AttentionPairs(
            ctx, s.at_teacher_layers, s.at_student_layers,
            ("cudfkd.at_teacher_layers", "cudfkd.at_student_layers"),
            similarity_preserving if s.feature_match == "similarity" else attention_transfer,
            last=s.at_stages == "last", off="cudfkd.at_weight=0") \
            if s.at_weight else None
        if attention is not None and attention.skipped:
            warn(attention.skipped)
        # No layer pair found (the warning said so): the term is skipped.
        self.attention = attention if attention is not None and attention.layers else None

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        if self.settings.g_cosine:  # set from the epoch alone, so a resume sets it again
            start = self.settings.g_cosine_start * self.ctx.epochs
            end = self.settings.g_cosine_end * self.ctx.epochs
            t = 1.0 if epoch >= end else 0.0 if epoch <= start else \
                (epoch - start) / (end - start)
            lr = 0.5 * self.ctx.generator.lr * (1 + math.cos(math.pi * t))
            for group in self.opt_g.param_groups:
                group["lr"] = lr

    def sample_z(self, n: int | None = None) -> torch.Tensor:
        z = super().sample_z(n)
        if self.settings.class_code:
            labels = torch.randint(self.ctx.num_classes, (len(z),), device=z.device)
            self.code_labels = labels
            return self.put_codes(z, labels)
        return z

    def put_codes(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """z with its first K dims replaced by one-hot(labels), scaled to sqrt(nz - K): the
        expected norm of the remaining N(0, I) dims, so the code weighs as much as the noise."""
        k = self.ctx.num_classes
        code = torch.nn.functional.one_hot(labels, k).to(z.dtype) * math.sqrt(self.nz - k)
        return torch.cat([code, z[:, k:]], dim=1)

    @torch.no_grad()
    def preview(self, n: int, seed: int = 0) -> torch.Tensor:
        """With class codes, sample i of the grid is made for class i mod K."""
        if not self.settings.class_code:
            return super().preview(n, seed)
        z = torch.randn(n, self.nz, generator=torch.Generator().manual_seed(seed))
        z = self.put_codes(z, torch.arange(n) % self.ctx.num_classes)
        return self._eval_forward(z.to(self.ctx.device)).cpu()

    @property
    def adv_weight(self) -> float:
        # The ablation stops the ramp but keeps the constant term (official code).
        s = self.settings
        return s.w_adv0 if s.curriculum == "none" else self.ramp(self.epoch)

    @property
    def lam(self) -> float:
        """The pace in effect: linear in student steps, or the latest quantile."""
        return self.pace(self.student_steps) if self.quantile is None else self.quantile.last

    def self_paced_weight(self, kd: torch.Tensor) -> torch.Tensor:
        s = self.settings
        if s.curriculum == "none":
            return torch.ones_like(kd)
        if self.quantile is None:
            return cur.v_star(kd.detach(), self.lam, s.curriculum)
        # Every rank pushes the losses of all ranks: one window and one lambda everywhere,
        # so rank 0's checkpoint holds the state of the whole run.
        self.quantile.push(distributed.all_gather_cat(kd.detach().reshape(-1)))
        return cur.v_star_at_quantile(kd.detach(), self.quantile(self.epoch), s.lambda_0,
                                      s.curriculum)

    @torch.no_grad()
    def student_batch(self) -> torch.Tensor:
        s = self.settings
        if self.replay is None and not s.augment and not s.mixup:
            return self.fixed_batch()
        x01 = self.fresh_images()
        if self.replay is not None:  # past images only; the pool keeps the fresh ones
            n_old = round(s.replay_frac * len(x01)) if len(self.replay) else 0
            fresh = x01[: len(x01) - n_old]
            if n_old:
                x01 = torch.cat([fresh, self.replay.sample(n_old)])
            self.replay.add(fresh)
        if s.augment:
            x01 = random_crop_flip(x01, s.padding, s.flip)
        if s.mixup:
            x01 = mix_pairs(x01, s.mixup)
        return self.ctx.normalize(x01)

    def generator_step(self) -> dict[str, torch.Tensor]:
        s, ctx = self.settings, self.ctx
        adv_weight = self.adv_weight
        x, t, bn = self.teacher_with_bn()
        ent = entropy_of_mean(t, s.tau if s.ent_tau is None else s.ent_tau)
        oh = self.confidence(t)
        loss = s.w_ent * ent + s.w_oh * oh + s.w_bn * bn
        if adv_weight > 0:  # skip the student's forward while the ramp is at 0
            adv = masked_adversarial(self.frozen_student(x), t, s.adv_tau)
            loss = loss + adv_weight * adv
        else:
            adv = torch.zeros((), device=ctx.device)
        self.update_generator(loss)
        return {"loss_g": loss.detach(), "g_entropy": ent.detach(), "g_onehot": oh.detach(),
                "g_bn": bn.detach(), "g_adv": adv.detach()}

    def confidence(self, t: torch.Tensor) -> torch.Tensor:
        """The generator's confidence term: CE(t, argmax t) (or CE(t, y) with class codes);
        with ``boundary``, its first share of samples asks for a top-2 tie instead."""
        s = self.settings
        if s.class_code:
            return onehot_ce(t, self.code_labels)
        tie = round(s.boundary * len(t))
        if not tie:
            return onehot_ce(t)
        return (tie * top2_tie_ce(t[:tie]) + (len(t) - tie) * onehot_ce(t[tie:])) / len(t)

    def student_loss(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.settings
        # Once at_until has taken the weight to 0, the term is skipped (and the teacher's
        # CUDA graph serves again): the loss is the same.
        attend = self.attention is not None and self.at_weight > 0
        st, t = self.student_teacher_logits(hooked=True) if attend else \
            self.student_teacher_logits()
        per_sample = s.weighting == "sample"
        kd = s.kd(st, t, per_sample)
        weight = self.self_paced_weight(kd)
        balance = 1.0 if self.class_share is None else self.class_weight(t.argmax(1))
        loss = (weight * balance * kd).mean()
        logs = {"kd": kd.detach().mean(), "sp_weight": weight.mean(),
                "sp_below_half": (weight < 0.5).float().mean()}
        if attend:
            at = self.attention.loss()
            loss = loss + self.at_weight * at
            logs["at"] = at.detach()
        self.student_steps += 1
        return loss, {"loss_s": loss.detach(), **logs}

    def class_weight(self, labels: torch.Tensor) -> torch.Tensor:
        """(1/K) / share of each sample's class, after the shares take in this batch (the
        labels of every rank, so that the shares are one state everywhere)."""
        seen = distributed.all_gather_cat(labels)
        share = torch.bincount(seen, minlength=len(self.class_share)).float() / len(seen)
        decay = self.settings.balance_decay
        self.class_share.mul_(decay).add_(share, alpha=1 - decay)
        return (1.0 / len(self.class_share)) / self.class_share.clamp_min(1e-3)[labels]

    @property
    def at_weight(self) -> float:
        """The attention-transfer weight of this epoch (``at_until``: a linear fall)."""
        s = self.settings
        if s.at_until is None:
            return s.at_weight
        return s.at_weight * max(0.0, 1.0 - self.epoch / (s.at_until * self.ctx.epochs))

    def status(self) -> dict[str, float]:
        out = {"lambda": self.lam, "adv_weight": self.adv_weight}
        if self.attention is not None:
            out["at_weight"] = self.at_weight
        if self.quantile is not None:
            out["q"] = self.quantile.q(self.epoch)
        return out

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "student_steps": self.student_steps}
        if self.quantile is not None:
            state["quantile"] = self.quantile.state_dict()
        if self.replay is not None:
            state["replay"] = self.replay.state_dict()
        if self.class_share is not None:
            state["class_share"] = self.class_share.clone()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.student_steps = int(state["student_steps"])
        if self.quantile is not None:
            self.quantile.load_state_dict(state["quantile"], self.ctx.device)
        if self.replay is not None:
            self.replay.load_state_dict(state["replay"], self.ctx.device)
        if self.class_share is not None:
            self.class_share.copy_(state["class_share"])
