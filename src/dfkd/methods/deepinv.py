"""DeepInversion and ADI (Yin et al., CVPR 2020).

Each round optimises a fresh batch of *inputs* x (normalised units, x ~ N(0, 1)),
each with a random target class y, with Adam for ``g_steps`` iterations:

    L = w_bn R_BN(x') + w_ce CE(T(x'), y) + w_tv R_TV(x') + w_l2 ||x'||_2
        + w_adv mean(1 - JS_tau(T(x') || S(x')))          (ADI's competition term)

where x' is x after a random shift of up to ``jitter`` pixels and a random flip,
R_BN is the BatchNorm statistics term and R_TV the total variation. After each
step x is clamped to valid pixels. The batch with the lowest loss of the round
goes into the sample bank, and the student learns KD on the bank, each image
zero-padded by ``padding`` pixels, randomly cropped back and flipped on its own (the
originals' data loader). ``w_adv: 0`` is DeepInversion, ``w_adv > 0`` is ADI.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dfkd.bank import LowestLoss
from dfkd.losses import js_divergence, total_variation
from dfkd.methods import register_method
from dfkd.methods.base import BankMethod, OfficialRecipes, Published
from dfkd.ranges import ranged


@dataclass
class DeepInvSettings:
    w_bn: float = 10.0     # BatchNorm statistics term (0: off, e.g. no BN)
    w_ce: float = 1.0      # CE to the target classes
    w_tv: float = 1e-4     # total variation prior
    w_l2: float = 1e-5     # L2 prior on the inputs
    w_adv: float = 0.0     # ADI competition 1 - JS(T, S); 0 = plain DeepInversion
    adv_tau: float = ranged(3.0, gt=0)  # temperature of the competition term
    lr: float = ranged(0.1, gt=0)       # Adam on the inputs
    jitter: int = ranged(2, ge=0)       # synthesis: random roll of the whole batch, in pixels
    padding: int = ranged(4, ge=0)      # student batches: per-sample pad + crop (originals: 4)
    flip: bool = True      # student batches: per-sample random horizontal flip
    tau: float = ranged(20.0, gt=0)     # KD temperature of the student step
    bank_size: int = ranged(0, ge=0)    # 0 keeps every batch (the originals' image pool)


def jitter(images: torch.Tensor, shift: int, flip: bool = True) -> torch.Tensor:
    """DeepInversion's synthesis augmentation: one random circular shift of up to ``shift``
    pixels in each direction, and a random horizontal flip, for the whole batch."""
    if shift > 0:
        dy, dx = torch.randint(-shift, shift + 1, (2,)).tolist()
        images = torch.roll(images, shifts=(dy, dx), dims=(2, 3))
    if flip and torch.rand(()) < 0.5:
        images = images.flip(3)
    return images


def competition(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """ADI's mean(1 - JS(softmax(t / tau), softmax(s / tau))), JS in nats."""
    p_t = F.softmax(teacher.float() / tau, dim=1)
    p_s = F.softmax(student.float() / tau, dim=1)
    return (1.0 - js_divergence(p_t, p_s)).mean().float()


@register_method
class DeepInversion(BankMethod):
    name = "deepinv"
    Settings = DeepInvSettings
    title = "DeepInversion / ADI"
    paper = ("Yin et al., *Dreaming to Distill: Data-free Knowledge Transfer via DeepInversion*, "
             "CVPR 2020 ([arXiv:1912.08795](https://arxiv.org/abs/1912.08795))")
    code = "[NVlabs/DeepInversion](https://github.com/NVlabs/DeepInversion)"
    docs = "deepinv.md"
    needs_bn = True
    # Hours: Fast-Datafree's README, its DeepInv-2k row (2000 synthesis steps per batch; the
    # official scripts take 1000).
    official = (OfficialRecipes(
        "deepinv", "ADI", column=3,
        acc1={
            "c10_resnet34_resnet18": Published(93.26, "ljrprocc/DataFree README.md:L29"),
            "c10_wrn40_2_wrn16_1": Published(83.01, "ljrprocc/DataFree README.md:L29"),
            "c10_wrn40_2_wrn40_1": Published(86.85, "ljrprocc/DataFree README.md:L29"),
            "c100_resnet34_resnet18": Published(61.32, "ljrprocc/DataFree README.md:L56"),
            "c100_wrn40_2_wrn16_2": Published(61.34, "ljrprocc/DataFree README.md:L56"),
        },
        hours={
            "c10_resnet34_resnet18": Published(42.1, "zju-vipa/Fast-Datafree README.md:L30"),
            "c10_wrn40_2_wrn16_1": Published(16.9, "zju-vipa/Fast-Datafree README.md:L30"),
            "c10_wrn40_2_wrn40_1": Published(21.9, "zju-vipa/Fast-Datafree README.md:L30"),
            "c100_resnet34_resnet18": Published(42.1, "zju-vipa/Fast-Datafree README.md:L45"),
            "c100_wrn40_2_wrn16_2": Published(18.2, "zju-vipa/Fast-Datafree README.md:L45"),
        }),)

    def __init__(self, ctx, settings: DeepInvSettings) -> None:
        super().__init__(ctx, settings)
        self.inputs: torch.Tensor | None = None

    def start_synthesis(self) -> None:
        ctx = self.ctx
        self.inputs = torch.randn(ctx.batch_size, *ctx.image_shape, device=ctx.device,
                                  requires_grad=True)
        self.targets = torch.randint(0, ctx.num_classes, (ctx.batch_size,), device=ctx.device)
        self.opt_x = torch.optim.Adam([self.inputs], lr=self.settings.lr, betas=(0.5, 0.99))
        self.best = LowestLoss(ctx.device, (self.inputs.detach().clone(),))

    def generator_step(self) -> dict[str, torch.Tensor]:
        s, ctx = self.settings, self.ctx
        x = jitter(self.inputs, s.jitter)
        if ctx.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with ctx.autocast(), self.bn_hook:
            t = ctx.teacher(x)
            bn = self.bn_hook.loss()
        ce = F.cross_entropy(t.float(), self.targets)
        tv = total_variation(x)
        l2 = torch.linalg.vector_norm(x.float())
        loss = s.w_bn * bn + s.w_ce * ce + s.w_tv * tv + s.w_l2 * l2
        terms = {"g_bn": bn.detach(), "g_ce": ce.detach(), "g_tv": tv.detach()}
        if s.w_adv > 0:
            comp = competition(self.frozen_student(x), t, s.adv_tau)
            loss = loss + s.w_adv * comp
            terms["g_adv"] = comp.detach()
        self.best.offer(loss, self.inputs)   # the round's lowest-loss batch
        self.opt_x.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_x.step()
        low, high = self.pixel_range()
        with torch.no_grad():
            self.inputs.copy_(torch.maximum(torch.minimum(self.inputs, high), low))
        return {"loss_g": loss.detach(), **terms}

    def end_synthesis(self) -> None:
        best = self.best.kept[0] * self.ctx.std + self.ctx.mean
        self.bank.add(best.clamp(0, 1))
        self.inputs = self.opt_x = self.best = None
