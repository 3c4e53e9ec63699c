"""Architectures by name (a registry in the style of timm's ``@register_model``), timm's
by ``timm:NAME`` (:mod:`dfkd.models.timm_models`), or the user's own, given as
``package.module:callable`` or ``path/to/file.py:callable``."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from torch import nn

from dfkd.errors import DfkdError
from dfkd.models.timm_models import create_timm_model, is_timm_spec
from dfkd.registry import Registry, did_you_mean

_MODELS: Registry[Callable[..., nn.Module]] = Registry(
    "model", DfkdError,
    "; or give your own as package.module:callable or path/to/file.py:callable")
_FILE_MODULES: dict[str, ModuleType] = {}  # resolved path -> module, loaded once per process

SPEC_HELP = ("a zoo NAME, timm:NAME (a timm architecture, untrained; pip install "
             "'dfkd[timm]'), or your own model as package.module:callable or "
             "path/to/file.py:callable (called with num_classes and in_channels when it "
             "takes them)")


def register_model(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """Register ``fn(num_classes, in_channels)`` under its function name."""
    return _MODELS.add(fn.__name__, fn)


def list_models() -> list[str]:
    """The registered architecture names (``lenet5``, ``resnet18``, ...), sorted."""
    return _MODELS.names()


def _split_spec(spec: str) -> tuple[str, str, bool] | None:
    """``(target, attribute, is_file)`` for a ``target:callable`` spec, None for a name
    (a zoo or a ``timm:`` name)."""
    if ":" not in spec or is_timm_spec(spec):
        return None
    target, _, attr = spec.rpartition(":")
    is_file = target.endswith(".py") or "/" in target or os.sep in target
    return target, attr, is_file


def resolve_spec(spec: str) -> str:
    """The spec as checkpoints record it: a file spec with an absolute path, so the model
    is rebuilt from any working folder; names and module specs unchanged."""
    parts = _split_spec(spec)
    if parts is None or not parts[2]:
        return spec
    target, attr, _ = parts
    return f"{Path(target).expanduser().resolve()}:{attr}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _load_file(target: str, spec: str) -> ModuleType:
    path = Path(target).expanduser()
    if not path.is_file():
        raise DfkdError(f"model '{spec}': the file '{target}' does not exist")
    key = str(path.resolve())
    if key in _FILE_MODULES:
        return _FILE_MODULES[key]
    # A private module name per file, so two files named models.py do not collide.
    name = f"dfkd_user_{path.stem}_{hashlib.sha1(key.encode()).hexdigest()[:8]}"
    found = importlib.util.spec_from_file_location(name, path)
    if found is None or found.loader is None:
        raise DfkdError(f"model '{spec}': '{target}' is not a Python file")
    module = importlib.util.module_from_spec(found)
    # As `python file.py` does: the file's folder is importable, for its own helpers.
    folder = str(path.resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    sys.modules[name] = module
    try:
        found.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001  (the user's code may raise anything)
        del sys.modules[name]
        raise DfkdError(f"model '{spec}': '{target}' does not import: "
                        f"{_first_line(exc)}") from exc
    _FILE_MODULES[key] = module
    return module


def _load_module(target: str, spec: str) -> ModuleType:
    # The console script does not put the working folder on sys.path; `python -m` does.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())
    try:
        return importlib.import_module(target)
    except Exception as exc:  # noqa: BLE001
        raise DfkdError(f"model '{spec}': module '{target}' does not import: "
                        f"{_first_line(exc)}") from exc


def _find_callable(module: ModuleType, target: str, attr: str, spec: str) -> Callable:
    obj: object = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(module) if not n.startswith("_")
                     and callable(getattr(module, n))]
            raise DfkdError(f"model '{spec}': '{target}' has no '{attr}'."
                            f"{did_you_mean(part, names)}")
        obj = getattr(obj, part)
    if not callable(obj):
        kind = type(obj).__name__
        article = "an" if kind[:1].lower() in "aeiou" else "a"
        raise DfkdError(f"model '{spec}': '{attr}' is {article} {kind}, not a callable "
                        "that returns a model")
    return obj


def _call(fn: Callable, spec: str, num_classes: int, in_channels: int) -> nn.Module:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):  # some builtins have no signature
        params = {}
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kwargs = {k: v for k, v in (("num_classes", num_classes), ("in_channels", in_channels))
              if k in params or takes_any}
    try:
        model = fn(**kwargs)
    except Exception as exc:  # noqa: BLE001
        args = ", ".join(f"{k}={v}" for k, v in kwargs.items())
        raise DfkdError(f"model '{spec}': calling it with ({args}) failed: "
                        f"{_first_line(exc)}") from exc
    if not isinstance(model, nn.Module):
        raise DfkdError(f"model '{spec}' returned a {type(model).__name__}, not a "
                        "torch.nn.Module")
    return model


def load_callable(spec: str) -> Callable:
    """The callable a ``package.module:callable`` or ``path/to/file.py:callable`` spec
    names, not called (a black-box teacher: :mod:`dfkd.teachers`)."""
    parts = _split_spec(spec)
    if parts is None:
        raise DfkdError(f"'{spec}' does not name a callable: give it as "
                        "path/to/file.py:callable or package.module:callable")
    target, attr, is_file = parts
    module = _load_file(target, spec) if is_file else _load_module(target, spec)
    return _find_callable(module, target, attr, spec)


def create_model(name: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """Build a registered architecture, timm's from ``timm:NAME``, or the user's from
    ``module:callable`` or ``file.py:callable``; a bad name or spec is a one-line user
    error."""
    if is_timm_spec(name):
        return create_timm_model(name, num_classes, in_channels)
    parts = _split_spec(name)
    if parts is not None:
        target, attr, is_file = parts
        if not target or not attr:
            raise DfkdError(f"model '{name}': expected package.module:callable or "
                            "path/to/file.py:callable")
        module = _load_file(target, name) if is_file else _load_module(target, name)
        return _call(_find_callable(module, target, attr, name), name, num_classes,
                     in_channels)
    return _MODELS.get(name)(num_classes=num_classes, in_channels=in_channels)
