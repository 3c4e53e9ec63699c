"""The method interface: what a method declares about itself, what the trainer hands it,
and the two families' shared machinery (one generator for the run, or a sample bank)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from dfkd import distributed
from dfkd.augment import random_crop_flip
from dfkd.bank import SampleBank
from dfkd.generators import Generator, GeneratorConfig, build_generator
from dfkd.hooks import BNStatsHook, NoBNStats
from dfkd.losses import kd_kl


def warn(line: str) -> None:
    """One warning for the user, on rank 0's stderr, as the trainer's own look
    (``dfkd: warning: ...``): for a part of a method that cannot run and is skipped."""
    if distributed.current().is_main:
        print(f"dfkd: warning: {line}", file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Published:
    """A number a paper or its official repository published, and where it stands:
    ``"<owner>/<repository> <path>:L<line>"`` (the repositories' pinned commits are in
    ``configs/official/recipes.yaml``), with an optional note on what it measured."""

    value: float
    source: str
    note: str = ""


@dataclass(frozen=True)
class OfficialRecipes:
    """A column of ``dfkd reproduce``'s table: the method run at its authors' settings.

    Its recipes are ``<dataset>/<row>_<teacher>_<student>.yaml`` under ``folder`` (None:
    dfkd's bundled ``configs/``), one for each pair of the table that its authors' scripts
    cover. ``acc1`` and ``hours`` are the published test Acc@1 (%) and hours per run, by
    pair (``dfkd reproduce --pairs`` names, e.g. ``c10_resnet34_resnet18``)."""

    row: str           # the column's name: its recipes' file prefix, reproduce --methods
    label: str         # the column's title, as the papers print it ("ADI", "Fast-5")
    column: int        # its place in the table: the CuDFKD paper's columns first
    acc1: Mapping[str, Published] = field(default_factory=dict)
    hours: Mapping[str, Published] = field(default_factory=dict)
    folder: Path | None = None


@dataclass
class MethodContext:
    """What the trainer hands a method: frozen teacher, student, data geometry, device."""

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
    g_steps: int = 1             # the config's generator steps per round
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
    channels_last: bool = False
    wrap: Callable[[nn.Module], nn.Module] = lambda module: module  # DDP when distributed
    # The teacher's no-grad forward in student steps (a CUDA graph under teacher_graph);
    # None: the teacher itself.
    teacher_infer: Callable[[torch.Tensor], torch.Tensor] | None = None
    # The student's learning rate at an epoch over its base rate (its schedule): for a
    # method whose generator follows the student's schedule (DFME).
    lr_factor: Callable[[int], float] = lambda epoch: 1.0

    def make_generator(self) -> Generator:
        """A generator of the configured size (or the default for the image shape), on device."""
        return build_generator(self.generator, self.image_shape).to(self.device)

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """T's logits for a student step (call under ``torch.no_grad``)."""
        return (self.teacher_infer or self.teacher)(x)

    def normalize(self, images01: torch.Tensor) -> torch.Tensor:
        x = (images01 - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


class Method:
    """Base class of every method. A method is one file under ``dfkd/methods/`` (or any
    module that is imported): a subclass registered with
    :func:`dfkd.methods.register_method`, its ``Settings`` dataclass, and the two steps
    (:meth:`generator_step`, :meth:`student_loss`). Everything the rest of dfkd needs to
    know about a method is declared on its class, and read from the registry: ``--method``
    and the settings section, what the teacher must have (the run's checks), the docs'
    method table and navigation (:mod:`dfkd.methods.catalog`), and ``dfkd reproduce``'s
    columns with the published numbers beside them.
    """

    # --method NAME, the run config's section of its settings, a bench row.
    name: ClassVar[str]
    # The dataclass of its settings section. Every field needs a default; numeric ranges
    # are declared on the fields (dfkd.ranges.ranged) and checked with the types when a run
    # config loads; a ``validate()`` method checks what involves several fields.
    Settings: ClassVar[type]
    # How people write it ("DeepInversion / ADI"): the docs' table and navigation.
    title: ClassVar[str]
    # The paper, as Markdown: authors, *title*, venue and year, and a link.
    paper: ClassVar[str]
    # The original code, as Markdown: a link to the authors' repository.
    code: ClassVar[str]
    # Its page, under docs/methods/ ("cudfkd.md").
    docs: ClassVar[str]
    # Has a BatchNorm-statistics term, weighted by its settings' ``w_bn``: with w_bn > 0 it
    # needs BatchNorm layers in the teacher; ``w_bn: 0`` turns the term off (uses_bn).
    needs_bn: ClassVar[bool] = False
    # What else it reads inside the teacher, beyond its logits, in words (the docs' table).
    reads_layers: ClassVar[str] = ""
    # Needs more of the teacher than its answers to a batch (a gradient through it, its
    # layers or BatchNorm statistics): False for a method that can use a black-box teacher.
    needs_white_box: ClassVar[bool] = True
    # Fewest generator steps per round the method works with: a bank method synthesises
    # each round's batch in its g_steps, so it needs at least one (config.load_config).
    min_g_steps: ClassVar[int] = 0
    # Its columns in dfkd reproduce's table: its authors' recipes and published numbers.
    official: ClassVar[tuple[OfficialRecipes, ...]] = ()

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

    def compile_modules(self, compile: Callable[[nn.Module], nn.Module]) -> None:
        """``compile: true``: replace the modules the method's steps call with
        ``compile(module)`` (wrappers that share the parameters, so optimisers, checkpoints
        and previews keep the plain modules). A method with no module of its own has none."""

    @property
    def warmup_epochs(self) -> int:
        """Epochs at the start of a run in which only the sample source learns: the trainer
        runs no student step and holds the student's LR schedule (Fast's warm-up)."""
        return 0

    def generator_steps(self) -> int:
        """Generator steps in this round: the config's ``g_steps`` (NAYER runs that many per
        synthesis loop, and a round holds several loops)."""
        return self.ctx.g_steps

    def start_synthesis(self) -> None:
        """Called at the start of every round, before its generator steps."""

    def end_synthesis(self) -> None:
        """Called after the round's generator steps, before its student steps."""

    def generator_step(self) -> dict[str, torch.Tensor]:
        """Improve the sample source once; return named, detached loss terms."""
        raise NotImplementedError

    def student_loss(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The student's loss on a fresh batch, and named detached terms to log."""
        raise NotImplementedError

    def frozen_student(self, x: torch.Tensor, train: bool = False,
                       amp: bool = True) -> torch.Tensor:
        """S's logits inside a generator step: the bare module (no DDP sync), eval mode,
        and no gradient to S's weights, so only the sample source (G or the inputs) learns.
        ``train``: train mode instead, so S's BatchNorm layers use the batch's statistics
        and update their running ones (NAYER's official code, after a round's first loop).
        ``amp=False``: in float32 even under ``amp`` (DFME's finite differences)."""
        student = self.ctx.student_raw
        student.train(train).requires_grad_(False)
        try:
            with self.ctx.autocast() if amp else contextlib.nullcontext():
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
        self.generator = self.build_generator()
        self.nz = self.generator.nz
        if ctx.channels_last:
            self.generator.to(memory_format=torch.channels_last)
        self.generator_ddp = ctx.wrap(self.generator)  # what the generator step calls
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=ctx.generator.lr,
                                      betas=ctx.generator.betas)
        self.bn_hook = self.make_bn_hook() if self.needs_bn else None
        # batched_g: this round's student batches, made by one G forward, not yet used.
        self._queued: list[torch.Tensor] = []

    def build_generator(self) -> nn.Module:
        """The run's generator, on the device (with an ``nz`` attribute): by default dfkd's
        generator of the configured size (``MethodContext.make_generator``)."""
        return self.ctx.make_generator()

    def compile_modules(self, compile: Callable[[nn.Module], nn.Module]) -> None:
        self.generator_ddp = compile(self.generator_ddp)

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
        the same numbers). The trainer queues a round's batches before its student steps,
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
        if self._queued:  # the trainer checkpoints between rounds only
            raise RuntimeError(f"checkpoint asked for with {len(self._queued)} queued batches "
                               "left (batched_g); checkpoint between rounds")
        return {"generator": self.generator.state_dict(), "opt_g": self.opt_g.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        self.opt_g.load_state_dict(state["opt_g"])


class BankMethod(Method):
    """Synthesis into a :class:`~dfkd.bank.SampleBank`; the student learns KD on the bank.

    Each round synthesises one batch (``start_synthesis``, then ``g_steps`` x
    ``generator_step``, then ``end_synthesis`` puts it in the bank). Subclass settings need
    ``bank_size`` (0 keeps every batch, as the originals' image pools do; a positive size
    keeps the latest rows), ``tau``, ``padding`` and ``flip``: each student batch is drawn
    from the whole bank with replacement and augmented per sample as the originals' CIFAR
    loaders do (zero-pad ``padding`` pixels, random crop back to size, random horizontal
    flip if ``flip``: :func:`dfkd.augment.random_crop_flip`).
    """

    # Each round's batch is synthesised in its generator steps, so a round needs one.
    min_g_steps: ClassVar[int] = 1

    def __init__(self, ctx: MethodContext, settings: Any) -> None:
        super().__init__(ctx, settings)
        self.bank = SampleBank(settings.bank_size)
        self.bn_hook = self.make_bn_hook() if self.needs_bn else None

    def pixel_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised values of pixels 0 and 1, per channel, for clamping inputs."""
        return (0 - self.ctx.mean) / self.ctx.std, (1 - self.ctx.mean) / self.ctx.std

    def student_loss(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.settings
        x01 = random_crop_flip(self.bank.sample(self.ctx.batch_size), s.padding, s.flip)
        x = self.ctx.normalize(x01)
        with self.ctx.autocast():
            with torch.no_grad():
                t = self.ctx.teacher(x)
            st = self.ctx.student(x)
        loss = kd_kl(st, t, s.tau)
        return loss, {"loss_s": loss.detach(), "kd": loss.detach()}

    def status(self) -> dict[str, float]:
        return {"bank": float(len(self.bank))}

    @torch.no_grad()
    def preview(self, n: int, seed: int = 0) -> torch.Tensor:
        return self.bank.latest(n).float().cpu()

    def state_dict(self) -> dict[str, Any]:
        return {"bank": self.bank.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bank.load_state_dict(state["bank"], self.ctx.device)
