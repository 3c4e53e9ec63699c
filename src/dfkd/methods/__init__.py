"""DFKD methods, one file each, found by name.

A method improves its sample source (``generator_step``) and turns a batch of
samples into the student's loss (``student_loss``); the trainer owns the loop,
optimiser schedules, evaluation, checkpoints and logs. What a method is (its name, paper,
code, docs page, needs and official recipes) is declared on its class
(``Method``). Every module of this package is imported below, so a
new method is a new file with a class decorated with ``register_method``.
"""

from __future__ import annotations

import importlib
import pkgutil

from dfkd.methods.base import BankMethod, GeneratorMethod, Method, MethodContext
from dfkd.registry import Registry

_METHODS: Registry[type[Method]] = Registry("method")
# What every method class declares (see Method): checked when it registers.
_DECLARED = ("name", "Settings", "title", "paper", "code", "docs")


def register_method(cls: type[Method]) -> type[Method]:
    """Register a ``Method`` subclass under its ``name``."""
    missing = [key for key in _DECLARED if not hasattr(cls, key)]
    if missing:
        raise TypeError(f"method class {cls.__name__} does not declare {', '.join(missing)}")
    return _METHODS.add(cls.name, cls)


def list_methods() -> list[str]:
    """The names ``--method`` (and ``dfkd.distill(method=...)``) accepts, sorted."""
    return _METHODS.names()


def get_method(name: str) -> type[Method]:
    """The method class registered as ``name``; an unknown name is a one-line
    ``ConfigError`` with a "did you mean"."""
    return _METHODS.get(name)


def bn_free_methods() -> list[str]:
    """The methods that read nothing from the teacher's BatchNorm layers, sorted."""
    return [name for name in list_methods() if not get_method(name).needs_bn]


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["BankMethod", "GeneratorMethod", "Method", "MethodContext", "bn_free_methods",
           "get_method", "list_methods", "register_method"]
