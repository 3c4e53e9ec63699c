"""The data-free signal (:mod:`dfkd.probe`): a fixed set of held-out synthetic images, made
once when fit first starts and kept in the checkpoint, on which the kept student's
agreement, loyalty and KL with the teacher are measured every epoch."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from dfkd.probe import NOTICE_SECONDS, SyntheticProbe, expected_seconds
from dfkd.run.callbacks.base import Callback
from dfkd.run.spec import pixels_transform
from dfkd.teachers import is_blackbox

if TYPE_CHECKING:
    from dfkd.run.trainer import Trainer


class Probe(Callback):
    state_key = "probe"

    def __init__(self) -> None:
        self.probe: SyntheticProbe | None = None

    def setup(self, trainer: Trainer) -> None:
        self._transform = pixels_transform(trainer.mean, trainer.std, trainer.channels_last)

    def on_fit_start(self, trainer: Trainer) -> None:
        """Make the run's probe if it has none; before the first student step, also score
        the untrained student on it (the warnings' baseline)."""
        size = trainer.cfg.synthetic_probe
        if self.probe is not None or not size:
            return
        if is_blackbox(trainer.teacher):   # the probe is optimised through the teacher
            if trainer.is_main and trainer.epoch == 0 and trainer.round == 0:
                tqdm.write("dfkd: no synthetic probe (the data-free signal) for a black-box "
                           "teacher: making it needs gradients through the teacher",
                           file=sys.stderr)
            return
        shape, spec = tuple(trainer.spec.image_shape), trainer.spec
        seconds = expected_seconds(trainer.teacher, shape, trainer.mean, trainer.std,
                                   trainer.device, size)
        if seconds > NOTICE_SECONDS and trainer.is_main:
            tqdm.write(f"dfkd: making the synthetic probe ({size} held-out synthetic images "
                       f"for the data-free signal): about {seconds:.0f} s, once per run; "
                       "--set synthetic_probe=0 turns it (and the warnings that read it) off",
                       file=sys.stderr)
        self.probe = SyntheticProbe.create(trainer.teacher, shape, spec.num_classes,
                                           trainer.mean, trainer.std, trainer.device, size)
        if trainer.epoch == 0 and trainer.round == 0 and not trainer.history:
            self._measure(trainer, baseline=True)

    def measure(self, trainer: Trainer) -> dict[str, float]:
        return self._measure(trainer)

    def _measure(self, trainer: Trainer, baseline: bool = False) -> dict[str, float]:
        """synthetic_agreement / synthetic_loyalty / synthetic_kl of the student now."""
        if self.probe is None:
            return {}
        return self.probe.measure(trainer.kept_student, trainer.cfg.eval_batch_size,
                                  self._transform, trainer.device, baseline=baseline)

    def summarize(self, trainer: Trainer) -> dict[str, Any]:
        probe = self.probe
        return {"synthetic_probe": None if probe is None else {
            "size": len(probe.images), "seconds": round(probe.seconds, 3),
            "initial": probe.initial}}

    def state_dict(self) -> dict[str, Any] | None:
        return self.probe.state_dict() if self.probe is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        # Checkpoints written before the signal existed have no probe: fit makes one.
        self.probe = SyntheticProbe.from_state(state) if state is not None else None
