"""The method interface and the shared generator machinery."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from dfkd import distributed
from dfkd.generators import Generator, GeneratorConfig, default_generator_size
from dfkd.hooks import BNStatsHook, NoBNStats


def warn(line: str) -> None:
    """One warning for the user, on rank 0's stderr, as the engine's own look
    (``dfkd: warning: ...``): for a part of a method that cannot run and is skipped."""
    if distributed.current().is_main:
        print(f"dfkd: warning: {line}", file=sys.stderr, flush=True)


@dataclass
class MethodContext:
    """What the engine hands a method: frozen teacher, student, data geometry, device."""

    teacher: nn.Module
    student: nn.Module           # for student steps (DDP-wrapped when distributed)
    student_raw: nn.Module       # the bare student, for forward passes in generator steps
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: torch.Tensor           # (1, C, 1, 1) on device
    std: torch.Tensor
    device: torch.device
    batch_size: int              # this process's share of the global batch
    epochs: int
    generator: GeneratorConfig
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    channels_last: bool = False
    wrap: Callable[[nn.Module], nn.Module] = lambda module: module  # DDP when distributed
    # The teacher's no-grad forward in student steps (a CUDA graph under teacher_graph);
    # None: the teacher itself.
    teacher_infer: Callable[[torch.Tensor], torch.Tensor] | None = None

    def make_generator(self) -> Generator:
        """A generator of the configured size (or the default for the image shape), on device."""
        default, cfg = default_generator_size(self.image_shape), self.generator
        return Generator(cfg.nz or default.nz, cfg.ngf or default.ngf, self.image_shape,
                         width=cfg.width or default.width,
                         stages=cfg.stages or default.stages).to(self.device)

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """T's logits for a student step (call under ``torch.no_grad``)."""
        return (self.teacher_infer or self.teacher)(x)

    def normalize(self, images01: torch.Tensor) -> torch.Tensor:
        x = (images01 - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


class Method:
    """Base class. Subclasses set ``name``, ``Settings`` and implement the two steps."""

    name: ClassVar[str]
    Settings: ClassVar[type]
    # Has a BatchNorm-statistics term, weighted by its settings' ``w_bn``: with w_bn > 0 it
    # needs BatchNorm layers in the teacher; ``w_bn: 0`` turns the term off (uses_bn).
    needs_bn: ClassVar[bool] = False
    # Fewest generator steps per round the method works with: a bank method synthesises
    # each round's batch in its g_steps, so it needs at least one (config.load_config).
    min_g_steps: ClassVar[int] = 0

    def __init__(self, ctx: MethodContext, settings: Any) -> None:
        self.ctx = ctx
        self.settings = settings
        self.epoch = 0

    @classmethod
    def uses_bn(cls, settings: Any) -> bool:
        """Whether a run with these settings reads the teacher's BatchNorm statistics: the
        method has the term and its weight ``w_bn`` is not 0."""
        return cls.needs_bn and getattr(settings, "w_bn", 1.0) != 0

    def make_bn_hook(self) -> BNStatsHook | NoBNStats:
        """The BN-statistics hook on the teacher, or a zero term when ``w_bn`` is 0."""
        if not self.uses_bn(self.settings):
            return NoBNStats(self.ctx.device)
        return BNStatsHook(self.ctx.teacher)

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def warmup_epochs(self) -> int:
        """Epochs at the start of a run in which only the sample source learns: the engine
        runs no student step and holds the student's LR schedule (Fast's warm-up)."""
        return 0

    def start_synthesis(self) -> None:
        """Called at the start of every round, before its ``g_steps`` generator steps."""

    def end_synthesis(self) -> None:
        """Called after the round's generator steps, before its student steps."""

    def generator_step(self) -> dict[str, torch.Tensor]:
        """Improve the sample source once; return named, detached loss terms."""
        raise NotImplementedError

    def student_loss(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The student's loss on a fresh batch, and named detached terms to log."""
        raise NotImplementedError

    def frozen_student(self, x: torch.Tensor) -> torch.Tensor:
        """S's logits inside a generator step: the bare module (no DDP sync), eval mode,
        and no gradient to S's weights, so only the sample source (G or the inputs) learns."""
        student = self.ctx.student_raw
        student.eval().requires_grad_(False)
        try:
            with self.ctx.autocast():
                return student(x)
        finally:
            student.requires_grad_(True).train()

    def status(self) -> dict[str, float]:
        """Scalars shown in the progress bar and logged per epoch (lambda, weights)."""
        return {}

    @torch.no_grad()
    def preview(self, n: int, seed: int = 0) -> torch.Tensor:
        """n synthetic images in [0, 1] for the sample grid; must not touch the global RNG."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class GeneratorMethod(Method):
    """A method whose samples come from one generator G(z), z ~ N(0, I)."""

    def __init__(self, ctx: MethodContext, settings: Any) -> None:
        super().__init__(ctx, settings)
        self.generator = ctx.make_generator()
        self.nz = self.generator.nz
        if ctx.channels_last:
            self.generator.to(memory_format=torch.channels_last)
        self.generator_ddp = ctx.wrap(self.generator)  # what the generator step calls
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=ctx.generator.lr,
                                      betas=ctx.generator.betas)
        self.bn_hook = self.make_bn_hook() if self.needs_bn else None
        # batched_g: this round's student batches, made by one G forward, not yet used.
        self._queued: list[torch.Tensor] = []

    def sample_z(self, n: int | None = None) -> torch.Tensor:
        return torch.randn(n or self.ctx.batch_size, self.nz, device=self.ctx.device)

    def synthesize(self, n: int | None = None) -> torch.Tensor:
        """Normalised samples G(z) for the teacher/student, with grad to G."""
        return self.ctx.normalize(self.generator_ddp(self.sample_z(n)))

    @torch.no_grad()
    def queue_fresh_images(self, steps: int) -> None:
        """``batched_g``: the next ``steps`` batches of :meth:`fresh_images` from one G
        forward on ``steps x batch_size`` latent codes. G is in eval mode, so each sample
        depends on its own z only: the batches are distributed as ``steps`` separate
        forwards would make them (they use the random stream differently, so they are not
        the same numbers). The engine queues a round's batches before its student steps,
        and every student step uses one, so the queue is empty at every checkpoint."""
        b = self.ctx.batch_size
        self._queued = list(self._eval_forward(self.sample_z(steps * b)).split(b))

    @torch.no_grad()
    def fresh_images(self) -> torch.Tensor:
        """A fresh batch G(z) in [0, 1] from G in eval mode, no gradient (the next queued
        batch under ``batched_g``)."""
        if self._queued:
            return self._queued.pop(0)
        return self._eval_forward(self.sample_z())

    @torch.no_grad()
    def _eval_forward(self, z: torch.Tensor) -> torch.Tensor:
        """G(z) in eval mode (each sample depends on its own z only), then back to train.
        Under ``amp`` G runs in bf16, as in its own steps (in fp32 this forward was the
        costliest kernel of a CIFAR round under ``batched_g``); the images are float32."""
        self.generator.eval()
        with self.ctx.autocast():
            images = self.generator(z)
        self.generator.train()
        return images.float()

    def fixed_batch(self) -> torch.Tensor:
        """A fresh normalised batch from G in eval mode, no gradient."""
        return self.ctx.normalize(self.fresh_images())

    def student_batch(self) -> torch.Tensor:
        """What the student trains on (normalised): by default a fresh batch from G."""
        return self.fixed_batch()

    def teacher_with_bn(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A batch G(z) with gradient to G, T's logits on it and the BN-statistics term."""
        with self.ctx.autocast(), self.bn_hook:
            x = self.synthesize()
            t = self.ctx.teacher(x)
            bn = self.bn_hook.loss()
        return x, t, bn

    def update_generator(self, loss: torch.Tensor, clip: float = 0.0) -> None:
        """One optimiser step of G on ``loss`` (optionally gradient-norm clipped)."""
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(self.generator.parameters(), clip)
        self.opt_g.step()

    def student_teacher_logits(self, hooked: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """S's logits (with gradient) and T's (without) on the student's batch. ``hooked``:
        through the teacher module itself, never its CUDA graph, so its forward hooks run."""
        x = self.student_batch()
        with self.ctx.autocast():
            with torch.no_grad():
                t = self.ctx.teacher(x) if hooked else self.ctx.teacher_logits(x)
            st = self.ctx.student(x)
        return st, t

    @torch.no_grad()
    def preview(self, n: int, seed: int = 0) -> torch.Tensor:
        z = torch.randn(n, self.nz, generator=torch.Generator().manual_seed(seed))
        return self._eval_forward(z.to(self.ctx.device)).cpu()

    def state_dict(self) -> dict[str, Any]:
        if self._queued:  # the engine checkpoints between rounds only
            raise RuntimeError(f"checkpoint asked for with {len(self._queued)} queued batches "
                               "left (batched_g); checkpoint between rounds")
        return {"generator": self.generator.state_dict(), "opt_g": self.opt_g.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.opt_g.load_state_dict(state["opt_g"])
