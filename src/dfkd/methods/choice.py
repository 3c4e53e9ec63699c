"""The default method for a teacher without BatchNorm.

The default method (cudfkd) and the BN-prior methods read the teacher's BatchNorm running
statistics; a teacher without BatchNorm (GroupNorm, LayerNorm, no normalisation) stores
none. When the user names no method, such a teacher gets :data:`BN_FREE_METHOD` with
:data:`BN_FREE_SETTINGS` instead, and one line says so. The choice was measured on the val
split of Fashion-MNIST (never test), with a GroupNorm teacher distilled into LeNet-5-half
by each candidate's Fashion-MNIST recipe at an equal short budget; the command and the
numbers are in BENCHMARKS.md.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from dfkd.hooks import batchnorm_layers
from dfkd.methods import list_methods

# The measured choice (see the module doc).
BN_FREE_METHOD = "cudfkd"
BN_FREE_SETTINGS: dict[str, Any] = {"w_bn": 0.0}


def _named(raw: dict[str, Any]) -> bool:
    """The user chose a method: by name, or by setting a method's own keys."""
    return bool(raw.get("method")) or any(key in raw for key in list_methods())


def bn_free_default(teacher: nn.Module, raw: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """``raw`` with the method for a teacher without BatchNorm when it names none, and the
    line that tells the user; ``raw`` unchanged (and no line) otherwise."""
    if _named(raw) or batchnorm_layers(teacher):
        return raw, None
    section = {**BN_FREE_SETTINGS, **raw.get(BN_FREE_METHOD, {})}
    chosen = {**raw, "method": BN_FREE_METHOD, BN_FREE_METHOD: section}
    terms = ", ".join(f"{BN_FREE_METHOD}.{k}={v:g}" for k, v in BN_FREE_SETTINGS.items())
    return chosen, (f"the teacher has no BatchNorm layer, so no BatchNorm prior can be read "
                    f"from it: running {BN_FREE_METHOD} with {terms} (measured best for such "
                    "teachers on Fashion-MNIST val); --method NAME chooses another")
