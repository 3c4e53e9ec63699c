"""A grid of the method's synthetic images at each epoch's end: samples/epoch_NNN.png."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dfkd.report import save_image_grid
from dfkd.run.callbacks.base import Callback

if TYPE_CHECKING:
    from dfkd.run.trainer import Trainer


class SampleGrid(Callback):
    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        n = trainer.cfg.sample_grid
        if trainer.out_dir is None or not trainer.is_main or not n:
            return
        # rank 0's generator: all ranks hold the same weights
        save_image_grid(trainer.method.preview(n, seed=trainer.cfg.seed),
                        trainer.out_dir / "samples" / f"epoch_{trainer.epoch + 1:03d}.png")
