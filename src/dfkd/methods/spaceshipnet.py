"""SpaceshipNet: data-free KD via feature exchange and activation region constraint (Yu et
al., CVPR 2023), as in the authors' code (skgyu/SpaceshipNet,
``models/model_CFE_mSARC_bases/model_CFE_mSARC_base_V37.py``, ``networks/cmi_generator.py``
and ``scripts/DFKD_Cifar*_ResNet34_ResNet18_V37_conv012*.yaml``).

One generator for the run (Kaiming-normal initialisation, never re-drawn), trained at the
start of every round for ``g_steps`` steps with a fresh Adam (``generator.lr``, betas from
the config) on one batch of fixed codes z ~ N(0, I) and class-balanced targets
y = [0, 1, ..., C-1, 0, 1, ...]:

    L_G = w_ce CE(T(x'), y) + w_bn R_BN(x'),   x' = normalize(pad-crop-flip(G(z)))

The step with the lowest L_G gives the round's *features*: G's maps at each ``level`` (level
0: the projected input after its BatchNorm; level j: the output of up-sampling stage j),
each kept in its own bank (every round's, unless ``bank_size``).

Student step: a level k drawn uniformly from ``levels``, a batch of its stored maps drawn
from its bank; with probability ``exchange_p`` the batch is *feature-exchanged*: sample i
keeps half of its channels (drawn at random per sample) and takes the other half from
sample B-1-i. G, in eval mode and without gradient, renders the maps to images from level k
on (so the images follow G as it learns), then pad-crop-flip. On these images x:

    L_S = w_kl / C * tau^2 KL(T(x)/tau || S(x)/tau)               (KLDivLoss 'mean' x T^2)
        + w_cam MSE(W_S A_S, W_T A_T)                              (class activation maps)
        + w_gradcam sum_l MSE(sum_c a^S_lc A^S_l,c, sum_c a^T_lc A^T_l,c)   (Grad-CAM)

A is the map that the classifier pools (the last (N, C, H, W) output whose channels are
the last Linear layer's inputs) and W that layer's weight, applied as a 1x1 convolution and
not trained through this term. The Grad-CAM maps are taken at the ends of the stages (the
pairs of :class:`dfkd.attention.AttentionPairs`, or ``teacher_layers``/``student_layers``):
a_lc is the spatial mean of the gradient of the model's logit of T's top class with respect
to channel c of map l, a constant. When the models have no such classifier map of one size,
or no stage pair, that term is skipped with one warning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dfkd.attention import AttentionPairs, check_layer_pairs
from dfkd.augment import random_crop_flip
from dfkd.bank import LowestLoss, SampleBank
from dfkd.errors import ConfigError
from dfkd.frozen_teacher import user_model
from dfkd.generators import Generator
from dfkd.hooks import FeatureHook, ForwardHooks, eval_forward, last_linear
from dfkd.losses import kd_kl
from dfkd.methods import register_method
from dfkd.methods.base import BankMethod, OfficialRecipes, Published, warn
from dfkd.ranges import ranged

README = "skgyu/SpaceshipNet README.md"


@dataclass
class SpaceshipNetSettings:
    w_bn: float = 1.0        # BatchNorm statistics term (0: off, e.g. no BN)
    w_ce: float = 0.5        # CE to the balanced targets (lambda_cls)
    w_kl: float = 1.0        # the student's KL (distill.alpha)
    tau: float = ranged(30.0, gt=0)   # its temperature (distill.T)
    w_cam: float = ranged(1.0, ge=0)      # CAM MSE (lambda_mSARC_cam_mse; 0: off)
    w_gradcam: float = ranged(1.0, ge=0)  # Grad-CAM MSE (lambda_mSARC_gradcams_mse; 0: off)
    exchange_p: float = ranged(0.7, ge=0, le=1)  # share of student batches feature-exchanged
    levels: list[int] | None = None   # generator levels to keep and draw (None: all)
    teacher_layers: list[str] | None = None  # Grad-CAM pairs; None: the stage ends
    student_layers: list[str] | None = None  # ... and the student's, as many
    padding: int = ranged(4, ge=0)   # synthesis view and student batches: zero pad + crop
    flip: bool = True        # ... and random horizontal flip, per sample
    bank_size: int = ranged(0, ge=0)  # rows kept per level; 0 keeps every round's batch

    def validate(self) -> None:
        check_layer_pairs(self.teacher_layers, self.student_layers,
                          ("spaceshipnet.teacher_layers", "spaceshipnet.student_layers"),
                          self.w_gradcam, "spaceshipnet.w_gradcam=0")
        if self.levels is not None and (not self.levels or any(
                not isinstance(k, int) or isinstance(k, bool) or k < 0 for k in self.levels)):
            raise ConfigError(f"spaceshipnet.levels must be a non-empty list of generator "
                              f"levels (0, 1, ...), or unset for all; got {self.levels}")


def kaiming_init(module: nn.Module) -> None:
    """The official ``weights_init('kaiming')``: Kaiming-normal (fan in) convolution and
    Linear weights, zero biases, BatchNorm weights ~ N(1, 0.02)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, a=0, mode="fan_in")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class LevelGenerator(nn.Module):
    """A :class:`~dfkd.generators.Generator` that also returns its maps at every level, and
    renders images from stored maps of one level on (the official ``CMIGeneratorV3``)."""

    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.generator = generator
        body = generator.body
        # level 0 ends at the BatchNorm after the projection; level j at stage j's activation
        self.ends = [0] + [i for i, m in enumerate(body) if isinstance(m, nn.LeakyReLU)]

    @property
    def levels(self) -> int:
        return len(self.ends)

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        x = self.generator.input_map(z)
        maps = []
        for i, module in enumerate(self.generator.body):
            x = module(x)
            if i in self.ends:
                maps.append(x)
        return x, maps

    def render(self, maps: torch.Tensor, level: int) -> torch.Tensor:
        x = maps.contiguous(memory_format=torch.channels_last)
        for module in self.generator.body[self.ends[level] + 1:]:
            x = module(x)
        return x


def class_balanced(n: int, num_classes: int) -> torch.Tensor:
    """The official targets: 0, 1, ..., C-1 repeated, the last repeat cut at n."""
    return torch.arange(n) % num_classes


def exchange_channels(maps: torch.Tensor) -> torch.Tensor:
    """Sample i keeps C // 2 of its channels, drawn at random for each sample, and takes
    the others from sample B-1-i (the official ``channel_mix_batch``)."""
    b, c = maps.shape[:2]
    keep = torch.zeros(b, c, dtype=torch.bool)
    keep.scatter_(1, torch.rand(b, c).argsort(dim=1)[:, : c // 2], True)
    keep = keep.to(maps.device).view(b, c, *[1] * (maps.dim() - 2))
    return torch.where(keep, maps, maps.flip(0))


def class_activation_maps(maps: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) maps through the classifier weight (K, C) as a 1x1 convolution."""
    return torch.einsum("bchw,kc->bkhw", maps.float(), weight.float())


def grad_cam(maps: list[torch.Tensor], logits: torch.Tensor, onehot: torch.Tensor,
             keep_graph: bool) -> list[torch.Tensor]:
    """Grad-CAM of each map: sum_c mean_hw(d <logits, onehot> / d A_c) A_c, (B, H, W); the
    weights are constants, the maps keep their graph."""
    grads = torch.autograd.grad(logits, maps, grad_outputs=onehot.to(logits.dtype),
                                retain_graph=keep_graph)
    return [(g.float().mean(dim=(2, 3), keepdim=True) * a.float()).sum(dim=1)
            for g, a in zip(grads, maps)]


def classifier_map(model: nn.Module, image_shape: tuple[int, ...], device
                   ) -> tuple[str, nn.Linear] | None:
    """The module whose output the classifier pools, and the classifier: the last Linear
    layer, and the last (N, C, H, W) output (more than one position, a module called once)
    with that layer's input channels. None when there is no such pair."""
    classifier = last_linear(model)
    if classifier is None:
        return None
    width = classifier.in_features
    names = {m: n for n, m in model.named_modules() if n}
    calls: dict[str, int] = {}
    found: list[str] = []

    def record(module: nn.Module, _inputs, out) -> None:
        name = names[module]
        calls[name] = calls.get(name, 0) + 1
        if isinstance(out, torch.Tensor) and out.dim() == 4 and out.shape[1] == width \
                and out.shape[-2:].numel() > 1:
            found.append(name)

    with ForwardHooks(names, record):
        eval_forward(model, torch.zeros(1, *image_shape, device=device))
    found = [n for n in found if calls[n] == 1]
    return (found[-1], classifier) if found else None


class ClassActivation:
    """Both models' classifier maps, hooked, and the CAM term on their latest forward."""

    def __init__(self, ctx) -> None:
        self.skipped: str | None = None
        teacher = user_model(ctx.teacher)
        found = [classifier_map(m, ctx.image_shape, ctx.device)
                 for m in (teacher, ctx.student_raw)]
        if None in found:
            role = "teacher" if found[0] is None else "student"
            self.skipped = (f"the CAM term is skipped: the {role} has no (N, C, H, W) map "
                            "that its last Linear layer pools; set spaceshipnet.w_cam=0 to "
                            "turn it off")
            return
        (t_name, self.t_fc), (s_name, self.s_fc) = found
        self.t_hook = FeatureHook(teacher, [t_name])
        self.s_hook = FeatureHook(ctx.student_raw, [s_name])
        self.t_name, self.s_name = t_name, s_name

    def forget(self) -> None:
        if self.skipped is None:
            self.t_hook.outputs.clear()
            self.s_hook.outputs.clear()

    def maps(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The CAMs of the student (with graph) and of the teacher (detached)."""
        cam_s = class_activation_maps(self.s_hook.outputs[self.s_name], self.s_fc.weight.detach())
        cam_t = class_activation_maps(self.t_hook.outputs[self.t_name].detach(),
                                      self.t_fc.weight.detach())
        self.forget()
        return cam_s, cam_t


@register_method
class SpaceshipNet(BankMethod):
    name = "spaceshipnet"
    Settings = SpaceshipNetSettings
    title = "SpaceshipNet"
    paper = ("Yu et al., *Data-Free Knowledge Distillation via Feature Exchange and Activation "
             "Region Constraint*, CVPR 2023 "
             "([arXiv:2302.14290](https://arxiv.org/abs/2302.14290))")
    code = "[skgyu/SpaceshipNet](https://github.com/skgyu/SpaceshipNet)"
    docs = "spaceshipnet.md"
    needs_bn = True
    reads_layers = "stage ends and the classifier's map and weight (CAM, Grad-CAM)"
    official = (OfficialRecipes("spaceshipnet", "SpaceshipNet", column=12, acc1={
        "c100_resnet34_resnet18": Published(
            77.41, f"{README}:L8", "the paper's number; the README's 6 seeds: mean 77.15, "
            "sd 0.21"),
    }),)

    def __init__(self, ctx, settings: SpaceshipNetSettings) -> None:
        super().__init__(ctx, settings)
        s = settings
        generator = ctx.make_generator()
        kaiming_init(generator)
        if ctx.channels_last:
            generator.to(memory_format=torch.channels_last)
        self.generator = LevelGenerator(generator)
        self.generator_ddp = ctx.wrap(self.generator)
        levels = self.generator.levels
        self.levels = list(range(levels)) if s.levels is None else list(s.levels)
        if max(self.levels) >= levels:
            raise ConfigError(f"spaceshipnet.levels: the generator has levels 0..{levels - 1} "
                              f"(its input map and {levels - 1} up-sampling stages); got "
                              f"{s.levels}")
        self.banks = {k: SampleBank(s.bank_size) for k in self.levels}
        self.bank = self.banks[self.levels[0]]   # what BankMethod.status() counts
        self.targets = class_balanced(ctx.batch_size, ctx.num_classes).to(ctx.device)
        # Each term's hooks, or None when it is off or cannot run (one warning says why).
        self.cam = self._term(lambda: ClassActivation(ctx), s.w_cam)
        self.gradcam = self._term(lambda: AttentionPairs(
            ctx, s.teacher_layers, s.student_layers,
            ("spaceshipnet.teacher_layers", "spaceshipnet.student_layers"),
            off="spaceshipnet.w_gradcam=0"), s.w_gradcam)
        self.best: LowestLoss | None = None

    @staticmethod
    def _term(make, weight: float):
        if weight == 0:
            return None
        term = make()
        if term.skipped:
            warn(term.skipped)
            return None
        return term

    def _forget(self) -> None:
        for term in (self.cam, self.gradcam):
            if term is not None:
                term.forget()

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        self._forget()   # maps kept by evaluation forwards

    def start_synthesis(self) -> None:
        ctx = self.ctx
        self.z = torch.randn(ctx.batch_size, self.generator.generator.nz, device=ctx.device)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=ctx.generator.lr,
                                      betas=ctx.generator.betas)
        self.best = LowestLoss(ctx.device)

    def generator_step(self) -> dict[str, torch.Tensor]:
        s, ctx = self.settings, self.ctx
        with ctx.autocast():
            images, maps = self.generator_ddp(self.z)
            x = ctx.normalize(random_crop_flip(images, s.padding, s.flip))
            with self.bn_hook:
                t = ctx.teacher(x)
                bn = self.bn_hook.loss()
        self._forget()
        ce = F.cross_entropy(t.float(), self.targets)
        loss = s.w_ce * ce + s.w_bn * bn
        self.best.offer(loss, *(maps[k] for k in self.levels))
        self.opt_g.zero_grad(set_to_none=True)
        loss.backward()
        self.opt_g.step()
        return {"loss_g": loss.detach(), "g_ce": ce.detach(), "g_bn": bn.detach()}

    def end_synthesis(self) -> None:
        for k, maps in zip(self.levels, self.best.kept):
            self.banks[k].add(maps.float())
        self.z = self.opt_g = self.best = None

    @torch.no_grad()
    def render(self, maps: torch.Tensor, level: int) -> torch.Tensor:
        """Images in [0, 1] from stored maps of ``level``, by G in eval mode."""
        self.generator.eval()
        try:
            with self.ctx.autocast():
                return self.generator.render(maps, level).float()
        finally:
            self.generator.train()

    def student_batch(self) -> torch.Tensor:
        """A level drawn uniformly, a batch of its maps (exchanged with p ``exchange_p``),
        rendered by G and augmented; normalised."""
        s = self.settings
        level = self.levels[int(torch.randint(len(self.levels), ()))]
        maps = self.banks[level].sample(self.ctx.batch_size)
        if float(torch.rand(())) < s.exchange_p:
            maps = exchange_channels(maps)
        return self.ctx.normalize(random_crop_flip(self.render(maps, level), s.padding, s.flip))

    def student_loss(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s, ctx = self.settings, self.ctx
        x = self.student_batch()
        with ctx.autocast():
            # Grad-CAM needs the teacher's d logits / d maps: its input takes a gradient.
            with torch.set_grad_enabled(self.gradcam is not None):
                t = ctx.teacher(x.detach().requires_grad_(self.gradcam is not None))
            st = ctx.student(x)
        kl = kd_kl(st, t.detach(), s.tau) / ctx.num_classes
        loss = s.w_kl * kl
        terms = {"kd": kl.detach()}
        if self.cam is not None:
            cam_s, cam_t = self.cam.maps()
            cam = F.mse_loss(cam_s, cam_t)
            loss = loss + s.w_cam * cam
            terms["cam"] = cam.detach()
        if self.gradcam is not None:
            pairs = self.gradcam
            onehot = F.one_hot(t.detach().argmax(dim=1), ctx.num_classes)
            maps_t = [pairs.t_hook.outputs[n] for n, _ in pairs.layers]
            maps_s = [pairs.s_hook.outputs[n] for _, n in pairs.layers]
            pairs.forget()
            cams_t = grad_cam(maps_t, t, onehot, keep_graph=False)
            cams_s = grad_cam(maps_s, st, onehot, keep_graph=True)
            gradcam = sum(F.mse_loss(a, b.detach()) for a, b in zip(cams_s, cams_t))
            loss = loss + s.w_gradcam * gradcam
            terms["gradcam"] = gradcam.detach()
        self._forget()
        return loss, {"loss_s": loss.detach(), **terms}

    @torch.no_grad()
    def preview(self, n: int, seed: int = 0) -> torch.Tensor:
        level = self.levels[0]
        return self.render(self.banks[level].latest(n), level).cpu()

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.state_dict(),
                "banks": {k: bank.state_dict() for k, bank in self.banks.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.load_state_dict(state["generator"])
        for k, bank in self.banks.items():
            bank.load_state_dict(state["banks"][k], self.ctx.device)
