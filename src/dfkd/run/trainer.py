"""The distillation loop shared by every method: epochs of ``rounds`` x (``g_steps``
generator steps, then ``kd_steps`` student steps), each ended by the student's cosine step
and one row of metrics; around it, the callbacks of :mod:`dfkd.run.callbacks`. A checkpoint
holds all an exact resume needs; SIGINT/SIGTERM finish the round, checkpoint it and stop."""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfkd import distributed, runlock
from dfkd.checkpoint import CHECKPOINT, BackgroundWriter, cpu_snapshot, safe_load
from dfkd.config import RunConfig
from dfkd.errors import DfkdError
from dfkd.frozen_teacher import FrozenTeacher
from dfkd.run.callbacks import Callback, standard_callbacks
from dfkd.run.callbacks.metrics import summarize_run
from dfkd.run.context import build_method
from dfkd.run.device import Placement, peak_memory_mb, synchronize
from dfkd.run.seeding import rng_state, seed_everything, set_rng_state
from dfkd.run.signals import StopFlag, interrupted
from dfkd.run.spec import EvalData, ImageSpec
from dfkd.run.student import StudentOptimiser
from dfkd.trackers import check_trackers
from dfkd.trackers.hub import Tracking


class Trainer:
    """One run: its models, its method, the student's optimiser and the loop."""

    def __init__(self, cfg: RunConfig, teacher: nn.Module, student: nn.Module,
                 spec: ImageSpec, eval_data: EvalData | None, out_dir: Path | None,
                 teacher_acc1: float | None = None, progress: bool | None = None,
                 student_arch: str | None = None, recipe_hint: str | None = None) -> None:
        self.cfg, self.spec, self.out_dir, self.eval_data = cfg, spec, out_dir, eval_data
        self.teacher_acc1 = teacher_acc1   # None: measured on eval_data
        self.place = place = Placement(cfg)
        self.dist, self.device, self.channels_last = place.dist, place.device, place.channels_last
        self.is_main = self.dist.is_main   # only rank 0 talks and writes; every rank computes
        self.writer = BackgroundWriter()
        trackers = check_trackers(cfg.tracker)   # rank 0 hands them each metrics.jsonl row
        self.tracking = Tracking(trackers if self.is_main else None, cfg.tracker_uri, out_dir)
        seed_everything(cfg.seed)
        self.teacher = FrozenTeacher(place.put(teacher))
        self.student = place.put(student).train()
        self.mean, self.std = (torch.tensor(v, device=self.device).view(1, -1, 1, 1)
                               for v in (spec.mean, spec.std))
        self.method = build_method(cfg, spec, place, self.teacher, self.student, self.mean,
                                   self.std)
        # Identical initial weights everywhere, then a different sample stream per rank.
        seed_everything(cfg.seed + self.dist.rank)
        self.optimiser = StudentOptimiser(self.student, cfg, self.method.warmup_epochs,
                                          place.cuda)
        shows = sys.stderr.isatty() if progress is None else progress
        self.callbacks: list[Callback] = standard_callbacks(
            eval_data=eval_data, out_dir=out_dir, writes=out_dir is not None and self.is_main,
            tracking=self.tracking, progress=shows and self.is_main,
            student_arch=student_arch, recipe_hint=recipe_hint)
        # Loop position and accumulators: all of it is checkpointed.
        self.epoch = self.round = 0
        self.history: list[dict[str, Any]] = []
        self.sums: dict[str, float] = {}
        self.timers = {"synthesis_seconds": 0.0, "student_seconds": 0.0, "elapsed_seconds": 0.0}
        # The teacher's answers in training rounds (all processes), and the last round's:
        # measuring the teacher on the eval split or making the probe is not counted.
        self.queries = {"total": 0, "last_round": 0}
        self._call("setup")

    def _call(self, hook: str, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def callback(self, kind: type[Callback]) -> Callback:
        """This run's callback of class ``kind``."""
        return next(c for c in self.callbacks if isinstance(c, kind))

    @property
    def kept_student(self) -> nn.Module:
        """The student a run evaluates, saves and returns: the average with student_ema."""
        ema = self.optimiser.ema
        return self.student if ema is None else ema.module

    @property
    def student_steps(self) -> int:
        """Student steps per round now: none during the method's warm-up (Fast)."""
        return self.cfg.kd_steps if self.epoch >= self.method.warmup_epochs else 0

    @property
    def eval_split(self) -> str | None:
        return self.cfg.eval_split if self.eval_data is not None else None

    def fit(self, stop_after_epoch: int | None = None) -> dict[str, Any]:
        """Train to the configured end, or checkpoint and return after epoch
        ``stop_after_epoch`` (a time-sliced job; ``resume`` continues it exactly)."""
        with contextlib.ExitStack() as stack:
            if self.out_dir is not None and self.is_main:   # re-entrant: a builder may hold it
                stack.enter_context(runlock.holding(self.out_dir))
            for callback in self.callbacks:
                stack.enter_context(callback.running(self))
            stack.callback(self.writer.close)   # the last checkpoint is on disk, whatever ends
            return self._fit(stop_after_epoch)

    def _fit(self, stop_after_epoch: int | None) -> dict[str, Any]:
        cfg = self.cfg
        end = cfg.epochs if stop_after_epoch is None else min(stop_after_epoch, cfg.epochs)
        self._call("on_fit_start")
        with StopFlag() as stop:
            while self.epoch < end and not self.budget_spent:
                self.method.on_epoch_start(self.epoch)
                self._call("on_epoch_start")
                while self.round < cfg.rounds and not self.budget_spent:
                    self._round()
                    if distributed.any_rank(stop.signum is not None, self.device):
                        stop.signum = stop.signum or signal.SIGTERM
                        if self.round < cfg.rounds:
                            break
                if self.round == cfg.rounds or (self.budget_spent and self.round):
                    self._end_epoch()   # with the budget spent, a last, shorter epoch
                self.save_checkpoint()
                if stop.signum is not None:
                    raise interrupted(stop.signum, self.epoch, self.round, cfg.epochs,
                                      self.out_dir)
        self.writer.wait()  # summary.json says the run is done: its files come first
        summary = self.summary()
        self._call("on_fit_end", summary)
        return summary

    @property
    def budget_spent(self) -> bool:
        """``query_budget`` cannot pay for another round at the last round's cost (as
        DFME's official loop decides): the run ends before it."""
        budget = self.cfg.query_budget
        return budget is not None and \
            self.queries["total"] + max(self.queries["last_round"], 1) > budget

    def _round(self) -> None:
        values = self._run_round()
        self._call("on_round_end", values)
        g_steps = self.method.generator_steps()
        for name, value in values.items():   # per step
            steps = g_steps if name.startswith(("loss_g", "g_")) else self.cfg.kd_steps
            self.sums[name] = self.sums.get(name, 0.0) + value / max(steps, 1)
        self.round += 1

    def _run_round(self) -> dict[str, float]:
        """The round's steps (as many generator steps as the method asks for this round);
        its loss terms, summed over the steps."""
        g_steps = self.method.generator_steps()
        terms: dict[str, torch.Tensor] = {}

        def add(logs: dict[str, torch.Tensor]) -> None:
            for k, v in logs.items():
                terms[k] = terms[k] + v.float() if k in terms else v.float()

        t0 = time.perf_counter()
        asked = self.teacher.queries
        self.method.start_synthesis()
        for _ in range(g_steps):
            add(self.method.generator_step())
        self.method.end_synthesis()
        synchronize(self.device)
        t1 = time.perf_counter()
        steps = self.student_steps
        if self.cfg.batched_g and steps:
            # All the round's student batches from one G forward; each step uses one, so
            # none is left when the round ends (checkpoints are taken between rounds).
            self.method.queue_fresh_images(steps)
        for _ in range(steps):
            loss, logs = self.method.student_loss()
            self.optimiser.step(loss, self.student)
            add(logs)
        distributed.broadcast_buffers(self.student)
        if self.kept_student is not self.student:
            distributed.broadcast_buffers(self.kept_student)
        # One host-device transfer (and one all-reduce under DDP) per round, not per step;
        # the last value is the round's queries, as a mean over the processes.
        names = list(terms)
        queries = torch.tensor(float(self.teacher.queries - asked), device=self.device)
        values = distributed.all_reduce_mean(
            torch.stack([*(terms[k] for k in names), queries])).tolist()
        self.queries["last_round"] = round(values.pop() * self.dist.world_size)
        self.queries["total"] += self.queries["last_round"]
        t2 = time.perf_counter()
        self.timers["synthesis_seconds"] += t1 - t0
        self.timers["student_seconds"] += t2 - t1
        # Training wall time (synthesis + student steps); evaluation is not counted.
        self.timers["elapsed_seconds"] += t2 - t0
        return dict(zip(names, values))

    def _end_epoch(self) -> None:
        lr = self.optimiser.lr
        self.optimiser.end_epoch(self.epoch)
        row: dict[str, Any] = {"epoch": self.epoch + 1}
        for callback in self.callbacks:
            row.update(callback.measure(self))
        row.update({"lr": lr, **self.method.status()})
        row.update({k: v / self.round for k, v in sorted(self.sums.items())})
        row.update({k: round(v, 3) for k, v in self.timers.items()})
        row["teacher_queries"] = self.queries["total"]
        row["peak_memory_mb"] = round(peak_memory_mb(self.device), 1)
        self.history.append(row)
        self.sums = {}
        self._call("on_epoch_end", row)
        self.epoch += 1
        self.round = 0

    def state_dict(self) -> dict[str, Any]:
        state = {
            "format": "dfkd-run-1", "config": self.cfg.to_dict(),
            "device_type": self.device.type, "epoch": self.epoch, "round": self.round,
            "student": self.student.state_dict(), **self.optimiser.state_dict(),
            "method": self.method.state_dict(), "history": self.history, "sums": self.sums,
            "timers": self.timers, "teacher_acc1": self.teacher_acc1,
            "teacher_queries": self.queries,
            **{c.state_key: c.state_dict() for c in self.callbacks if c.state_key},
        }
        state["rng"] = distributed.all_gather_objects(rng_state())  # one per rank
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("device_type", self.device.type)
        if saved != self.device.type:
            raise DfkdError(
                f"this run was checkpointed on {saved} and would resume on "
                f"{self.device.type}; a resume is exact only on the same kind of device. "
                f"Resume it with --device {saved}, or start a new run")
        self.student.load_state_dict(state["student"])
        self.optimiser.load_state_dict(state, self.cfg)
        self.method.load_state_dict(state["method"])
        self.epoch, self.round = int(state["epoch"]), int(state["round"])
        self.history = list(state["history"])
        self.sums = dict(state["sums"])
        self.timers = dict(state["timers"])
        # Checkpoints made before queries were counted: none counted.
        self.queries = dict(state.get("teacher_queries", {"total": 0, "last_round": 0}))
        for callback in self.callbacks:
            if callback.state_key:
                callback.load_state_dict(state.get(callback.state_key))
        if len(state["rng"]) != self.dist.world_size:
            raise DfkdError(f"this run was checkpointed with {len(state['rng'])} processes; "
                            f"resume it with the same number (now {self.dist.world_size})")
        set_rng_state(state["rng"][self.dist.rank])

    def save_checkpoint(self) -> None:
        """Write the checkpoint and what follows it (the callbacks' writes, in their order)
        in the background: the state is copied to the CPU now, and the next epoch trains
        while it reaches the disk (``fit`` waits for the write before it returns or raises,
        and before the next one)."""
        if self.out_dir is None:
            return
        state = self.state_dict()  # a collective: every rank takes part
        if self.is_main:
            state = cpu_snapshot(state)
            writes = [w for c in self.callbacks if (w := c.on_checkpoint(self, state))]
            self.writer.submit(lambda: [write() for write in writes])
        distributed.barrier()

    def resume(self, state: dict[str, Any] | None = None) -> None:
        """Continue from ``state``, or from the checkpoint in the run folder."""
        assert self.out_dir is not None
        self.load_state_dict(state if state is not None else safe_load(self.out_dir / CHECKPOINT))
        self._call("on_resume")

    def summary(self) -> dict[str, Any]:
        """The run's summary (summary.json once it is done)."""
        return summarize_run(self)
