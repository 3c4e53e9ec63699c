"""The frozen teacher: a building block that the engine and the methods both use.

The engine wraps the user's teacher in :class:`FrozenTeacher`; methods that look
inside the teacher (its layer names, its ``forward`` signature) unwrap it with
:func:`user_model`. Keeping both here lets methods depend on neither the engine
nor each other for it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class FrozenTeacher(nn.Module):
    """The teacher, frozen: no gradients, and eval mode whatever ``train()`` is called
    with, so its BN statistics never drift on synthetic data."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> FrozenTeacher:
        return self

    def forward(self, x: torch.Tensor, **kwargs: Any) -> Any:
        return self.model(x, **kwargs)


def user_model(teacher: nn.Module) -> nn.Module:
    """The user's module inside a :class:`FrozenTeacher` wrapper, if any."""
    return teacher.model if isinstance(teacher, FrozenTeacher) else teacher
