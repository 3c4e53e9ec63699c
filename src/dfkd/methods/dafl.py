"""DAFL: Data-Free Learning of Student Networks (Chen et al., ICCV 2019).

Generator step, against the teacher alone (no student term, no BN statistics):
    L_G = w_oh CE(t, argmax t) - w_act mean|f_T| - w_ent H(p_bar)
with f_T the teacher's penultimate features and p_bar the batch-mean prediction.
Student step, on fresh samples from G in eval mode: KL(T || S) at temperature tau.

The released code's KD loss is KL at T = 1 (batch mean), its activation term is
``f.abs().mean()`` and its entropy is in log10 units; here the entropy is in nats
with the paper's weight 5 (the code's choice is w_ent = 5 / ln 10 = 2.17 here).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from dfkd.errors import DfkdError
from dfkd.frozen_teacher import user_model
from dfkd.hooks import ForwardHooks
from dfkd.losses import activation_l1, entropy_of_mean, kd_kl, onehot_ce
from dfkd.methods import register_method
from dfkd.methods.base import GeneratorMethod, OfficialRecipes, Published
from dfkd.ranges import ranged

FeatureFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class DAFLSettings:
    w_oh: float = 1.0      # one-hot CE on the teacher's own argmax
    w_act: float = 0.1     # activation term (the paper's alpha)
    w_ent: float = 5.0     # information-entropy term (the paper's beta)
    tau: float = ranged(1.0, gt=0)  # KD temperature (the released code uses plain KL, T = 1)


def teacher_features(model: nn.Module) -> FeatureFn:
    """``x -> (logits, penultimate features)`` for any classifier.

    dfkd models take ``return_features=True``; for another module the input of its
    last ``nn.Linear`` (in registration order, normally the classifier) is read by a
    forward pre-hook that stays registered for the run.
    """
    try:
        forward = user_model(model).forward
        takes_flag = "return_features" in inspect.signature(forward).parameters
    except (TypeError, ValueError):
        takes_flag = False
    if takes_flag:
        return lambda x: model(x, return_features=True)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise DfkdError("dafl needs the teacher's penultimate features: give the teacher a "
                        "forward(x, return_features=False) or an nn.Linear classifier")
    seen: dict[str, torch.Tensor] = {}
    ForwardHooks(linears[-1:], lambda _m, inputs: seen.__setitem__("f", inputs[0]), pre=True)

    def call(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return logits, seen.pop("f").flatten(1)

    return call


@register_method
class DAFL(GeneratorMethod):
    name = "dafl"
    Settings = DAFLSettings
    title = "DAFL"
    paper = ("Chen et al., *Data-Free Learning of Student Networks*, ICCV 2019 "
             "([arXiv:1904.01186](https://arxiv.org/abs/1904.01186))")
    code = ("[huawei-noah/Efficient-Computing](https://github.com/huawei-noah/Efficient-Computing)"
            " (Data-Efficient-Model-Compression/DAFL)")
    docs = "dafl.md"
    needs_bn = False
    reads_layers = "its penultimate features (the classifier's input)"
    # Hours: Fast-Datafree's README, its DAFL row.
    official = (OfficialRecipes(
        "dafl", "DAFL", column=1,
        acc1={
            "c10_resnet34_resnet18": Published(92.22, "ljrprocc/DataFree README.md:L27"),
            "c10_wrn40_2_wrn16_1": Published(72.15, "ljrprocc/DataFree README.md:L27"),
            "c10_wrn40_2_wrn40_1": Published(81.33, "ljrprocc/DataFree README.md:L27"),
            "c100_resnet34_resnet18": Published(74.47, "ljrprocc/DataFree README.md:L54"),
            "c100_wrn40_2_wrn16_2": Published(40.0, "ljrprocc/DataFree README.md:L54"),
        },
        hours={
            "c10_resnet34_resnet18": Published(2.73, "zju-vipa/Fast-Datafree README.md:L32"),
            "c10_wrn40_2_wrn16_1": Published(1.73, "zju-vipa/Fast-Datafree README.md:L32"),
            "c10_wrn40_2_wrn40_1": Published(1.53, "zju-vipa/Fast-Datafree README.md:L32"),
            "c100_resnet34_resnet18": Published(2.73, "zju-vipa/Fast-Datafree README.md:L47"),
            "c100_wrn40_2_wrn16_2": Published(1.73, "zju-vipa/Fast-Datafree README.md:L47"),
        }),)

    def __init__(self, ctx, settings: DAFLSettings) -> None:
        super().__init__(ctx, settings)
        self.teacher_features = teacher_features(ctx.teacher)

    def generator_step(self) -> dict[str, torch.Tensor]:
        s, ctx = self.settings, self.ctx
        with ctx.autocast():
            t, feats = self.teacher_features(self.synthesize())
        oh = onehot_ce(t)
        act = activation_l1(feats)
        ent = entropy_of_mean(t)
        loss = s.w_oh * oh - s.w_act * act - s.w_ent * ent
        self.update_generator(loss)
        return {"loss_g": loss.detach(), "g_onehot": oh.detach(), "g_act": act.detach(),
                "g_entropy": ent.detach()}

    def student_loss(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        st, t = self.student_teacher_logits()
        loss = kd_kl(st, t, self.settings.tau)
        return loss, {"loss_s": loss.detach(), "kd": loss.detach()}
