"""CuDFKD: dynamic DFKD with an easy-to-hard curriculum (Li et al., Inf. Sci. 2023).

Generator step (one generator for the whole run, no bank):
    L_G = w_ent H(p_bar) + w_oh CE(t, argmax t) + w_bn L_bn + w_adv(e) L_adv
Student step, on fresh samples from G in eval mode:
    l = KD(s, t);  v = v*(l; lambda_k);  minimise v * l
with lambda_k = lambda_0 + pace * k and w_adv growing by grad_adv after each 0-based
epoch e with floor(E begin) < e < floor(E end). ``curriculum: none`` (the ablation) sets
v = 1 and stops the ramp: w_adv stays at its constant w_adv0, as in the official code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from dfkd import curriculum as cur
from dfkd.errors import ConfigError
from dfkd.losses import entropy_of_mean, kd_kl, kd_l1, masked_adversarial, onehot_ce
from dfkd.methods import register_method
from dfkd.methods.base import GeneratorMethod


@dataclass
class CuDFKDSettings:
    tau: float = 20.0          # temperature of H(p_bar) and of the KL KD loss
    w_ent: float = -20.0       # negative: generation maximises class balance
    w_oh: float = 1.0
    w_bn: float = 1.0
    w_adv0: float = 0.0
    grad_adv: float = 0.5      # added to w_adv after each epoch e, E*begin < e < E*end
    begin: float = 0.25
    end: float = 0.75
    adv_tau: float = 3.0       # temperature of the masked adversarial KL
    lambda_0: float = 2.0      # pace: lambda_k = lambda_0 + pace * k
    pace: float = 1e-4
    kd_loss: Literal["l1", "kl"] = "l1"
    curriculum: Literal["none", "hard", "soft", "log"] = "log"
    # batch: one weight for the batch-mean loss (official code);
    # sample: one weight per sample (the paper's self-paced framing)
    weighting: Literal["batch", "sample"] = "batch"

    def validate(self) -> None:
        if not 0.0 <= self.begin <= self.end <= 1.0:
            raise ConfigError(f"cudfkd.begin/end must satisfy 0 <= begin <= end <= 1, got "
                              f"{self.begin}/{self.end}")
        if self.tau <= 0 or self.adv_tau <= 0:
            raise ConfigError("cudfkd.tau and cudfkd.adv_tau must be > 0")
        if self.curriculum != "none" and self.lambda_0 <= 0:
            raise ConfigError(f"cudfkd.lambda_0 must be > 0, got {self.lambda_0}")


@register_method
class CuDFKD(GeneratorMethod):
    name = "cudfkd"
    Settings = CuDFKDSettings
    needs_bn = True

    def __init__(self, ctx, settings: CuDFKDSettings) -> None:
        super().__init__(ctx, settings)
        s = settings
        self.pace = cur.Pace(s.lambda_0, s.pace)
        self.ramp = cur.AdversarialRamp(s.w_adv0, s.grad_adv, s.begin, s.end, ctx.epochs)
        self.student_steps = 0   # k in lambda_k

    @property
    def adv_weight(self) -> float:
        # The ablation stops the ramp but keeps the constant term (official code).
        s = self.settings
        return s.w_adv0 if s.curriculum == "none" else self.ramp(self.epoch)

    @property
    def lam(self) -> float:
        return self.pace(self.student_steps)

    def generator_step(self) -> dict[str, torch.Tensor]:
        s, ctx = self.settings, self.ctx
        adv_weight = self.adv_weight
        x, t, bn = self.teacher_with_bn()
        ent = entropy_of_mean(t, s.tau)
        oh = onehot_ce(t)
        loss = s.w_ent * ent + s.w_oh * oh + s.w_bn * bn
        if adv_weight > 0:  # skip the student's forward while the ramp is at 0
            adv = masked_adversarial(self.frozen_student(x), t, s.adv_tau)
            loss = loss + adv_weight * adv
        else:
            adv = torch.zeros((), device=ctx.device)
        self.update_generator(loss)
        return {"loss_g": loss.detach(), "g_entropy": ent.detach(), "g_onehot": oh.detach(),
                "g_bn": bn.detach(), "g_adv": adv.detach()}

    def student_loss(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.settings
        st, t = self.student_teacher_logits()
        per_sample = s.weighting == "sample"
        kd = kd_l1(st, t, per_sample) if s.kd_loss == "l1" else kd_kl(st, t, s.tau, per_sample)
        if s.curriculum == "none":
            weight = torch.ones_like(kd)
        else:
            weight = cur.v_star(kd.detach(), self.lam, s.curriculum)
        loss = (weight * kd).mean()
        self.student_steps += 1
        return loss, {"loss_s": loss.detach(), "kd": kd.detach().mean(),
                      "sp_weight": weight.mean()}

    def status(self) -> dict[str, float]:
        return {"lambda": self.lam, "adv_weight": self.adv_weight}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "student_steps": self.student_steps}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.student_steps = int(state["student_steps"])
