"""CMI: Contrastive Model Inversion (Fang et al., IJCAI 2021).

Every round re-initialises the generator, draws a batch of latent codes z (learned
too) with random target classes y, and trains G and z with Adam for ``g_steps``:

    L = w_bn R_BN + w_ce CE(T(x), y) + w_adv L_adv + w_cr InfoNCE

with x = G(z), L_adv CuDFKD/CMI's masked adversarial KL (only on samples where S
agrees with T), and InfoNCE contrasting T's penultimate features of x and of a
shifted, flipped view x', both passed through a small projection head, against the
features of earlier rounds' samples (a bounded feature bank) as extra negatives.
The head persists across rounds and learns with the generator. The lowest-loss
batch of a round goes into the sample bank (and its features into the feature
bank); the student learns KD on the sample bank.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dfkd.errors import ConfigError
from dfkd.losses import info_nce, masked_adversarial
from dfkd.methods import register_method
from dfkd.methods.bank import BankMethod, SampleBank, jitter
from dfkd.methods.dafl import teacher_features


@dataclass
class CMISettings:
    w_bn: float = 1.0        # BatchNorm statistics term
    w_ce: float = 1.0        # CE to the target classes
    w_adv: float = 0.5       # masked adversarial term
    w_cr: float = 0.8        # contrastive (InfoNCE) term
    cr_tau: float = 0.2      # InfoNCE temperature
    adv_tau: float = 1.0     # temperature of the adversarial KL
    head_dim: int = 128      # projection head output
    negatives: int = 1024    # feature-bank rows drawn as extra negatives per step
    view_shift: int = 4      # pixel shift of the contrastive view
    jitter: int = 2          # random shift of the student's bank batches
    tau: float = 20.0        # KD temperature of the student step
    bank_size: int = 10240

    def validate(self) -> None:
        for name in ("cr_tau", "adv_tau", "tau"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"cmi.{name} must be > 0, got {getattr(self, name)}")
        for name in ("head_dim", "bank_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"cmi.{name} must be >= 1, got {getattr(self, name)}")


class ProjectionHead(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim_in, dim_in), nn.ReLU(inplace=True),
                                 nn.Linear(dim_in, dim_out))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features.float())


@register_method
class CMI(BankMethod):
    name = "cmi"
    Settings = CMISettings
    needs_bn = True

    def __init__(self, ctx, settings: CMISettings) -> None:
        super().__init__(ctx, settings)
        self.generator = ctx.make_generator()
        self.nz = self.generator.nz
        self.teacher_features = teacher_features(ctx.teacher)
        with torch.no_grad():
            probe = torch.zeros(2, *ctx.image_shape, device=ctx.device)
            dim = self.teacher_features(ctx.normalize(probe))[1].flatten(1).shape[1]
        self.head = ProjectionHead(dim, settings.head_dim).to(ctx.device)
        self.head_ddp = ctx.wrap(self.head)  # gradients averaged over ranks
        self.opt_head = torch.optim.Adam(self.head.parameters(), lr=ctx.generator.lr,
                                         betas=(0.5, 0.999))
        self.feature_bank = SampleBank(settings.bank_size)

    def start_synthesis(self) -> None:
        ctx = self.ctx
        self.generator.reset_parameters()
        self.z = torch.randn(ctx.batch_size, self.nz, device=ctx.device, requires_grad=True)
        self.targets = torch.randint(0, ctx.num_classes, (ctx.batch_size,), device=ctx.device)
        self.opt_g = torch.optim.Adam([*self.generator.parameters(), self.z],
                                      lr=ctx.generator.lr, betas=(0.5, 0.999))
        self.best_loss = torch.full((), float("inf"), device=ctx.device)
        self.best_images = self.best_features = None

    def generator_step(self) -> dict[str, torch.Tensor]:
        s, ctx = self.settings, self.ctx
        with ctx.autocast():
            images = self.generator(self.z)
            with self.bn_hook:
                t, feats = self.teacher_features(ctx.normalize(images))
                bn = self.bn_hook.loss()
            _, view_feats = self.teacher_features(ctx.normalize(jitter(images, s.view_shift)))
        feats, view_feats = feats.flatten(1).float(), view_feats.flatten(1).float()
        ce = F.cross_entropy(t.float(), self.targets)
        rows = [feats, view_feats]
        if len(self.feature_bank) and s.negatives > 0:
            rows.append(self.feature_bank.sample(s.negatives))
        # One call of the head (one DDP forward per backward): [x; x'; bank].
        projected = self.head_ddp(torch.cat(rows))
        n = len(feats)
        cr = info_nce(projected[:n], projected[n:2 * n], projected[2 * n:], s.cr_tau)
        loss = s.w_bn * bn + s.w_ce * ce + s.w_cr * cr
        terms = {"g_bn": bn.detach(), "g_ce": ce.detach(), "g_cr": cr.detach()}
        if s.w_adv > 0:
            adv = masked_adversarial(self.frozen_student(ctx.normalize(images)), t, s.adv_tau)
            loss = loss + s.w_adv * adv
            terms["g_adv"] = adv.detach()
        better = loss.detach() < self.best_loss
        self.best_loss = torch.where(better, loss.detach(), self.best_loss)
        if self.best_images is None:
            self.best_images, self.best_features = images.detach(), feats.detach()
        else:
            self.best_images = torch.where(better, images.detach(), self.best_images)
            self.best_features = torch.where(better, feats.detach(), self.best_features)
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_head.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        self.opt_head.step()
        return {"loss_g": loss.detach(), **terms}

    def end_synthesis(self) -> None:
        self.bank.add(self.best_images.float())
        self.feature_bank.add(self.best_features)
        self.z = self.opt_g = self.best_images = self.best_features = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "feature_bank": self.feature_bank.state_dict(),
                "head": self.head.state_dict(), "opt_head": self.opt_head.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.feature_bank.load_state_dict(state["feature_bank"], self.ctx.device)
        self.head.load_state_dict(state["head"])
        self.opt_head.load_state_dict(state["opt_head"])
