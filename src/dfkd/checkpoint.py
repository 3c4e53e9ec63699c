"""Checkpoints that a crash cannot corrupt and that never run a stranger's code.

Writes go to a temporary file in the same folder, are fsync'ed, then renamed
over the target, so the previous checkpoint stays loadable at every moment.
Reads use ``torch.load(weights_only=True)``: tensors and plain containers
only, so a crafted pickle is refused instead of executed.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from dfkd.errors import CheckpointError
from dfkd.models import create_model

# What a distillation leaves in its run folder: the student, ready to use; the state an
# exact resume needs; one metrics row per epoch; the summary of a finished run.
STUDENT = "student.pt"
STUDENT_SAFETENSORS = "student.safetensors"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"


def atomic_save(obj: Any, path: str | os.PathLike, shared: bool = False) -> None:
    """``torch.save`` to a temporary file, fsync'ed, then renamed over ``path``."""
    atomic_write(path, lambda f: torch.save(obj, f), shared)


def cpu_snapshot(obj: Any) -> Any:
    """A copy of ``obj`` that later training cannot change: every tensor copied to the CPU
    (a GPU tensor is copied off the device, a CPU one cloned), and the dicts, lists and
    tuples around them rebuilt. Other values are taken as they are (numbers, strings)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: cpu_snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_snapshot(v) for v in obj)
    return obj


class BackgroundWriter:
    """Writes on a worker thread, one at a time, so that training goes on while a
    checkpoint reaches the disk. ``submit`` first waits for the write before it; ``wait``
    blocks until the last write is on disk and raises its error, if it had one."""

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._pending: Future | None = None

    def submit(self, write: Callable[[], Any]) -> None:
        self.wait()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="dfkd-checkpoint")
        self._pending = self._pool.submit(write)

    def wait(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """``wait``, then end the worker thread: until it has ended, its frame may still
        hold the last write (and whatever that write's closure holds, such as the models)."""
        try:
            self.wait()
        finally:
            pool, self._pool = self._pool, None
            if pool is not None:
                pool.shutdown(wait=True)


def _umask() -> int:
    try:  # Linux says it without changing it
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any],
                 shared: bool = False) -> None:
    """Let ``write`` fill a temporary file next to ``path``, then rename it over ``path``:
    readers see the old file or the whole new one, never a part. The file is private
    (0600, as the temporary file is made) unless ``shared``: then it gets the permissions
    of a file made the usual way (0666 less the umask), for the files meant to be handed on."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if shared:
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    # Make the rename itself durable.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
_PICKLE_PROTO = 0x80         # the legacy format: a pickle, protocol 2 or later


def safe_load(path: str | os.PathLike) -> dict:
    """Load a checkpoint with the weights-only unpickler; anything else is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist")
    unreadable = f"'{path}' is not a readable PyTorch checkpoint (truncated or corrupt?)"
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith(_ZIP_MAGIC) and head[:1] != bytes([_PICKLE_PROTO]):
        raise CheckpointError(f"{unreadable}: it is neither a zip archive nor a pickle")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # A forbidden object is reported as an unsupported or blocked GLOBAL (the wording
        # varies between PyTorch versions); anything else is damaged bytes.
        if "global" not in str(exc).lower():
            detail = str(exc).partition("WeightsUnpickler error:")[2].strip()
            detail = detail.splitlines()[0] if detail else _first_line(exc)
            raise CheckpointError(f"{unreadable}: damaged pickle data ({detail})") from exc
        raise CheckpointError(
            f"refusing to load '{path}': it holds objects other than tensors and plain "
            f"containers, which could run code when unpickled ({_first_line(exc)}). Re-save it "
            "as a state_dict, or only trust it if you made it yourself."
        ) from exc
    except Exception as exc:  # noqa: BLE001  (a damaged file raises anything: KeyError, ...)
        raise CheckpointError(f"{unreadable}: {_first_line(exc)}") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"'{path}' holds a {type(obj).__name__}, expected a dict")
    return obj


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_state_dict_strict(model: nn.Module, state: dict, source: str) -> None:
    """Load weights, naming the first layers whose shapes or names do not fit."""
    own = model.state_dict()
    mismatched = [
        f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)
    ]
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    problems = []
    if mismatched:
        problems.append("shape mismatch in " + ", ".join(mismatched[:3]))
    if missing:
        problems.append("missing " + ", ".join(missing[:3]))
    if unexpected:
        problems.append("unexpected " + ", ".join(unexpected[:3]))
    if problems:
        raise CheckpointError(
            f"the weights in '{source}' do not fit the {type(model).__name__} architecture: "
            + "; ".join(problems)
            + ". Check the model name (and class count) given for this checkpoint."
        )
    model.load_state_dict(state, strict=False)


Weights = nn.Module | Mapping[str, torch.Tensor]  # a model, or its state_dict


def _state(model: Weights) -> Mapping[str, torch.Tensor]:
    return model.state_dict() if isinstance(model, nn.Module) else model


def save_model_checkpoint(path: str | os.PathLike, model: Weights, meta: dict) -> None:
    """A model checkpoint: ``state_dict`` plus the metadata that rebuilds it."""
    state = {k: v.detach().cpu() for k, v in _state(model).items()}
    atomic_save({"state_dict": state, "meta": meta}, path, shared=True)


def metadata_strings(meta: dict) -> dict[str, str]:
    """``meta`` as safetensors (and ONNX) metadata, which holds strings only: strings as
    they are, everything else (numbers, lists, dicts, None) as JSON."""
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}


def metadata_from_strings(fields: dict[str, str]) -> dict[str, Any]:
    """The inverse of :func:`metadata_strings`."""
    meta: dict[str, Any] = {}
    for key, text in fields.items():
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        meta[key] = value if not isinstance(value, str) else text
    return meta


def save_safetensors(path: str | os.PathLike, model: Weights, meta: dict) -> None:
    """The weights as safetensors (no pickle at all), ``meta`` as string fields."""
    from safetensors.torch import save

    # Own, contiguous storage per tensor: safetensors refuses shared or strided memory.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in _state(model).items()}
    data = save(state, metadata={"format": "pt", **metadata_strings(meta)})
    atomic_write(path, lambda f: f.write(data), shared=True)


def load_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            fields = dict(f.metadata() or {})
            state = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"'{path}' is not a readable safetensors file: "
                              f"{_first_line(exc)}") from exc
    fields.pop("format", None)
    return state, metadata_from_strings(fields)


def save_student_files(folder: str | os.PathLike, model: Weights, meta: dict) -> None:
    """``student.pt`` (the ``train-teacher`` format) and ``student.safetensors``, each
    written atomically."""
    folder = Path(folder)
    save_model_checkpoint(folder / STUDENT, model, meta)
    save_safetensors(folder / STUDENT_SAFETENSORS, model, meta)


def _read_model_file(path: Path) -> tuple[dict, dict]:
    """``(state_dict, meta)`` from a run folder, a .safetensors file or a .pt checkpoint."""
    if path.is_dir():
        if not (path / STUDENT).is_file():
            hint = (" It holds a run that has not finished an epoch yet, or one made before "
                    "dfkd wrote student.pt.") if (path / "checkpoint.pt").is_file() else ""
            raise CheckpointError(f"'{path}' holds no {STUDENT}: not a run folder of "
                                  f"'dfkd distill'.{hint}")
        path = path / STUDENT
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise CheckpointError(f"checkpoint '{path}' does not exist")
        return load_safetensors(path)
    ckpt = safe_load(path)
    if ckpt.get("format") == "dfkd-run-1":
        raise CheckpointError(
            f"'{path}' is a run checkpoint (for --resume), not a model; use the run's "
            f"{STUDENT}, or give the run folder '{path.parent}' itself")
    return ckpt.get("state_dict", ckpt), dict(ckpt.get("meta", {}))


def load_model_checkpoint(
    path: str | os.PathLike, arch: str | None = None, num_classes: int | None = None,
    in_channels: int | None = None, unnamed_error: str | None = None,
) -> tuple[nn.Module, dict]:
    """Rebuild a model from a dfkd checkpoint, or from a zoo file given its architecture.

    ``path`` is a ``.pt`` checkpoint, a ``.safetensors`` file with dfkd metadata, or a
    run folder of ``dfkd distill`` (its ``student.pt``). Zoo checkpoints (a bare
    state_dict, or one under ``'state_dict'``) carry no metadata, so ``arch`` and
    ``num_classes`` must then be given. ``arch`` is a zoo name or a model spec
    (``package.module:callable``, ``path/to/file.py:callable``). ``unnamed_error``, when
    given, is the whole error for a file that cannot be rebuilt for want of an architecture
    or class count (for callers whose user has no flag to supply them).
    """
    state, meta = _read_model_file(Path(path))
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"'{path}' has no state_dict of tensors")
    state = {k.removeprefix("module."): v for k, v in state.items()}  # DDP-saved zoo files
    # dfkd metadata wins: the arguments are for zoo files that carry none.
    arch = meta.get("arch") or arch
    num_classes = meta.get("num_classes") or num_classes
    if unnamed_error and (arch is None or num_classes is None):
        raise CheckpointError(unnamed_error)
    if arch is None and num_classes is not None and meta:
        raise CheckpointError(
            f"'{path}' does not name its architecture (its model was built in Python); "
            "pass it (--teacher-model SPEC, or --model SPEC for evaluate and export)")
    if arch is None or num_classes is None:
        raise CheckpointError(
            f"'{path}' carries no dfkd metadata; name its architecture and dataset "
            "(--teacher-model NAME, or --model NAME for evaluate, and --dataset NAME) so it can "
            "be rebuilt"
        )
    if in_channels is None:
        in_channels = meta.get("image_shape", [None])[0]
    if in_channels is None:
        first_conv = next((v for v in state.values() if v.dim() == 4), None)
        in_channels = first_conv.shape[1] if first_conv is not None else 3
    model = create_model(arch, num_classes=num_classes, in_channels=in_channels)
    load_state_dict_strict(model, state, str(path))
    meta["arch"], meta["num_classes"] = arch, num_classes  # what the model was built as
    return model, meta


def read_model_meta(path: str | os.PathLike) -> dict[str, Any]:
    """A model file's dfkd metadata ({} for a bare state dict), without building the model:
    a run folder's from its ``student.safetensors`` header (no weights read) when there is
    one, else from the file itself."""
    path = Path(path)
    if path.is_dir() and (path / STUDENT_SAFETENSORS).is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(path / STUDENT_SAFETENSORS), framework="pt") as f:
                fields = dict(f.metadata() or {})
            fields.pop("format", None)
            return metadata_from_strings(fields)
        except Exception:  # noqa: BLE001  (a damaged header: read the .pt instead)
            pass
    return _read_model_file(path)[1]


def missing_rebuild_flags(meta: dict[str, Any], *, model: str | None, dataset: str | None,
                          needs_data: bool) -> list[str]:
    """The flags a model file needs from the user before it can be rebuilt, all at once:
    ``--model`` without a recorded architecture, ``--dataset`` without a recorded class
    count and image shape (or, with ``needs_data``, to evaluate on, a recorded dataset)."""
    flags = []
    if not model and not meta.get("arch"):
        built = meta.get("module_class")
        how = (f"it was built in Python as {built}; " if built else "") + \
            "give its architecture as a zoo name, package.module:callable or " \
            "path/to/file.py:callable"
        flags.append(f"--model SPEC ({how})")
    sized = meta.get("num_classes") and meta.get("image_shape")
    if not dataset and (not sized or (needs_data and not meta.get("dataset"))):
        flags.append("--dataset NAME (the data it " +
                     ("is measured on)" if needs_data else "classifies, which sizes it)"))
    return flags
