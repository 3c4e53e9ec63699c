"""``dfkd export``: a trained model as ONNX, TorchScript or safetensors.

Every format is written to a temporary file, checked, and only then renamed into
place, so a failed export leaves nothing that looks usable. ONNX and TorchScript
are checked by running the written file on a batch of a size other than the one
exported with (which also exercises the dynamic batch axis) and comparing its logits
with PyTorch's; the largest absolute difference is reported and must be below
``TOLERANCE``. The model takes normalised inputs: ``(x / 255 - mean) / std`` with the
mean and std of its metadata, which ONNX files also carry as metadata properties.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dfkd.checkpoint import (
    load_model_checkpoint,
    load_safetensors,
    metadata_strings,
    save_safetensors,
)
from dfkd.errors import DfkdError

FORMATS = ("onnx", "torchscript", "safetensors")
TOLERANCE = 1e-4       # max abs difference of logits that a check accepts
EXAMPLE_BATCH = 2      # the batch the graph is traced or exported with
CHECK_BATCH = 8        # the batch the written file is checked on (another size on purpose)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _onnx_modules() -> tuple[Any, Any]:
    """onnx and onnxruntime, or a one-line error naming the extra that installs them
    (torch's exporter also needs onnxscript)."""
    missing, found = [], {}
    for name in ("onnx", "onnxruntime", "onnxscript"):
        try:
            found[name] = __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise DfkdError(f"ONNX export needs {', '.join(missing)}, which are not installed: "
                        "pip install 'dfkd[export]'")
    return found["onnx"], found["onnxruntime"]


@contextlib.contextmanager
def _temporary_next_to(out: Path) -> Iterator[Path]:
    """A temporary path in ``out``'s folder; renamed to ``out`` by the caller on success,
    removed in any case otherwise."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name, not a mkstemp file: the writers create it with the usual permissions.
    tmp = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch.onnx and torch.jit log and warn about things that do not concern the user
    (optional torchvision ops, deprecations); keep the terminal for the result."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _inputs(meta: dict[str, Any], n: int, seed: int) -> torch.Tensor:
    """A batch of normalised-looking inputs (standard normal) of the model's image shape."""
    shape = meta.get("image_shape")
    if not shape:
        raise DfkdError("the checkpoint does not record its image shape (image_shape), so "
                        "there is no input to export with")
    return torch.randn(n, *shape, generator=torch.Generator().manual_seed(seed))


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().max().item()


def _check(kind: str, diff: float) -> str:
    line = (f"{kind} check: max abs difference of the logits from PyTorch's on a batch of "
            f"{CHECK_BATCH}: {diff:.3g} (tolerance {TOLERANCE:g})")
    if not diff < TOLERANCE:
        raise DfkdError(line.replace("check:", "check failed:") + "; nothing was written")
    return line


def export_onnx(model: nn.Module, meta: dict[str, Any], out: Path,
                opset: int | None = None, keep_batchnorm: bool = False) -> list[str]:
    """``keep_batchnorm``: no graph optimisation, whose passes fuse BatchNorm into the
    convolutions (the file then holds no BatchNorm statistics for a BN-prior method)."""
    onnx, ort = _onnx_modules()
    example = _inputs(meta, EXAMPLE_BATCH, seed=0)
    batch = torch.export.Dim("batch", min=1)
    with _temporary_next_to(out) as tmp:
        try:
            with _quiet_exporter():
                torch.onnx.export(model, (example,), str(tmp), dynamo=True,
                                  input_names=["input"], output_names=["logits"],
                                  dynamic_shapes=({0: batch},), opset_version=opset,
                                  external_data=False, verbose=False,
                                  optimize=not keep_batchnorm)
        except Exception as exc:  # noqa: BLE001  (the exporter raises many kinds)
            raise DfkdError(f"ONNX export of '{meta.get('arch')}' failed: "
                            f"{_first_line(exc)} (--debug shows the traceback)") from exc
        proto = onnx.load(str(tmp))
        if keep_batchnorm:   # the constants computed, as the optimiser would, BatchNorm kept
            from dfkd.teachers import fold_constants

            proto = fold_constants(proto)
        for key, value in metadata_strings(meta).items():
            prop = proto.metadata_props.add()
            prop.key, prop.value = key, value
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        session = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
        x = _inputs(meta, CHECK_BATCH, seed=1)
        got = torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])
        with torch.no_grad():
            want = model(x)
        line = _check("onnxruntime", _max_diff(got, want))
        os.replace(tmp, out)
    opset_used = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
                      None)
    return [f"wrote {out} (ONNX opset {opset_used}; input 'input' of shape "
            f"(batch, {', '.join(map(str, meta['image_shape']))}), dynamic batch axis; "
            "output 'logits')", line]


def export_torchscript(model: nn.Module, meta: dict[str, Any], out: Path) -> list[str]:
    example = _inputs(meta, EXAMPLE_BATCH, seed=0)
    with _temporary_next_to(out) as tmp:
        try:
            with _quiet_exporter(), torch.no_grad():
                traced = torch.jit.trace(model, example)
                torch.jit.save(traced, str(tmp),
                               _extra_files={"dfkd_meta.json": json.dumps(meta)})
                loaded = torch.jit.load(str(tmp))
        except Exception as exc:  # noqa: BLE001
            raise DfkdError(f"TorchScript export of '{meta.get('arch')}' failed: "
                            f"{_first_line(exc)} (--debug shows the traceback)") from exc
        x = _inputs(meta, CHECK_BATCH, seed=1)
        with torch.no_grad():
            line = _check("TorchScript", _max_diff(loaded(x), model(x)))
        os.replace(tmp, out)
    return [f"wrote {out} (TorchScript, traced; the metadata is in its extra file "
            "dfkd_meta.json)", line]


def export_safetensors(model: nn.Module, meta: dict[str, Any], out: Path) -> list[str]:
    with _temporary_next_to(out) as tmp:
        save_safetensors(tmp, model, meta)
        state, _ = load_safetensors(tmp)
        own = model.state_dict()
        if set(state) != set(own) or any(not torch.equal(state[k], own[k].cpu())
                                         for k in own):
            raise DfkdError("safetensors check failed: the file does not hold the model's "
                            "weights; nothing was written")
        os.replace(tmp, out)
    return [f"wrote {out} (safetensors: {len(state)} tensors; metadata as string fields: "
            f"{', '.join(sorted(metadata_strings(meta)))})"]


def export_model(checkpoint: str | os.PathLike, fmt: str, out: str | os.PathLike,
                 model_spec: str | None = None, dataset: str | None = None,
                 opset: int | None = None, norm: Any = None,
                 keep_batchnorm: bool = False) -> list[str]:
    """Export ``checkpoint`` (a model checkpoint or a run folder) as ``fmt`` to ``out``;
    returns the lines to print (what was written, and the check's result). ``norm``: the
    input normalisation recorded for a file without dfkd metadata
    (:mod:`dfkd.data.normalization`)."""
    if fmt not in FORMATS:
        raise DfkdError(f"unknown export format '{fmt}'; one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        _onnx_modules()  # the missing extra is reported before any work
    num_classes = in_channels = None
    if dataset:
        from dfkd.data import dataset_info

        info = dataset_info(dataset)
        num_classes, in_channels = info.num_classes, info.image_shape[0]
    model, meta = load_model_checkpoint(checkpoint, arch=model_spec, num_classes=num_classes,
                                        in_channels=in_channels)
    if dataset and "image_shape" not in meta:  # a zoo file: the dataset says what it eats
        from dfkd.data.normalization import resolve_normalization

        normalization = resolve_normalization(norm, meta, info)
        meta.update(dataset=info.name, image_shape=list(info.image_shape),
                    mean=list(normalization.mean), std=list(normalization.std),
                    normalization=normalization.source)
    model = model.float().eval()
    out = Path(out)
    if fmt == "onnx":
        return export_onnx(model, meta, out, opset, keep_batchnorm)
    if fmt == "torchscript":
        return export_torchscript(model, meta, out)
    return export_safetensors(model, meta, out)
