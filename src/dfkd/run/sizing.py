"""Sizing a recipe's round to the memory of a CPU machine.

A recipe made for a GPU (Tiny-ImageNet's: batch 512, and with ``batched_g`` one generator
forward for all ``kd_steps`` student batches of a round) can need more memory on a CPU than
the machine has: one such round of a 64 px colour pair peaked at 17.8 GB. Before the first
round, a run on the CPU estimates a round's peak from one small forward of each model
(the bytes of every layer's output per sample, which a training step keeps for its
backward pass) and, when the estimate exceeds ``SAFE_FRACTION`` of the memory available,
scales the settings that came from the base recipe down: first ``batched_g`` off, then
``batch_size`` halved (not below ``MIN_BATCH``), saying so in one line. Settings the user
gave are never changed, nor are those of a run that did not start from a base recipe (a
``--config`` file, a bench or tune run, the engine defaults); if they are what is too
large, the line only warns, with the expected memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfkd.hooks import ForwardHooks, eval_forward

SAFE_FRACTION = 0.6   # of the memory available when the run starts
ROUND_SETTINGS = frozenset({"batch_size", "batched_g"})   # what sizing may scale
MIN_BATCH = 32        # scaling stops here: smaller batches change what the recipe learns
GB = 1e9


def available_bytes() -> int | None:
    """Memory available to a new allocation now: /proc/meminfo's MemAvailable (Linux),
    else free physical pages (os.sysconf); None where neither says."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    with contextlib.suppress(OSError, ValueError, AttributeError):
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return None


@dataclass(frozen=True)
class Footprint:
    """Bytes per sample of each model's layer outputs in one forward, and the fixed bytes
    (parameters of all three models, with optimiser state and gradients)."""

    teacher: float
    student: float
    generator: float      # the sample source's (for a bank method: the image itself)
    generator_peak: float  # its largest layer's output, what a no-grad forward holds at once
    image: float
    fixed: float


def round_bytes(fp: Footprint, batch: int, kd_steps: int, batched_g: bool) -> float:
    """The estimated peak of one round: the larger of a generator step (generator, teacher
    and student forward and backward on a batch) and a student step (student forward and
    backward, teacher forward), plus with ``batched_g`` the round's ``kd_steps`` batches of
    images made by one generator forward."""
    # A training step keeps about every layer's output for its backward pass (a layer's
    # input is the previous one's output: counted once). Against a measured round of the
    # Tiny-ImageNet recipe on a CPU (ResNet-34 -> ResNet-18, batch 512: a 17.8 GB peak)
    # this estimates 25 GB: on the safe side.
    generator_step = batch * (fp.generator + fp.teacher + fp.student)
    student_step = batch * (fp.student + fp.teacher)
    peak = max(generator_step, student_step)
    if batched_g:
        images = batch * kd_steps * fp.image
        peak = max(peak, images + student_step,
                   images + 2 * batch * kd_steps * fp.generator_peak)
    return fp.fixed + peak


@dataclass(frozen=True)
class Sizing:
    batch_size: int
    batched_g: bool
    estimate: float       # bytes, with the settings chosen
    line: str | None      # what to tell the user (None: nothing to say)


def size_round(fp: Footprint, *, batch_size: int, kd_steps: int, batched_g: bool,
               available: float | None, free: set[str], world_size: int = 1) -> Sizing:
    """The round's settings for this memory: unchanged when the estimate fits in
    ``SAFE_FRACTION`` of ``available``; else the ``free`` ones (from the base recipe, not
    the user's) scaled down, with a line saying so, or a warning when that is not enough."""
    before = round_bytes(fp, batch_size, kd_steps, batched_g)
    if available is None or before <= SAFE_FRACTION * available:
        return Sizing(batch_size, batched_g, before, None)
    budget = SAFE_FRACTION * available
    batch, batched = batch_size, batched_g
    if batched and "batched_g" in free:
        batched = False
    while round_bytes(fp, batch, kd_steps, batched) > budget and "batch_size" in free \
            and batch // 2 >= max(MIN_BATCH, world_size):
        batch = batch // 2 // world_size * world_size
    after = round_bytes(fp, batch, kd_steps, batched)
    had = f"batch_size {batch_size}" + (", batched_g" if batched_g else "")
    where = (f"about {before / GB:.1f} GB per round, more than {SAFE_FRACTION:.0%} of the "
             f"{available / GB:.1f} GB of memory available")
    changes = ([f"batch_size {batch}"] if batch != batch_size else []) + \
        (["batched_g off"] if batched != batched_g else [])
    if not changes:
        return Sizing(batch, batched, after, (
            f"warning: on this CPU the run's settings ({had}) need {where}; it may run out "
            "of memory: lower --set batch_size (or --set batched_g=false)"))
    fits = "" if after <= budget else "; still more than that, so it may run out of memory"
    return Sizing(batch, batched, after, (
        f"the recipe's settings ({had}) are sized for a GPU and would need {where} on this "
        f"CPU: running with {', '.join(changes)} instead (about {after / GB:.1f} GB{fits}); "
        "--set batch_size=N or --set batched_g=true sets them yourself"))


def _output_bytes(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    """(sum, largest) of the bytes of the leaf layers' outputs per sample, for input x."""
    sizes: list[int] = []
    # An in-place layer (ReLU) returns its input: counted once. The outputs are kept alive
    # until the end, so that no freed address is reused and mistaken for one seen.
    kept: dict[int, torch.Tensor] = {}

    def hook(_module, _inputs, output) -> None:
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if torch.is_tensor(t) and t.data_ptr() not in kept:
                kept[t.data_ptr()] = t
                sizes.append(t.numel() * t.element_size())

    leaves = [m for m in model.modules() if not list(m.children())]
    with ForwardHooks(leaves, hook):
        eval_forward(model, x)   # no BatchNorm statistics are updated by this measurement
    n = x.shape[0]
    return sum(sizes) / n, max(sizes, default=0) / n


def _param_bytes(model: nn.Module) -> float:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def footprint(teacher: nn.Module, student: nn.Module, generator: nn.Module | None,
              image_shape: tuple[int, int, int], nz: int) -> Footprint:
    """Measure a :class:`Footprint` with one forward of 2 samples per model (on the CPU,
    from zeros: no random numbers are drawn)."""
    x = torch.zeros(2, *image_shape)
    teacher_bytes, _ = _output_bytes(teacher, x)
    student_bytes, _ = _output_bytes(student, x)
    image = float(x[0].numel() * x.element_size())
    gen_bytes, gen_peak = image, image
    if generator is not None:
        gen_bytes, gen_peak = _output_bytes(generator, torch.zeros(2, nz))
    # Student and generator: weights, gradients and two optimiser buffers each.
    fixed = _param_bytes(teacher) + 4 * (_param_bytes(student) +
                                         (_param_bytes(generator) if generator else 0))
    return Footprint(teacher_bytes, student_bytes, gen_bytes, max(gen_peak, image), image,
                     fixed)


def size_for_cpu(cfg: Any, given: set[str], teacher: nn.Module, student: nn.Module,
                 image_shape: tuple[int, int, int], world_size: int = 1,
                 available: float | None = None) -> tuple[Any, str | None]:
    """``cfg`` (a RunConfig on the CPU) with its round sized to this machine's memory, and
    the line to print (None: it fits). ``given``: the top-level keys the user set, which
    are never changed (``ROUND_SETTINGS`` for a run that did not start from a base recipe:
    a warning at most)."""
    from dfkd.generators import build_generator
    from dfkd.methods import GeneratorMethod, get_method

    generator = None
    nz = 1
    if issubclass(get_method(cfg.method), GeneratorMethod):
        with torch.random.fork_rng(devices=[]):   # its weights: none of the run's numbers
            generator = build_generator(cfg.generator, tuple(image_shape))
        nz = generator.nz
    try:
        fp = footprint(teacher, student, generator, tuple(image_shape), nz)
    except Exception:  # noqa: BLE001  (a model that cannot be measured so: the run says why)
        return cfg, None
    sizing = size_round(fp, batch_size=cfg.batch_size, kd_steps=cfg.kd_steps,
                        batched_g=cfg.batched_g,
                        available=available if available is not None else available_bytes(),
                        free=ROUND_SETTINGS - set(given),
                        world_size=world_size)
    if (sizing.batch_size, sizing.batched_g) != (cfg.batch_size, cfg.batched_g):
        cfg = dataclasses.replace(cfg, batch_size=sizing.batch_size,
                                  batched_g=sizing.batched_g)
    return cfg, sizing.line
