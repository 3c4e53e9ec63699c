"""Workers that die with their torchrun launcher (imported first, before torch).

torchrun's workers outlive a SIGKILLed launcher and would go on writing the run folder,
or wait for its dead rendezvous store. Under torchrun (``TORCHELASTIC_RUN_ID`` is set)
each worker asks Linux for SIGTERM when its parent dies. The trainer's SIGTERM handler
then finishes the round, checkpoints atomically (every rank gets the signal, so the
collectives still meet) and exits, and ``--resume`` continues exactly. Before the
trainer runs, SIGTERM's default action simply ends the process.

This module is imported by ``dfkd/__init__.py`` before anything heavy, so the window in
which a launcher can die unnoticed is the interpreter's start-up; a worker whose parent
is already no torchrun process at that point exits at once.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_LAUNCHERS = ("torch.distributed.run", "torchrun", "torch.distributed.launch")


def _parent_is_launcher() -> bool:
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            cmd = f.read().decode(errors="replace")
    except OSError:
        return True  # cannot tell: assume all is well
    return any(name in cmd for name in _LAUNCHERS)


def die_with_parent() -> bool:
    """Ask Linux for SIGTERM when this process's parent dies; False where that is not
    available (other systems)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(1, signal.SIGTERM, 0, 0, 0) == 0  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False


def stop_with_launcher() -> None:
    """Arm the parent-death signal in a torchrun worker (a no-op outside torchrun)."""
    if not os.environ.get("TORCHELASTIC_RUN_ID"):
        return
    if die_with_parent() and not _parent_is_launcher():  # the launcher died before arming
        os.kill(os.getpid(), signal.SIGTERM)


stop_with_launcher()
