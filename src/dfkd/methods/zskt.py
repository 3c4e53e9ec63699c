"""ZSKT: Zero-shot Knowledge Transfer via Adversarial Belief Matching
(Micaelli & Storkey, NeurIPS 2019).

    G maximises  D(T || S)                                 (loss_g = -D)
    S minimises  D(T || S) + beta * sum_l mean((a_s^l - a_t^l)^2)
with a^l the L2-normalised spatial attention map of layer pair l (see
``dfkd.losses.attention_map``). The AT term takes the form of the released code,
which is what beta = 250 was tuned for (the paper writes an unsquared L2 norm).

D is the KL divergence as the released code computes it (polo5/ZeroShotKnowledgeTransfer,
solver.py ``divergence``, used by both ``KT_loss_generator`` and ``KT_loss_student``):
``F.kl_div(log_softmax(s / T), softmax(t / T))`` with PyTorch's default
``reduction='mean'``, i.e. the sum over the batch *and the classes* divided by B * K,
and no T^2 factor. That is ``kl_reduction: elementwise`` (the default). ``batch`` takes
T^2 * KL averaged over the batch only (``dfkd.losses.kd_kl``), K times larger, so
beta = 250 then weighs the attention term K times less than the original does. The
released code trains S with Adam (lr 2e-3), which does not see the loss's overall
scale; this harness's SGD does, so with ``elementwise`` the KD step is K times smaller
at a given learning rate than with ``batch``.

Layer pairs: ``teacher_layers``/``student_layers`` name modules whose outputs are
compared. Left unset, the ends of the stages of equal spatial size are paired
(:mod:`dfkd.attention`): ``layer1..4`` of a ResNet; ``block1..3`` of a WRN, the group
outputs before the next group's BN-ReLU, as the released code's ``activation1..3``
(models/wresnet.py); ``bn1``/``bn2`` of LeNet-5, the normalised conv outputs before the
ReLU, where the released LeNet takes its conv outputs. The released code has no ResNet;
``layer1..4`` are the group outputs that attention transfer (Zagoruyko & Komodakis) uses on
ResNets. When the two models share no stage size, the term is skipped with one warning and
the run goes on. ``beta: 0`` turns attention transfer off (no probe, no hooks, no warning).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from dfkd.attention import AttentionPairs, check_layer_pairs
from dfkd.losses import kd_kl
from dfkd.methods import register_method
from dfkd.methods.base import GeneratorMethod, OfficialRecipes, Published, warn
from dfkd.ranges import ranged


@dataclass
class ZSKTSettings:
    """``beta``: the attention-transfer weight; 0 turns the term off (KL only).
    ``teacher_layers``/``student_layers``: the module names to pair, both or neither; unset,
    the stage ends of equal spatial size are paired (see the module doc), and with none
    the term is skipped with one warning."""

    beta: float = ranged(250.0, ge=0)        # attention-transfer weight (0: off, KL only)
    tau: float = ranged(1.0, gt=0)           # KL temperature (the paper uses 1)
    kl_reduction: Literal["elementwise", "batch"] = "elementwise"  # see the module doc
    clip_g: float = ranged(5.0, ge=0)        # generator gradient-norm clip (0: none)
    teacher_layers: list[str] | None = None  # None: found automatically (see above)
    student_layers: list[str] | None = None  # ... and the student's, as many

    def validate(self) -> None:
        check_layer_pairs(self.teacher_layers, self.student_layers,
                          ("zskt.teacher_layers", "zskt.student_layers"), self.beta,
                          off="zskt.beta")


def divergence(student: torch.Tensor, teacher: torch.Tensor, tau: float,
               reduction: str = "elementwise") -> torch.Tensor:
    """KL(softmax(t/tau) || softmax(s/tau)): ``elementwise`` as the released code's
    ``F.kl_div`` default (mean over batch x classes, no tau^2); ``batch``: tau^2 * the
    batch mean (``dfkd.losses.kd_kl``)."""
    if reduction == "batch":
        return kd_kl(student, teacher, tau)
    log_p_s = F.log_softmax(student.float() / tau, dim=1)
    log_p_t = F.log_softmax(teacher.float() / tau, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).mean()


@register_method
class ZSKT(GeneratorMethod):
    name = "zskt"
    Settings = ZSKTSettings
    title = "ZSKT"
    paper = ("Micaelli & Storkey, *Zero-shot Knowledge Transfer via Adversarial Belief "
             "Matching*, NeurIPS 2019 ([arXiv:1905.09768](https://arxiv.org/abs/1905.09768))")
    code = "[polo5/ZeroShotKnowledgeTransfer](https://github.com/polo5/ZeroShotKnowledgeTransfer)"
    docs = "zskt.md"
    needs_bn = False
    reads_layers = "its stage ends (attention transfer)"
    # Hours: Fast-Datafree's README, its ZSKT row.
    official = (OfficialRecipes(
        "zskt", "ZSKT", column=2,
        acc1={
            "c10_resnet34_resnet18": Published(93.32, "ljrprocc/DataFree README.md:L28"),
            "c10_wrn40_2_wrn16_1": Published(83.74, "ljrprocc/DataFree README.md:L28"),
            "c10_wrn40_2_wrn40_1": Published(86.07, "ljrprocc/DataFree README.md:L28"),
            "c100_resnet34_resnet18": Published(67.74, "ljrprocc/DataFree README.md:L55"),
            "c100_wrn40_2_wrn16_2": Published(28.44, "ljrprocc/DataFree README.md:L55"),
        },
        hours={
            "c10_resnet34_resnet18": Published(1.67, "zju-vipa/Fast-Datafree README.md:L33"),
            "c10_wrn40_2_wrn16_1": Published(0.87, "zju-vipa/Fast-Datafree README.md:L33"),
            "c10_wrn40_2_wrn40_1": Published(0.87, "zju-vipa/Fast-Datafree README.md:L33"),
            "c100_resnet34_resnet18": Published(1.67, "zju-vipa/Fast-Datafree README.md:L48"),
            "c100_wrn40_2_wrn16_2": Published(0.87, "zju-vipa/Fast-Datafree README.md:L48"),
        }),)

    def __init__(self, ctx, settings: ZSKTSettings) -> None:
        super().__init__(ctx, settings)
        s = settings
        attention = AttentionPairs(ctx, s.teacher_layers, s.student_layers,
                                   ("zskt.teacher_layers", "zskt.student_layers"),
                                   off="zskt.beta=0") if s.beta > 0 else None
        if attention is not None and attention.skipped:
            warn(attention.skipped)
        # No pair found (the warning said so): the term is skipped, KL only.
        self.attention = attention if attention is not None and attention.layers else None
        self.layers = [] if self.attention is None else self.attention.layers

    def _forget(self) -> None:
        if self.attention is not None:
            self.attention.forget()

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self._forget()

    def generator_step(self) -> dict[str, torch.Tensor]:
        s, ctx = self.settings, self.ctx
        with ctx.autocast():
            x = self.synthesize()
            t = ctx.teacher(x)
        st = self.frozen_student(x)
        self._forget()
        kl = divergence(st, t, s.tau, s.kl_reduction)
        loss = -kl
        self.update_generator(loss, clip=s.clip_g)
        return {"loss_g": loss.detach(), "g_kl": kl.detach()}

    def student_loss(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.settings
        st, t = self.student_teacher_logits(hooked=self.attention is not None)
        kd = divergence(st, t, s.tau, s.kl_reduction)
        at = self.attention.loss() if self.attention is not None else \
            torch.zeros((), device=self.ctx.device)
        loss = kd + s.beta * at
        return loss, {"loss_s": loss.detach(), "kd": kd.detach(), "at": at.detach()}
