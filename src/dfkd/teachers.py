"""Teachers as they are shipped: an ONNX file, and a black box that only answers queries.

``--teacher`` takes a dfkd checkpoint, a run folder or a zoo file (:mod:`dfkd.checkpoint`),
and here also:

* **an ONNX file** (``model.onnx``). White-box (the default): converted to a PyTorch module
  by `onnx2torch <https://github.com/ENOT-AutoDL/onnx2torch>`_ (the converter most used for
  this; it maps ONNX ``BatchNormalization`` to ``nn.BatchNorm2d`` with its running
  statistics, so every method runs on it), then checked against ONNX Runtime on the same
  inputs. Black-box (``teacher_blackbox: true``, for a graph the converter cannot take):
  ONNX Runtime answers each batch. The input shape, the classes and the normalisation are
  read from the file where it holds them (``dfkd export`` writes them as metadata), else
  asked for (``--dataset``, ``--teacher-norm``).
* **a callable** (``path/to/file.py:answer`` with ``teacher_blackbox: true``, or any
  non-module callable given to :func:`dfkd.distill`): ``answer(images)`` takes a float
  tensor of pixels in [0, 1], (N, C, H, W) on the CPU, and returns probabilities or logits,
  (N, classes), as a tensor, an array or nested lists. It may be slow (a service); dfkd
  never needs its gradients or its internals.

A black box answers through :class:`BlackBoxTeacher`; only methods that need nothing but the
answers can use it (DFME; the others refuse it in one line). Probabilities are handed on as
their logarithm, which every softmax of dfkd turns back into them and from which DFME
recovers the logits up to a constant. A box that answers only labels cannot be used: no
method of dfkd learns from labels alone.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dfkd.checkpoint import load_model_checkpoint, metadata_from_strings
from dfkd.errors import DfkdError
from dfkd.frozen_teacher import user_model
from dfkd.models.registry import _first_line

ONNX_EXTRA = "pip install 'dfkd[onnx]'"
# The largest difference of logits from ONNX Runtime's that a converted model may show,
# relative to the largest logit (float32 kernels differ in their order of summation).
CONVERSION_TOLERANCE = 1e-4
BLACKBOX_HINT = "--teacher-blackbox (--set teacher_blackbox=true in a config, bench or tune)"


class BlackBoxTeacher(nn.Module):
    """A teacher known only through its answers: ``answer(images)`` -> probabilities or
    logits (N, classes), as a tensor, an array or nested lists. ``pixels``: it is handed
    pixels in [0, 1], float32 on the CPU (the run's normalised inputs times ``std`` plus
    ``mean``, which a run sets with ``set_normalization``); else the normalised inputs
    themselves (an ONNX graph exported by dfkd takes those). Its forward returns logits, or
    the log of probabilities, and never a gradient; a wrong answer (labels only, another
    shape, NaN, an exception) is a one-line ``DfkdError``. ``dfkd.distill`` wraps any
    callable that is not a module in one; only ``dfme`` learns from it."""

    blackbox = True

    def __init__(self, answer: Callable[[torch.Tensor], Any], num_classes: int | None = None,
                 pixels: bool = True, name: str = "the black-box teacher") -> None:
        super().__init__()
        self.answer, self.num_classes, self.pixels, self.name = answer, num_classes, pixels, name
        self.mean = self.std = None

    def set_normalization(self, mean, std) -> None:
        """The run's input normalisation, undone before a ``pixels`` box is asked."""
        self.mean, self.std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1)
                               for v in (mean, std))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x.detach().float().cpu().contiguous()
        if self.pixels:
            if self.mean is None:
                raise RuntimeError("BlackBoxTeacher.set_normalization was not called")
            images = (images * self.std + self.mean).clamp_(0, 1)
        try:
            answers = self.answer(images)
        except DfkdError:
            raise
        except Exception as exc:  # noqa: BLE001  (the user's code may raise anything)
            raise DfkdError(f"{self.name} raised {_first_line(exc)} when asked about "
                            f"{len(images)} images") from exc
        return self.check(answers, len(images)).to(x.device)

    def check(self, answers: Any, n: int) -> torch.Tensor:
        """The answers as float32 logits (or log-probabilities), or a one-line error."""
        try:
            out = torch.as_tensor(np.asarray(answers) if not torch.is_tensor(answers)
                                  else answers)
        except Exception as exc:  # noqa: BLE001
            raise DfkdError(f"{self.name} returned a {type(answers).__name__}, not a tensor, "
                            "array or list of numbers") from exc
        if not out.is_floating_point():
            raise DfkdError(
                f"{self.name} answers class labels only ({out.dtype} of shape "
                f"{tuple(out.shape)}); no method of dfkd learns from labels alone (DFME, its "
                "black-box method, recovers logits from probabilities): return the "
                "probabilities or logits")
        want = f"({n}, {self.num_classes or 'classes'})"
        if out.dim() != 2 or out.shape[0] != n or \
                (self.num_classes is not None and out.shape[1] != self.num_classes):
            raise DfkdError(f"{self.name} returned shape {tuple(out.shape)} for {n} images; "
                            f"expected {want}: one row of probabilities or logits per image")
        out = out.float()
        bad = (~torch.isfinite(out)).any(1).sum().item()
        if bad:
            raise DfkdError(f"{self.name} returned NaN or infinite values for {bad} of {n} "
                            "images")
        if bool((out >= 0).all()) and torch.allclose(out.sum(1), torch.ones(n), atol=1e-3):
            out = out.clamp_min(1e-12).log()   # probabilities: softmax(log p) = p
        return out


def is_blackbox(teacher: nn.Module) -> bool:
    """Whether ``teacher`` (or the module inside its FrozenTeacher) answers only queries."""
    return getattr(user_model(teacher), "blackbox", False)


def as_teacher(teacher: Any, num_classes: int) -> nn.Module:
    """A module, as it is; any other callable, as a :class:`BlackBoxTeacher` handed pixels."""
    if isinstance(teacher, nn.Module):
        return teacher
    if not callable(teacher):
        raise DfkdError(f"the teacher is a {type(teacher).__name__}: give a torch.nn.Module, "
                        "or a callable that answers a batch of images")
    return BlackBoxTeacher(teacher, num_classes)


# ------------------------------------------------------------------ ONNX
def _onnx_modules(*names: str) -> list[types.ModuleType]:
    missing, found = [], []
    for name in names:
        try:
            found.append(importlib.import_module(name))
        except ImportError:
            missing.append(name)
    if missing:
        raise DfkdError(f"an ONNX teacher needs {', '.join(missing)}, which is not installed: "
                        f"{ONNX_EXTRA}")
    return found


def _import_onnx2torch() -> types.ModuleType:
    """onnx2torch imports torchvision for two detection ops (NMS, RoIAlign) that classifiers
    do not use; where torchvision does not import (not installed, or a build for another
    torch), it gets a placeholder whose ops say so when a graph uses them."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001  (a mismatched build raises RuntimeError)
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        placeholder, ops = types.ModuleType("torchvision"), types.ModuleType("torchvision.ops")

        def unavailable(*_args: Any, **_kwargs: Any) -> Any:
            raise DfkdError("this ONNX graph uses a torchvision op, and torchvision does not "
                            f"import here; install it, or use the file as a black box: "
                            f"{BLACKBOX_HINT}")
        ops.nms = ops.box_convert = ops.roi_align = unavailable
        placeholder.ops = ops
        sys.modules.update({"torchvision": placeholder, "torchvision.ops": ops})
    return _onnx_modules("onnx2torch")[0]


def read_onnx(path: Path) -> tuple[Any, dict[str, Any]]:
    """The graph and what it says about itself: dfkd's metadata when ``dfkd export`` wrote it,
    else the image shape and classes from its input and output shapes where fixed."""
    (onnx,) = _onnx_modules("onnx")
    if not path.is_file():
        raise DfkdError(f"teacher '{path}' does not exist")
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001
        raise DfkdError(f"'{path}' is not an ONNX model: {_first_line(exc)}") from exc
    graph = proto.graph
    weights = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in weights]

    def dims(value) -> list[int | None]:
        return [d.dim_value or None for d in value.type.tensor_type.shape.dim]

    if len(inputs) != 1 or len(dims(inputs[0])) != 4:
        shapes = ", ".join(f"'{i.name}' {dims(i)}" for i in inputs) or "none"
        raise DfkdError(f"'{path}' is not an image classifier: it takes {shapes}, not one "
                        "batch of images (batch, channels, height, width)")
    if not graph.output or len(dims(graph.output[0])) != 2:
        out = graph.output[0] if graph.output else None
        what = f"'{out.name}' of shape {dims(out)}" if out is not None else "nothing"
        raise DfkdError(f"'{path}' is not a classifier: its output is {what}, not "
                        "(batch, classes)")
    props = {p.key: p.value for p in proto.metadata_props}
    meta = metadata_from_strings(props) if "num_classes" in props else {}
    meta.pop("arch", None)   # the graph is the model: nothing to rebuild from a name
    shape, classes = dims(inputs[0])[1:], dims(graph.output[0])[1]
    if all(shape):
        meta.setdefault("image_shape", shape)
    if classes:
        meta.setdefault("num_classes", classes)
    meta["input_name"], meta["batch"] = inputs[0].name, dims(inputs[0])[0]
    return proto, meta


def onnx_runtime(proto: Any, meta: dict[str, Any]) -> Callable[[torch.Tensor], np.ndarray]:
    """ONNX Runtime's answer to a batch of normalised inputs (split into the graph's fixed
    batch, when it has one)."""
    (ort,) = _onnx_modules("onnxruntime")
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    name, fixed = meta["input_name"], meta["batch"]

    def answer(images: torch.Tensor) -> np.ndarray:
        x = images.numpy()
        if not fixed:
            return session.run(None, {name: x})[0]
        parts = []
        for i in range(0, len(x), fixed):
            chunk = x[i:i + fixed]
            pad = np.concatenate([chunk, np.repeat(chunk[-1:], fixed - len(chunk), 0)])
            parts.append(session.run(None, {name: pad})[0][:len(chunk)])
        return np.concatenate(parts)
    return answer


# The newest opset whose operator versions onnx2torch converts (not Reshape-19, nor the
# Reduce ops of opset 18, which take their axes as an input).
CONVERTER_OPSET = 17


def fold_constants(proto: Any) -> Any:
    """The graph with its constant subgraphs computed (onnxscript's constant folding, which
    fuses nothing: BatchNorm layers stay), as an optimised export has them; the graph as it
    is when onnxscript is not installed."""
    try:
        import onnx_ir as ir
        from onnxscript import optimizer
    except ImportError:
        return proto
    model = ir.from_proto(proto)
    optimizer.fold_constants(model)
    optimizer.remove_unused_nodes(model)
    return ir.to_proto(model)


def for_converter(proto: Any) -> Any:
    """The graph as onnx2torch takes it, computing the same function: its constants folded; a
    newer opset taken down to :data:`CONVERTER_OPSET` by ONNX's own version converter (a Reduce
    op's ``noop_with_empty_axes`` at its default dropped first, which that converter
    mishandles); ``CastLike`` written as the ``Cast`` it is; ``Constant`` nodes as
    initializers; and ``allowzero=1`` on a Reshape (torch's exporter writes it; onnx2torch
    does not implement it) set to 0 where the target shape holds no literal 0, the one case
    where the two differ."""
    import onnx
    from onnx import numpy_helper, version_converter

    proto = fold_constants(proto)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset > CONVERTER_OPSET:
        for node in proto.graph.node:   # at its default, 0 (the converter would keep it)
            if node.op_type.startswith("Reduce"):
                kept = [a for a in node.attribute
                        if not (a.name == "noop_with_empty_axes" and a.i == 0)]
                del node.attribute[:]
                node.attribute.extend(kept)
        proto = version_converter.convert_version(proto, CONVERTER_OPSET)
    graph = proto.graph
    # CastLike (opset 15; left in an unoptimised export) is a Cast to the type of its second
    # input, which shape inference knows.
    inferred = onnx.shape_inference.infer_shapes(proto).graph
    types_of = {v.name: v.type.tensor_type.elem_type for v in
                [*inferred.input, *inferred.value_info, *inferred.output]}
    types_of.update({t.name: t.data_type for t in graph.initializer})
    for node in graph.node:
        if node.op_type == "CastLike" and types_of.get(node.input[1]):
            cast = onnx.helper.make_node("Cast", [node.input[0]], list(node.output),
                                         to=types_of[node.input[1]], name=node.name)
            node.CopyFrom(cast)
    # Constant nodes (left in an unoptimised export) as the initializers some of onnx2torch's
    # converters look their arguments up in.
    for node in [n for n in graph.node if n.op_type == "Constant"]:
        value = next((a.t for a in node.attribute if a.name == "value"), None)
        if value is not None:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value)
            tensor.name = node.output[0]
            graph.initializer.append(tensor)
            graph.node.remove(node)
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type != "Reshape":
            continue
        shape = constants.get(node.input[1])
        for attr in node.attribute:
            if attr.name == "allowzero" and attr.i == 1 and \
                    (shape is None or not (np.asarray(shape) == 0).any()):
                attr.i = 0
    onnx.checker.check_model(proto)
    return proto


def load_onnx_teacher(path: str | Path, blackbox: bool, image_shape=None
                      ) -> tuple[nn.Module, dict[str, Any]]:
    """An ONNX classifier as a module (onnx2torch, checked against ONNX Runtime) or, with
    ``blackbox``, as a :class:`BlackBoxTeacher` on ONNX Runtime; and its metadata."""
    path = Path(path)
    proto, meta = read_onnx(path)
    answer = onnx_runtime(proto, meta)
    if blackbox:
        return BlackBoxTeacher(answer, meta.get("num_classes"), pixels=False,
                               name=f"the ONNX teacher '{path.name}'"), meta
    if meta["batch"]:
        raise DfkdError(f"'{path}' takes a fixed batch of {meta['batch']} images, and a run's "
                        "batches have other sizes; export it with a dynamic batch axis, or use "
                        f"it as a black box: {BLACKBOX_HINT}")
    onnx2torch = _import_onnx2torch()
    try:
        model = onnx2torch.convert(for_converter(proto))
    except Exception as exc:  # noqa: BLE001  (the converter raises many kinds)
        raise DfkdError(f"onnx2torch cannot convert '{path}' ({_first_line(exc)}); use it as "
                        f"a black box: {BLACKBOX_HINT} (only dfme learns from a black box)"
                        ) from exc
    shape = meta.get("image_shape") or image_shape
    if shape:   # the converted module must answer as ONNX Runtime does
        x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(0))
        try:
            with torch.no_grad():
                got = model.eval()(x).float()
            want = torch.from_numpy(np.asarray(answer(x))).float()
        except Exception as exc:  # noqa: BLE001  (the converted graph may raise anything)
            raise DfkdError(f"the PyTorch module onnx2torch made of '{path}' does not run on "
                            f"a batch of 3 images of shape {tuple(shape)} ({_first_line(exc)}); "
                            f"use it as a black box: {BLACKBOX_HINT}") from exc
        diff = (got - want).abs().max().item()
        if not diff <= CONVERSION_TOLERANCE * max(1.0, want.abs().max().item()):
            raise DfkdError(f"the PyTorch module onnx2torch made of '{path}' differs from ONNX "
                            f"Runtime by {diff:.3g} on the same inputs; use it as a black box: "
                            f"{BLACKBOX_HINT}")
        meta["conversion_max_diff"] = diff
    return model, meta


def load_teacher(spec: str, *, blackbox: bool = False, arch: str | None = None,
                 num_classes: int | None = None, in_channels: int | None = None,
                 image_shape=None) -> tuple[nn.Module, dict[str, Any]]:
    """The teacher ``--teacher`` names, and its metadata: an ``.onnx`` file (white- or
    black-box), a ``file.py:callable`` black box, or a dfkd / zoo checkpoint."""
    if str(spec).lower().endswith(".onnx"):
        return load_onnx_teacher(spec, blackbox, image_shape)
    if blackbox:
        from dfkd.models.registry import load_callable

        if ":" not in str(spec) or Path(spec).exists():
            raise DfkdError(f"a black-box teacher is an .onnx file or a callable "
                            f"(path/to/file.py:answer); '{spec}' is neither")
        return BlackBoxTeacher(load_callable(str(spec)), num_classes,
                               name=f"the black-box teacher '{spec}'"), {}
    return load_model_checkpoint(spec, arch=arch, num_classes=num_classes,
                                 in_channels=in_channels)
