"""Per-sample image augmentations, drawn with the CPU RNG so a resumed run repeats them on
any device: torchvision's RandomCrop(size, padding) + RandomHorizontalFlip, as the original
DFKD codes' CIFAR loaders give their students (and CMI and Fast their synthesis views)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    sample (images in [0, 1], so the zero padding is black as in the originals)."""
    n = len(images)
    top = torch.randint(0, 2 * padding + 1, (n,))
    left = torch.randint(0, 2 * padding + 1, (n,))
    mirror = torch.rand(n) < 0.5 if flip else torch.zeros(n, dtype=torch.bool)
    return crop_flip(images, padding, top, left, mirror)
