"""Fast / FastMeta: Up to 100x Faster Data-Free Knowledge Distillation
(Fang et al., AAAI 2022).

Like CMI, each round synthesises a fresh batch into a sample bank and the student
learns KD on the bank; unlike CMI, the round's generator starts from a
meta-learned initialisation and takes only a few steps (``g_steps`` 2 to 10):

    G_fast <- G_meta (with its first, latent-projection layer re-drawn if reset_l0)
    g_steps x Adam on (G_fast, z):  L = w_bn R_BN + w_ce CE(T(x), y) + w_adv L_adv
    bank <- the last batch G_fast(z)
    Reptile: G_meta <- Adam step along (G_meta - G_fast)

L_adv is the masked adversarial KL (only samples where S agrees with T). Under
torchrun the Reptile direction is averaged over ranks, so G_meta stays identical.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dfkd import distributed
from dfkd.errors import ConfigError
from dfkd.losses import masked_adversarial
from dfkd.methods import register_method
from dfkd.methods.bank import BankMethod


@dataclass
class FastSettings:
    w_bn: float = 10.0       # BatchNorm statistics term
    w_ce: float = 0.5        # CE to the target classes
    w_adv: float = 1.0       # masked adversarial term
    adv_tau: float = 1.0     # temperature of the adversarial KL
    lr_z: float = 0.015      # Adam on the latent codes (G_fast uses generator.lr)
    meta_lr: float = 0.005   # Adam of the Reptile update of G_meta
    reset_l0: bool = True    # re-draw G_fast's latent projection every round
    jitter: int = 2          # random shift of the student's bank batches
    tau: float = 20.0        # KD temperature of the student step
    bank_size: int = 10240

    def validate(self) -> None:
        for name in ("adv_tau", "lr_z", "meta_lr", "tau"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"fast.{name} must be > 0, got {getattr(self, name)}")
        if self.bank_size < 1:
            raise ConfigError(f"fast.bank_size must be >= 1, got {self.bank_size}")


@register_method
class Fast(BankMethod):
    name = "fast"
    Settings = FastSettings
    needs_bn = True

    def __init__(self, ctx, settings: FastSettings) -> None:
        super().__init__(ctx, settings)
        self.meta = ctx.make_generator()
        self.nz = self.meta.nz
        self.opt_meta = torch.optim.Adam(self.meta.parameters(), lr=settings.meta_lr,
                                         betas=(0.5, 0.999))
        self.fast = copy.deepcopy(self.meta)

    def start_synthesis(self) -> None:
        ctx, s = self.ctx, self.settings
        self.fast.load_state_dict(self.meta.state_dict())
        if s.reset_l0:
            torch.nn.init.normal_(self.fast.project.weight, 0.0, 0.02)
            torch.nn.init.zeros_(self.fast.project.bias)
        self.z = torch.randn(ctx.batch_size, self.nz, device=ctx.device, requires_grad=True)
        self.targets = torch.randint(0, ctx.num_classes, (ctx.batch_size,), device=ctx.device)
        self.opt_fast = torch.optim.Adam(
            [{"params": self.fast.parameters()}, {"params": [self.z], "lr": s.lr_z}],
            lr=ctx.generator.lr, betas=(0.5, 0.999))

    def generator_step(self) -> dict[str, torch.Tensor]:
        s, ctx = self.settings, self.ctx
        with ctx.autocast():
            images = self.fast(self.z)
            x = ctx.normalize(images)
            with self.bn_hook:
                t = ctx.teacher(x)
                bn = self.bn_hook.loss()
        ce = F.cross_entropy(t.float(), self.targets)
        loss = s.w_bn * bn + s.w_ce * ce
        terms = {"g_bn": bn.detach(), "g_ce": ce.detach()}
        if s.w_adv > 0:
            adv = masked_adversarial(self.frozen_student(x), t, s.adv_tau)
            loss = loss + s.w_adv * adv
            terms["g_adv"] = adv.detach()
        self.last_images = images.detach()
        self.opt_fast.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_fast.step()
        return {"loss_g": loss.detach(), **terms}

    def end_synthesis(self) -> None:
        self.bank.add(self.last_images.float())
        # Reptile: move G_meta towards the weights the round's steps reached. A re-drawn
        # latent projection is not learned by G_meta (it is re-drawn every round anyway).
        pairs = [(pm, pf) for (name, pm), pf in zip(self.meta.named_parameters(),
                                                    self.fast.parameters())
                 if not (self.settings.reset_l0 and name.startswith("project."))]
        delta = torch.cat([(pm.detach() - pf.detach()).flatten() for pm, pf in pairs])
        delta = distributed.all_reduce_mean(delta)
        self.opt_meta.zero_grad(set_to_none=True)
        offset = 0
        for pm, _ in pairs:
            pm.grad = delta[offset: offset + pm.numel()].view_as(pm).clone()
            offset += pm.numel()
        self.opt_meta.step()
        self.z = self.opt_fast = self.last_images = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "meta": self.meta.state_dict(),
                "opt_meta": self.opt_meta.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.meta.load_state_dict(state["meta"])
        self.opt_meta.load_state_dict(state["opt_meta"])
