"""One writer per folder: an exclusive OS advisory lock on ``DIR/.dfkd.lock``.

The process that writes a run folder (a distillation's rank 0, a bench for its own
folder, a tune for its study folder) holds the lock while it works. ``flock`` locks
belong to the open file, so the OS drops them when the process dies, however it dies:
there are no stale locks to clean. A second process asking for a held folder gets one
line naming the holder and writes nothing. Within one process the lock is re-entrant
(a resume in the same Python session, a bench that runs in its own process).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from dfkd.errors import DfkdError

LOCK_FILE = ".dfkd.lock"
_held: dict[Path, IO[str]] = {}


class FolderInUse(DfkdError):
    """Another process holds the folder's lock."""


def hold(folder: str | os.PathLike) -> None:
    """Take the folder's lock (creating the folder), or raise :class:`FolderInUse`."""
    folder = Path(folder).resolve()
    if folder in _held:
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(folder / LOCK_FILE, "a+")
    except OSError as exc:
        raise DfkdError(f"cannot use '{folder}': {exc.strerror or exc}") from exc
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise FolderInUse(f"'{folder}' is in use by another dfkd process ({holder}); wait for "
                          "it to finish or stop it. Nothing was written.") from exc
    handle.seek(0)
    handle.truncate()
    handle.write(f"pid {os.getpid()} on {socket.gethostname()}, since "
                 f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    handle.flush()
    _held[folder] = handle


def release(folder: str | os.PathLike) -> None:
    """Give the folder's lock back (a no-op if this process does not hold it)."""
    handle = _held.pop(Path(folder).resolve(), None)
    if handle is not None:
        handle.close()


@contextlib.contextmanager
def holding(folder: str | os.PathLike) -> Iterator[None]:
    """``with holding(folder):`` the lock for the block."""
    hold(folder)
    try:
        yield
    finally:
        release(folder)
