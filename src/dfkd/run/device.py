"""Where a run computes, and what it takes of that device."""

from __future__ import annotations

import contextlib
import os
import resource

import torch
from torch import nn

from dfkd import distributed
from dfkd.config import RunConfig
from dfkd.errors import DfkdError


def resolve_device(name: str) -> torch.device:
    """``--device auto|cpu|cuda`` as a device (under DDP, this process's GPU)."""
    if name == "cuda" and not torch.cuda.is_available():
        raise DfkdError("--device cuda was asked for, but PyTorch sees no CUDA GPU "
                        "(use --device cpu or auto)")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", distributed.current().local_rank)


def use_deterministic_algorithms() -> None:
    """What exact resume on CUDA needs: deterministic kernels (a warning names any op that
    has none) and a fixed cuBLAS workspace. Process-wide, as PyTorch's switches are."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (so a timer measures it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Placement:
    """Where and how a run computes: its device and process group, channels_last and bf16
    autocast (CUDA only), deterministic kernels when asked for."""

    def __init__(self, cfg: RunConfig) -> None:
        self.dist = distributed.current()
        self.device = resolve_device(cfg.device)
        if cfg.batch_size % self.dist.world_size:
            raise DfkdError(f"batch_size {cfg.batch_size} is the global batch and must divide "
                            f"evenly over {self.dist.world_size} processes")
        if cfg.deterministic:
            use_deterministic_algorithms()
        self.cuda = self.device.type == "cuda"
        self.channels_last = self.cuda and cfg.channels_last
        self.amp = self.cuda and cfg.amp

    def put(self, module: nn.Module) -> nn.Module:
        """``module`` on the device, in the run's memory format."""
        fmt = torch.channels_last if self.channels_last else torch.preserve_format
        return module.to(self.device, memory_format=fmt)

    def wrap(self, module: nn.Module) -> nn.Module:
        """DDP under torchrun (gradients averaged over ranks), else ``module`` itself."""
        if not self.dist.enabled:
            return module
        ids = [self.device.index] if self.cuda else None
        return nn.parallel.DistributedDataParallel(module, device_ids=ids)

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.amp \
            else contextlib.nullcontext()
