"""timm architectures by name: ``timm:resnet18``, ``timm:mobilenetv3_small_100``,
``timm:convnext_atto``, ...

The model is built with ``pretrained=False``, always, and with the Hugging Face hub set
offline while timm builds it, so nothing is ever downloaded: a teacher's weights are the
user's own (``torch.save(model.state_dict(), path)``), loaded by ``--teacher-model
timm:NAME``. ``in_chans`` and ``num_classes`` come from the data.

Small images: timm's ImageNet models shrink their input 32x (ResNet, MobileNet,
EfficientNet) or 32x after a stride-4 stem (ConvNeXt); on 32 px images the last stages see
1x1 to 2x2 maps. They still run, learn and distil; they are simply larger than such
images need. Vision transformers with a fixed input size (e.g. ``vit_tiny_patch16_224``)
are built with ``dynamic_img_size=True`` where the model takes it, so they accept the
data's size (a 16 px patch leaves 2x2 tokens of a 32 px image).
"""

from __future__ import annotations

import difflib
import os
import sys
from contextlib import contextmanager
from types import ModuleType

from torch import nn

from dfkd.errors import DfkdError

PREFIX = "timm:"
INSTALL = "pip install 'dfkd[timm]'"


def is_timm_spec(spec: str) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def _timm(spec: str) -> ModuleType:
    try:
        import timm
    except ImportError as exc:
        raise DfkdError(f"model '{spec}' needs timm, which is not installed: "
                        f"{INSTALL}") from exc
    except Exception as exc:  # noqa: BLE001  (a broken torchvision raises RuntimeError)
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DfkdError(f"model '{spec}': timm does not import ({type(exc).__name__}: "
                        f"{line}); check that torch, torchvision and timm match") from exc
    return timm


@contextmanager
def _offline():
    """The hub offline while timm builds a model: no pretrained weights, no config fetch.
    huggingface_hub reads the variables once, when it is imported (timm imports it), so
    its switch is set too while it is loaded."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    before = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    hub = sys.modules.get("huggingface_hub.constants")
    hub_before = getattr(hub, "HF_HUB_OFFLINE", None)
    if hub is not None:
        hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        if hub is not None:
            hub.HF_HUB_OFFLINE = hub_before


def create_timm_model(spec: str, num_classes: int, in_channels: int) -> nn.Module:
    """``timm:NAME`` built untrained for ``num_classes`` and ``in_channels``; a missing
    timm or an unknown name is a one-line error."""
    name = spec[len(PREFIX):].strip()
    timm = _timm(spec)
    if not name:
        raise DfkdError(f"model '{spec}': name a timm architecture, e.g. timm:resnet18")
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(PREFIX + c for c in close)}?" if close else \
            " timm.list_models() lists them."
        raise DfkdError(f"unknown timm model '{name}'.{hint}")
    kwargs = {"pretrained": False, "num_classes": num_classes, "in_chans": in_channels}
    with _offline():
        try:
            # Transformers with a fixed input size take any size with this; CNNs refuse
            # the keyword (TypeError, before any weight is drawn) and are built without it.
            return timm.create_model(name, dynamic_img_size=True, **kwargs)
        except Exception:  # noqa: BLE001  (the plain call below names any real error)
            pass
        try:
            return timm.create_model(name, **kwargs)
        except Exception as exc:  # noqa: BLE001
            text = str(exc).strip()
            line = text.splitlines()[0] if text else ""
            raise DfkdError(f"model '{spec}': timm could not build it with "
                            f"num_classes={num_classes}, in_chans={in_channels}: "
                            f"{type(exc).__name__}: {line}") from exc


def timm_spec_of(model: nn.Module) -> str | None:
    """``timm:NAME`` for a model that timm built (its ``pretrained_cfg`` names the
    architecture), so a run can record what rebuilds it; None for any other model."""
    if not type(model).__module__.startswith("timm."):
        return None
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None) or {}
    name = cfg.get("architecture") if isinstance(cfg, dict) else None
    return f"{PREFIX}{name}" if name else None
