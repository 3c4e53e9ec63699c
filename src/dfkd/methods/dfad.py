"""DFAD: Data-Free Adversarial Distillation (Fang et al., 2019).

A min-max game on the mean absolute error between the logits of T and S:
    G maximises  L = E_z[ (1/K) ||T(G(z)) - S(G(z))||_1 ]    (loss_g = -L)
    S minimises  L on fresh samples from G in eval mode.
The paper alternates 1 generator step with 5 student steps (``g_steps``/``kd_steps``
in the run config). During the generator step S is in eval mode and its weights get
no gradient, so the step neither moves S nor its BatchNorm statistics.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dfkd.losses import kd_l1
from dfkd.methods import register_method
from dfkd.methods.base import GeneratorMethod, OfficialRecipes


@dataclass
class DFADSettings:
    """DFAD has no loss weights: the L1 discrepancy is both players' objective."""


@register_method
class DFAD(GeneratorMethod):
    name = "dfad"
    Settings = DFADSettings
    title = "DFAD"
    paper = ("Fang et al., *Data-Free Adversarial Distillation*, 2019 "
             "([arXiv:1912.11006](https://arxiv.org/abs/1912.11006))")
    code = ("[VainF/Data-Free-Adversarial-Distillation]"
            "(https://github.com/VainF/Data-Free-Adversarial-Distillation)")
    docs = "dfad.md"
    needs_bn = False
    # No CIFAR number is published for DFAD in the tables reproduced.
    official = (OfficialRecipes("dfad", "DFAD", column=6),)

    def generator_step(self) -> dict[str, torch.Tensor]:
        ctx = self.ctx
        with ctx.autocast():
            x = self.synthesize()
            t = ctx.teacher(x)
        st = self.frozen_student(x)
        gap = kd_l1(st, t)
        loss = -gap
        self.update_generator(loss)
        return {"loss_g": loss.detach(), "g_l1": gap.detach()}

    def student_loss(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        st, t = self.student_teacher_logits()
        loss = kd_l1(st, t)
        return loss, {"loss_s": loss.detach(), "kd": loss.detach()}
