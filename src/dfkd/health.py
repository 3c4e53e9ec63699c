"""Warnings a user without data can act on, read from the data-free signal (dfkd.probe).

A run says at most one of them, once, in words, with the settings to try, on stderr (rank 0),
and keeps it in the checkpoint (a resumed run does not repeat it) and in summary.json's
``warnings``.
They are judged at the end of each epoch once the student has learned for at least
``MIN_EPOCHS`` epochs and ``MIN_STEPS`` steps (a smoke run of a few steps is not judged):

* ``student_not_learning``: the student's weights hardly moved in the epoch (relative
  change ||w - w0|| / ||w0|| below ``MIN_WEIGHT_CHANGE``, 1e-3; at lr 0.1 a learning
  student moves by a few percent) *and* it is not good at imitating the teacher: its loss
  on the fixed synthetic probe (KL to the teacher at temperature 1) is above
  ``KL_FRACTION`` (90%) of its value before the first student step, or its probe agreement
  is near chance (below). The student itself is not learning: a learning rate of 0 or far
  too small, frozen weights. (A student that has converged, with the cosine schedule's
  last small steps, is good, so it is not warned.) What it predicts is no use for this
  test, since its BatchNorm statistics drift with the samples even at lr 0, nor is the
  training loss, whose samples change with the generator.
* ``agreement_at_chance``: the student agrees with the teacher on the probe within a few
  points of chance: below ``chance + min(chance, 5)`` percent, chance = 100 / classes
  (15% for 10 classes, 2% for 100). The student moves, but not towards the teacher's
  classes: the synthetic samples carry no class information it can use (a generator that
  does not learn, a loss or temperature that does not transfer). When the student's own
  loss has risen well above its first epoch's (``RISE_SUSPECT`` times), the student is
  unstable instead, and the settings to try are its learning rate and normalisation, not
  the generator's.

A student that diverges is not warned but stopped (:func:`student_divergence`): its loss
non-finite, or more than ``DIVERGENCE_FACTOR`` (1000) times its first epoch's (and above
``DIVERGENCE_FLOOR``). The line names the student's learning rate and, for a student
without normalisation layers, that (SGD at lr 0.1, the recipes' rate, is often unstable
without them); the last checkpoint is kept, so the run resumes at a lower rate.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

DIVERGENCE_FACTOR = 1e3    # a student loss this many times its first epoch's: diverged
DIVERGENCE_FLOOR = 1.0     # ... measured against at least this (a first loss near 0 says little)
RISE_SUSPECT = 10.0        # a rise that makes the warnings blame the student, not the generator
MIN_EPOCHS = 2
MIN_STEPS = 200
KL_FRACTION = 0.9
MIN_WEIGHT_CHANGE = 1e-3
CHANCE_MARGIN = 5.0   # points above chance, at most (and at most chance itself)


def agreement_threshold(num_classes: int) -> float:
    chance = 100.0 / num_classes
    return chance + min(chance, CHANCE_MARGIN)


class RunWatch:
    """Judges each epoch's row; remembers what it said."""

    def __init__(self) -> None:
        self.given: list[dict[str, Any]] = []

    def check(self, row: dict[str, Any], *, learned_epochs: int, student_steps: int,
              num_classes: int, initial_kl: float | None, weight_change: float | None,
              hints: dict[str, list[str]]) -> list[dict[str, Any]]:
        """The warnings this epoch's row calls for (and not said before). ``hints`` maps
        a warning's kind to the settings to try, in words."""
        if self.given or learned_epochs < MIN_EPOCHS or student_steps < MIN_STEPS \
                or "synthetic_agreement" not in row:
            return []   # one warning per run: the first says the run is not learning
        new: list[dict[str, Any]] = []
        where = f"after {learned_epochs} epochs ({student_steps} student steps)"
        kl = row.get("synthetic_kl")
        agreement = row["synthetic_agreement"]
        at_chance = agreement < agreement_threshold(num_classes)
        loss_stuck = initial_kl is not None and kl is not None and kl > KL_FRACTION * initial_kl
        frozen = weight_change is not None and weight_change < MIN_WEIGHT_CHANGE
        if frozen and (loss_stuck or at_chance):
            before = f", {initial_kl:.3g} before training" if initial_kl is not None else ""
            new.append(self._warn(
                "student_not_learning", row["epoch"],
                f"{where} the student's weights hardly moved in the last epoch (relative "
                f"change {weight_change:.1e}) and it does not imitate the teacher (on the "
                f"held-out synthetic samples: agreement {agreement:.1f}%, KL to the teacher "
                f"{kl:.3g}{before}): the student is not learning. "
                + _try(hints.get("student_not_learning", []))))
        elif at_chance:
            new.append(self._warn(
                "agreement_at_chance", row["epoch"],
                f"{where} the student agrees with the teacher on only {agreement:.1f}% "
                f"of the held-out synthetic samples, near chance "
                f"({100 / num_classes:.1f}%): it is not learning the teacher's classes. "
                + _try(hints.get("agreement_at_chance", []))))
        return new

    def _warn(self, kind: str, epoch: int, message: str) -> dict[str, Any]:
        entry = {"kind": kind, "epoch": epoch, "message": message}
        self.given.append(entry)
        return entry

    def state_dict(self) -> dict[str, Any]:
        return {"given": list(self.given)}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.given = list((state or {}).get("given", []))


def has_normalisation(model: nn.Module) -> bool:
    """Whether ``model`` has a normalisation layer (BatchNorm, InstanceNorm, GroupNorm,
    LayerNorm, RMSNorm, LocalResponseNorm, or a subclass such as timm's LayerNorm2d)."""
    kinds: tuple[type, ...] = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm,
                               nn.LocalResponseNorm)
    if hasattr(nn, "RMSNorm"):
        kinds += (nn.RMSNorm,)
    return any(isinstance(m, kinds) for m in model.modules())


def lower_lr(lr: float) -> float:
    """A rate to suggest after a divergence: a tenth, on a round number."""
    return float(f"{lr / 10:.1g}") if lr > 0 else 0.01


def student_divergence(name: str, value: float, reference: float | None, *, where: str,
                       lr: float, configured_lr: float, normalised: bool,
                       resume_hint: str) -> str | None:
    """The line that stops a run whose student loss diverged, or None. ``value``: the
    student loss ``name`` now (mean per step); ``reference``: its first epoch's (or, in
    the first epoch, its first round's); ``lr``: the rate of the step that produced it;
    ``where``: e.g. "in epoch 2, round 3"; ``resume_hint``: how to go on from the last
    checkpoint, completed here with a lower ``--set student_optim.lr``."""
    if not math.isfinite(value):
        what = f"non-finite loss: '{name}' became {value} {where}"
    elif reference is not None and math.isfinite(reference) and \
            value > DIVERGENCE_FACTOR * max(abs(reference), DIVERGENCE_FLOOR):
        what = (f"student loss '{name}' rose to {value:.3g} {where}, "
                f"{value / max(abs(reference), 1e-12):.0f} times its first epoch's "
                f"{reference:.3g}")
    else:
        return None
    cause = ("; the student has no normalisation layer (BatchNorm, GroupNorm, LayerNorm, "
             "...), and without one SGD is often unstable at a rate that suits a normalised "
             "network" if not normalised else "")
    also = " (or give the student normalisation layers)" if not normalised else ""
    return (f"{what}: the student diverged at learning rate {lr:g} (student_optim.lr "
            f"{configured_lr:g}){cause}. The last good checkpoint is left as it was; "
            f"{resume_hint} --set student_optim.lr={lower_lr(configured_lr):g}{also}")


def _try(hints: list[str]) -> str:
    if not hints:
        return ""
    return "Try " + "; or ".join(hints) + "."


def hints_for(cfg: Any, *, generator_method: bool, recipe_name: str | None,
              student_lr: float, student_loss_rise: float | None = None,
              student_normalised: bool = True) -> dict[str, list[str]]:
    """The settings to try for each warning, from the run's own settings. ``recipe_name``:
    the recipe for the run's geometry and method, if there is one; ``student_lr``: the
    student's learning rate in the epoch judged (the schedule's, not the configured one);
    ``student_loss_rise``: the student loss of the epoch judged over its first epoch's;
    ``student_normalised``: whether the student has a normalisation layer."""
    if student_loss_rise is not None and student_loss_rise > RISE_SUSPECT:
        # The student's own loss is climbing: it is unstable, whatever the samples are.
        configured = cfg.student_optim.lr
        unstable = [f"a lower student learning rate (its loss rose {student_loss_rise:.0f} "
                    f"times since its first epoch; student_optim.lr now {configured:g}): "
                    f"--set student_optim.lr={lower_lr(configured):g}"]
        if not student_normalised:
            unstable.append("a student with normalisation layers (it has none: no "
                            "BatchNorm, GroupNorm or LayerNorm)")
        return {"student_not_learning": unstable, "agreement_at_chance": unstable}
    samples: list[str] = []
    if recipe_name is not None and cfg.base_recipe is None:
        samples.append(f"the settings validated on images like yours: --config {recipe_name}")
    settings = cfg.method_settings
    if cfg.method == "cudfkd" and getattr(settings, "kd_loss", None) == "l1":
        samples.append(f"a KL student loss at a lower temperature: --set {cfg.method}.kd_loss=kl "
                       f"--set {cfg.method}.tau=4")
    elif getattr(settings, "tau", 0) > 8:
        samples.append(f"a lower temperature: --set {cfg.method}.tau=4")
    if generator_method:
        lr = cfg.generator.lr
        better = 5e-3 if lr < 5e-3 else 1e-3
        samples.append(f"another generator learning rate (now {lr:g}): "
                       f"--set generator.lr={better:g}")
    else:
        samples.append(f"longer synthesis per batch (now {cfg.g_steps} steps): "
                       f"--set g_steps={2 * max(cfg.g_steps, 1)}")
    student: list[str] = []
    lr = student_lr
    if lr == 0:
        student.append("a student learning rate above 0: --set student_optim.lr=0.1")
    elif lr > 0.3:
        student.append(f"a lower student learning rate (now {lr:g}): "
                       "--set student_optim.lr=0.1")
    elif lr < 0.01:
        student.append(f"a higher student learning rate (now {lr:g}): "
                       "--set student_optim.lr=0.1")
    frozen = student or [
        f"a higher student learning rate (now {lr:g}): --set student_optim.lr={2 * lr:g}",
        "a student whose weights require gradients (the engine trains every parameter with "
        "requires_grad=True)"]
    # A suspicious student learning rate is named in both.
    return {"student_not_learning": frozen, "agreement_at_chance": student + samples}
