"""Distributed data parallel through ``torchrun``: process-group setup and collectives.

Outside torchrun (no ``WORLD_SIZE`` > 1 in the environment) every helper is a
no-op, so the single-process path pays nothing.
"""

from __future__ import annotations

import gc
import io
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(device: str = "auto") -> DistInfo:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return info


def shutdown() -> None:
    """Leave the process group, and free it, before the interpreter exits.

    A gloo group freed in interpreter teardown can abort the process (SIGABRT,
    "terminate called without an active exception") after a run that succeeded.
    ``destroy_process_group`` only unregisters the group: DistributedDataParallel modules
    hold it too, often in reference cycles that only the collector frees. So the caller
    drops its models first, and the collection here frees them, and with them the group.
    """
    gc.collect()
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def current() -> DistInfo:
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(),
                    int(os.environ.get("LOCAL_RANK", "0")))


def barrier() -> None:
    if current().enabled:
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Mean over ranks (in place for the distributed case)."""
    info = current()
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= info.world_size
    return tensor


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank if it is true on any (e.g. a signal seen by one process)."""
    if not current().enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def all_gather_objects(obj: Any) -> list[Any]:
    """Gather tensors/plain containers from every rank, in rank order.

    Objects travel as ``torch.save`` bytes (read back weights-only): plain pickling
    of CPU tensors through ``all_gather_object`` fails on some torch versions.
    """
    info = current()
    if not info.enabled:
        return [obj]
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, buffer.getvalue())
    return [torch.load(io.BytesIO(b), weights_only=True) for b in out]


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's tensor (same shape everywhere), concatenated along dim 0 in rank order."""
    info = current()
    if not info.enabled:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(info.world_size)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts them at the start of each forward, but each rank's forward then
    updates them from its own shard; syncing at round ends makes every rank use, and
    rank 0's checkpoint hold, the same statistics (so eval-mode uses and resume agree).
    """
    if current().enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)
