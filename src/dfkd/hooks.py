"""Forward hooks that read what a model stores, without changing the model.

* :class:`ForwardHooks` registers one hook function on a set of modules and removes them
  together: every forward hook of dfkd goes through it.
* :func:`eval_forward` runs one forward made only to be read by hooks.
* :class:`BNStatsHook` turns every BatchNorm layer's input statistics into the
  DeepInversion / CuDFKD prior term
  ``sum_l ||mu_batch - running_mean||_2 + ||var_batch - running_var||_2``;
  :class:`MomentumBNHook` matches a momentum blend of this and earlier rounds' statistics
  (Fast's), and :class:`NoBNStats` stands in for either when the term is off.
* :class:`FeatureHook` keeps the outputs of chosen modules (attention transfer,
  contrastive heads).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from dfkd import distributed


class ForwardHooks:
    """``hook`` on each of ``modules``: a forward hook, ``hook(module, inputs, output)``, or
    with ``pre`` a forward pre-hook, ``hook(module, inputs)``. Registered until
    :meth:`remove`; as a context manager, for the ``with`` block only."""

    def __init__(self, modules: Iterable[nn.Module], hook: Callable[..., None],
                 pre: bool = False) -> None:
        self._handles = [m.register_forward_pre_hook(hook) if pre else
                         m.register_forward_hook(hook) for m in modules]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def __enter__(self) -> ForwardHooks:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def eval_forward(model: nn.Module, x: torch.Tensor) -> Any:
    """``model(x)`` without gradient and in eval mode (no BatchNorm statistic moves), the
    model's mode restored after: a forward made to read what its layers output."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return model(x)
    finally:
        model.train(training)


def last_linear(model: nn.Module) -> nn.Linear | None:
    """The model's last Linear layer (its classifier, for the models dfkd knows), if any."""
    return next((m for m in reversed(list(model.modules())) if isinstance(m, nn.Linear)), None)


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _batch_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (biased) variance of a BatchNorm layer's input, in float32."""
    x = x.float()
    dims = [0] + list(range(2, x.dim()))
    return x.mean(dim=dims), x.var(dim=dims, unbiased=False)


def _distance(module: nn.Module, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(mean - module.running_mean, 2) \
        + torch.linalg.vector_norm(var - module.running_var, 2)


class BNStatsHook:
    """Accumulates the BN statistics loss of each forward pass while ``active``.

    It stays registered for the whole run; it is active only during the
    generator's step, so the student's steps pay nothing for it.
    """

    def __init__(self, model: nn.Module) -> None:
        self.layers = batchnorm_layers(model)
        self.active = False
        self._terms: list[torch.Tensor] = []
        self._hooks = ForwardHooks(self.layers, self._hook)

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], _out) -> None:
        if self.active:
            self._terms.append(_distance(module, *_batch_stats(inputs[0])))

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
        self._hooks.remove()


class MomentumBNHook(BNStatsHook):
    """The BN statistics term against a momentum blend of this and earlier rounds' batch
    statistics (Fast's DeepInversionHook with ``mmt_rate``).

    ``running`` holds one (mean, var) per BN layer, None until the first round ends;
    ``update()`` folds in the statistics of the last forward pass made while active.
    """

    def __init__(self, model: nn.Module, momentum: float) -> None:
        super().__init__(model)
        self.momentum = momentum
        self.index = {id(m): i for i, m in enumerate(self.layers)}
        self.last: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(self.layers)
        self.running: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def _hook(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], _out) -> None:
        if not self.active:
            return
        mean, var = _batch_stats(inputs[0])
        i = self.index[id(module)]
        self.last[i] = (mean.detach(), var.detach())
        if self.running is not None:
            m, (run_mean, run_var) = self.momentum, self.running[i]
            mean = (1 - m) * mean + m * run_mean
            var = (1 - m) * var + m * run_var
        self._terms.append(_distance(module, mean, var))

    def update(self) -> None:
        """Fold the last active pass's statistics (averaged over ranks) into ``running``."""
        if any(s is None for s in self.last):
            raise RuntimeError("no BatchNorm statistics recorded; run a forward pass first")
        stats = [t for pair in self.last for t in pair]  # mean_1, var_1, mean_2, ...
        parts = distributed.all_reduce_mean(torch.cat(stats)).split([len(t) for t in stats])
        last = list(zip(parts[0::2], parts[1::2]))
        if self.running is None:
            self.running = last
        else:
            m = self.momentum
            self.running = [(m * rm + (1 - m) * mean, m * rv + (1 - m) * var)
                            for (rm, rv), (mean, var) in zip(self.running, last)]
        self.last = [None] * len(self.layers)

    def state_dict(self) -> dict[str, Any]:
        return {"running": self.running}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        running = state["running"]
        self.running = None if running is None else \
            [(mean.to(device), var.to(device)) for mean, var in running]


class NoBNStats:
    """Stands in for :class:`BNStatsHook` and :class:`MomentumBNHook` when a method's BN
    term is off (its ``w_bn`` is 0, e.g. for a teacher without BatchNorm): no hooks, and a
    zero term."""

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
        self._names = {modules[n]: n for n in names}
        self._hooks = ForwardHooks(self._names, self._keep)

    def _keep(self, module: nn.Module, _inputs, output) -> None:
        self.outputs[self._names[module]] = output

    def remove(self) -> None:
        self._hooks.remove()
