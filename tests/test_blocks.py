"""The small building blocks every layer uses: one registry and one "did you mean" for every
name a user types, declared ranges of settings, and one manager of forward hooks."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import nn

from dfkd.config import build_dataclass
from dfkd.errors import ConfigError, DfkdError
from dfkd.hooks import ForwardHooks, eval_forward
from dfkd.ranges import Range, ranged
from dfkd.registry import Registry, did_you_mean


def test_one_registry_for_every_kind_of_name():
    shapes = Registry("shape", DfkdError, "; or draw your own")
    assert shapes.add("circle", 1) == 1 and shapes.add("square", 2) == 2
    assert shapes.names() == ["circle", "square"]
    assert shapes.get("square") == 2
    with pytest.raises(DfkdError, match=r"^unknown shape 'cirle'. Did you mean 'circle'\? "
                                        r"Known shapes: circle, square; or draw your own.$"):
        shapes.get("cirle")
    with pytest.raises(ConfigError, match="unknown thing '\\['a'\\]'. Known things: .$"):
        Registry("thing").get(["a"])   # not a name at all: no suggestion
    assert did_you_mean("tua", ["tau", "lr"]) == " Did you mean 'tau'?"
    assert did_you_mean("xyz", ["tau"]) == ""


@dataclass
class _Settings:
    tau: float = ranged(1.0, gt=0)
    share: float | None = ranged(None, ge=0, lt=1)
    steps: int = ranged(1, ge=1)
    free: float = -3.0


def test_declared_ranges_are_checked_with_the_key():
    assert [str(Range(gt=0)), str(Range(ge=1)), str(Range(ge=0, lt=1)),
            str(Range(gt=0, le=1))] == ["> 0", ">= 1", "in [0, 1)", "in (0, 1]"]
    assert build_dataclass(_Settings, {"tau": 0.5, "share": None, "free": -9.0}) == \
        _Settings(0.5, None, 1, -9.0)
    for key, value, bound in (("tau", 0.0, "> 0"), ("share", 1.0, r"in \[0, 1\)"),
                              ("steps", 0, ">= 1")):
        with pytest.raises(ConfigError, match=f"^'x.{key}' must be {bound}, got {value}$"):
            build_dataclass(_Settings, {key: value}, "x.")
    with pytest.raises(ValueError):
        Range(ge=0, gt=0)


def test_forward_hooks_come_off_together():
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
    seen = []
    hooks = ForwardHooks([net[0], net[2]], lambda m, i, o: seen.append(type(m).__name__))
    with ForwardHooks([net[2]], lambda m, i: seen.append("pre"), pre=True):
        net(torch.zeros(1, 2))
    assert seen == ["Linear", "pre", "Linear"]
    hooks.remove()
    net(torch.zeros(1, 2))
    assert seen == ["Linear", "pre", "Linear"]
    assert not net[0]._forward_hooks and not net[2]._forward_pre_hooks


def test_eval_forward_moves_no_statistic_and_restores_the_mode():
    net = nn.Sequential(nn.BatchNorm1d(3)).train()
    out = eval_forward(net, torch.randn(4, 3) + 5)
    assert net.training and not out.requires_grad
    assert torch.equal(net[0].running_mean, torch.zeros(3))
