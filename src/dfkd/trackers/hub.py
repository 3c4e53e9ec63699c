"""Running a run's trackers without ever stopping or slowing it.

The trainer hands over each metrics.jsonl row once its checkpoint is on disk
(:meth:`Tracking.saved`); one background thread passes it to every tracker. A tracker
that raises (server down, disk full) is switched off with one warning; its epochs stay in
metrics.jsonl. A run's end waits for the trackers at most :data:`FINISH_TIMEOUT` seconds.

Exactly once across kills: ``<run>/trackers.json`` holds the run's key (the W&B run id,
MLflow's ``dfkd.run_key`` tag), each tracker's ids and the last epoch it flushed. A resumed
run asks each tracker which epochs its store already holds and logs only the checkpoint's
later rows, then the new ones: rows reach a tracker only after their checkpoint, so a
tracker never holds an epoch that the resumed run will compute again.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import queue
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from dfkd.config import flatten
from dfkd.errors import ConfigError
from dfkd.report import dumps_strict
from dfkd.trackers import get_tracker, require_installed
from dfkd.trackers.base import RunInfo, Tracker

STATE_FILE = "trackers.json"
FINISH_TIMEOUT = 120.0   # seconds a run's end waits for its trackers
ARTIFACTS = ("student.pt", "student.safetensors", "summary.json", "config.yaml")


class Tracking:
    """A run's trackers (none: every call is a no-op). Rank 0 of a run holds one."""

    def __init__(self, names: list[str] | None, uri: str | None = None,
                 folder: Path | None = None) -> None:
        self.names = list(names or [])
        self.uri = uri
        if self.names and folder is None:
            raise ConfigError("'tracker' needs a run folder (a resumed run continues its "
                              "tracker runs from it): give --out, or out_dir= in the API")
        require_installed(self.names)
        # What bench and tune set before fit: experiment, group, name and extra tags.
        self.experiment = "dfkd"
        self.group: str | None = None
        self.name: str | None = None
        self.tags: dict[str, str] = {}
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._active: dict[str, Tracker] = {}
        self._held: dict[str, int] = {}
        self._state: dict[str, Any] = {}
        self._folder: Path | None = None
        self._row_keys: set[str] = set()

    def __bool__(self) -> bool:
        return bool(self.names)

    def set_context(self, *, experiment: str | None = None, group: str | None = None,
                    name: str | None = None, tags: dict[str, Any] | None = None) -> None:
        """Where a bench or a tune puts its runs (call before ``fit``)."""
        if experiment:
            self.experiment = experiment
        if group:
            self.group = group
        if name:
            self.name = name
        self.tags.update({k: str(v) for k, v in (tags or {}).items()})

    # ------------------------------------------------------------ trainer side
    @contextlib.contextmanager
    def session(self, trainer: Any) -> Iterator[None]:
        """Around ``Trainer.fit``: start the trackers (once per run, so a tune's epoch-by-
        epoch fits share them), then close them when the run ends or fails. A time slice
        (``stop_after_epoch``) leaves them open; the process's exit closes them."""
        if not self.names:
            yield
            return
        if self._thread is None:
            self._open(trainer)
        try:
            yield
        except (KeyboardInterrupt, Exception) as exc:
            # dfkd.run.signals.Interrupted (a signal's checkpoint) carries an exit code; this
            # module sits below the trainer, so it does not import it.
            stopped = isinstance(exc, KeyboardInterrupt) or hasattr(exc, "exit_code")
            self.close("stopped" if stopped else "failed", timeout=30.0)
            raise
        if trainer.epoch >= trainer.cfg.epochs:
            self._queue.put(("end", None))
            self.close("finished")
        else:   # a time slice: its rows are logged before fit returns (and the process ends)
            done = threading.Event()
            self._queue.put(("sync", done))
            done.wait(FINISH_TIMEOUT)

    def saved(self, lines: str) -> None:
        """Rows just appended to metrics.jsonl (its text): their checkpoint is on disk."""
        if self._thread is not None:
            for line in lines.splitlines():
                if line.strip():
                    self._queue.put(("row", json.loads(line)))

    def close(self, status: str, timeout: float = FINISH_TIMEOUT) -> None:
        """Finish every tracker's run (``finished``, ``stopped`` or ``failed``), waiting for
        the rows still queued at most ``timeout`` seconds."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        atexit.unregister(self._at_exit)
        self._queue.put(("close", status))
        thread.join(timeout)
        if thread.is_alive():
            _warn(f"the trackers ({', '.join(self._active)}) did not finish within "
                  f"{timeout:.0f} s and were left; metrics.jsonl holds every epoch")

    def _at_exit(self) -> None:
        self.close("stopped", timeout=30.0)

    def _open(self, trainer: Any) -> None:
        folder = Path(trainer.out_dir)
        resumed = bool(trainer.epoch or trainer.round or trainer.history)
        state = _read_state(folder) if resumed else {}
        if not state.get("key"):
            state = {"key": uuid.uuid4().hex[:16], "trackers": {}}
        self._state, self._folder = state, folder
        _write_state(folder, state)   # the key is known before any tracker run exists
        cfg = trainer.cfg
        tags = {"method": cfg.method, "seed": str(cfg.seed), "student": str(cfg.student)}
        if cfg.teacher:
            tags["teacher"] = Path(str(cfg.teacher)).name
        info = RunInfo(folder=folder, key=state["key"], name=self.name or folder.name,
                       experiment=self.experiment, group=self.group,
                       tags={**tags, **self.tags}, params=flatten(cfg.to_dict()),
                       uri=self.uri, resumed=resumed)
        # The rows metrics.jsonl holds now (after a resume: the checkpoint's), as its text.
        history = [json.loads(dumps_strict(row)) for row in trainer.history]
        self._thread = threading.Thread(target=self._work, args=(info, history),
                                        name="dfkd-trackers", daemon=True)
        self._thread.start()
        atexit.register(self._at_exit)

    # ------------------------------------------------------------ the thread
    def _work(self, info: RunInfo, history: list[dict[str, Any]]) -> None:
        self._guarded(self._start, info, history)
        while True:
            kind, payload = self._queue.get()
            if kind == "row":
                self._guarded(self._row, payload)
            elif kind == "end":
                self._guarded(self._end)
            elif kind == "sync":
                payload.set()
            elif kind == "close":
                for name in list(self._active):
                    self._call(name, lambda t, status=payload: t.finish(status))
                self._active.clear()
                return

    def _guarded(self, fn, *args: Any) -> None:
        """The thread outlives a bug of its own too: the trackers stop, the run goes on."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001
            if self._active:
                _warn(f"the trackers stopped logging ({type(exc).__name__}: {exc}); "
                      "metrics.jsonl keeps every epoch")
            for name in list(self._active):
                with contextlib.suppress(Exception):
                    self._active.pop(name).finish("failed")

    def _start(self, info: RunInfo, history: list[dict[str, Any]]) -> None:
        last = history[-1]["epoch"] if history else 0
        for name in self.names:
            tracker = get_tracker(name)()
            own = self._state["trackers"].setdefault(name, {})
            own["logged"] = min(int(own.get("logged", 0)), last)
            self._active[name] = tracker
            held = self._call(name, lambda t, own=own: t.start(info, own))
            if name in self._active:
                self._held[name] = int(held or 0)
        self._save_state()
        for row in history:
            self._row(row)

    def _row(self, row: dict[str, Any]) -> None:
        epoch = int(row["epoch"])
        self._row_keys.update(row)
        grid = self._folder / "samples" / f"epoch_{epoch:03d}.png"
        changed = False
        for name in list(self._active):
            if self._held[name] >= epoch:   # its store holds this epoch already
                continue

            def log(t: Tracker) -> None:
                if grid.is_file():
                    t.log_image("samples", grid, epoch)
                t.log_metrics(row, epoch)
                t.flush(epoch)

            self._call(name, log)
            if name in self._active:
                self._held[name] = epoch
                self._state["trackers"][name]["logged"] = epoch
                changed = True
        if changed:
            self._save_state()

    def _end(self) -> None:
        path = self._folder / "summary.json"
        if not path.is_file():
            return
        summary = json.loads(path.read_text())
        # A key that a row also has (the timers, peak memory) stays a per-epoch series.
        summary = {k: v for k, v in summary.items() if k not in self._row_keys}
        files = [self._folder / n for n in ARTIFACTS if (self._folder / n).is_file()]
        for name in list(self._active):
            self._call(name, lambda t: t.log_summary(summary))
            self._call(name, lambda t: t.log_artifacts(files))

    def _call(self, name: str, fn) -> Any:
        """``fn(tracker)``; an exception switches the tracker off with one warning."""
        tracker = self._active.get(name)
        if tracker is None:
            return None
        try:
            return fn(tracker)
        except Exception as exc:  # noqa: BLE001 - a tracker must never stop the run
            del self._active[name]
            message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            _warn(f"the {name} tracker stopped logging ({type(exc).__name__}: {message}); "
                  "the run goes on and metrics.jsonl keeps every epoch")
            with contextlib.suppress(Exception):
                tracker.finish("failed")
            return None

    def _save_state(self) -> None:
        try:
            _write_state(self._folder, self._state)
        except OSError as exc:   # a full disk: the next resume may log an epoch again
            _warn(f"could not write {STATE_FILE}: {exc}")


def _warn(message: str) -> None:
    tqdm.write(f"dfkd: warning: {message}", file=sys.stderr)


def _read_state(folder: Path) -> dict[str, Any]:
    try:
        state = json.loads((folder / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) and isinstance(state.get("trackers"), dict) else {}


def _write_state(folder: Path, state: dict[str, Any]) -> None:
    tmp = folder / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1) + "\n")
    os.replace(tmp, folder / STATE_FILE)
