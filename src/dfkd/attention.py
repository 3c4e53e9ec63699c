"""Layer pairs of a teacher and a student, hooked, for a term on their feature maps
(attention transfer, Zagoruyko & Komodakis; similarity-preserving KD): ZSKT's student loss
and CuDFKD's ``at_weight``.

The pairs are named by the user (``teacher_layers``/``student_layers``), or found by one
probe forward of each model (:func:`stage_outputs`): for each spatial size above 1x1 that
both models produce, among the modules called once per forward that output that size, the
last *composite* one (a module with submodules), or the last module if none is composite.
That is the end of each resolution stage: ``layer1..4`` of a ResNet; ``block1..3`` of a
WRN (the group outputs before the next group's BN-ReLU, as ZSKT's released code takes its
``activation1..3``); and, in a model without groups such as LeNet-5, the last leaf of each
size (``bn1``/``bn2``, the normalised conv outputs before the ReLU). The rule names no
layer, so it pairs any two architectures (a timm model's stages, a user's
``nn.Sequential``): only stages of equal spatial size pair up, as in attention transfer.
When no size is shared (a model without 4-D feature maps, or stages of different sizes),
there is no pair and :attr:`AttentionPairs.skipped` says why.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dfkd.errors import ConfigError
from dfkd.frozen_teacher import user_model
from dfkd.hooks import FeatureHook, ForwardHooks, eval_forward
from dfkd.losses import attention_transfer
from dfkd.registry import did_you_mean


def check_layer_pairs(teacher: list[str] | None, student: list[str] | None,
                      keys: tuple[str, str], weight: float, off: str) -> None:
    """Layer names of a feature term: both None (found automatically), or two lists of as
    many module names, non-empty unless the term's ``weight`` is 0 (off). ``keys`` names the
    two settings in messages, ``off`` the setting whose 0 turns the term off."""
    t, s = teacher, student

    def names(value) -> bool:
        return isinstance(value, (list, tuple)) and all(isinstance(n, str) for n in value)

    if (t is None) != (s is None) or any(v is not None and not names(v) for v in (t, s)) \
            or len(t or []) != len(s or []):
        raise ConfigError(f"{keys[0]} and {keys[1]} must be given together, as lists of as "
                          "many module names")
    if t is not None and not t and weight > 0:
        raise ConfigError(f"{keys[0]} and {keys[1]} are empty: name the layers to pair, leave "
                          f"both unset to pair them automatically, or set {off}=0 to turn "
                          "attention transfer off")


# Modules whose outputs are (N, C, H, W) maps for certain: their sizes are the model's
# resolutions (a Linear on a channels-last map also outputs a 4-D tensor, (N, H, W, C)).
_MAP_MAKERS = (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd,
               nn.modules.pooling._AvgPoolNd, nn.modules.pooling._AdaptiveAvgPoolNd,
               nn.modules.pooling._AdaptiveMaxPoolNd)


def _size(value) -> tuple | None:
    """(H, W) of a 4-D tensor with more than one position, else None."""
    if isinstance(value, torch.Tensor) and value.dim() == 4 and value.shape[-2:].numel() > 1:
        return tuple(value.shape[-2:])
    return None


def stage_outputs(model: nn.Module, image_shape: tuple[int, ...], device) -> dict[tuple, str]:
    """Spatial size -> the module that ends that stage in one forward: the last composite
    module (one with submodules) that outputs that size, else the last module that does.

    Skipped: modules called more than once per forward (shared activations); outputs whose
    size no convolution or pooling layer produces (channels-last tensors); and modules
    inside a module that takes maps of that size and returns another size (the start of
    the next stage, e.g. the expansion conv of a MobileNet block that then downsamples, or
    the LayerNorm of a ConvNeXt downsample module, whose per-position normalisation flattens
    the attention map)."""
    calls: dict[str, int] = {}
    seen: list[tuple[str, tuple]] = []
    sizes_in: dict[str, tuple | None] = {}
    sizes_out: dict[str, tuple | None] = {}
    map_sizes: set[tuple] = set()
    modules = dict(model.named_modules())
    names = {m: n for n, m in modules.items() if n}
    composite = {n: next(m.children(), None) is not None for n, m in modules.items()}

    def record(module: nn.Module, inputs, out) -> None:
        name = names[module]
        calls[name] = calls.get(name, 0) + 1
        size = _size(out)
        sizes_in[name] = next((_size(x) for x in inputs if _size(x)), None)
        sizes_out[name] = size
        if size is not None:
            seen.append((name, size))
            if isinstance(module, _MAP_MAKERS):
                map_sizes.add(size)

    with ForwardHooks(names, record):
        eval_forward(model, torch.zeros(1, *image_shape, device=device))

    def transition(ancestor: str, size: tuple) -> bool:
        """``ancestor`` takes maps of ``size``, returns another size, and holds no third:
        one downsampling step (a block or a downsample module), not a stack of stages."""
        out = sizes_out.get(ancestor)
        if sizes_in.get(ancestor) != size or out == size:
            return False
        inner = {s for n, s in seen if n.startswith(ancestor + ".")
                 and (not map_sizes or s in map_sizes)}
        return inner <= {size, out}

    def starts_next_stage(name: str, size: tuple) -> bool:
        parts = name.split(".")
        return any(transition(".".join(parts[:i]), size) for i in range(1, len(parts)))

    stages: dict[tuple, str] = {}
    for name, size in seen:  # in the order the modules finish: a container after its parts
        if calls[name] != 1 or (map_sizes and size not in map_sizes) \
                or starts_next_stage(name, size):
            continue
        if composite[name] or size not in stages or not composite[stages[size]]:
            stages[size] = name
    return stages


def _hook(model: nn.Module, names: list[str], key: str) -> FeatureHook:
    known = [n for n, _ in model.named_modules() if n]
    for name in (n for n in names if n not in known):
        raise ConfigError(f"{key}: the model has no module '{name}'."
                          f"{did_you_mean(name, known)}")
    return FeatureHook(model, names)


class AttentionPairs:
    """The teacher/student layer pairs of a feature term, hooked: ``loss()`` is the AT term
    (or ``match``'s) of the latest forward of both models (then forgets their outputs).

    ``teacher_layers``/``student_layers`` None: found by :func:`stage_outputs`; when the two
    models share no stage size, ``layers`` is empty, nothing is hooked, and ``skipped`` is
    the line that tells the user (``off``: the setting that turns the term off, e.g.
    ``zskt.beta=0``). ``last``: only the deepest pair; ``keys`` names the two settings in
    messages."""

    def __init__(self, ctx, teacher_layers: list[str] | None, student_layers: list[str] | None,
                 keys: tuple[str, str],
                 match: Callable[[list[torch.Tensor], list[torch.Tensor]], torch.Tensor]
                 = attention_transfer, last: bool = False,
                 off: str = "the term's weight to 0") -> None:
        self.match = match  # the term on the hooked maps (similarity_preserving: SP's)
        self.skipped: str | None = None
        teacher = user_model(ctx.teacher)  # layer names are the user's model's
        if teacher_layers is None:
            t_stage = stage_outputs(teacher, ctx.image_shape, ctx.device)
            s_stage = stage_outputs(ctx.student_raw, ctx.image_shape, ctx.device)
            common = [size for size in t_stage if size in s_stage]
            pairs = [(t_stage[k], s_stage[k]) for k in common]
            if not pairs:
                self.skipped = (
                    f"attention transfer is skipped: the teacher and the student have no "
                    f"stages of equal spatial size (teacher: {_sizes(t_stage)}; student: "
                    f"{_sizes(s_stage)}); name layer pairs in {keys[0]} and {keys[1]}, or "
                    f"set {off} to turn it off")
        else:
            pairs = list(zip(teacher_layers, student_layers))
        self.layers = pairs[-1:] if last else pairs
        self.t_hook = _hook(teacher, [t for t, _ in self.layers], keys[0])
        self.s_hook = _hook(ctx.student_raw, [s for _, s in self.layers], keys[1])
        if self.layers and teacher_layers is not None and match is attention_transfer:
            self._check_maps(teacher, ctx, keys)

    def _check_maps(self, teacher: nn.Module, ctx, keys: tuple[str, str]) -> None:
        """Named layers must output (N, C, H, W) maps: one probe forward of each model."""
        for model, hook, key in ((teacher, self.t_hook, keys[0]),
                                 (ctx.student_raw, self.s_hook, keys[1])):
            eval_forward(model, torch.zeros(1, *ctx.image_shape, device=ctx.device))
            for name, out in hook.outputs.items():
                if not isinstance(out, torch.Tensor) or out.dim() != 4:
                    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else \
                        type(out).__name__
                    raise ConfigError(f"{key}: '{name}' outputs {shape}, not an (N, C, H, W) "
                                      "feature map; name a convolutional layer")
            hook.outputs.clear()

    def forget(self) -> None:
        """Drop kept activations (and their graphs, or an evaluation batch's maps)."""
        self.t_hook.outputs.clear()
        self.s_hook.outputs.clear()

    def loss(self) -> torch.Tensor:
        at = self.match([self.s_hook.outputs[n] for _, n in self.layers],
                        [self.t_hook.outputs[n] for n, _ in self.layers])
        self.forget()
        return at


def _sizes(stages: dict[tuple, str]) -> str:
    return ", ".join(f"{h}x{w}" for h, w in stages) or "no 4-D feature maps"
