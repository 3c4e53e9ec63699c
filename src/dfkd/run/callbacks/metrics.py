"""metrics.jsonl, one row per finished epoch, and summary.json when the run is done.

A row is appended only once its checkpoint is on disk (this callback's write comes after
:class:`~dfkd.run.callbacks.checkpoint.CheckpointFiles`'), so a run killed at any moment
resumes from at least the last epoch its metrics show; a resume drops the rows written
after its checkpoint."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dfkd.checkpoint import METRICS, SUMMARY
from dfkd.metrics import run_summary
from dfkd.probe import KEYS as SYNTHETIC_KEYS
from dfkd.report import dumps_strict
from dfkd.run.callbacks.base import Callback
from dfkd.run.device import peak_memory_mb

if TYPE_CHECKING:
    from dfkd.run.trainer import Trainer


class MetricsFile(Callback):
    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.rows_written = 0   # the history's rows on disk, or queued behind their checkpoint

    def on_checkpoint(self, trainer: Trainer,
                      state: dict[str, Any]) -> Callable[[], None] | None:
        rows = new_rows(state["history"], self.rows_written)
        self.rows_written = len(state["history"])
        if not rows:
            return None
        path = self.out_dir / METRICS

        def write() -> None:
            with open(path, "a") as f:
                f.write(rows)
                f.flush()
                os.fsync(f.fileno())
        return write

    def on_resume(self, trainer: Trainer) -> None:
        """The file continues exactly the checkpoint's history: lines written after the
        checkpoint (by a run that was then killed) are dropped."""
        _replace(self.out_dir / METRICS, new_rows(trainer.history, 0))
        self.rows_written = len(trainer.history)

    def on_fit_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        if trainer.epoch == trainer.cfg.epochs:
            _replace(self.out_dir / SUMMARY, dumps_strict(summary, indent=2) + "\n")


def summarize_run(trainer: Trainer) -> dict[str, Any]:
    """summary.json: the last epoch's metrics, what the callbacks add (the probe, the
    warnings), the accuracy curve's summary, timings and the configuration."""
    history, cfg, timers = trainer.history, trainer.cfg, trainer.timers
    last = history[-1] if history else {}
    acc = [row["acc1"] for row in history if "acc1" in row]
    elapsed = [row["elapsed_seconds"] for row in history if "acc1" in row]
    out: dict[str, Any] = {
        "method": cfg.method, "epochs": trainer.epoch,
        **{f"final_{k}": last.get(k) for k in ("acc1", "acc5", "agreement", "loyalty",
                                                "loyalty_official", *SYNTHETIC_KEYS)}}
    for callback in trainer.callbacks:
        out.update(callback.summarize(trainer))
    # Student steps run only after a warm-up (Fast): count the epochs that had them.
    learned = max(0, trainer.epoch - trainer.method.warmup_epochs)
    samples = learned * cfg.rounds * cfg.kd_steps * cfg.batch_size
    return {
        **out, "eval_split": trainer.eval_split, **run_summary(acc, elapsed),
        "teacher_acc1": trainer.teacher_acc1,
        # The teacher's answers in training (not its eval-split measurement, nor the probe's);
        # stopped_by "query_budget": the run ended when query_budget could not pay a round.
        "teacher_queries": trainer.queries["total"],
        **({"stopped_by": "query_budget"} if trainer.budget_spent else {}),
        "normalization": trainer.spec.normalization_record(),
        **{k: round(v, 3) for k, v in timers.items()},
        "student_samples_per_second": samples / max(timers["student_seconds"], 1e-9),
        "peak_memory_mb": round(peak_memory_mb(trainer.device), 1),
        "device": str(trainer.device), "world_size": trainer.dist.world_size,
        "config": cfg.to_dict(),
    }


def new_rows(history: list[dict[str, Any]], start: int) -> str:
    """metrics.jsonl's lines for ``history[start:]``."""
    return "".join(dumps_strict(row) + "\n" for row in history[start:])


def _replace(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
