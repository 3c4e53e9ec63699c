"""Weights & Biases: one W&B run per dfkd run, in project ``dfkd`` (a bench or tune: a group).

Offline unless you have logged in (``wandb login`` or ``WANDB_API_KEY``); ``WANDB_MODE``
decides when set. Offline runs live in ``<run>/wandb/offline-run-*``; ``wandb sync
<run>/wandb/offline-run-*`` uploads them later (a resumed run adds one folder per start,
all with the same run id).

Logged: the resolved config, every metrics.jsonl row as one history step (step = epoch)
with the sample grid as the image ``samples``, summary.json's numbers in the run summary,
and the student files as a ``model`` artifact. Exactly once: the run id is the dfkd run's
key, so a resume continues the same W&B run; it asks W&B for the run's next step (online)
or reads the run's offline files (:func:`read_history`) and logs only later epochs.
"""

from __future__ import annotations

import netrc
import os
import struct
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from dfkd.trackers import register_tracker
from dfkd.trackers.base import Image, RunInfo, Tracker, numeric

FOLDER = "wandb"


def logged_in() -> bool:
    """An API key W&B would use: WANDB_API_KEY, or a netrc entry for its server."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def choose_mode() -> str:
    return os.environ.get("WANDB_MODE") or ("online" if logged_in() else "offline")


@register_tracker
class WandbTracker(Tracker):
    name = "wandb"
    requires = "wandb"
    extra = "wandb"

    def __init__(self) -> None:
        self.run = None
        self.images: dict[str, Any] = {}
        self.key = ""

    def start(self, run: RunInfo, state: dict[str, Any]) -> int:
        import wandb

        mode = choose_mode()
        # W&B folders start with a dot-less "wandb/" under ``dir``: the run folder.
        self.run = wandb.init(
            project=run.experiment, group=run.group, name=run.name, id=run.key,
            resume="allow", dir=str(run.folder), mode=mode, config=run.params,
            tags=[f"{k}:{v}"[:64] for k, v in run.tags.items()], reinit="create_new",
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True,
                                    init_timeout=60))
        self.key = run.key
        state.update(run_id=run.key, mode=mode)
        if not run.resumed:
            return 0
        held = max(0, int(self.run.starting_step) - 1)
        if mode == "offline":   # nothing was asked of a server: read the earlier starts
            earlier = [p for p in offline_files(run.folder, run.key)
                       if Path(self.run.dir).parent not in p.parents]
            steps = [row["_step"] for p in earlier for row in read_history(p)]
            held = max([held, *steps])
        return held

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        import wandb

        images = {k: wandb.Image(str(v)) if isinstance(v, (str, Path)) else wandb.Image(v)
                  for k, v in self.images.items()}
        self.images = {}
        # One history step per epoch, images included, committed at once.
        self.run.log({**numeric(metrics), **images}, step=step, commit=True)

    def log_image(self, name: str, image: Image, step: int) -> None:
        self.images[name] = image

    def log_summary(self, summary: dict[str, Any]) -> None:
        self.run.summary.update(numeric(summary))

    def log_artifacts(self, paths: list[Path]) -> None:
        import wandb

        artifact = wandb.Artifact(f"student-{self.key}", type="model")
        for path in paths:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def finish(self, status: str) -> None:
        if self.run is not None:
            self.run.finish(exit_code=1 if status == "failed" else 0)
            self.run = None


def offline_files(folder: Path, run_id: str) -> list[Path]:
    """The ``.wandb`` files of every offline start of run ``run_id`` under ``folder``."""
    return sorted((folder / FOLDER).glob(f"offline-run-*-{run_id}/run-{run_id}.wandb"))


# A .wandb file is W&B's transaction log: a 7-byte header (":W&B", a 2-byte magic, a
# version byte), then LevelDB's log format (32 KiB blocks of records with a 7-byte header:
# checksum, length, type) around W&B's own protobuf ``Record`` messages.
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[Any]:
    """The protobuf records of a .wandb file, with W&B's own message classes. A record cut
    short (a process killed while it was written) ends the list."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    records, chunks, pos = [], [], 7
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:   # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 or pos + 7 + length > len(data):
            break   # padding at the end, or a record cut short
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (_FULL, _FIRST):
            chunks = [chunk]
        else:
            chunks.append(chunk)
        if kind in (_FULL, _LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            records.append(record)
    return records


def read_history(path: Path) -> list[dict[str, Any]]:
    """The history steps of a .wandb file: ``{"_step": n, key: JSON-decoded value}``."""
    import json

    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        row: dict[str, Any] = {"_step": int(record.history.step.num)}
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            row[key] = json.loads(item.value_json)
        rows.append(row)
    return rows
