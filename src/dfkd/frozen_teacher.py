"""The frozen teacher: a building block that the trainer and the methods both use.

The trainer wraps the user's teacher in :class:`FrozenTeacher`; methods that look
inside the teacher (its layer names, its ``forward`` signature) unwrap it with
:func:`user_model`. Keeping both here lets methods depend on neither the trainer
nor each other for it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class FrozenTeacher(nn.Module):
    """The teacher, frozen: no gradients, and eval mode whatever ``train()`` is called
    with, so its BN statistics never drift on synthetic data. ``queries`` counts the
    images it has answered (the trainer reads it around each round)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.queries = 0

    def train(self, mode: bool = True) -> FrozenTeacher:
        return self

    def forward(self, x: torch.Tensor, **kwargs: Any) -> Any:
        self.queries += x.shape[0]
        return self.model(x, **kwargs)


def user_model(teacher: nn.Module) -> nn.Module:
    """The user's module inside a :class:`FrozenTeacher` wrapper, if any."""
    return teacher.model if isinstance(teacher, FrozenTeacher) else teacher


class GraphedForward:
    """A frozen module's no-grad forward, captured as one CUDA graph at its first call and
    replayed after that: one launch per call instead of one per layer (``teacher_graph``).

    The graph holds fixed input and output buffers: each call copies its input in and
    returns a copy of the output. A call the graph does not fit (with gradient, on CPU,
    or with another shape, dtype, layout or autocast state than the first) runs the module
    as usual. Python forward hooks run at capture only, so it suits calls whose hooks are
    inactive (the teacher in student steps: BN statistics are read in generator steps)."""

    def __init__(self, module: nn.Module, warmup: int = 3) -> None:
        self.module = module
        self.warmup = warmup
        self.graph: Any = None
        self.key: tuple | None = None
        self.static_in: torch.Tensor | None = None
        self.static_out: torch.Tensor | None = None

    @staticmethod
    def _key(x: torch.Tensor) -> tuple:
        return (tuple(x.shape), x.stride(), x.dtype, x.device,
                torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cuda" or torch.is_grad_enabled():
            return self.module(x)
        key = self._key(x)
        if self.graph is None:
            self._capture(x, key)
        elif key != self.key:
            return self.module(x)
        self.static_in.copy_(x)
        self.graph.replay()
        if isinstance(self.module, FrozenTeacher):   # a replay answers as a forward would
            self.module.queries += x.shape[0]
        return self.static_out.clone()

    def _capture(self, x: torch.Tensor, key: tuple) -> None:
        queries = getattr(self.module, "queries", None)   # warm-up and capture: no answer
        self.static_in = x.clone()
        current = torch.cuda.current_stream(x.device)
        side = torch.cuda.Stream(x.device)
        side.wait_stream(current)   # warm-up on a side stream, as capture requires
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.module(self.static_in)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # Capture bakes in the caller's autocast; its weight-cast cache must be off.
        with torch.autocast("cuda", dtype=key[5], enabled=key[4], cache_enabled=False), \
                torch.cuda.graph(graph):
            self.static_out = self.module(self.static_in)
        self.graph, self.key = graph, key
        if queries is not None:
            self.module.queries = queries
