"""CMI: Contrastive Model Inversion (Fang et al., IJCAI 2021), as in the authors' code
(zju-vipa/CMI, ``datafree/synthesis/contrastive.py`` and ``scripts/cmi/cmi_cifar10.sh``).

Every round re-initialises the generator, draws a batch of latent codes z (learned
too) with random target classes y, and trains G and z with Adam for ``g_steps``.
Each step makes two views of x = G(z), per sample:

* the global view x_g: zero-pad ``padding`` pixels, random crop back, random flip;
* the local view x_l: a random resized crop (area ``local_scale`` of the image, aspect
  3/4 to 4/3, bilinear) and a random flip.

    L = w_bn R_BN(x_g) + w_ce CE(T(x_g), y) + w_adv L_adv(x_g) + w_cr L_cr

L_adv is the masked adversarial KL (only samples where S agrees with T). L_cr is
contrastive over T's features f: for every BatchNorm layer of T, the per-sample
channel means of its input, concatenated (a teacher without BatchNorm: its GroupNorm /
LayerNorm / InstanceNorm layers' inputs, or with none, its logits). ``w_bn: 0`` turns the
BN-statistics term off, which a teacher without BatchNorm needs. A small head h
(Linear, ReLU, Linear, L2-normalised; it persists across rounds and learns with G)
projects the local and the global features of the current batch and of ``negatives``
rows drawn from the feature bank (earlier rounds' features, both views). Each local
projection must pick its own global projection among all global projections, current
and banked:

    logits = h(f_l) . stop_grad(h(f_g))^T / cr_tau,  CE against the diagonal,

averaged over the current rows, plus the average over the banked rows when the bank is
not empty. The global side is detached, so G learns through the local view (and the
BN, CE and adversarial terms) and the banked rows train the head only.

The lowest-loss batch of a round goes into the sample bank, and its features (local and
global) into the feature bank; the student learns KD on the sample bank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dfkd.augment import random_crop_flip
from dfkd.bank import LowestLoss, SampleBank
from dfkd.errors import ConfigError
from dfkd.hooks import ForwardHooks, batchnorm_layers
from dfkd.losses import masked_adversarial
from dfkd.methods import register_method
from dfkd.methods.base import BankMethod, OfficialRecipes, Published
from dfkd.ranges import ranged


@dataclass
class CMISettings:
    w_bn: float = 1.0        # BatchNorm statistics term (0: off, e.g. no BN)
    w_ce: float = 1.0        # CE to the target classes
    w_adv: float = 0.5       # masked adversarial term
    w_cr: float = 0.8        # contrastive term
    cr_tau: float = ranged(0.2, gt=0)    # contrastive temperature
    adv_tau: float = ranged(1.0, gt=0)   # temperature of the adversarial KL
    head_dim: int = ranged(256, ge=1)    # projection head output
    negatives: int = ranged(4096, ge=0)  # feature-bank rows drawn (without replacement) per step
    feature_bank_size: int = ranged(40960, ge=0)  # rows of the feature bank; 0 = unbounded
    local_scale: tuple[float, float] = (0.25, 1.0)  # area range of the local view's crop
    padding: int = ranged(4, ge=0)   # global view and student batches: zero pad + random crop
    flip: bool = True        # ... and random horizontal flip (both views), per sample
    tau: float = ranged(20.0, gt=0)  # KD temperature of the student step
    bank_size: int = ranged(0, ge=0)  # 0 keeps every batch (the original's image pool)

    def validate(self) -> None:
        low, high = self.local_scale
        if not 0 < low <= high <= 1:
            raise ConfigError(f"cmi.local_scale must satisfy 0 < low <= high <= 1, "
                              f"got {self.local_scale}")


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, mirror: torch.Tensor
                 ) -> torch.Tensor:
    """Per sample i: the box (top, left, height, width) = boxes[i], in pixels (continuous),
    resampled bilinearly to the input's size, mirrored if mirror[i]. Differentiable."""
    n, c, h, w = images.shape
    top, left, bh, bw = boxes.float().unbind(1)
    sign = 1.0 - 2.0 * mirror.float()
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = sign * bw / w                 # normalised half-width, mirrored or not
    theta[:, 0, 2] = (2 * left + bw) / w - 1       # normalised centre
    theta[:, 1, 1] = bh / h
    theta[:, 1, 2] = (2 * top + bh) / h - 1
    theta = theta.to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


def random_resized_crop(images: torch.Tensor, scale: tuple[float, float],
                        ratio: tuple[float, float] = (3 / 4, 4 / 3), flip: bool = True
                        ) -> torch.Tensor:
    """RandomResizedCrop (+ RandomHorizontalFlip) drawn for each sample: area fraction
    ~ U(scale), log aspect (width / height) ~ U(log ratio), sides capped at the image's
    (torchvision re-draws instead), position uniform. CPU RNG, so resume is exact."""
    n, _, h, w = images.shape
    area = torch.empty(n).uniform_(*scale) * h * w
    aspect = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1])).exp()
    bw = (area * aspect).sqrt().clamp(max=w)
    bh = (area / aspect).sqrt().clamp(max=h)
    top, left = torch.rand(n) * (h - bh), torch.rand(n) * (w - bw)
    mirror = torch.rand(n) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return resized_crop(images, torch.stack([top, left, bh, bw], 1), mirror)


NORM_LAYERS = (nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def feature_layers(model: nn.Module) -> list[nn.Module]:
    """The layers whose inputs make CMI's features: every BatchNorm layer (the original);
    in a teacher without BatchNorm, its other normalisation layers (GroupNorm, LayerNorm,
    InstanceNorm and their subclasses, e.g. timm's LayerNorm2d), which see the same kind
    of per-channel activations."""
    return batchnorm_layers(model) or [m for m in model.modules()
                                       if isinstance(m, NORM_LAYERS)]


def channel_means(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The per-sample channel means of a normalisation layer's input: over the spatial
    dims of (N, C, ...) maps, or, for a LayerNorm over the last dim of channels-last maps
    or tokens (N, ..., C), over every dim between."""
    if x.dim() <= 2:
        return x
    if isinstance(module, nn.LayerNorm):
        width = module.normalized_shape[-1]
        if x.shape[-1] == width and x.shape[1] != width:
            return x.mean(dim=list(range(1, x.dim() - 1)))
    return x.mean(dim=list(range(2, x.dim())))


class InstanceMeans:
    """While active, keeps the per-sample channel mean of the input of every layer of
    :func:`feature_layers` (CMI's features; the original's InstanceMeanHook on each BN
    layer). A teacher without normalisation layers gives its logits as the features."""

    def __init__(self, model: nn.Module) -> None:
        self.layers = feature_layers(model)
        self.index = {id(m): i for i, m in enumerate(self.layers)}
        self.active = False
        self.means: list[torch.Tensor | None] = [None] * len(self.layers)
        self._hooks = ForwardHooks(self.layers, self._hook)

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], _out) -> None:
        if self.active:
            self.means[self.index[id(module)]] = channel_means(module, inputs[0].float())

    def __call__(self, forward, x: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """``forward(x)`` and the features it produced, (N, sum of the layers' channels)."""
        self.means = [None] * len(self.layers)
        self.active = True
        try:
            out = forward(x)
        finally:
            self.active = False
        if not self.layers:
            return out, out.float()
        return out, torch.cat(self.means, dim=1)


class ProjectionHead(nn.Module):
    """The original's MLPHead: Linear(d, d), ReLU, Linear(d, head_dim), L2-normalised."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim_in, dim_in), nn.ReLU(inplace=True),
                                 nn.Linear(dim_in, dim_out))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(features.float()), dim=1)


def contrastive_loss(local: torch.Tensor, global_: torch.Tensor, n_current: int,
                     tau: float) -> torch.Tensor:
    """CMI's loss on projected rows [current; banked]: row i of ``local`` must pick row i
    of ``global_`` (detached: keys carry no gradient) at temperature ``tau``; the mean over
    the current rows plus, if any, the mean over the banked rows."""
    logits = local @ global_.detach().t() / tau
    per_row = F.cross_entropy(logits, torch.arange(len(local), device=local.device),
                              reduction="none")
    if len(local) > n_current:
        return per_row[:n_current].mean() + per_row[n_current:].mean()
    return per_row.mean()


@register_method
class CMI(BankMethod):
    name = "cmi"
    Settings = CMISettings
    title = "CMI"
    paper = ("Fang et al., *Contrastive Model Inversion for Data-Free Knowledge Distillation*, "
             "IJCAI 2021 ([arXiv:2105.08584](https://arxiv.org/abs/2105.08584))")
    code = "[zju-vipa/CMI](https://github.com/zju-vipa/CMI)"
    docs = "cmi.md"
    needs_bn = True
    reads_layers = "the inputs of its normalisation layers (the contrastive features)"
    # Hours: Fast-Datafree's README, its CMI-500 row (500 synthesis steps per batch; the
    # official scripts take 200).
    official = (OfficialRecipes(
        "cmi", "CMI", column=5,
        acc1={
            "c10_resnet34_resnet18": Published(94.84, "ljrprocc/DataFree README.md:L31"),
            "c10_wrn40_2_wrn16_1": Published(90.01, "ljrprocc/DataFree README.md:L31"),
            "c10_wrn40_2_wrn40_1": Published(92.78, "ljrprocc/DataFree README.md:L31"),
            "c100_resnet34_resnet18": Published(73.75, "ljrprocc/DataFree README.md:L58"),
            "c100_wrn40_2_wrn16_2": Published(66.07, "ljrprocc/DataFree README.md:L58"),
        },
        hours={
            "c10_resnet34_resnet18": Published(19.0, "zju-vipa/Fast-Datafree README.md:L31"),
            "c10_wrn40_2_wrn16_1": Published(13.3, "zju-vipa/Fast-Datafree README.md:L31"),
            "c10_wrn40_2_wrn40_1": Published(14.1, "zju-vipa/Fast-Datafree README.md:L31"),
            "c100_resnet34_resnet18": Published(19.2, "zju-vipa/Fast-Datafree README.md:L46"),
            "c100_wrn40_2_wrn16_2": Published(13.9, "zju-vipa/Fast-Datafree README.md:L46"),
        }),)

    def __init__(self, ctx, settings: CMISettings) -> None:
        super().__init__(ctx, settings)
        self.generator = ctx.make_generator()
        self.nz = self.generator.nz
        self.features = InstanceMeans(ctx.teacher)
        with torch.no_grad():
            probe = torch.zeros(2, *ctx.image_shape, device=ctx.device)
            dim = self.features(ctx.teacher, ctx.normalize(probe))[1].shape[1]
        self.head = ProjectionHead(dim, settings.head_dim).to(ctx.device)
        self.head_ddp = ctx.wrap(self.head)  # gradients averaged over ranks
        # Adam with its default betas for the head, as the original (G and z use 0.5).
        self.opt_head = torch.optim.Adam(self.head.parameters(), lr=ctx.generator.lr)
        self.feature_bank = SampleBank(settings.feature_bank_size)

    def start_synthesis(self) -> None:
        ctx = self.ctx
        self.generator.reset_parameters()
        self.z = torch.randn(ctx.batch_size, self.nz, device=ctx.device, requires_grad=True)
        self.targets = torch.randint(0, ctx.num_classes, (ctx.batch_size,), device=ctx.device)
        self.opt_g = torch.optim.Adam([*self.generator.parameters(), self.z],
                                      lr=ctx.generator.lr, betas=(0.5, 0.999))
        self.best = LowestLoss(ctx.device)

    def generator_step(self) -> dict[str, torch.Tensor]:
        s, ctx = self.settings, self.ctx
        with ctx.autocast():
            images = self.generator(self.z)
            x_global = ctx.normalize(random_crop_flip(images, s.padding, s.flip))
            x_local = ctx.normalize(random_resized_crop(images, s.local_scale, flip=s.flip))
            with self.bn_hook:
                t, f_global = self.features(ctx.teacher, x_global)
                bn = self.bn_hook.loss()
            _, f_local = self.features(ctx.teacher, x_local)
        ce = F.cross_entropy(t.float(), self.targets)
        n = len(f_local)
        banked_local = banked_global = f_local[:0]
        if len(self.feature_bank) and s.negatives > 0:
            banked_local, banked_global = self.feature_bank.sample_distinct(s.negatives).chunk(2, 1)
        # One call of the head (one DDP forward per backward): [local; banked; global; banked].
        projected = self.head_ddp(torch.cat([f_local, banked_local, f_global, banked_global]))
        p_local, p_global = projected.chunk(2)
        cr = contrastive_loss(p_local, p_global, n, s.cr_tau)
        loss = s.w_bn * bn + s.w_ce * ce + s.w_cr * cr
        terms = {"g_bn": bn.detach(), "g_ce": ce.detach(), "g_cr": cr.detach()}
        if s.w_adv > 0:
            adv = masked_adversarial(self.frozen_student(x_global), t, s.adv_tau)
            loss = loss + s.w_adv * adv
            terms["g_adv"] = adv.detach()
        self.best.offer(loss, images, torch.cat([f_local, f_global], 1))
        self.opt_g.zero_grad(set_to_none=True)
        self.opt_head.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        self.opt_head.step()
        return {"loss_g": loss.detach(), **terms}

    def end_synthesis(self) -> None:
        images, features = self.best.kept
        self.bank.add(images.float())
        self.feature_bank.add(features)
        self.z = self.opt_g = self.best = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "feature_bank": self.feature_bank.state_dict(),
                "head": self.head.state_dict(), "opt_head": self.opt_head.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.feature_bank.load_state_dict(state["feature_bank"], self.ctx.device)
        self.head.load_state_dict(state["head"])
        self.opt_head.load_state_dict(state["opt_head"])
