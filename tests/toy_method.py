"""A method from outside dfkd's package: one file with one registered class, as the next
method's author writes it. tests/test_toy_method.py imports it in a Python of its own and
finds it wherever dfkd lists methods."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from dfkd.losses import kd_l1
from dfkd.methods import register_method
from dfkd.methods.base import GeneratorMethod, OfficialRecipes, Published
from dfkd.ranges import ranged


@dataclass
class ToySettings:
    w_adv: float = ranged(1.0, ge=0)   # how hard G seeks the samples S gets wrong


@register_method
class Toy(GeneratorMethod):
    """DFAD's game with a weight: G maximises w_adv times the L1 gap between the logits of T
    and S, and S minimises the gap."""

    name = "toy"
    Settings = ToySettings
    title = "Toy"
    paper = "none: a made-up method of dfkd's tests"
    code = "tests/toy_method.py"
    docs = "toy.md"
    official = (OfficialRecipes(
        "toy", "Toy-1", column=99,
        acc1={"c10_resnet34_resnet18": Published(12.34, "ljrprocc/DataFree README.md:L1")},
        folder=Path(__file__).with_name("toy_recipes")),)

    def generator_step(self) -> dict[str, torch.Tensor]:
        with self.ctx.autocast():
            x = self.synthesize()
            t = self.ctx.teacher(x)
        loss = -self.settings.w_adv * kd_l1(self.frozen_student(x), t)
        self.update_generator(loss)
        return {"loss_g": loss.detach()}

    def student_loss(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        st, t = self.student_teacher_logits()
        loss = kd_l1(st, t)
        return loss, {"loss_s": loss.detach()}
