"""DFME: Data-Free Model Extraction (Truong et al., CVPR 2021).

The teacher is a black box that answers a batch of images with probabilities (or logits):
no gradient flows through it. Read from cake-lab/datafree-model-extraction @525b76c
(``dfme/train.py``, ``dfme/approximate_gradients.py``, ``dfme/network/gan.py``):

* **Generator** (``GeneratorA``): Linear(nz -> 2 ngf x (H/4)^2) -> BN -> [up x2, conv3x3 (with
  bias), BN, LeakyReLU(0.2)] -> up x2 -> conv3x3 -> BN -> LeakyReLU -> conv3x3 to the image
  channels -> BN(affine=False) -> tanh; PyTorch's default initialisation. Its output is the
  models' input as it is (normalised space), never re-normalised.
* **Logit recovery** (``no_logits``, ``logit_correction``): the teacher's answers p become
  ``log p - mean_k log p`` (or ``- min_k``): its logits up to a constant per sample, so a
  service that returns probabilities gives the same targets as one that returns logits.
* **Generator step** (``estimate_gradient_objective``, forward differences): for the
  pre-tanh output x of G (train mode) and ``grad_m`` directions u_j drawn uniformly on the
  unit sphere of dimension d = C H W, the teacher and the student (eval mode, no gradient)
  answer tanh(x + eps u_j) and tanh(x). With L(x) = -l1(S, T) (mean over classes; or -KL
  summed over classes for ``loss: kl``), the estimate is
  ``d / m sum_j (L(x + eps u_j) - L(x)) / eps u_j``, divided by K N for l1 (the official
  code's scaling), and it is back-propagated into G (``x.backward(estimate)``). A step costs
  ``N (m + 1)`` teacher queries.
* **Student step**: a fresh batch of G in train mode, detached; L_S = l1(S, recovered
  logits), mean over all entries (or KL with batchmean).
* **Schedule**: G (Adam) and S (SGD) share the multistep schedule: x ``decay`` at 10%,
  30% and 50% of the epochs (the student's ``student_optim.schedule``; G's rate follows it).

Departures: the directions come from torch's random stream (the official code uses numpy's);
the estimate's forwards always run in float32 (a finite difference of eps 1e-3 does not
survive bf16); the student batches are one G forward per step, whatever ``batched_g`` says
(in train mode a batch's samples depend on each other through G's BatchNorm).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from dfkd.errors import ConfigError
from dfkd.generators import default_generator_size
from dfkd.methods import register_method
from dfkd.methods.base import GeneratorMethod, OfficialRecipes
from dfkd.ranges import ranged


@dataclass
class DFMESettings:
    grad_m: int = ranged(1, ge=1)   # random directions of the gradient estimate
    grad_epsilon: float = ranged(1e-3, gt=0)   # smoothing: the step along each direction
    loss: Literal["l1", "kl"] = "l1"   # the disagreement both players use
    # l1: compare the student's logits with the teacher's recovered from its probabilities
    # (log p minus their mean, "mean", or minimum, "min"; "none": log p as it is).
    logit_correction: Literal["mean", "min", "none"] = "mean"


class DFMEGenerator(nn.Module):
    """The official ``GeneratorA`` of DFME (and DFAD): images in the models' input space."""

    def __init__(self, nz: int, ngf: int, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        channels, height, width = image_shape
        if height % 4 or width % 4:
            raise ConfigError(f"dfme's generator doubles a (H/4, W/4) map twice, so image "
                              f"sides must be divisible by 4, got {height}x{width}")
        self.nz, self.base = nz, (height // 4, width // 4)
        self.l1 = nn.Sequential(nn.Linear(nz, 2 * ngf * self.base[0] * self.base[1]))
        self.conv_blocks0 = nn.Sequential(nn.BatchNorm2d(2 * ngf))
        self.conv_blocks1 = nn.Sequential(nn.Conv2d(2 * ngf, 2 * ngf, 3, padding=1),
                                          nn.BatchNorm2d(2 * ngf), nn.LeakyReLU(0.2, True))
        self.conv_blocks2 = nn.Sequential(
            nn.Conv2d(2 * ngf, ngf, 3, padding=1), nn.BatchNorm2d(ngf),
            nn.LeakyReLU(0.2, True), nn.Conv2d(ngf, channels, 3, padding=1),
            nn.BatchNorm2d(channels, affine=False))

    def forward(self, z: torch.Tensor, pre_x: bool = False) -> torch.Tensor:
        """The images, or with ``pre_x`` the map before the tanh."""
        x = self.l1(z).view(z.shape[0], -1, *self.base)
        x = F.interpolate(self.conv_blocks0(x), scale_factor=2)
        x = F.interpolate(self.conv_blocks1(x), scale_factor=2)
        x = self.conv_blocks2(x)
        return x if pre_x else torch.tanh(x)


def recover_logits(answers: torch.Tensor, correction: str) -> torch.Tensor:
    """The teacher's logits up to a constant per sample, from its answers (logits, or the
    log of its probabilities): ``log_softmax`` minus its mean (or minimum) over classes."""
    logp = F.log_softmax(answers.float(), dim=1)
    if correction == "mean":
        return logp - logp.mean(dim=1, keepdim=True)
    if correction == "min":
        return logp - logp.min(dim=1, keepdim=True).values
    return logp


def disagreement(student: torch.Tensor, teacher: torch.Tensor, loss: str,
                 correction: str) -> torch.Tensor:
    """Per sample: l1 between S's logits and T's recovered ones (mean over classes), or
    KL(T || S) summed over classes: the quantity G ascends and S descends."""
    if loss == "kl":
        return F.kl_div(F.log_softmax(student.float(), 1), F.softmax(teacher.float(), 1),
                        reduction="none").sum(1)
    return (student.float() - recover_logits(teacher, correction)).abs().mean(1)


def sphere_directions(n: int, m: int, shape: tuple[int, ...], device: torch.device
                      ) -> torch.Tensor:
    """(n, m, *shape) directions, each uniform on the unit sphere of prod(shape) dims."""
    u = torch.randn(n, m, math.prod(shape), device=device)
    return (u / u.norm(dim=2, keepdim=True)).view(n, m, *shape)


@torch.no_grad()
def estimate_gradient(x: torch.Tensor, u: torch.Tensor, query: Any, epsilon: float,
                      loss: str, correction: str, num_classes: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """DFME's forward-difference estimate of the gradient of the generator objective
    ``-disagreement(tanh(x))`` (averaged over the batch) with respect to the pre-tanh
    batch ``x`` (N, C, H, W), along directions ``u`` (N, m, C, H, W). ``query(images)``
    returns (student logits, teacher answers). Returns the estimate and the objective
    at x."""
    n, m = u.shape[:2]
    dim = x[0].numel()
    points = x.unsqueeze(1) + epsilon * torch.cat([u, torch.zeros_like(u[:, :1])], 1)
    s, t = query(torch.tanh(points.flatten(0, 1)))
    values = -disagreement(s, t, loss, correction).view(n, m + 1)
    diffs = (values[:, :m] - values[:, m:]).view(n, m, *([1] * (x.dim() - 1)))
    grad = (dim / epsilon * diffs * u).mean(1)
    if loss == "l1":
        grad = grad / (num_classes * n)
    return grad, values[:, m].mean()


@register_method
class DFME(GeneratorMethod):
    name = "dfme"
    Settings = DFMESettings
    title = "DFME"
    paper = ("Truong et al., *Data-Free Model Extraction*, CVPR 2021 "
             "([arXiv:2011.14779](https://arxiv.org/abs/2011.14779))")
    code = ("[cake-lab/datafree-model-extraction]"
            "(https://github.com/cake-lab/datafree-model-extraction)")
    docs = "dfme.md"
    needs_white_box = False
    # The official repository publishes no accuracy (the paper's is on docs/methods/dfme.md).
    official = (OfficialRecipes("dfme", "DFME", column=13),)

    def build_generator(self) -> nn.Module:
        default = default_generator_size(self.ctx.image_shape)
        cfg = self.ctx.generator
        return DFMEGenerator(cfg.nz or default.nz, cfg.ngf or default.ngf,
                             self.ctx.image_shape).to(self.ctx.device)

    def on_epoch_start(self, epoch: int) -> None:
        super().on_epoch_start(epoch)
        for group in self.opt_g.param_groups:   # G follows the student's schedule
            group["lr"] = self.ctx.generator.lr * self.ctx.lr_factor(epoch)

    def _query(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """S's logits (eval mode, no gradient) and T's answers, in float32."""
        return self.frozen_student(images, amp=False), self.ctx.teacher(images)

    def generator_step(self) -> dict[str, torch.Tensor]:
        s, ctx = self.settings, self.ctx
        self.generator.train()
        x = self.generator_ddp(self.sample_z(), pre_x=True)
        u = sphere_directions(x.shape[0], s.grad_m, tuple(x.shape[1:]), x.device)
        grad, objective = estimate_gradient(x.detach().float(), u, self._query,
                                            s.grad_epsilon, s.loss, s.logit_correction,
                                            ctx.num_classes)
        self.opt_g.zero_grad(set_to_none=True)
        x.backward(grad.to(x.dtype))
        self.opt_g.step()
        return {"loss_g": objective, "g_disagreement": -objective}

    @torch.no_grad()
    def fresh_images(self) -> torch.Tensor:
        """A student batch: G in train mode (as the official loop leaves it), no gradient;
        in the models' input space."""
        self.generator.train()
        with self.ctx.autocast():
            return self.generator(self.sample_z()).float()

    def queue_fresh_images(self, steps: int) -> None:
        """One G forward per student step (train mode: see the module's note)."""

    def student_batch(self) -> torch.Tensor:
        x = self.fresh_images()
        return x.contiguous(memory_format=torch.channels_last) if self.ctx.channels_last else x

    def student_loss(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.settings
        st, t = self.student_teacher_logits()
        if s.loss == "kl":
            loss = F.kl_div(F.log_softmax(st.float(), 1), F.softmax(t.float(), 1),
                            reduction="batchmean")
        else:
            loss = (st.float() - recover_logits(t, s.logit_correction)).abs().mean()
        return loss, {"loss_s": loss.detach(), "kd": loss.detach()}

    @torch.no_grad()
    def preview(self, n: int, seed: int = 0) -> torch.Tensor:
        z = torch.randn(n, self.nz, generator=torch.Generator().manual_seed(seed))
        x = self._eval_forward(z.to(self.ctx.device))   # in the models' input space
        return (x * self.ctx.std + self.ctx.mean).clamp(0, 1).cpu()
