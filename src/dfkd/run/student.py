"""How the student learns: SGD with a cosine (or multistep) schedule over the epochs after
the method's warm-up, an optional weight average (``student_ema``), and what a resume with other
settings does to the schedule."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

from dfkd.config import RunConfig


class StudentOptimiser:
    """The student's SGD, its schedule and its weight average (``ema``, or None)."""

    def __init__(self, student: nn.Module, cfg: RunConfig, warmup_epochs: int,
                 cuda: bool) -> None:
        self.warmup_epochs = warmup_epochs
        opt = cfg.student_optim
        self.opt = torch.optim.SGD(student.parameters(), lr=opt.lr, momentum=opt.momentum,
                                   weight_decay=opt.weight_decay,
                                   foreach=None if not cuda else True)
        epochs = learning_epochs(cfg.epochs, warmup_epochs)
        if opt.schedule == "multistep":
            self.sched = torch.optim.lr_scheduler.LambdaLR(
                self.opt, lambda epoch: schedule_factor(opt, epochs, epoch))
        else:
            self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=epochs)
        # student_ema: an average of the weights and BN buffers, the student that is kept.
        self.ema = None if not cfg.student_ema else AveragedModel(
            student, multi_avg_fn=_ema_update(cfg.student_ema), use_buffers=True)

    @property
    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def step(self, loss: torch.Tensor, student: nn.Module) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        if self.ema is not None:
            self.ema.update_parameters(student)

    def end_epoch(self, epoch: int) -> None:
        """The schedule's step after ``epoch`` (0-based); held during the warm-up."""
        if epoch >= self.warmup_epochs:
            self.sched.step()

    def state_dict(self) -> dict[str, Any]:
        return {"opt_s": self.opt.state_dict(), "sched_s": self.sched.state_dict(),
                "student_ema": None if self.ema is None else self.ema.state_dict()}

    def load_state_dict(self, state: dict[str, Any], cfg: RunConfig) -> None:
        """Restore, then fit the schedule to ``cfg`` when the resume changed the rate or the
        length of the run (``state["config"]``: the settings it was saved with)."""
        if self.ema is not None:
            self.ema.load_state_dict(state["student_ema"])
        self.opt.load_state_dict(state["opt_s"])
        self.sched.load_state_dict(state["sched_s"])
        old = ((state.get("config") or {}).get("student_optim") or {}).get("lr")
        self._rescale_lr(old, cfg.student_optim.lr)
        self._stretch(learning_epochs(cfg.epochs, self.warmup_epochs))

    def _rescale_lr(self, old: float | None, new: float) -> None:
        """A resume given another student_optim.lr (say, after a divergence) goes on from
        the same point of the schedule at the new rate: the optimiser's and the schedule's
        rates, restored from the checkpoint, are scaled by new / recorded."""
        if not old or old == new:
            return
        scale = new / old
        for group in self.opt.param_groups:
            group["lr"] *= scale
            group["initial_lr"] = group.get("initial_lr", old) * scale
        self.sched.base_lrs = [lr * scale for lr in self.sched.base_lrs]
        self.sched._last_lr = [group["lr"] for group in self.opt.param_groups]

    def _stretch(self, epochs: int) -> None:
        """A resume given another ``epochs`` (say, to extend a finished run): the cosine,
        restored for the old length, spans the new one from the same step, as an
        uninterrupted run of that length would be at this step (without this, it would stay
        at its end and rise again)."""
        sched = self.sched
        if not isinstance(sched, torch.optim.lr_scheduler.CosineAnnealingLR) \
                or sched.T_max == epochs:
            return   # a multistep schedule keeps the epochs it decays at
        sched.T_max = epochs
        at = (1 + math.cos(math.pi * min(sched.last_epoch, epochs) / epochs)) / 2
        for group, base in zip(self.opt.param_groups, sched.base_lrs):
            group["lr"] = sched.eta_min + (base - sched.eta_min) * at
        sched._last_lr = [group["lr"] for group in self.opt.param_groups]


def learning_epochs(epochs: int, warmup_epochs: int) -> int:
    """The epochs the student's cosine schedule spans: those after the method's warm-up."""
    return max(1, epochs - warmup_epochs)


def schedule_factor(opt: Any, epochs: int, epoch: int) -> float:
    """The learning rate at (0-based) ``epoch`` of the schedule, over its base rate, for a
    run whose schedule spans ``epochs``: cosine, or multistep (times ``decay`` from 1-based
    epoch ``int(f * epochs)`` on, for each fraction ``f`` of ``decay_at``, as DFME's official
    loop, which steps its MultiStepLR at the start of each epoch)."""
    if opt.schedule == "multistep":
        return opt.decay ** sum(int(f * epochs) <= epoch + 1 for f in opt.decay_at)
    return (1 + math.cos(math.pi * min(epoch, epochs) / epochs)) / 2


def kept_weights(state: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The kept student's weights, from a checkpoint ``state``: the student's, or the
    average's without AveragedModel's ``module.`` prefix and its ``n_averaged`` counter."""
    if state["student_ema"] is None:
        return state["student"]
    return {key.removeprefix("module."): value
            for key, value in state["student_ema"].items() if key.startswith("module.")}


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
