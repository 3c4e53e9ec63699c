"""DFQ: Data-Free Network Quantization With Adversarial Knowledge Distillation
(Choi et al., CVPR-W 2020), in the form of the common DFKD benchmarks.

Generator step:
    L_G = w_bn L_bn + w_ce CE(t, y) - w_adv KL_tau(T || S),   y ~ U{0..K-1} per sample
Student step, on fresh samples from G in eval mode: KL_tau(T || S).

The paper's auxiliary loss asks for confident samples (low instance entropy) of
balanced classes (high batch entropy) besides the BN statistics; CE to uniformly
sampled targets asks for both at once and is how the CMI/Fast benchmark code runs
DFQ (there with bn = oh = adv = 1 and T = 1, the defaults here). The generator stays
unconditional: the targets act only through the loss, and are drawn afresh each step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dfkd.errors import ConfigError
from dfkd.losses import kd_kl
from dfkd.methods import register_method
from dfkd.methods.base import GeneratorMethod


@dataclass
class DFQSettings:
    w_bn: float = 1.0     # BatchNorm statistics term
    w_ce: float = 1.0     # CE to the sampled target classes
    w_adv: float = 1.0    # adversarial term: G maximises KL(T || S)
    tau: float = 1.0      # temperature of both KL terms

    def validate(self) -> None:
        if self.tau <= 0:
            raise ConfigError(f"dfq.tau must be > 0, got {self.tau}")


@register_method
class DFQ(GeneratorMethod):
    name = "dfq"
    Settings = DFQSettings
    needs_bn = True

    def generator_step(self) -> dict[str, torch.Tensor]:
        s, ctx = self.settings, self.ctx
        x, t, bn = self.teacher_with_bn()
        targets = torch.randint(0, ctx.num_classes, (x.shape[0],), device=ctx.device)
        ce = F.cross_entropy(t.float(), targets)
        loss = s.w_bn * bn + s.w_ce * ce
        if s.w_adv > 0:
            adv = -kd_kl(self.frozen_student(x), t, s.tau)
            loss = loss + s.w_adv * adv
        else:
            adv = torch.zeros((), device=ctx.device)
        self.update_generator(loss)
        return {"loss_g": loss.detach(), "g_bn": bn.detach(), "g_ce": ce.detach(),
                "g_adv": adv.detach()}

    def student_loss(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        st, t = self.student_teacher_logits()
        loss = kd_kl(st, t, self.settings.tau)
        return loss, {"loss_s": loss.detach(), "kd": loss.detach()}
