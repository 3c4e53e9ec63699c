"""Declared ranges of numeric settings: a dataclass field says which values it takes
(:func:`ranged`), and :func:`dfkd.config.load_config` checks every value given for it
(:func:`check_range`), naming the key.

    tau: float = ranged(20.0, gt=0)             # > 0
    bn_mmt: float = ranged(0.9, ge=0, lt=1)     # in [0, 1)

A field that may be None (``float | None``) takes None too. Checks between fields (one
bound below another) stay in the settings' ``validate()``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from dfkd.errors import ConfigError

_KEY = "range"


@dataclass(frozen=True)
class Range:
    """A lower bound (``ge`` inclusive or ``gt`` exclusive) and an optional upper one
    (``le`` inclusive or ``lt`` exclusive)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None

    def __post_init__(self) -> None:
        if (self.ge is None) == (self.gt is None) or None not in (self.le, self.lt):
            raise ValueError("a range takes one of ge/gt and at most one of le/lt")

    def __contains__(self, value: float) -> bool:
        return (value >= self.ge if self.gt is None else value > self.gt) \
            and (self.le is None or value <= self.le) and (self.lt is None or value < self.lt)

    def __str__(self) -> str:
        low = self.ge if self.gt is None else self.gt
        if self.le is None and self.lt is None:
            return f">= {low}" if self.gt is None else f"> {low}"
        opening = "[" if self.gt is None else "("
        closing = f"{self.le}]" if self.lt is None else f"{self.lt})"
        return f"in {opening}{low}, {closing}"


def ranged(default: Any, *, ge: float | None = None, gt: float | None = None,
           le: float | None = None, lt: float | None = None) -> Any:
    """A dataclass field with ``default`` that takes the values of :class:`Range`."""
    return dataclasses.field(default=default, metadata={_KEY: Range(ge, gt, le, lt)})


def check_range(field: dataclasses.Field, value: Any, key: str) -> None:
    """A :class:`~dfkd.errors.ConfigError` naming ``key`` when a number given for ``field``
    lies outside its declared range."""
    bounds = field.metadata.get(_KEY)
    if bounds is not None and isinstance(value, (int, float)) and value not in bounds:
        raise ConfigError(f"'{key}' must be {bounds}, got {value}")
