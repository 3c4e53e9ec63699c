"""Forward hooks that read what a model stores, without changing the model.

* :class:`BNStatsHook` turns every BatchNorm layer's input statistics into the
  DeepInversion / CuDFKD prior term
  ``sum_l ||mu_batch - running_mean||_2 + ||var_batch - running_var||_2``.
  :class:`NoBNStats` is its stand-in when the term is off.
* :class:`FeatureHook` keeps the outputs of chosen modules (attention transfer,
  contrastive heads).
"""

from __future__ import annotations

import torch
from torch import nn


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


class BNStatsHook:
    """Accumulates the BN statistics loss of each forward pass while ``active``.

    It stays registered for the whole run; it is active only during the
    generator's step, so the student's steps pay nothing for it.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = batchnorm_layers(model)
        self.active = False
        self._terms: list[torch.Tensor] = []
        self._handles = [m.register_forward_hook(self._hook) for m in self.layers]

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], _out) -> None:
        if not self.active:
            return
        x = inputs[0].float()
        dims = [0] + list(range(2, x.dim()))
        mean = x.mean(dim=dims)
        var = x.var(dim=dims, unbiased=False)
        self._terms.append(
            torch.linalg.vector_norm(mean - module.running_mean, 2)
            + torch.linalg.vector_norm(var - module.running_var, 2)
        )

    def __enter__(self) -> BNStatsHook:
        self._terms.clear()
        self.active = True
        return self

    def __exit__(self, *exc) -> None:
        self.active = False

    def loss(self) -> torch.Tensor:
        """The summed term of the forward passes made inside the ``with`` block."""
        if not self._terms:
            raise RuntimeError("no BatchNorm statistics recorded; run a forward pass first")
        total = torch.stack(self._terms).sum()
        self._terms.clear()
        return total

    def remove(self) -> None:
        for h in self._handles:
            h.remove()


class NoBNStats:
    """Stands in for :class:`BNStatsHook` when a method's BN term is off (its ``w_bn`` is 0,
    e.g. for a teacher without BatchNorm): no hooks, and a zero term."""

    layers: list = []
    running = None

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = device

    def __enter__(self) -> NoBNStats:
        return self

    def __exit__(self, *exc) -> None:
        pass

    def loss(self) -> torch.Tensor:
        return torch.zeros((), device=self.device)

    def update(self) -> None:
        """Fast's momentum statistics: nothing to fold in."""

    def state_dict(self) -> dict:
        return {"running": None}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        pass

    def remove(self) -> None:
        pass


class FeatureHook:
    """Keeps the latest output of each named module."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        modules = dict(model.named_modules())
        self.outputs: dict[str, torch.Tensor] = {}
        self._handles = [
            modules[n].register_forward_hook(
                lambda _m, _i, out, n=n: self.outputs.__setitem__(n, out)
            )
            for n in names
        ]

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
