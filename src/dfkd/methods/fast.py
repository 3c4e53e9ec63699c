"""Fast / FastMeta: Up to 100x Faster Data-Free Knowledge Distillation
(Fang et al., AAAI 2022), as in the authors' code (zju-vipa/Fast-Datafree,
``datafree/synthesis/fast_meta.py`` and ``scripts/fast_cifar.sh``).

Like CMI, each round synthesises a fresh batch into a sample bank and the student
learns KD on the bank; unlike CMI, the round's generator starts from a
meta-learned initialisation G_meta and takes only a few steps (``g_steps`` 2 to 10):

    G_fast <- G_meta
    g_steps x Adam on (G_fast, z):  L = w_bn R_BN(x') + w_ce CE(T(x'), y) + w_adv L_adv(x')
    bank <- the round's lowest-loss batch G_fast(z)
    meta step: Adam on G_meta, lr = meta_lr (0: generator.lr x g_steps, the original's)
        fomaml (default, the scripts' is_maml 1): gradient = sum over the round's steps
               of G_fast's gradients
        reptile: gradient = G_meta - G_fast

x' is G_fast(z) zero-padded by ``padding`` pixels, randomly cropped back and flipped,
per sample (the original's kornia RandomCrop + RandomHorizontalFlip). L_adv is the
masked adversarial KL (only samples where S agrees with T).

R_BN with ``bn_mmt`` m > 0 matches the teacher's running statistics against a blend
of this step's batch statistics with a running average over earlier rounds:
||mu_T - ((1 - m) mu + m mu_run)|| + ||var_T - ((1 - m) var + m var_run)||, where
after each round (mu_run, var_run) <- m (mu_run, var_run) + (1 - m) (mu, var) of the
round's last step (the first round's stats are taken as they are). m = 0 is plain R_BN.

Schedule: during the first ``warmup`` epochs the bank fills and G_meta learns, with no
adversarial term and no student step. With ``reset_l0``, G_meta's latent projection
and first BatchNorm are re-drawn once, at the start of epoch ``warmup +
reset_l0_epoch`` (1-based; the original's synthesis call 120 + warmup, one call per
epoch), and meta-learned again afterwards.

Under torchrun the meta gradient and the BN running averages are averaged over ranks,
so G_meta and the BN term stay identical everywhere.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from dfkd import distributed
from dfkd.augment import random_crop_flip
from dfkd.bank import LowestLoss
from dfkd.hooks import BNStatsHook, MomentumBNHook, NoBNStats
from dfkd.losses import masked_adversarial
from dfkd.methods import register_method
from dfkd.methods.base import BankMethod, OfficialRecipes, Published
from dfkd.ranges import ranged


@dataclass
class FastSettings:
    w_bn: float = 10.0       # BatchNorm statistics term (0: off, e.g. no BN)
    w_ce: float = 0.5        # CE to the target classes
    w_adv: float = 1.0       # masked adversarial term
    adv_tau: float = ranged(1.0, gt=0)   # temperature of the adversarial KL
    lr_z: float = ranged(0.015, gt=0)    # Adam on the latent codes (G_fast uses generator.lr)
    meta: Literal["fomaml", "reptile"] = "fomaml"  # meta gradient (the scripts' is_maml 1)
    meta_lr: float = ranged(0.0, ge=0)   # Adam of G_meta; 0 = generator.lr x g_steps (original)
    reset_l0: bool = True    # re-draw G_meta's latent projection and first BN once
    reset_l0_epoch: int = ranged(120, ge=1)  # ... at this epoch after the warm-up (1-based)
    warmup: int = ranged(20, ge=0)  # epochs of synthesis only: no student step, no L_adv
    bn_mmt: float = ranged(0.9, ge=0, lt=1)  # momentum of the BN statistics across rounds; 0 = off
    padding: int = ranged(4, ge=0)   # synthesis view and student batches: zero pad + random crop
    flip: bool = True        # ... and random horizontal flip, per sample
    tau: float = ranged(20.0, gt=0)  # KD temperature of the student step
    bank_size: int = ranged(0, ge=0)  # 0 keeps every batch (the original's image pool)


def reset_first_layers(generator: nn.Module) -> None:
    """The original's reset_l0: the latent projection and the first BatchNorm get weights
    ~ N(0, 0.02) and zero biases (the BN's gamma too, exactly as the original does)."""
    first_bn = next(m for m in generator.modules() if isinstance(m, nn.BatchNorm2d))
    for module in (generator.project, first_bn):
        nn.init.normal_(module.weight, 0.0, 0.02)
        nn.init.zeros_(module.bias)


@register_method
class Fast(BankMethod):
    name = "fast"
    Settings = FastSettings
    title = "Fast"
    paper = ("Fang et al., *Up to 100x Faster Data-free Knowledge Distillation*, AAAI 2022 "
             "([arXiv:2112.06253](https://arxiv.org/abs/2112.06253))")
    code = "[zju-vipa/Fast-Datafree](https://github.com/zju-vipa/Fast-Datafree)"
    docs = "fast.md"
    needs_bn = True
    # Fast-N takes N synthesis steps per round (g_steps); all numbers: Fast-Datafree's README.
    official = (
        OfficialRecipes("fast", "Fast-2", column=7, acc1={
            "c10_resnet34_resnet18": Published(92.62, "zju-vipa/Fast-Datafree README.md:L35"),
            "c10_wrn40_2_wrn16_1": Published(88.36, "zju-vipa/Fast-Datafree README.md:L35"),
            "c10_wrn40_2_wrn40_1": Published(89.56, "zju-vipa/Fast-Datafree README.md:L35"),
            "c100_resnet34_resnet18": Published(69.76, "zju-vipa/Fast-Datafree README.md:L50"),
            "c100_wrn40_2_wrn16_2": Published(57.08, "zju-vipa/Fast-Datafree README.md:L50"),
        }, hours={
            "c10_resnet34_resnet18": Published(0.06, "zju-vipa/Fast-Datafree README.md:L35"),
            "c10_wrn40_2_wrn16_1": Published(0.03, "zju-vipa/Fast-Datafree README.md:L35"),
            "c10_wrn40_2_wrn40_1": Published(0.03, "zju-vipa/Fast-Datafree README.md:L35"),
            "c100_resnet34_resnet18": Published(0.06, "zju-vipa/Fast-Datafree README.md:L50"),
            "c100_wrn40_2_wrn16_2": Published(0.04, "zju-vipa/Fast-Datafree README.md:L50"),
        }),
        OfficialRecipes("fast5", "Fast-5", column=8, acc1={
            "c10_resnet34_resnet18": Published(93.63, "zju-vipa/Fast-Datafree README.md:L36"),
            "c10_wrn40_2_wrn16_1": Published(88.9, "zju-vipa/Fast-Datafree README.md:L36"),
            "c10_wrn40_2_wrn40_1": Published(92.04, "zju-vipa/Fast-Datafree README.md:L36"),
            "c100_resnet34_resnet18": Published(72.82, "zju-vipa/Fast-Datafree README.md:L51"),
            "c100_wrn40_2_wrn16_2": Published(63.83, "zju-vipa/Fast-Datafree README.md:L51"),
        }, hours={
            "c10_resnet34_resnet18": Published(0.14, "zju-vipa/Fast-Datafree README.md:L36"),
            "c10_wrn40_2_wrn16_1": Published(0.08, "zju-vipa/Fast-Datafree README.md:L36"),
            "c10_wrn40_2_wrn40_1": Published(0.09, "zju-vipa/Fast-Datafree README.md:L36"),
            "c100_resnet34_resnet18": Published(0.14, "zju-vipa/Fast-Datafree README.md:L51"),
            "c100_wrn40_2_wrn16_2": Published(0.08, "zju-vipa/Fast-Datafree README.md:L51"),
        }),
        OfficialRecipes("fast10", "Fast-10", column=9, acc1={
            "c10_resnet34_resnet18": Published(94.05, "zju-vipa/Fast-Datafree README.md:L37"),
            "c10_wrn40_2_wrn16_1": Published(89.29, "zju-vipa/Fast-Datafree README.md:L37"),
            "c10_wrn40_2_wrn40_1": Published(92.51, "zju-vipa/Fast-Datafree README.md:L37"),
            "c100_resnet34_resnet18": Published(74.34, "zju-vipa/Fast-Datafree README.md:L52"),
            "c100_wrn40_2_wrn16_2": Published(65.12, "zju-vipa/Fast-Datafree README.md:L52"),
        }, hours={
            "c10_resnet34_resnet18": Published(0.28, "zju-vipa/Fast-Datafree README.md:L37"),
            "c10_wrn40_2_wrn16_1": Published(0.15, "zju-vipa/Fast-Datafree README.md:L37"),
            "c10_wrn40_2_wrn40_1": Published(0.17, "zju-vipa/Fast-Datafree README.md:L37"),
            "c100_resnet34_resnet18": Published(0.27, "zju-vipa/Fast-Datafree README.md:L52"),
            "c100_wrn40_2_wrn16_2": Published(0.17, "zju-vipa/Fast-Datafree README.md:L52"),
        }),
    )

    def __init__(self, ctx, settings: FastSettings) -> None:
        super().__init__(ctx, settings)
        self.meta = ctx.make_generator()
        self.nz = self.meta.nz
        # The lr is set before each meta step: meta_lr, or generator.lr x the round's steps.
        self.opt_meta = torch.optim.Adam(self.meta.parameters(), lr=settings.meta_lr or 1.0,
                                         betas=(0.5, 0.999))
        self.fast = copy.deepcopy(self.meta)
        self.l0_reset_done = False

    def make_bn_hook(self) -> BNStatsHook | NoBNStats:
        if not self.uses_bn(self.settings):
            return NoBNStats(self.ctx.device)
        return MomentumBNHook(self.ctx.teacher, self.settings.bn_mmt)

    @property
    def warmup_epochs(self) -> int:
        return self.settings.warmup

    def in_warmup(self) -> bool:
        return self.epoch < self.warmup_epochs

    def start_synthesis(self) -> None:
        ctx, s = self.ctx, self.settings
        # 0-based epoch warmup + reset_l0_epoch - 1 is the original's ep == 120 + warmup.
        if s.reset_l0 and not self.l0_reset_done \
                and self.epoch >= s.warmup + s.reset_l0_epoch - 1:
            reset_first_layers(self.meta)
            self.l0_reset_done = True
        self.fast.load_state_dict(self.meta.state_dict())
        self.z = torch.randn(ctx.batch_size, self.nz, device=ctx.device, requires_grad=True)
        self.targets = torch.randint(0, ctx.num_classes, (ctx.batch_size,), device=ctx.device)
        self.opt_fast = torch.optim.Adam(
            [{"params": self.fast.parameters()}, {"params": [self.z], "lr": s.lr_z}],
            lr=ctx.generator.lr, betas=(0.5, 0.999))
        self.meta_grads = [torch.zeros_like(p) for p in self.meta.parameters()] \
            if s.meta == "fomaml" else None
        self.steps = 0
        self.best = LowestLoss(ctx.device)

    def generator_step(self) -> dict[str, torch.Tensor]:
        s, ctx = self.settings, self.ctx
        with ctx.autocast():
            images = self.fast(self.z)
            x = ctx.normalize(random_crop_flip(images, s.padding, s.flip))
            with self.bn_hook:
                t = ctx.teacher(x)
                bn = self.bn_hook.loss()
        ce = F.cross_entropy(t.float(), self.targets)
        loss = s.w_bn * bn + s.w_ce * ce
        terms = {"g_bn": bn.detach(), "g_ce": ce.detach()}
        if s.w_adv > 0 and not self.in_warmup():
            adv = masked_adversarial(self.frozen_student(x), t, s.adv_tau)
            loss = loss + s.w_adv * adv
            terms["g_adv"] = adv.detach()
        self.best.offer(loss, images)   # the round's lowest-loss batch
        self.opt_fast.zero_grad(set_to_none=True)
        loss.backward()
        if self.meta_grads is not None:  # first-order MAML: G_fast's gradient at this step
            for acc, p in zip(self.meta_grads, self.fast.parameters()):
                if p.grad is not None:
                    acc.add_(p.grad)
        self.opt_fast.step()
        self.steps += 1
        return {"loss_g": loss.detach(), **terms}

    def end_synthesis(self) -> None:
        s = self.settings
        self.bank.add(self.best.kept[0].float())
        if s.bn_mmt > 0:
            self.bn_hook.update()
        if self.meta_grads is not None:
            grads = self.meta_grads
        else:  # Reptile: move G_meta towards the weights the round's steps reached
            grads = [pm.detach() - pf.detach()
                     for pm, pf in zip(self.meta.parameters(), self.fast.parameters())]
        flat = distributed.all_reduce_mean(torch.cat([g.flatten() for g in grads]))
        self.opt_meta.zero_grad(set_to_none=True)
        offset = 0
        for pm in self.meta.parameters():
            pm.grad = flat[offset: offset + pm.numel()].view_as(pm).clone()
            offset += pm.numel()
        for group in self.opt_meta.param_groups:
            group["lr"] = s.meta_lr or self.ctx.generator.lr * self.steps
        self.opt_meta.step()
        self.z = self.opt_fast = self.best = self.meta_grads = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "meta": self.meta.state_dict(),
                "opt_meta": self.opt_meta.state_dict(), "l0_reset_done": self.l0_reset_done,
                "bn_momentum": self.bn_hook.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.meta.load_state_dict(state["meta"])
        self.opt_meta.load_state_dict(state["opt_meta"])
        self.l0_reset_done = state["l0_reset_done"]
        self.bn_hook.load_state_dict(state["bn_momentum"], self.ctx.device)
