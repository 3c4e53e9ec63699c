"""Sample banks and the shared machinery of bank-based methods (deepinv, cmi, fast).

A bank-based method synthesises one batch per round (``start_synthesis``, then
``g_steps`` x ``generator_step``, then ``end_synthesis`` puts the batch in the bank),
and the student learns KD on batches drawn from the whole bank, each image randomly
cropped (after zero padding) and flipped on its own, as the originals' CIFAR loaders
(torchvision RandomCrop(32, padding=4) + RandomHorizontalFlip) do.

The bank holds float tensors in memory: images in [0, 1], never rounded to 8 bits
(the originals save 8-bit PNGs), and saved whole in the checkpoint so a resumed run
draws the same batches. ``bank_size: 0`` keeps every batch, as the originals' image
pools do; a positive size keeps the latest rows (first in, first out). Under torchrun
every rank adds the batches of all ranks, so the banks stay identical and rank 0's
checkpoint holds everyone's.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from dfkd import distributed
from dfkd.errors import ConfigError
from dfkd.losses import kd_kl
from dfkd.methods.base import Method, MethodContext


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


def jitter(images: torch.Tensor, shift: int, flip: bool = True) -> torch.Tensor:
    """DeepInversion's synthesis augmentation: one random circular shift of up to ``shift``
    pixels in each direction, and a random horizontal flip, for the whole batch."""
    if shift > 0:
        dy, dx = torch.randint(-shift, shift + 1, (2,)).tolist()
        images = torch.roll(images, shifts=(dy, dx), dims=(2, 3))
    if flip and torch.rand(()) < 0.5:
        images = images.flip(3)
    return images


def crop_flip(images: torch.Tensor, padding: int, top: torch.Tensor, left: torch.Tensor,
              mirror: torch.Tensor) -> torch.Tensor:
    """Per sample i: zero-pad by ``padding`` pixels, take the window of the input's size
    whose corner is (top[i], left[i]) in the padded image, and mirror it if mirror[i].

    Two gathers, so it runs on any device and passes gradients to ``images``.
    """
    n, c, h, w = images.shape
    padded = F.pad(images, (padding,) * 4) if padding else images
    rows = top.view(n, 1) + torch.arange(h)
    cols = left.view(n, 1) + torch.arange(w)
    cols = torch.where(mirror.view(n, 1), cols.flip(1), cols)
    rows = rows.to(images.device).view(n, 1, h, 1).expand(n, c, h, padded.shape[3])
    cols = cols.to(images.device).view(n, 1, 1, w).expand(n, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


def random_crop_flip(images: torch.Tensor, padding: int, flip: bool = True) -> torch.Tensor:
    """torchvision's RandomCrop(size, padding) then RandomHorizontalFlip, drawn for each
    sample (images in [0, 1], so the zero padding is black as in the originals). The
    draws use the CPU RNG, so a resumed run repeats them on any device."""
    n = len(images)
    top = torch.randint(0, 2 * padding + 1, (n,))
    left = torch.randint(0, 2 * padding + 1, (n,))
    mirror = torch.rand(n) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return crop_flip(images, padding, top, left, mirror)


class BankMethod(Method):
    """Synthesis into a :class:`SampleBank`; the student learns KD on the bank.

    Subclass settings need ``bank_size`` (0 = unbounded), ``tau``, ``padding`` and
    ``flip``: each student batch is drawn from the bank with replacement and augmented
    per sample as the originals' data loaders do (zero-pad ``padding`` pixels, random
    crop back to size, random horizontal flip if ``flip``).
    """

    # Each round's batch is synthesised in its generator steps, so a round needs one.
    min_g_steps: ClassVar[int] = 1

    def __init__(self, ctx: MethodContext, settings: Any) -> None:
        super().__init__(ctx, settings)
        self.bank = SampleBank(settings.bank_size)
        self.bn_hook = self.make_bn_hook() if self.needs_bn else None

    def pixel_range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The normalised values of pixels 0 and 1, per channel, for clamping inputs."""
        return (0 - self.ctx.mean) / self.ctx.std, (1 - self.ctx.mean) / self.ctx.std

    def student_loss(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.settings
        x01 = random_crop_flip(self.bank.sample(self.ctx.batch_size), s.padding, s.flip)
        x = self.ctx.normalize(x01)
        with self.ctx.autocast():
            with torch.no_grad():
                t = self.ctx.teacher(x)
            st = self.ctx.student(x)
        loss = kd_kl(st, t, s.tau)
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
