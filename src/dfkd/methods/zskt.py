"""ZSKT: Zero-shot Knowledge Transfer via Adversarial Belief Matching
(Micaelli & Storkey, NeurIPS 2019).

    G maximises  D(T || S)                                 (loss_g = -D)
    S minimises  D(T || S) + beta * sum_l mean((a_s^l - a_t^l)^2)
with a^l the L2-normalised spatial attention map of layer pair l (see
``dfkd.losses.attention_map``). The AT term takes the form of the released code,
which is what beta = 250 was tuned for (the paper writes an unsquared L2 norm).

D is the KL divergence as the released code computes it (polo5/ZeroShotKnowledgeTransfer,
solver.py ``divergence``, used by both ``KT_loss_generator`` and ``KT_loss_student``):
``F.kl_div(log_softmax(s / T), softmax(t / T))`` with PyTorch's default
``reduction='mean'``, i.e. the sum over the batch *and the classes* divided by B * K,
and no T^2 factor. That is ``kl_reduction: elementwise`` (the default). ``batch`` takes
T^2 * KL averaged over the batch only (``dfkd.losses.kd_kl``), K times larger, so
beta = 250 then weighs the attention term K times less than the original does. The
released code trains S with Adam (lr 2e-3), which does not see the loss's overall
scale; this harness's SGD does, so with ``elementwise`` the KD step is K times smaller
at a given learning rate than with ``batch``.

Layer pairs: ``teacher_layers``/``student_layers`` name modules whose outputs are
compared. Left unset, they are found by one probe forward of each model: for each
spatial size above 1x1 that both models produce, among the modules called once per
forward that output that size, the last *composite* one (a module with submodules),
or the last module if none is composite. That is the end of each resolution stage:
``layer1..4`` of a ResNet; ``block1..3`` of a WRN, the group outputs before the next
group's BN-ReLU, as the released code's ``activation1..3`` (models/wresnet.py); and,
in a model without groups such as LeNet-5, the last leaf of each size (``bn1``/``bn2``,
the normalised conv outputs before the ReLU, where the released LeNet takes its conv
outputs). The released code has no ResNet; ``layer1..4`` are the group outputs that
attention transfer (Zagoruyko & Komodakis) uses on ResNets. The rule names no layer, so it
pairs any two architectures (a timm model's stages, a user's ``nn.Sequential``): only
stages of equal spatial size pair up, as in attention transfer. When no size is shared (a
model without 4-D feature maps, or stages of different sizes, e.g. LeNet-5-half's 28 and
10 px against a 32/16/8 px CNN), the term is skipped with one warning and the run goes on.
``beta: 0`` turns attention transfer off (no probe, no hooks, no warning).
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from dfkd.errors import ConfigError
from dfkd.hooks import FeatureHook
from dfkd.losses import attention_transfer, kd_kl
from dfkd.methods import register_method
from dfkd.methods.base import GeneratorMethod, warn
from dfkd.methods.dafl import user_model


@dataclass
class ZSKTSettings:
    """``beta``: the attention-transfer weight; 0 turns the term off (KL only).
    ``teacher_layers``/``student_layers``: the module names to pair, both or neither; unset,
    the stage ends of equal spatial size are paired (see the module doc), and with none
    the term is skipped with one warning."""

    beta: float = 250.0                      # attention-transfer weight (0: off, KL only)
    tau: float = 1.0                         # KL temperature (the paper uses 1)
    kl_reduction: Literal["elementwise", "batch"] = "elementwise"  # see the module doc
    clip_g: float = 5.0                      # generator gradient-norm clip (0: none)
    teacher_layers: list[str] | None = None  # None: found automatically (see above)
    student_layers: list[str] | None = None

    def validate(self) -> None:
        if self.tau <= 0 or self.beta < 0 or self.clip_g < 0:
            raise ConfigError("zskt.tau must be > 0, zskt.beta and zskt.clip_g >= 0")
        check_layer_pairs(self.teacher_layers, self.student_layers,
                          ("zskt.teacher_layers", "zskt.student_layers"), self.beta)


def check_layer_pairs(teacher: list[str] | None, student: list[str] | None,
                      keys: tuple[str, str], weight: float) -> None:
    """Attention-transfer layer names: both None (found automatically), or two lists of as
    many module names, non-empty unless the term's ``weight`` is 0 (off)."""
    t, s = teacher, student

    def names(value) -> bool:
        return isinstance(value, (list, tuple)) and all(isinstance(n, str) for n in value)

    if (t is None) != (s is None) or any(v is not None and not names(v) for v in (t, s)) \
            or len(t or []) != len(s or []):
        raise ConfigError(f"{keys[0]} and {keys[1]} must be given together, as lists of as "
                          "many module names")
    if t is not None and not t and weight > 0:
        switch = "zskt.beta" if keys[0].startswith("zskt.") else "cudfkd.at_weight"
        raise ConfigError(f"{keys[0]} and {keys[1]} are empty: name the layers to pair, leave "
                          f"both unset to pair them automatically, or set {switch}=0 to turn "
                          "attention transfer off")


def divergence(student: torch.Tensor, teacher: torch.Tensor, tau: float,
               reduction: str = "elementwise") -> torch.Tensor:
    """KL(softmax(t/tau) || softmax(s/tau)): ``elementwise`` as the released code's
    ``F.kl_div`` default (mean over batch x classes, no tau^2); ``batch``: tau^2 * the
    batch mean (``dfkd.losses.kd_kl``)."""
    if reduction == "batch":
        return kd_kl(student, teacher, tau)
    log_p_s = F.log_softmax(student.float() / tau, dim=1)
    log_p_t = F.log_softmax(teacher.float() / tau, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).mean()


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
    composite = {n: next(m.children(), None) is not None for n, m in modules.items()}

    def record(name: str, module: nn.Module):
        def hook(_m, inputs, out) -> None:
            calls[name] = calls.get(name, 0) + 1
            size = _size(out)
            sizes_in[name] = next((_size(x) for x in inputs if _size(x)), None)
            sizes_out[name] = size
            if size is not None:
                seen.append((name, size))
                if isinstance(module, _MAP_MAKERS):
                    map_sizes.add(size)
        return hook

    handles = [m.register_forward_hook(record(n, m)) for n, m in modules.items() if n]
    training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *image_shape, device=device))
    finally:
        model.train(training)
        for h in handles:
            h.remove()

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
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"{key}: the model has no module '{name}'.{hint}")
    return FeatureHook(model, names)


class AttentionPairs:
    """The teacher/student layer pairs of attention transfer, hooked: ``loss()`` is the AT
    term (or ``match``'s) of the latest forward of both models (then forgets their outputs).

    ``teacher_layers``/``student_layers`` None: found by :func:`stage_outputs` (see the
    module doc); when the two models share no stage size, ``layers`` is empty, nothing is
    hooked and one warning says the term is skipped (``off`` names the switch that turns it
    off). ``last``: only the deepest pair; ``keys`` names the two settings in messages."""

    def __init__(self, ctx, teacher_layers: list[str] | None, student_layers: list[str] | None,
                 keys: tuple[str, str], match=attention_transfer, last: bool = False,
                 off: str = "zskt.beta=0") -> None:
        self.match = match  # the term on the hooked maps (similarity_preserving: SP's)
        teacher = user_model(ctx.teacher)  # layer names are the user's model's
        if teacher_layers is None:
            t_stage = stage_outputs(teacher, ctx.image_shape, ctx.device)
            s_stage = stage_outputs(ctx.student_raw, ctx.image_shape, ctx.device)
            common = [size for size in t_stage if size in s_stage]
            pairs = [(t_stage[k], s_stage[k]) for k in common]
            if not pairs:
                warn(f"attention transfer is skipped: the teacher and the student have no "
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
            training = model.training
            model.eval()
            try:
                with torch.no_grad():
                    model(torch.zeros(1, *ctx.image_shape, device=ctx.device))
            finally:
                model.train(training)
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


@register_method
class ZSKT(GeneratorMethod):
    name = "zskt"
    Settings = ZSKTSettings
    needs_bn = False

    def __init__(self, ctx, settings: ZSKTSettings) -> None:
        super().__init__(ctx, settings)
        s = settings
        attention = AttentionPairs(ctx, s.teacher_layers, s.student_layers,
                                   ("zskt.teacher_layers", "zskt.student_layers")) \
            if s.beta > 0 else None
        # No pair found (one warning said so): the term is skipped, KL only.
        self.attention = attention if attention is not None and attention.layers else None
        self.layers = [] if self.attention is None else self.attention.layers

    def _forget(self) -> None:
        if self.attention is not None:
            self.attention.forget()

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self._forget()

    def generator_step(self) -> dict[str, torch.Tensor]:
        s, ctx = self.settings, self.ctx
        with ctx.autocast():
            x = self.synthesize()
            t = ctx.teacher(x)
        st = self.frozen_student(x)
        self._forget()
        kl = divergence(st, t, s.tau, s.kl_reduction)
        loss = -kl
        self.update_generator(loss, clip=s.clip_g)
        return {"loss_g": loss.detach(), "g_kl": kl.detach()}

    def student_loss(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.settings
        st, t = self.student_teacher_logits(hooked=self.attention is not None)
        kd = divergence(st, t, s.tau, s.kl_reduction)
        at = self.attention.loss() if self.attention is not None else \
            torch.zeros((), device=self.ctx.device)
        loss = kd + s.beta * at
        return loss, {"loss_s": loss.detach(), "kd": kd.detach(), "at": at.detach()}
