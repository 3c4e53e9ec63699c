"""NAYER: Noisy Layer Data Generation (Tran et al., CVPR 2024), as in the authors' code
(tmtuan1307/NAYER, ``datafree/synthesis/nayer.py``, ``datafree/models/generator.py``,
``datafree_kd.py`` and ``scripts/nayer_*.sh``).

The generator's input is not noise but a constant: one embedding per class (the official
code: CLIP ViT-B/32's text embedding of "a image of <class>", 512 numbers). The noise is a
layer. G(y) = body(noisy_k(BN1d(e_y))) for the k-th chunk of ``num_classes`` samples, where
each chunk has its own Linear layer ``noisy_k`` (embedding size -> ``generator.nz``), redrawn
N(0, 1) with zero bias at the start of every synthesis loop; ``body`` is the DCGAN body of
CMI and Fast (Linear -> BN -> 2 x [upsample, conv, BN, LeakyReLU] -> conv -> sigmoid).

One round is one official epoch: ``loops`` synthesis loops (``warmup_loops`` during the first
``warmup`` epochs), each a fresh Adam (``generator.lr``, betas from the config) on all of G
for ``g_steps`` steps on a batch of ``synthesis_batch`` targets (every class the same number
of times, the remainder random), then ``kd_steps`` student steps on the bank. Each step:

    x' = normalize(pad-crop-flip(G(y)))
    L = w_bn R_BN(x') + w_ce CE(T(x'), y) + w_adv L_adv(x')

R_BN is Fast's BN-statistics term with momentum ``bn_mmt`` across loops (folded in after
each loop's last step), L_adv the masked adversarial KL at temperature ``adv_tau`` (only
from the end of the warm-up). Each loop's lowest-loss batch G(y) goes into the bank. The
whole generator is re-drawn (PyTorch's default initialisation, as the official code builds a
new one) at the start of every epoch e with (e - warmup) or e a multiple of ``g_life``.
The student learns KD at temperature ``tau`` on padded-crop + flip draws from the bank, after
the warm-up, with its cosine schedule held during the warm-up (as Fast).

As in the official code, the student is in eval mode for the adversarial term in a round's
first loop and in train mode in the later ones (``student.train()`` sits inside the loop
there): its BatchNorm layers then use the batch's statistics and update their running ones.

Without an embedding file (``embeddings: onehot``, the default, or ``random``) the class codes
are one-hot rows or fixed N(0, 1) vectors (seed 0), ``embedding_dim`` numbers long.
Under torchrun each rank trains its own generator on its share of the synthesis batch, as
CMI does; the checkpoint holds every rank's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dfkd import distributed
from dfkd.augment import random_crop_flip
from dfkd.bank import LowestLoss
from dfkd.errors import ConfigError
from dfkd.generators import Generator, default_generator_size
from dfkd.hooks import BNStatsHook, MomentumBNHook, NoBNStats
from dfkd.losses import masked_adversarial
from dfkd.methods import register_method
from dfkd.methods.base import BankMethod, OfficialRecipes, Published
from dfkd.ranges import ranged

FALLBACK_EMBEDDINGS = ("random", "onehot")
EMBEDDING_FILES = (".pt", ".pth", ".npy")


@dataclass
class NayerSettings:
    # One row per class: a .pt/.npy file (classes x dim), or a fallback code: random, onehot.
    embeddings: str = "onehot"
    embedding_dim: int = ranged(512, ge=1)   # length of the fallback codes (CLIP's 512)
    w_bn: float = 10.0       # BatchNorm statistics term (0: off, e.g. no BN)
    w_ce: float = 0.5        # CE to the target classes (the official --oh)
    w_adv: float = 1.33      # masked adversarial term, after the warm-up
    adv_tau: float = ranged(1.0, gt=0)   # temperature of the adversarial KL
    loops: int = ranged(2, ge=1)         # synthesis loops per round (--g_loops)
    warmup_loops: int = ranged(10, ge=1)  # ... during the warm-up (--gwp_loops)
    warmup: int = ranged(20, ge=0)       # epochs of synthesis only: no student step, no L_adv
    g_life: int = ranged(10, ge=1)       # re-draw the whole generator every g_life epochs
    synthesis_batch: int = ranged(0, ge=0)   # samples per loop; 0: the run's batch_size
    bn_mmt: float = ranged(0.9, ge=0, lt=1)  # momentum of the BN statistics across loops
    padding: int = ranged(4, ge=0)   # synthesis view and student batches: zero pad + crop
    flip: bool = True        # ... and random horizontal flip, per sample
    tau: float = ranged(20.0, gt=0)  # KD temperature of the student step
    bank_size: int = ranged(0, ge=0)  # 0 keeps every batch (the original's image pool)

    def validate(self) -> None:
        if self.embeddings in FALLBACK_EMBEDDINGS:
            return
        path = Path(self.embeddings)
        if path.suffix not in EMBEDDING_FILES:
            raise ConfigError(
                f"nayer.embeddings must be a {'/'.join(EMBEDDING_FILES)} file of one row per "
                f"class, or one of {', '.join(FALLBACK_EMBEDDINGS)}; got '{self.embeddings}'")
        if not path.is_file():
            raise ConfigError(f"nayer.embeddings: no file {path}; give a "
                              f"{'/'.join(EMBEDDING_FILES)} file of one row per class, or "
                              "'random' (docs/methods/nayer.md)")


def load_embeddings(spec: str, num_classes: int, dim: int) -> torch.Tensor:
    """The class codes, (num_classes, dim) float32: a file's rows, or a fallback code."""
    if spec == "random":
        return torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(0))
    if spec == "onehot":
        return torch.eye(num_classes, max(dim, num_classes))
    path = Path(spec)
    try:
        if path.suffix == ".npy":
            rows = torch.from_numpy(np.load(path, allow_pickle=False))
        else:
            rows = torch.load(path, map_location="cpu", weights_only=True)
            rows = torch.as_tensor(rows)
    except Exception as e:  # unreadable: say so in one line
        raise ConfigError(f"nayer.embeddings: cannot read {path} ({type(e).__name__}: {e}); "
                          "save a (classes x dim) tensor with torch.save or numpy.save") from None
    if rows.dim() != 2 or rows.shape[0] != num_classes:
        raise ConfigError(f"nayer.embeddings: {path} holds a tensor of shape "
                          f"{tuple(rows.shape)}; it needs one row per class: ({num_classes}, dim)")
    rows = rows.float()
    if not torch.isfinite(rows).all():
        raise ConfigError(f"nayer.embeddings: {path} holds NaN or infinite values")
    return rows


def balanced_targets(n: int, num_classes: int) -> torch.Tensor:
    """The official targets: every class n // C times in order 0..C-1, 0..C-1, ..., then
    the n % C remaining samples' classes at random."""
    blocks = torch.arange(num_classes).repeat(n // num_classes)
    return torch.cat([blocks, torch.randint(num_classes, (n % num_classes,))])


def default_init(module: nn.Module) -> None:
    """PyTorch's own initialisation of every layer (the official generator sets none)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)):
            m.reset_parameters()


class NoisyLayerGenerator(nn.Module):
    """G(y): the class embedding, BatchNorm1d, one noisy Linear per chunk of ``chunk``
    samples, then the DCGAN body (its Linear takes ``nz`` numbers)."""

    def __init__(self, embeddings: torch.Tensor, nz: int, ngf: int,
                 image_shape: tuple[int, int, int], batch: int, chunk: int,
                 width: int = 2, stages: int = 2) -> None:
        super().__init__()
        self.chunk = chunk
        self.register_buffer("embeddings", embeddings.clone())
        dim = embeddings.shape[1]
        self.embed_norm = nn.BatchNorm1d(dim)
        self.noisy = nn.ModuleList(nn.Linear(dim, nz) for _ in range(math.ceil(batch / chunk)))
        self.body = Generator(nz, ngf, image_shape, width=width, stages=stages)
        self.reinit()

    def reinit(self) -> None:
        """A fresh generator, as the official code builds one (default initialisation)."""
        default_init(self)
        self.redraw_noise()

    def redraw_noise(self) -> None:
        """The noisy layers, re-drawn at the start of every synthesis loop."""
        for layer in self.noisy:
            nn.init.normal_(layer.weight, 0.0, 1.0)
            nn.init.zeros_(layer.bias)

    def forward(self, targets: torch.Tensor) -> torch.Tensor:
        codes = self.embed_norm(self.embeddings[targets])
        return self.body(torch.cat([layer(part) for layer, part in
                                    zip(self.noisy, codes.split(self.chunk))]))


@register_method
class Nayer(BankMethod):
    name = "nayer"
    Settings = NayerSettings
    title = "NAYER"
    paper = ("Tran et al., *NAYER: Noisy Layer Data Generation for Efficient and Effective "
             "Data-free Knowledge Distillation*, CVPR 2024 "
             "([arXiv:2310.00258](https://arxiv.org/abs/2310.00258))")
    code = "[tmtuan1307/NAYER](https://github.com/tmtuan1307/NAYER)"
    docs = "nayer.md"
    needs_bn = True
    reads_layers = "class embeddings (a file, or fixed codes)"
    # NAYER-100 (scripts/nayer_100.sh: 120 epochs); NAYER-200/300 differ only in --epochs.
    # The README publishes no table: its figure (nayer_result.jpg) plots accuracy against
    # GPU hours on one pair, by its CMI/ADI/DFQ points C100 WRN-40-2 -> WRN-16-2.
    official = (OfficialRecipes("nayer", "NAYER", column=10, acc1={
        "c100_wrn40_2_wrn16_2": Published(
            70.2, "tmtuan1307/NAYER README.md:L14",
            "read off the README's figure (NAYER_100; NAYER_200 71.2, NAYER_300 71.7)"),
    }, hours={
        "c100_wrn40_2_wrn16_2": Published(
            2.1, "tmtuan1307/NAYER README.md:L14",
            "read off the README's figure (log scale; NAYER_200 4.1, NAYER_300 7.2)"),
    }),)

    def __init__(self, ctx, settings: NayerSettings) -> None:
        super().__init__(ctx, settings)
        world = distributed.current().world_size
        self.synthesis_batch = max(1, (settings.synthesis_batch or ctx.batch_size * world)
                                   // world)
        codes = load_embeddings(settings.embeddings, ctx.num_classes, settings.embedding_dim)
        default = default_generator_size(ctx.image_shape)
        g = ctx.generator
        self.generator = NoisyLayerGenerator(
            codes, g.nz or default.nz, g.ngf or default.ngf, ctx.image_shape,
            self.synthesis_batch, ctx.num_classes, width=g.width or 2,
            stages=g.stages or 2).to(ctx.device)
        if ctx.channels_last:
            self.generator.to(memory_format=torch.channels_last)
        self.generator_fn = self.generator   # what the steps call (compiled under compile)
        self.reinit_epoch = -1
        self.best: LowestLoss | None = None   # the synthesis loop's lowest-loss batch

    def make_bn_hook(self) -> BNStatsHook | NoBNStats:
        if not self.uses_bn(self.settings):
            return NoBNStats(self.ctx.device)
        return MomentumBNHook(self.ctx.teacher, self.settings.bn_mmt)

    def compile_modules(self, compile) -> None:
        self.generator_fn = compile(self.generator)

    @property
    def warmup_epochs(self) -> int:
        return self.settings.warmup

    def in_warmup(self) -> bool:
        return self.epoch < self.settings.warmup

    def loops_now(self) -> int:
        s = self.settings
        return s.warmup_loops if self.in_warmup() else s.loops

    def generator_steps(self) -> int:
        return self.ctx.g_steps * self.loops_now()

    def start_synthesis(self) -> None:
        s = self.settings
        if self.reinit_epoch != self.epoch and \
                ((self.epoch - s.warmup) % s.g_life == 0 or self.epoch % s.g_life == 0):
            self.generator.reinit()
            self.reinit_epoch = self.epoch
        self.step = 0

    def _start_loop(self) -> None:
        ctx = self.ctx
        self.generator.redraw_noise()
        self.targets = balanced_targets(self.synthesis_batch, ctx.num_classes).to(ctx.device)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=ctx.generator.lr,
                                      betas=ctx.generator.betas)
        self.best = LowestLoss(ctx.device)

    def _end_loop(self) -> None:
        self.bank.add(self.best.kept[0].float())
        if self.settings.bn_mmt > 0:
            self.bn_hook.update()
        self.opt_g = self.best = None

    def end_synthesis(self) -> None:
        if self.best is not None:   # a loop cut short (a caller's own step count)
            self._end_loop()

    def generator_step(self) -> dict[str, torch.Tensor]:
        s, ctx = self.settings, self.ctx
        if self.step % ctx.g_steps == 0:
            self._start_loop()
        with ctx.autocast():
            images = self.generator_fn(self.targets)
            x = ctx.normalize(random_crop_flip(images, s.padding, s.flip))
            with self.bn_hook:
                t = ctx.teacher(x)
                bn = self.bn_hook.loss()
        ce = F.cross_entropy(t.float(), self.targets)
        loss = s.w_bn * bn + s.w_ce * ce
        terms = {"g_bn": bn.detach(), "g_ce": ce.detach()}
        if s.w_adv > 0 and not self.in_warmup():
            # S in eval mode in the round's first loop, in train mode after it (the
            # official code's student.train() sits inside its loop)
            st = self.frozen_student(x, train=self.step >= ctx.g_steps)
            adv = masked_adversarial(st, t, s.adv_tau)
            loss = loss + s.w_adv * adv
            terms["g_adv"] = adv.detach()
        self.best.offer(loss, images)   # the loop's lowest-loss batch, before the update
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        self.step += 1
        if self.step % ctx.g_steps == 0:
            self._end_loop()
        return {"loss_g": loss.detach(), **terms}

    def state_dict(self) -> dict[str, Any]:
        # Every rank's generator (each trains its own), so a resume is exact everywhere.
        return {**super().state_dict(), "reinit_epoch": self.reinit_epoch,
                "generators": distributed.all_gather_objects(
                    {k: v.cpu() for k, v in self.generator.state_dict().items()}),
                "bn_momentum": self.bn_hook.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.reinit_epoch = state["reinit_epoch"]
        self.generator.load_state_dict(state["generators"][distributed.current().rank])
        self.bn_hook.load_state_dict(state["bn_momentum"], self.ctx.device)
