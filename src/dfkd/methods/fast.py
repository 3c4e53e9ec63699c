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
from dfkd.errors import ConfigError
from dfkd.hooks import BNStatsHook, NoBNStats
from dfkd.losses import masked_adversarial
from dfkd.methods import register_method
from dfkd.methods.bank import BankMethod, random_crop_flip


@dataclass
class FastSettings:
    w_bn: float = 10.0       # BatchNorm statistics term (0: off, e.g. no BN)
    w_ce: float = 0.5        # CE to the target classes
    w_adv: float = 1.0       # masked adversarial term
    adv_tau: float = 1.0     # temperature of the adversarial KL
    lr_z: float = 0.015      # Adam on the latent codes (G_fast uses generator.lr)
    meta: Literal["fomaml", "reptile"] = "fomaml"  # meta gradient (the scripts' is_maml 1)
    meta_lr: float = 0.0     # Adam of G_meta; 0 = generator.lr x g_steps, as the original
    reset_l0: bool = True    # re-draw G_meta's latent projection and first BN once
    reset_l0_epoch: int = 120  # ... at the start of this epoch after the warm-up (1-based)
    warmup: int = 20         # epochs of synthesis only: no student step, no adversarial term
    bn_mmt: float = 0.9      # momentum of the BN statistics across rounds; 0 = off
    padding: int = 4         # synthesis view and student batches: zero pad + random crop
    flip: bool = True        # ... and random horizontal flip, per sample
    tau: float = 20.0        # KD temperature of the student step
    bank_size: int = 0       # 0 keeps every batch (the original's image pool)

    def validate(self) -> None:
        for name in ("adv_tau", "lr_z", "tau"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"fast.{name} must be > 0, got {getattr(self, name)}")
        for name in ("meta_lr", "warmup", "padding", "bank_size"):
            if getattr(self, name) < 0:
                raise ConfigError(f"fast.{name} must be >= 0, got {getattr(self, name)}")
        if self.reset_l0_epoch < 1:
            raise ConfigError(f"fast.reset_l0_epoch must be >= 1, got {self.reset_l0_epoch}")
        if not 0 <= self.bn_mmt < 1:
            raise ConfigError(f"fast.bn_mmt must be in [0, 1), got {self.bn_mmt}")


class MomentumBNHook(BNStatsHook):
    """The BN statistics term against a momentum blend of this and earlier rounds' batch
    statistics (the original's DeepInversionHook with ``mmt_rate``).

    ``running`` holds one (mean, var) per BN layer, None until the first round ends;
    ``update()`` folds in the statistics of the last forward pass made while active.
    """

    def __init__(self, model: nn.Module, momentum: float) -> None:
        super().__init__(model)
        self.momentum = momentum
        self.index = {id(m): i for i, m in enumerate(self.layers)}
        self.last: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.layers)
        self.running: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], _out) -> None:
        if not self.active:
            return
        x = inputs[0].float()
        dims = [0] + list(range(2, x.dim()))
        mean, var = x.mean(dim=dims), x.var(dim=dims, unbiased=False)
        i = self.index[id(module)]
        self.last[i] = (mean.detach(), var.detach())
        if self.running is not None:
            m, (run_mean, run_var) = self.momentum, self.running[i]
            mean = (1 - m) * mean + m * run_mean
            var = (1 - m) * var + m * run_var
        self._terms.append(torch.linalg.vector_norm(mean - module.running_mean, 2)
                           + torch.linalg.vector_norm(var - module.running_var, 2))

    def update(self) -> None:
        """Fold the last active pass's statistics (averaged over ranks) into ``running``."""
        if any(s is None for s in self.last):
            raise RuntimeError("no BatchNorm statistics recorded; run a forward pass first")
        stats = [t for pair in self.last for t in pair]  # mean_1, var_1, mean_2, ...
        parts = distributed.all_reduce_mean(torch.cat(stats)).split([len(t) for t in stats])
        last = list(zip(parts[0::2], parts[1::2]))
        if self.running is None:
            self.running = last
        else:
            m = self.momentum
            self.running = [(m * rm + (1 - m) * mean, m * rv + (1 - m) * var)
                             for (rm, rv), (mean, var) in zip(self.running, last)]
        self.last = [None] * len(self.layers)

    def state_dict(self) -> dict[str, Any]:
        return {"running": self.running}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        running = state["running"]
        self.running = None if running is None else \
            [(mean.to(device), var.to(device)) for mean, var in running]


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
    needs_bn = True

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
        self.best_loss = torch.full((), float("inf"), device=ctx.device)
        self.best_images: torch.Tensor | None = None

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
        # The lowest-loss batch of the round, kept on the device (no host sync per step).
        better = loss.detach() < self.best_loss
        self.best_loss = torch.where(better, loss.detach(), self.best_loss)
        self.best_images = images.detach() if self.best_images is None else \
            torch.where(better, images.detach(), self.best_images)
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
        self.bank.add(self.best_images.float())
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
        self.z = self.opt_fast = self.best_images = self.best_loss = self.meta_grads = None

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
