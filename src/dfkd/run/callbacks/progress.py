"""What the user watches: a progress bar over the run's rounds (on a terminal), else one
line per epoch on stderr."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from dfkd.run.callbacks.base import Callback

if TYPE_CHECKING:
    from dfkd.run.trainer import Trainer

SHOWN = ("synthetic_agreement", "synthetic_loyalty")   # of the last epoch, beside acc1


class ProgressBar(Callback):
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: tqdm | None = None
        self._last: dict[str, Any] = {}

    @contextlib.contextmanager
    def running(self, trainer: Trainer) -> Iterator[None]:
        try:
            yield
        finally:
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    def on_fit_start(self, trainer: Trainer) -> None:
        cfg = trainer.cfg
        self._bar = tqdm(total=cfg.epochs * cfg.rounds,
                         initial=trainer.epoch * cfg.rounds + trainer.round,
                         disable=not self.enabled, desc=cfg.method, unit="round",
                         dynamic_ncols=True)
        self._last = trainer.history[-1] if trainer.history else {}

    def on_round_end(self, trainer: Trainer, values: dict[str, float]) -> None:
        self._bar.update(1)
        if not self.enabled:
            return
        post = {k: f"{values[k]:.3g}" for k in ("loss_s", "loss_g") if k in values}
        post.update({k: f"{v:.3g}" for k, v in trainer.method.status().items()})
        if self._last.get("acc1") is not None:
            post["acc1"] = f"{self._last['acc1']:.2f}"
        post.update({k: f"{self._last[k]:.3g}" for k in SHOWN if k in self._last})
        self._bar.set_postfix(post, refresh=False)

    def on_epoch_end(self, trainer: Trainer, row: dict[str, Any]) -> None:
        self._last = row
        if not self.enabled and trainer.is_main:
            print(epoch_line(row, trainer.cfg.epochs), file=sys.stderr, flush=True)


def epoch_line(row: dict[str, Any], epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs}"]
    for key in ("acc1", "agreement", "loyalty", "synthetic_agreement", "synthetic_loyalty",
                "loss_s", "lambda", "adv_weight", "elapsed_seconds"):
        if key in row:
            parts.append(f"{key} {row[key]:.4g}")
    return "  ".join(parts)
