"""A sample bank: rows of one shape (images, features) kept on one device for later draws,
and :class:`LowestLoss`, which picks the batch of a round that goes into a bank.

The bank methods put each round's batch in one and train the student on draws from it;
CMI keeps its features in another; CuDFKD's ``replay`` pool is one. Rows are float
tensors, never rounded to 8 bits (the originals save 8-bit PNGs), and the state holds them
all, so a resumed run draws the same batches. Under torchrun every rank adds the rows of
all ranks, so the banks stay identical and rank 0's checkpoint holds everyone's.
"""

from __future__ import annotations

from typing import Any

import torch

from dfkd import distributed
from dfkd.errors import ConfigError


class LowestLoss:
    """The tensors of the step with the lowest loss so far, kept on the device: one
    ``torch.where`` per step, no host sync. ``start``: what is kept until a step beats it
    (a copy of the round's initial inputs); without it the first step's tensors are kept
    whatever their loss, so a round whose every loss is NaN still has a batch."""

    def __init__(self, device: torch.device | str,
                 start: tuple[torch.Tensor, ...] | None = None) -> None:
        self.loss = torch.full((), float("inf"), device=device)
        self.kept = start

    def offer(self, loss: torch.Tensor, *tensors: torch.Tensor) -> None:
        """Keep ``tensors`` (detached) if ``loss`` is below the lowest so far."""
        loss = loss.detach()
        better = loss < self.loss
        self.loss = torch.where(better, loss, self.loss)
        tensors = tuple(t.detach() for t in tensors)
        self.kept = tensors if self.kept is None else \
            tuple(torch.where(better, t, k) for t, k in zip(tensors, self.kept))


class SampleBank:
    """Rows of one shape, on one device: the latest ``capacity`` added (first in, first
    out), or every row ever added when ``capacity`` is 0 (storage grows by doubling)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 0:
            raise ConfigError(f"bank_size must be >= 0 (0 = unbounded), got {capacity}")
        self.capacity = capacity
        self.data: torch.Tensor | None = None  # allocated on the first add
        self.count = 0   # rows filled
        self.next = 0    # where the next row goes

    def __len__(self) -> int:
        return self.count

    @property
    def bounded(self) -> bool:
        return self.capacity > 0

    def _reserve(self, like: torch.Tensor, rows: int) -> None:
        """Storage for ``rows`` rows shaped like ``like``'s, keeping the filled ones."""
        if self.bounded:
            if self.data is None:
                self.data = like.new_empty((self.capacity, *like.shape[1:]))
            return
        if self.data is not None and len(self.data) >= rows:
            return
        grown = like.new_empty((max(rows, 2 * len(self.data) if self.data is not None else 0),
                                *like.shape[1:]))
        if self.data is not None:
            grown[: self.count] = self.data[: self.count]
        self.data = grown

    def add(self, rows: torch.Tensor) -> None:
        rows = distributed.all_gather_cat(rows.detach())
        if self.bounded:
            rows = rows[-self.capacity:]
        self._reserve(rows, self.count + len(rows))
        size = len(self.data)
        index = (self.next + torch.arange(len(rows))) % size
        self.data[index.to(self.data.device)] = rows.to(self.data.dtype)
        self.next = (self.next + len(rows)) % size if self.bounded else self.count + len(rows)
        self.count = min(self.count + len(rows), size)

    def _rows(self, index: torch.Tensor) -> torch.Tensor:
        return self.data[index.to(self.data.device)]

    def _require_rows(self) -> None:
        if self.data is None:
            raise RuntimeError("the sample bank is empty: synthesise before sampling")

    def sample(self, n: int) -> torch.Tensor:
        """n rows drawn uniformly with replacement (CPU RNG, so resume is exact anywhere)."""
        self._require_rows()
        return self._rows(torch.randint(self.count, (n,)))

    def sample_distinct(self, n: int) -> torch.Tensor:
        """min(n, len) distinct rows in random order (CMI's negatives; CPU RNG)."""
        self._require_rows()
        return self._rows(torch.randperm(self.count)[:n])

    def latest(self, n: int) -> torch.Tensor:
        """The n rows added last, oldest first."""
        self._require_rows()
        n = min(n, self.count)
        return self._rows((self.next - n + torch.arange(n)) % len(self.data))

    def state_dict(self) -> dict[str, Any]:
        data = None if self.data is None else self.data[: self.count].clone()
        return {"data": data, "next": self.next, "count": self.count}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.count, self.next, self.data = state["count"], state["next"], None
        rows = state["data"]
        if rows is not None:
            size = self.capacity if self.bounded else len(rows)
            self.data = torch.empty((size, *rows.shape[1:]), dtype=rows.dtype, device=device)
            self.data[: self.count] = rows.to(device)
