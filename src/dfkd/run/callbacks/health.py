"""The run's health: a round whose student loss diverged or whose loss terms are not
finite stops the run before it is checkpointed (the last good checkpoint stays); at each
epoch's end the watch of :mod:`dfkd.health` reads the data-free signal and warns, at most
once per run, when the run is not learning."""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

import torch
from tqdm import tqdm

from dfkd.checkpoint import CHECKPOINT
from dfkd.errors import DfkdError
from dfkd.health import RunWatch, has_normalisation, hints_for, student_divergence
from dfkd.methods import GeneratorMethod
from dfkd.run.callbacks.base import Callback
from dfkd.run.callbacks.probe import Probe

if TYPE_CHECKING:
    from dfkd.run.trainer import Trainer


class NonFiniteLoss(DfkdError):
    """A loss term became NaN or infinite; the last good checkpoint is kept."""


class HealthWatch(Callback):
    state_key = "watch"

    def __init__(self, probe: Probe, recipe_hint: str | None) -> None:
        self.probe = probe               # the signal the watch reads
        # The validated recipe for these images and this method (dfkd.recipes), which the
        # warnings suggest to a run that did not start from it.
        self.recipe_hint = recipe_hint
        self.watch = RunWatch()
        # The student's first loss, until the first epoch's is in the history.
        self._first_student_loss: float | None = None
        self._epoch_weights: list[torch.Tensor] | None = None   # the student's, for the watch

    def setup(self, trainer: Trainer) -> None:
        self._normalised = has_normalisation(trainer.student)

    def on_epoch_start(self, trainer: Trainer) -> None:
        if self.probe.probe is not None and (trainer.round == 0 or self._epoch_weights is None):
            self._epoch_weights = [p.detach().clone() for p in _trainable(trainer)]

    def on_round_end(self, trainer: Trainer, values: dict[str, float]) -> None:
        self._check_student_loss(trainer, values)
        for name, value in values.items():
            if not math.isfinite(value):
                raise NonFiniteLoss(
                    f"non-finite loss: '{name}' became {value} in epoch {trainer.epoch + 1}, "
                    f"round {trainer.round + 1}; the last good checkpoint is left as it was. "
                    "Lower the learning rates or this term's weight.")

    def _reference(self, trainer: Trainer) -> float | None:
        """The student loss (mean per step) of the first epoch that had student steps, or
        of this run's first round with some while that epoch is not over."""
        first = next((row["loss_s"] for row in trainer.history if "loss_s" in row), None)
        return first if first is not None else self._first_student_loss

    def _check_student_loss(self, trainer: Trainer, values: dict[str, float]) -> None:
        """Stop a student that diverges (dfkd.health.student_divergence)."""
        steps = trainer.student_steps
        if "loss_s" not in values or not steps:
            return
        loss = values["loss_s"] / steps
        if self._reference(trainer) is None and math.isfinite(loss):
            self._first_student_loss = loss
        out = trainer.out_dir
        if out is None:
            again = "run it again with"
        elif (out / CHECKPOINT).is_file():
            again = f"resume with: dfkd distill --resume {out}"
        else:
            again = "start it again with"
        line = student_divergence(
            "loss_s", loss, self._reference(trainer),
            where=f"in epoch {trainer.epoch + 1}, round {trainer.round + 1}",
            lr=trainer.optimiser.lr, configured_lr=trainer.cfg.student_optim.lr,
            normalised=self._normalised, resume_hint=again)
        if line is not None:
            raise NonFiniteLoss(line)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """The warning of dfkd.health (at most one per run), on rank 0's stderr."""
        probe = self.probe.probe
        if probe is None:
            return
        cfg = trainer.cfg
        learned = trainer.epoch + 1 - trainer.method.warmup_epochs
        first = self._reference(trainer)
        rise = row["loss_s"] / first if "loss_s" in row and first and first > 0 else None
        hints = hints_for(cfg, generator_method=isinstance(trainer.method, GeneratorMethod),
                          recipe_name=self.recipe_hint, student_lr=row["lr"],
                          student_loss_rise=rise, student_normalised=self._normalised)
        for warning in self.watch.check(row, learned_epochs=learned,
                                        student_steps=learned * cfg.rounds * cfg.kd_steps,
                                        num_classes=trainer.spec.num_classes,
                                        initial_kl=(probe.initial or {}).get("synthetic_kl"),
                                        weight_change=self._weight_change(trainer),
                                        hints=hints):
            if trainer.is_main:
                tqdm.write(f"dfkd: warning: {warning['message']}", file=sys.stderr)

    def _weight_change(self, trainer: Trainer) -> float | None:
        """How far the student's trainable weights moved since ``_epoch_weights`` was taken
        (the epoch's start, or the resume point): ||w - w0|| / ||w0||."""
        if self._epoch_weights is None:
            return None
        now = _trainable(trainer)
        if len(now) != len(self._epoch_weights):
            return None
        if not now:
            return 0.0
        diff = sum(float((p.detach() - q).float().pow(2).sum()) for p, q in
                   zip(now, self._epoch_weights))
        base = sum(float(q.float().pow(2).sum()) for q in self._epoch_weights)
        return math.sqrt(diff) / max(math.sqrt(base), 1e-12)

    def summarize(self, trainer: Trainer) -> dict[str, Any]:
        return {"warnings": [dict(w) for w in self.watch.given]}

    def state_dict(self) -> dict[str, Any]:
        return self.watch.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.watch.load_state_dict(state)


def _trainable(trainer: Trainer) -> list[torch.Tensor]:
    return [p for p in trainer.student.parameters() if p.requires_grad]
