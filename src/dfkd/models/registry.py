"""A name -> constructor registry, in the style of timm's ``@register_model``."""

from __future__ import annotations

import difflib
from collections.abc import Callable

from torch import nn

from dfkd.errors import DfkdError

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn(num_classes, in_channels)`` under its function name."""
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Build a registered architecture; an unknown name is a user error with a suggestion."""
    if name not in _MODELS:
        close = difflib.get_close_matches(name, _MODELS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise DfkdError(
            f"unknown model '{name}'.{hint} Known models: {', '.join(list_models())}."
        )
    return _MODELS[name](num_classes=num_classes, in_channels=in_channels)
