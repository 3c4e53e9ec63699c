"""The distillation loop shared by every method.

One epoch = ``rounds`` x (``g_steps`` generator steps, then ``kd_steps`` student
steps). After each epoch: cosine LR step, evaluation on real data (``eval_split``: the
test set, or the val split when choosing configurations), one
line in ``metrics.jsonl``, a sample grid and an atomic ``checkpoint.pt`` holding
everything needed for an exact resume (student, method state, both optimisers,
scheduler, metric history and every RNG). SIGINT/SIGTERM finish the current
round, checkpoint it and stop; the run resumes from that round.

Each epoch also measures the data-free signal (:mod:`dfkd.probe`): the student's
agreement, loyalty and KL with the teacher on a fixed set of held-out synthetic images,
made once at the start (and kept in the checkpoint); :mod:`dfkd.advice` turns it into
warnings when the run is not learning.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import resource
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from dfkd import distributed, runlock
from dfkd.advice import RunWatch, has_normalisation, hints_for, student_divergence
from dfkd.checkpoint import (
    BackgroundWriter,
    atomic_save,
    cpu_snapshot,
    safe_load,
    save_student_files,
)
from dfkd.config import RunConfig
from dfkd.errors import DfkdError
from dfkd.hooks import batchnorm_layers
from dfkd.methods import GeneratorMethod, MethodContext, get_method
from dfkd.metrics import accuracy, fidelity_metrics, predict, run_summary
from dfkd.probe import KEYS as SYNTHETIC_KEYS
from dfkd.probe import NOTICE_SECONDS as PROBE_NOTICE_SECONDS
from dfkd.probe import SyntheticProbe
from dfkd.probe import expected_seconds as expected_probe_seconds
from dfkd.report import dumps_strict, save_image_grid
from dfkd.teacher_wrap import FrozenTeacher, GraphedForward
from dfkd.trackers import check_trackers
from dfkd.trackers.hub import Tracking

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"


@dataclass
class ImageSpec:
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    dataset: str | None = None   # recorded in student.pt, so the student knows its data
    # Where mean/std came from (dfkd.data.normalization: "checkpoint", "zoo",
    # "dataset", "given"); recorded in student.pt and summary.json.
    normalization: str = "given"

    def normalization_record(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "source": self.normalization}


@dataclass
class EvalData:
    """Real evaluation data (the run's ``eval_split``): uint8 images (scaled and normalised
    here) or float model inputs."""

    images: torch.Tensor
    labels: torch.Tensor


class NonFiniteLoss(DfkdError):
    """A loss term became NaN or infinite; the last good checkpoint is kept."""


class Interrupted(DfkdError):
    """Raised after a signal-triggered checkpoint; carries the conventional exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise DfkdError("--device cuda was asked for, but PyTorch sees no CUDA GPU "
                        "(use --device cpu or auto)")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", distributed.current().local_rank)


def use_deterministic_algorithms() -> None:
    """What exact resume on CUDA needs: deterministic kernels (a warning names any op that
    has none) and a fixed cuBLAS workspace. Process-wide, as PyTorch's switches are."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class _StopFlag:
    """First SIGINT/SIGTERM asks the loop to stop after the current round; a second
    SIGINT restores the default handler's behaviour and quits at once."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, _frame) -> None:
        if self.signum is not None:  # already stopping (a bench's pool may send SIGTERM too)
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: finishing the current round and "
              "saving a checkpoint (Ctrl-C again to quit at once)", file=sys.stderr, flush=True)

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _ema_update(decay: float):
    """AveragedModel's update for student_ema: after the n-th update (n = 1, 2, ...) the
    average takes min(decay, (1 + n) / (10 + n)) of itself, so it follows the live student
    early on (a plain 0.999 would still be mostly the initial weights after 1,000 steps).
    Integer buffers (BatchNorm's batch counter) take the live value."""
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor],
               n: torch.Tensor) -> None:
        if not averaged[0].is_floating_point():
            torch._foreach_copy_(averaged, current)
            return
        keep = torch.clamp((n + 1) / (n + 10), max=decay).to(averaged[0].dtype)
        torch._foreach_mul_(averaged, keep)
        torch._foreach_add_(averaged, torch._foreach_mul(current, 1 - keep))
    return update


class Trainer:
    """Owns one run: models, optimisers, method, output folder and the loop."""

    def __init__(self, cfg: RunConfig, teacher: nn.Module, student: nn.Module,
                 spec: ImageSpec, eval_data: EvalData | None, out_dir: Path | None,
                 teacher_acc1: float | None = None, progress: bool | None = None,
                 student_arch: str | None = None, recipe_hint: str | None = None) -> None:
        self.cfg = cfg
        self.dist = distributed.current()
        self.device = resolve_device(cfg.device)
        self.spec = spec
        # How student.pt rebuilds the student: a zoo name or a model spec (None for a
        # module built in Python, which the user rebuilds).
        self.student_arch = student_arch
        # The validated recipe for these images and this method (dfkd.recipes), which the
        # warnings suggest to a run that did not start from it.
        self.recipe_hint = recipe_hint
        self.out_dir = out_dir
        self.writer = BackgroundWriter()
        # metrics.jsonl's rows on disk, or queued behind their checkpoint (rank 0 only).
        self._rows_written = 0
        self.teacher_acc1 = teacher_acc1
        # Only rank 0 talks and writes; every rank computes.
        self.is_main = self.dist.is_main
        # Experiment trackers (dfkd.trackers): rank 0 hands them each metrics.jsonl row.
        # Checked here, not in dfkd.config, which dfkd.trackers builds on: names -> a list.
        cfg.tracker = check_trackers(cfg.tracker)
        self.tracking = Tracking(cfg.tracker if self.is_main else None, cfg.tracker_uri,
                                 out_dir)
        self.progress = (sys.stderr.isatty() if progress is None else progress) and self.is_main
        if cfg.batch_size % self.dist.world_size:
            raise DfkdError(f"batch_size {cfg.batch_size} is the global batch and must divide "
                            f"evenly over {self.dist.world_size} processes")
        if cfg.deterministic:
            use_deterministic_algorithms()
        cuda = self.device.type == "cuda"
        self.channels_last = cuda and cfg.channels_last
        memory_format = torch.channels_last if self.channels_last else torch.preserve_format
        seed_everything(cfg.seed)
        self.teacher = FrozenTeacher(teacher.to(self.device, memory_format=memory_format))
        self.student = student.to(self.device, memory_format=memory_format)
        self.student.train()
        # DDP: each rank synthesises batch_size / world samples; S and G are wrapped so their
        # gradients are averaged. Rank 0's initial weights are broadcast at wrap time.
        self.student_ddp = self._wrap(self.student)
        method_cls = get_method(cfg.method)
        if method_cls.uses_bn(cfg.method_settings) and not batchnorm_layers(teacher):
            raise DfkdError(f"method '{cfg.method}' matches the teacher's BatchNorm statistics, "
                            "but the teacher has no BatchNorm layer; set "
                            f"{cfg.method}.w_bn=0 to run it without that term, or pick a "
                            "method that needs none (dafl, dfad, zskt)")
        mean = torch.tensor(spec.mean, device=self.device).view(1, -1, 1, 1)
        std = torch.tensor(spec.std, device=self.device).view(1, -1, 1, 1)
        self._mean, self._std = mean, std
        use_amp = cuda and cfg.amp
        ctx = MethodContext(
            teacher=self.teacher, student=self.student_ddp, student_raw=self.student,
            num_classes=spec.num_classes, image_shape=tuple(spec.image_shape), mean=mean,
            std=std, device=self.device, batch_size=cfg.batch_size // self.dist.world_size,
            epochs=cfg.epochs, generator=cfg.generator, wrap=self._wrap,
            autocast=(lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp
            else contextlib.nullcontext,
            channels_last=self.channels_last,
            # CUDA only; on CPU the teacher runs as usual (documented, like amp).
            teacher_infer=GraphedForward(self.teacher) if cuda and cfg.teacher_graph else None,
        )
        self.method = method_cls(ctx, cfg.method_settings)
        if cfg.compile:
            # Compiled wrappers share parameters with the originals, so optimisers,
            # checkpoints and evaluation keep using the plain modules.
            ctx.student = torch.compile(ctx.student)
            if isinstance(getattr(self.method, "generator_ddp", None), nn.Module):
                self.method.generator_ddp = torch.compile(self.method.generator_ddp)
        # Identical initial weights everywhere, then a different sample stream per rank.
        seed_everything(cfg.seed + self.dist.rank)
        opt = cfg.student_optim
        self.opt_s = torch.optim.SGD(self.student.parameters(), lr=opt.lr, momentum=opt.momentum,
                                     weight_decay=opt.weight_decay,
                                     foreach=None if not cuda else True)
        self.sched_s = torch.optim.lr_scheduler.CosineAnnealingLR(
            self.opt_s, T_max=self._learning_epochs)
        # student_ema: an average of the weights and BN buffers, the student that is kept.
        self.student_ema = None if not cfg.student_ema else AveragedModel(
            self.student, multi_avg_fn=_ema_update(cfg.student_ema), use_buffers=True)

        self.eval_data = eval_data
        self.teacher_test_logits: torch.Tensor | None = None
        if eval_data is not None:
            self._eval_transform = self._make_eval_transform(eval_data, mean, std)
            # The teacher's test predictions are computed once, not every epoch.
            self.teacher_test_logits = self._predict(self.teacher)
            measured = accuracy(self.teacher_test_logits, eval_data.labels)["acc1"]
            if self.teacher_acc1 is None:
                self.teacher_acc1 = measured
            if cfg.check_teacher:
                check_teacher_accuracy(measured, spec, cfg.eval_split)

        # The data-free signal: made at the start of fit (dfkd.probe), then checkpointed.
        self.probe: SyntheticProbe | None = None
        self._probe_transform = self._pixels_transform(mean, std)
        self.watch = RunWatch()
        # A diverging student is stopped (dfkd.advice.student_divergence): its first loss,
        # until the first epoch's is in the history, and whether it has normalisation.
        self._first_student_loss: float | None = None
        self._student_normalised = has_normalisation(student)
        self._epoch_weights: list[torch.Tensor] | None = None   # the student's, for the watch

        # Loop position and accumulators: all of it is checkpointed.
        self.epoch = 0
        self.round = 0
        self.history: list[dict[str, Any]] = []
        self.sums: dict[str, float] = {}
        self.timers = {"synthesis_seconds": 0.0, "student_seconds": 0.0, "elapsed_seconds": 0.0}

    def _wrap(self, module: nn.Module) -> nn.Module:
        if not self.dist.enabled:
            return module
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def _predict(self, model: nn.Module) -> torch.Tensor:
        """Test-set logits; under DDP each rank predicts one contiguous shard."""
        images = self.eval_data.images
        if self.dist.enabled:
            images = torch.tensor_split(images, self.dist.world_size)[self.dist.rank]
        logits = predict(model, images, self.cfg.eval_batch_size, self._eval_transform,
                         self.device)
        return torch.cat(distributed.all_gather_objects(logits))

    def _make_eval_transform(self, data: EvalData, mean, std):
        if data.images.dtype == torch.uint8:
            return self._pixels_transform(mean, std)
        return lambda x: x.float()

    def _pixels_transform(self, mean, std):
        """uint8 pixels -> normalised model input."""
        def transform(x):
            x = (x.float() / 255.0 - mean) / std
            return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
        return transform

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": "dfkd-run-1",
            "config": self.cfg.to_dict(),
            "device_type": self.device.type,
            "epoch": self.epoch,
            "round": self.round,
            "student": self.student.state_dict(),
            "student_ema": None if self.student_ema is None else self.student_ema.state_dict(),
            "opt_s": self.opt_s.state_dict(),
            "sched_s": self.sched_s.state_dict(),
            "method": self.method.state_dict(),
            "history": self.history,
            "sums": self.sums,
            "timers": self.timers,
            "teacher_acc1": self.teacher_acc1,
            "probe": self.probe.state_dict() if self.probe is not None else None,
            "watch": self.watch.state_dict(),
            "rng": distributed.all_gather_objects(rng_state()),  # one per rank
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("device_type", self.device.type)
        if saved != self.device.type:
            raise DfkdError(
                f"this run was checkpointed on {saved} and would resume on "
                f"{self.device.type}; a resume is exact only on the same kind of device. "
                f"Resume it with --device {saved}, or start a new run")
        self.student.load_state_dict(state["student"])
        if self.student_ema is not None:
            self.student_ema.load_state_dict(state["student_ema"])
        self.opt_s.load_state_dict(state["opt_s"])
        self.sched_s.load_state_dict(state["sched_s"])
        self._rescale_student_lr(state.get("config") or {})
        self._stretch_student_schedule()
        self.method.load_state_dict(state["method"])
        self.epoch, self.round = int(state["epoch"]), int(state["round"])
        self.history = list(state["history"])
        self.sums = dict(state["sums"])
        self.timers = dict(state["timers"])
        # Checkpoints written before the signal existed have no probe: fit makes one.
        probe = state.get("probe")
        self.probe = SyntheticProbe.from_state(probe) if probe is not None else None
        self.watch.load_state_dict(state.get("watch"))
        if len(state["rng"]) != self.dist.world_size:
            raise DfkdError(f"this run was checkpointed with {len(state['rng'])} processes; "
                            f"resume it with the same number (now {self.dist.world_size})")
        set_rng_state(state["rng"][self.dist.rank])

    def save_checkpoint(self) -> None:
        """Write checkpoint.pt, the student files and the new metrics.jsonl rows in the
        background: they are copied to the CPU now, and the next epoch trains while they
        reach the disk (``fit`` waits for the write before it returns or raises, and before
        the next one). A row is appended only once its checkpoint is on disk, so a run
        killed at any moment resumes from at least the last epoch its metrics show."""
        if self.out_dir is not None:
            state = self.state_dict()  # a collective: every rank takes part
            if self.is_main:
                out_dir, meta = self.out_dir, self.student_meta()
                state = cpu_snapshot(state)
                student = self._kept_weights(state)
                rows = "".join(dumps_strict(row) + "\n"
                               for row in state["history"][self._rows_written:])
                self._rows_written = len(state["history"])

                def write() -> None:
                    atomic_save(state, out_dir / CHECKPOINT)
                    save_student_files(out_dir, student, meta)
                    if rows:
                        with open(out_dir / METRICS, "a") as f:
                            f.write(rows)
                            f.flush()
                            os.fsync(f.fileno())
                        self.tracking.saved(rows)   # after their checkpoint, as here
                self.writer.submit(write)
            distributed.barrier()

    def _kept_weights(self, state: dict[str, Any]) -> dict[str, torch.Tensor]:
        """kept_student's weights, taken from a checkpoint ``state`` rather than copied off
        the device a second time: the student's, or the average's without AveragedModel's
        ``module.`` prefix and its ``n_averaged`` counter."""
        if self.student_ema is None:
            return state["student"]
        return {key.removeprefix("module."): value
                for key, value in state["student_ema"].items() if key.startswith("module.")}

    def student_meta(self) -> dict[str, Any]:
        """student.pt's metadata, in train-teacher's format: what rebuilds the model and
        normalises its inputs, and its metrics at the last finished epoch."""
        cfg, spec = self.cfg, self.spec
        last = self.history[-1] if self.history else {}
        split = cfg.eval_split if self.eval_data is not None else None
        meta: dict[str, Any] = {
            "arch": self.student_arch, "dataset": spec.dataset,
            "num_classes": spec.num_classes, "image_shape": list(spec.image_shape),
            "mean": list(spec.mean), "std": list(spec.std),
            "normalization": spec.normalization, "dfkd_kind": "distilled",
            "method": cfg.method, "teacher": cfg.teacher, "seed": cfg.seed,
            "epoch": self.epoch, "epochs": cfg.epochs, "eval_split": split,
            "teacher_acc1": self.teacher_acc1,
        }
        if self.student_arch is None:
            meta["module_class"] = f"{type(self.student).__module__}." \
                                   f"{type(self.student).__qualname__}"
        for key in ("acc1", "acc5", "agreement", "loyalty", "loyalty_official"):
            if key in last:  # {split}_acc1 as train-teacher writes test_acc1 and val_acc1
                meta[f"{split}_{key}"] = last[key]
        return meta

    def resume(self, state: dict[str, Any] | None = None) -> None:
        """Continue from ``state``, or from the checkpoint in the run folder."""
        assert self.out_dir is not None
        self.load_state_dict(state if state is not None else safe_load(self.out_dir / CHECKPOINT))
        if not self.is_main:
            return
        # The metrics file continues exactly the checkpoint's history: lines written
        # after the checkpoint (by a run that was then killed) are dropped.
        lines = "".join(dumps_strict(row) + "\n" for row in self.history)
        tmp = self.out_dir / (METRICS + ".tmp")
        tmp.write_text(lines)
        os.replace(tmp, self.out_dir / METRICS)
        self._rows_written = len(self.history)

    # ------------------------------------------------------------------- loop
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _run_round(self) -> dict[str, float]:
        cfg = self.cfg
        terms: dict[str, torch.Tensor] = {}

        def add(logs: dict[str, torch.Tensor]) -> None:
            for k, v in logs.items():
                terms[k] = terms[k] + v.float() if k in terms else v.float()

        t0 = time.perf_counter()
        self.method.start_synthesis()
        for _ in range(cfg.g_steps):
            add(self.method.generator_step())
        self.method.end_synthesis()
        self._sync()
        t1 = time.perf_counter()
        student_steps = cfg.kd_steps if self.epoch >= self.method.warmup_epochs else 0
        if cfg.batched_g and student_steps:
            # All the round's student batches from one G forward; each step uses one, so
            # none is left when the round ends (checkpoints are taken between rounds).
            self.method.queue_fresh_images(student_steps)
        for _ in range(student_steps):
            loss, logs = self.method.student_loss()
            self.opt_s.zero_grad(set_to_none=True)
            loss.backward()
            self.opt_s.step()
            if self.student_ema is not None:
                self.student_ema.update_parameters(self.student)
            add(logs)
        distributed.broadcast_buffers(self.student)
        if self.student_ema is not None:
            distributed.broadcast_buffers(self.student_ema.module)
        # One host-device transfer (and one all-reduce under DDP) per round, not per step.
        names = list(terms)
        values = distributed.all_reduce_mean(torch.stack([terms[k] for k in names])).tolist() \
            if names else []
        t2 = time.perf_counter()
        self.timers["synthesis_seconds"] += t1 - t0
        self.timers["student_seconds"] += t2 - t1
        # Training wall time (synthesis + student steps); evaluation is not counted.
        self.timers["elapsed_seconds"] += t2 - t0
        self._check_student_loss(dict(zip(names, values)), student_steps)
        for name, value in zip(names, values):
            if not math.isfinite(value):
                raise NonFiniteLoss(
                    f"non-finite loss: '{name}' became {value} in epoch {self.epoch + 1}, round "
                    f"{self.round + 1}; the last good checkpoint is left as it was. Lower the "
                    "learning rates or this term's weight."
                )
            steps = cfg.g_steps if name.startswith(("loss_g", "g_")) else cfg.kd_steps
            self.sums[name] = self.sums.get(name, 0.0) + value / max(steps, 1)
        return dict(zip(names, values))

    def _student_loss_reference(self) -> float | None:
        """The student loss (mean per step) of the first epoch that had student steps, or
        of this run's first round with some while that epoch is not over."""
        first = next((row["loss_s"] for row in self.history if "loss_s" in row), None)
        return first if first is not None else self._first_student_loss

    def _check_student_loss(self, values: dict[str, float], student_steps: int) -> None:
        """Stop a student that diverges (dfkd.advice.student_divergence), before anything
        of the round is checkpointed."""
        if "loss_s" not in values or not student_steps:
            return
        loss = values["loss_s"] / student_steps
        if self._student_loss_reference() is None and math.isfinite(loss):
            self._first_student_loss = loss
        if self.out_dir is None:
            again = "run it again with"
        elif (self.out_dir / CHECKPOINT).is_file():
            again = f"resume with: dfkd distill --resume {self.out_dir}"
        else:
            again = "start it again with"
        line = student_divergence(
            "loss_s", loss, self._student_loss_reference(),
            where=f"in epoch {self.epoch + 1}, round {self.round + 1}",
            lr=self.opt_s.param_groups[0]["lr"], configured_lr=self.cfg.student_optim.lr,
            normalised=self._student_normalised, resume_hint=again)
        if line is not None:
            raise NonFiniteLoss(line)

    def _rescale_student_lr(self, recorded: dict[str, Any]) -> None:
        """A resume given another student_optim.lr (say, after a divergence) goes on from
        the same point of the schedule at the new rate: the optimiser's and the schedule's
        rates, restored from the checkpoint, are scaled by new / recorded."""
        old = (recorded.get("student_optim") or {}).get("lr")
        new = self.cfg.student_optim.lr
        if not old or old == new:
            return
        scale = new / old
        for group in self.opt_s.param_groups:
            group["lr"] *= scale
            group["initial_lr"] = group.get("initial_lr", old) * scale
        self.sched_s.base_lrs = [lr * scale for lr in self.sched_s.base_lrs]
        self.sched_s._last_lr = [group["lr"] for group in self.opt_s.param_groups]

    @property
    def _learning_epochs(self) -> int:
        """The epochs the student's cosine schedule spans: those after the method's warm-up."""
        return max(1, self.cfg.epochs - self.method.warmup_epochs)

    def _stretch_student_schedule(self) -> None:
        """A resume given another ``epochs`` (say, to extend a finished run): the student's
        cosine, restored for the old length, spans the new one from the same step, as an
        uninterrupted run of that length would be at this step (without this, it would stay
        at its end and rise again)."""
        learning_epochs = self._learning_epochs
        sched = self.sched_s
        if sched.T_max == learning_epochs:
            return
        sched.T_max = learning_epochs
        at = (1 + math.cos(math.pi * min(sched.last_epoch, learning_epochs)
                           / learning_epochs)) / 2
        for group, base in zip(self.opt_s.param_groups, sched.base_lrs):
            group["lr"] = sched.eta_min + (base - sched.eta_min) * at
        sched._last_lr = [group["lr"] for group in self.opt_s.param_groups]

    @property
    def kept_student(self) -> nn.Module:
        """The student a run evaluates, saves and returns: the average with student_ema."""
        return self.student if self.student_ema is None else self.student_ema.module

    def evaluate(self) -> dict[str, float]:
        if self.eval_data is None:
            return {}
        logits = self._predict(self.kept_student)
        out = fidelity_metrics(logits, self.teacher_test_logits, self.eval_data.labels)
        if self.student_ema is not None:  # the live student, for comparison
            out["raw_acc1"] = accuracy(self._predict(self.student), self.eval_data.labels)["acc1"]
        return out

    def _end_epoch(self) -> dict[str, Any]:
        cfg = self.cfg
        lr = self.opt_s.param_groups[0]["lr"]
        if self.epoch >= self.method.warmup_epochs:
            self.sched_s.step()
        row: dict[str, Any] = {"epoch": self.epoch + 1, **self.evaluate(),
                               **self.measure_probe(), "lr": lr, **self.method.status()}
        row.update({k: v / cfg.rounds for k, v in sorted(self.sums.items())})
        row.update({k: round(v, 3) for k, v in self.timers.items()})
        row["peak_memory_mb"] = round(peak_memory_mb(self.device), 1)
        self.history.append(row)
        self.sums = {}
        self._judge(row)
        # The row reaches metrics.jsonl with its checkpoint (save_checkpoint).
        if self.out_dir is not None and self.is_main and cfg.sample_grid:
            # rank 0's generator: all ranks hold the same weights
            save_image_grid(self.method.preview(cfg.sample_grid, seed=cfg.seed),
                            self.out_dir / "samples" / f"epoch_{self.epoch + 1:03d}.png")
        self.epoch += 1
        self.round = 0
        return row

    # ------------------------------------------------------ the data-free signal
    def ensure_probe(self) -> None:
        """Make the run's synthetic probe if it has none (dfkd.probe); before the first
        student step, also score the untrained student on it (the warnings' baseline)."""
        if self.probe is not None or not self.cfg.synthetic_probe:
            return
        seconds = expected_probe_seconds(self.teacher, tuple(self.spec.image_shape), self._mean,
                                         self._std, self.device, self.cfg.synthetic_probe)
        if seconds > PROBE_NOTICE_SECONDS and self.is_main:
            tqdm.write(f"dfkd: making the synthetic probe ({self.cfg.synthetic_probe} held-out "
                       f"synthetic images for the data-free signal): about {seconds:.0f} s, "
                       "once per run; --set synthetic_probe=0 turns it (and the warnings "
                       "that read it) off", file=sys.stderr)
        self.probe = SyntheticProbe.create(self.teacher, tuple(self.spec.image_shape),
                                           self.spec.num_classes, self._mean, self._std,
                                           self.device, self.cfg.synthetic_probe)
        if self.epoch == 0 and self.round == 0 and not self.history:
            self.measure_probe(baseline=True)

    def measure_probe(self, baseline: bool = False) -> dict[str, float]:
        """synthetic_agreement / synthetic_loyalty / synthetic_kl of the student now."""
        if self.probe is None:
            return {}
        return self.probe.measure(self.kept_student, self.cfg.eval_batch_size,
                                  self._probe_transform, self.device, baseline=baseline)

    def _trainable(self) -> list[torch.Tensor]:
        return [p for p in self.student.parameters() if p.requires_grad]

    def _weight_change(self) -> float | None:
        """How far the student's trainable weights moved since ``_epoch_weights`` was taken
        (the epoch's start, or the resume point): ||w - w0|| / ||w0||."""
        if self._epoch_weights is None:
            return None
        now = self._trainable()
        if len(now) != len(self._epoch_weights):
            return None
        if not now:
            return 0.0
        diff = sum(float((p.detach() - q).float().pow(2).sum()) for p, q in
                   zip(now, self._epoch_weights))
        base = sum(float(q.float().pow(2).sum()) for q in self._epoch_weights)
        return math.sqrt(diff) / max(math.sqrt(base), 1e-12)

    def _judge(self, row: dict[str, Any]) -> None:
        """The warning of dfkd.advice (at most one per run), on rank 0's stderr."""
        if self.probe is None:
            return
        cfg = self.cfg
        learned = self.epoch + 1 - self.method.warmup_epochs
        initial = (self.probe.initial or {}).get("synthetic_kl")
        first = self._student_loss_reference()
        rise = row["loss_s"] / first if "loss_s" in row and first and first > 0 else None
        hints = hints_for(cfg, generator_method=isinstance(self.method, GeneratorMethod),
                          recipe_name=self.recipe_hint, student_lr=row["lr"],
                          student_loss_rise=rise, student_normalised=self._student_normalised)
        for warning in self.watch.check(row, learned_epochs=learned,
                                        student_steps=learned * cfg.rounds * cfg.kd_steps,
                                        num_classes=self.spec.num_classes,
                                        initial_kl=initial,
                                        weight_change=self._weight_change(), hints=hints):
            if self.is_main:
                tqdm.write(f"dfkd: warning: {warning['message']}", file=sys.stderr)

    def fit(self, stop_after_epoch: int | None = None) -> dict[str, Any]:
        """Train to the configured end, or checkpoint and return after epoch
        ``stop_after_epoch`` (a time-sliced job; ``resume`` continues it exactly)."""
        if self.out_dir is None or not self.is_main:
            return self._fit(stop_after_epoch)
        # re-entrant: build_trainer may hold it already
        with runlock.holding(self.out_dir), self.tracking.session(self):
            try:
                return self._fit(stop_after_epoch)
            finally:  # the last checkpoint is on disk, whatever ended the loop
                self.writer.close()

    def _fit(self, stop_after_epoch: int | None) -> dict[str, Any]:
        cfg = self.cfg
        end = cfg.epochs if stop_after_epoch is None else min(stop_after_epoch, cfg.epochs)
        total = cfg.epochs * cfg.rounds
        bar = tqdm(total=total, initial=self.epoch * cfg.rounds + self.round, disable=not
                   self.progress, desc=cfg.method, unit="round", dynamic_ncols=True)
        self.ensure_probe()
        last = self.history[-1] if self.history else {}
        last_acc = last.get("acc1")
        shown = {k: last[k] for k in ("synthetic_agreement", "synthetic_loyalty") if k in last}
        with _StopFlag() as stop:
            while self.epoch < end:
                self.method.on_epoch_start(self.epoch)
                if self.probe is not None and (self.round == 0 or self._epoch_weights is None):
                    self._epoch_weights = [p.detach().clone() for p in self._trainable()]
                while self.round < cfg.rounds:
                    values = self._run_round()
                    self.round += 1
                    bar.update(1)
                    if self.progress:
                        post = {k: f"{values[k]:.3g}" for k in ("loss_s", "loss_g") if k in values}
                        post.update({k: f"{v:.3g}" for k, v in self.method.status().items()})
                        if last_acc is not None:
                            post["acc1"] = f"{last_acc:.2f}"
                        post.update({k: f"{v:.3g}" for k, v in shown.items()})
                        bar.set_postfix(post, refresh=False)
                    if distributed.any_rank(stop.signum is not None, self.device):
                        stop.signum = stop.signum or signal.SIGTERM
                        if self.round < cfg.rounds:
                            break
                if self.round == cfg.rounds:
                    row = self._end_epoch()
                    last_acc = row.get("acc1")
                    shown = {k: row[k] for k in ("synthetic_agreement", "synthetic_loyalty")
                             if k in row}
                    if not self.progress and self.is_main:
                        print(_epoch_line(row, cfg.epochs), file=sys.stderr, flush=True)
                self.save_checkpoint()
                if stop.signum is not None:
                    bar.close()
                    code = 128 + stop.signum
                    where = f"epoch {self.epoch + 1}, round {self.round + 1}" \
                        if self.epoch < cfg.epochs else "the end"
                    msg = f"interrupted; checkpoint saved at {where}."
                    if self.out_dir is not None:
                        msg += f" Resume with: dfkd distill --resume {self.out_dir}"
                    raise Interrupted(msg, code)
        bar.close()
        self.writer.wait()  # summary.json says the run is done: its files come first
        return self.summary()

    def summary(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        acc = [row["acc1"] for row in self.history if "acc1" in row]
        elapsed = [row["elapsed_seconds"] for row in self.history if "acc1" in row]
        students = max(self.timers["student_seconds"], 1e-9)
        out: dict[str, Any] = {
            "method": self.cfg.method,
            "epochs": self.epoch,
            "final_acc1": last.get("acc1"),
            "final_acc5": last.get("acc5"),
            "final_agreement": last.get("agreement"),
            "final_loyalty": last.get("loyalty"),
            "final_loyalty_official": last.get("loyalty_official"),
            # The data-free signal (dfkd.probe): what a user without test data watches.
            **{f"final_{k}": last.get(k) for k in SYNTHETIC_KEYS},
            "synthetic_probe": None if self.probe is None else {
                "size": len(self.probe.images), "seconds": round(self.probe.seconds, 3),
                "initial": self.probe.initial},
            "warnings": [dict(w) for w in self.watch.given],
            "eval_split": self.cfg.eval_split if self.eval_data is not None else None,
            **run_summary(acc, elapsed),
            "teacher_acc1": self.teacher_acc1,
            "normalization": self.spec.normalization_record(),
            **{k: round(v, 3) for k, v in self.timers.items()},
            # Student steps run only after a warm-up (Fast): count the epochs that had them.
            "student_samples_per_second": max(0, self.epoch - self.method.warmup_epochs)
            * self.cfg.rounds * self.cfg.kd_steps * self.cfg.batch_size / students,
            "peak_memory_mb": round(peak_memory_mb(self.device), 1),
            "device": str(self.device),
            "world_size": self.dist.world_size,
            "config": self.cfg.to_dict(),
        }
        if self.out_dir is not None and self.is_main and self.epoch == self.cfg.epochs:
            tmp = self.out_dir / (SUMMARY + ".tmp")
            tmp.write_text(dumps_strict(out, indent=2) + "\n")
            os.replace(tmp, self.out_dir / SUMMARY)
        return out


def check_teacher_accuracy(acc1: float, spec: ImageSpec, split: str) -> None:
    """Refuse a teacher that scores near chance on the real eval split: distilling it
    teaches the student nothing, and the cause is nearly always the input (a wrong
    normalisation or dataset) or the head (a wrong class count)."""
    chance = 100.0 / spec.num_classes
    if acc1 >= chance + min(chance, 10.0):
        return
    norm = spec.normalization_record()
    raise DfkdError(
        f"the teacher scores {acc1:.2f}% on the {split} split of {spec.dataset or 'the data'} "
        f"(chance: {chance:.2f}%): likely causes are a wrong input normalisation (fed mean "
        f"{norm['mean']}, std {norm['std']} from {norm['source']}; --teacher-norm zoo|dataset|"
        f"MEAN:STD, or --set teacher_norm=... in bench and tune, changes it), a teacher "
        f"trained on another dataset (--dataset), or a wrong class count; pass --set "
        f"check_teacher=false to distil it anyway")


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}"]
    for key in ("acc1", "agreement", "loyalty", "synthetic_agreement", "synthetic_loyalty",
                "loss_s", "lambda", "adv_weight", "elapsed_seconds"):
        if key in row:
            parts.append(f"{key} {row[key]:.4g}")
    return "  ".join(parts)
