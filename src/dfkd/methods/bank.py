"""Sample banks and the shared machinery of bank-based methods (deepinv, cmi, fast).

A bank-based method synthesises one batch per round (``start_synthesis``, then
``g_steps`` x ``generator_step``, then ``end_synthesis`` puts the batch in the bank),
and the student learns KD on batches drawn from the whole bank.

The bank is a bounded ring buffer of float tensors in memory: images in [0, 1],
never rounded to 8 bits, and saved whole in the checkpoint so a resumed run draws
the same batches. Under torchrun every rank adds the batches of all ranks, so the
banks stay identical and rank 0's checkpoint holds everyone's.
"""

from __future__ import annotations

from typing import Any

import torch

from dfkd import distributed
from dfkd.errors import ConfigError
from dfkd.hooks import BNStatsHook
from dfkd.losses import kd_kl
from dfkd.methods.base import Method, MethodContext


class SampleBank:
    """The latest ``capacity`` rows added (first in, first out), on one device."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ConfigError(f"bank_size must be >= 1, got {capacity}")
        self.capacity = capacity
        self.data: torch.Tensor | None = None  # allocated on the first add
        self.count = 0   # rows filled
        self.next = 0    # where the next row goes

    def __len__(self) -> int:
        return self.count

    def add(self, rows: torch.Tensor) -> None:
        rows = distributed.all_gather_cat(rows.detach())[-self.capacity:]
        if self.data is None:
            self.data = rows.new_empty((self.capacity, *rows.shape[1:]))
        index = (self.next + torch.arange(len(rows))) % self.capacity
        self.data[index.to(self.data.device)] = rows.to(self.data.dtype)
        self.next = (self.next + len(rows)) % self.capacity
        self.count = min(self.count + len(rows), self.capacity)

    def sample(self, n: int) -> torch.Tensor:
        """n rows drawn uniformly with replacement (CPU RNG, so resume is exact anywhere)."""
        if self.data is None:
            raise RuntimeError("the sample bank is empty: synthesise before sampling")
        return self.data[torch.randint(self.count, (n,)).to(self.data.device)]

    def latest(self, n: int) -> torch.Tensor:
        """The n rows added last, oldest first."""
        if self.data is None:
            raise RuntimeError("the sample bank is empty")
        n = min(n, self.count)
        return self.data[(self.next - n + torch.arange(n)) % self.capacity]

    def state_dict(self) -> dict[str, Any]:
        data = None if self.data is None else self.data[: self.count].clone()
        return {"data": data, "next": self.next, "count": self.count}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.count, self.next, self.data = state["count"], state["next"], None
        rows = state["data"]
        if rows is not None:
            self.data = torch.empty((self.capacity, *rows.shape[1:]), dtype=rows.dtype,
                                    device=device)
            self.data[: self.count] = rows.to(device)


def jitter(images: torch.Tensor, shift: int, flip: bool = True) -> torch.Tensor:
    """DeepInversion's augmentation: one random circular shift of up to ``shift`` pixels
    in each direction, and a random horizontal flip, for the whole batch."""
    if shift > 0:
        dy, dx = torch.randint(-shift, shift + 1, (2,)).tolist()
        images = torch.roll(images, shifts=(dy, dx), dims=(2, 3))
    if flip and torch.rand(()) < 0.5:
        images = images.flip(3)
    return images


class BankMethod(Method):
    """Synthesis into a :class:`SampleBank`; the student learns KD on the bank.

    Subclass settings need ``bank_size``, ``tau`` and ``jitter`` (pixels, 0 = none).
    """

    def __init__(self, ctx: MethodContext, settings: Any) -> None:
        super().__init__(ctx, settings)
        self.bank = SampleBank(settings.bank_size)
        self.bn_hook = BNStatsHook(ctx.teacher) if self.needs_bn else None

    def pixel_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised values of pixels 0 and 1, per channel, for clamping inputs."""
        return (0 - self.ctx.mean) / self.ctx.std, (1 - self.ctx.mean) / self.ctx.std

    def student_loss(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x01 = jitter(self.bank.sample(self.ctx.batch_size), self.settings.jitter)
        x = self.ctx.normalize(x01)
        with self.ctx.autocast():
            with torch.no_grad():
                t = self.ctx.teacher(x)
            st = self.ctx.student(x)
        loss = kd_kl(st, t, self.settings.tau)
        return loss, {"loss_s": loss.detach(), "kd": loss.detach()}

    def status(self) -> dict[str, float]:
        return {"bank": float(len(self.bank))}

    @torch.no_grad()
    def preview(self, n: int, seed: int = 0) -> torch.Tensor:
        return self.bank.latest(n).float().cpu()

    def state_dict(self) -> dict[str, Any]:
        return {"bank": self.bank.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bank.load_state_dict(state["bank"], self.ctx.device)
