"""Things found by name (methods, trackers, models), and the "did you mean" of every error
about a name the user typed."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Generic, TypeVar

from dfkd.errors import ConfigError, DfkdError

T = TypeVar("T")


def did_you_mean(name: object, known: Iterable[str]) -> str:
    """`` Did you mean 'x'?`` for the known name closest to ``name``; "" when none is close."""
    close = difflib.get_close_matches(str(name), list(known), n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


class Registry(Generic[T]):
    """Entries of one ``kind`` by name. :meth:`get` of an unknown name raises ``error`` in one
    line: the name, a "did you mean", the known names and ``alternatives`` (what else the
    user may give instead of a name)."""

    def __init__(self, kind: str, error: type[DfkdError] = ConfigError,
                 alternatives: str = "") -> None:
        self.kind = kind
        self.error = error
        self.alternatives = alternatives
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        self._entries[name] = entry
        return entry

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: object) -> T:
        if not isinstance(name, str) or name not in self._entries:
            raise self.error(f"unknown {self.kind} '{name}'.{did_you_mean(name, self._entries)} "
                             f"Known {self.kind}s: {', '.join(self.names())}"
                             f"{self.alternatives}.")
        return self._entries[name]
