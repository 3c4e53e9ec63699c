"""Evaluation on real data: the teacher is measured (and checked) once, when the run is
built; the kept student every epoch (Acc@1/5, agreement and loyalty with the teacher)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from dfkd import distributed
from dfkd.errors import DfkdError
from dfkd.metrics import accuracy, fidelity_metrics, predict
from dfkd.run.callbacks.base import Callback
from dfkd.run.spec import EvalData, ImageSpec, pixels_transform

if TYPE_CHECKING:
    from dfkd.run.trainer import Trainer


class Evaluation(Callback):
    def __init__(self, data: EvalData | None) -> None:
        self.data = data
        self.teacher_logits: torch.Tensor | None = None

    def setup(self, trainer: Trainer) -> None:
        if self.data is None:
            return
        if self.data.images.dtype == torch.uint8:
            self._transform = pixels_transform(trainer.mean, trainer.std,
                                               trainer.channels_last)
        else:
            self._transform = lambda x: x.float()
        # The teacher's predictions are computed once, not every epoch.
        self.teacher_logits = self.predict(trainer, trainer.teacher)
        measured = accuracy(self.teacher_logits, self.data.labels)["acc1"]
        if trainer.teacher_acc1 is None:
            trainer.teacher_acc1 = measured
        if trainer.cfg.check_teacher:
            check_teacher_accuracy(measured, trainer.spec, trainer.cfg.eval_split)

    def predict(self, trainer: Trainer, model: nn.Module) -> torch.Tensor:
        """The eval split's logits; under DDP each rank predicts one contiguous shard."""
        images, dist = self.data.images, trainer.dist
        if dist.enabled:
            images = torch.tensor_split(images, dist.world_size)[dist.rank]
        logits = predict(model, images, trainer.cfg.eval_batch_size, self._transform,
                         trainer.device)
        return torch.cat(distributed.all_gather_objects(logits))

    def measure(self, trainer: Trainer) -> dict[str, Any]:
        if self.data is None:
            return {}
        logits = self.predict(trainer, trainer.kept_student)
        out = fidelity_metrics(logits, self.teacher_logits, self.data.labels)
        if trainer.kept_student is not trainer.student:   # the live student, for comparison
            out["raw_acc1"] = accuracy(self.predict(trainer, trainer.student),
                                       self.data.labels)["acc1"]
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
