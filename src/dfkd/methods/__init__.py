"""DFKD methods, one file each, found by name.

A method improves its sample source (``generator_step``) and turns a batch of
samples into the student's loss (``student_loss``); the engine owns the loop,
optimiser schedules, evaluation, checkpoints and logs.
"""

from __future__ import annotations

import difflib

from dfkd.errors import ConfigError
from dfkd.methods.base import GeneratorMethod, Method, MethodContext

_METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    _METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    """The names ``--method`` (and ``dfkd.distill(method=...)``) accepts, sorted."""
    return sorted(_METHODS)


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``; an unknown name is a one-line
    :class:`~dfkd.errors.ConfigError` with a "did you mean"."""
    if not isinstance(name, str) or name not in _METHODS:
        close = difflib.get_close_matches(str(name), _METHODS, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(
            f"unknown method '{name}'.{hint} Known methods: {', '.join(list_methods())}."
        )
    return _METHODS[name]


from dfkd.methods import (  # noqa: E402,F401  (registration)
    cmi,
    cudfkd,
    dafl,
    deepinv,
    dfad,
    dfq,
    fast,
    zskt,
)

__all__ = ["GeneratorMethod", "Method", "MethodContext", "get_method", "list_methods",
           "register_method"]
