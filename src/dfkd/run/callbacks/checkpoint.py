"""The run's files that a resume and a user need: checkpoint.pt (everything an exact resume
needs) and the kept student as student.pt and student.safetensors, with what rebuilds it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfkd.checkpoint import CHECKPOINT, atomic_save, save_student_files
from dfkd.run.callbacks.base import Callback
from dfkd.run.student import kept_weights

if TYPE_CHECKING:
    from dfkd.run.trainer import Trainer


class CheckpointFiles(Callback):
    def __init__(self, out_dir: Path, student_arch: str | None) -> None:
        self.out_dir = out_dir
        # How student.pt rebuilds the student: a zoo name or a model spec (None for a
        # module built in Python, which the user rebuilds).
        self.student_arch = student_arch

    def on_checkpoint(self, trainer: Trainer, state: dict[str, Any]) -> Callable[[], None]:
        out_dir, student, meta = self.out_dir, kept_weights(state), self.student_meta(trainer)

        def write() -> None:
            atomic_save(state, out_dir / CHECKPOINT)
            save_student_files(out_dir, student, meta)
        return write

    def student_meta(self, trainer: Trainer) -> dict[str, Any]:
        """student.pt's metadata, in train-teacher's format: what rebuilds the model and
        normalises its inputs, and its metrics at the last finished epoch."""
        cfg, spec = trainer.cfg, trainer.spec
        last = trainer.history[-1] if trainer.history else {}
        split = trainer.eval_split
        meta: dict[str, Any] = {
            "arch": self.student_arch, "dataset": spec.dataset,
            "num_classes": spec.num_classes, "image_shape": list(spec.image_shape),
            "mean": list(spec.mean), "std": list(spec.std),
            "normalization": spec.normalization, "dfkd_kind": "distilled",
            "method": cfg.method, "teacher": cfg.teacher, "seed": cfg.seed,
            "epoch": trainer.epoch, "epochs": cfg.epochs, "eval_split": split,
            "teacher_acc1": trainer.teacher_acc1,
        }
        if self.student_arch is None:
            student = type(trainer.student)
            meta["module_class"] = f"{student.__module__}.{student.__qualname__}"
        for key in ("acc1", "acc5", "agreement", "loyalty", "loyalty_official"):
            if key in last:  # {split}_acc1 as train-teacher writes test_acc1 and val_acc1
                meta[f"{split}_{key}"] = last[key]
        return meta
