"""CuDFKD's easy-to-hard machinery (Li et al., Information Sciences 2023).

Self-paced learning picks weights v in [0, 1] for losses l by minimising
``v * l + g(v; lambda)``. Each regulariser g has a closed-form minimiser v*
and a "latent objective" ``F_lambda(l) = min_v [v l + g(v; lambda)]`` that is
concave in l with derivative v*(l). Alternating the v-step (closed form) with a
descent step on ``sum_i v_i l_i`` therefore minimises a majoriser of
``sum_i F_lambda(l_i)`` (majorisation-minimisation): for a fixed lambda the
surrogate never increases.

* hard: v* = 1[l < lam],                 g = -lam v
* soft: v* = 1[l < lam] (1 - l/lam),     g = lam (v^2/2 - v)
* log:  v* = (1+e^-lam) / (1+e^(l-lam)), g = mu ln mu + v ln v - lam v,
        mu = 1 + e^-lam - v; F saturates for large l, which bounds the pull of
        hard or noisy samples (the robustness argument).

The pace ``lambda_k = lambda_0 + a k`` grows with the student step k, admitting
harder samples over time. That pace is in loss units, so it fits one loss scale only
(the paper's CIFAR ResNets with an L1 loss). :class:`QuantilePace` is the scale-free
alternative: lambda is the q-quantile of a window of recent losses, with q growing over
the run, so the same fraction of samples is admitted whatever the scale.

The generator's adversarial weight grows by ``grad_adv`` after each 0-based epoch e
with ``floor(E begin) < e < floor(E end)`` (strict at both ends, as in the official code).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

REGULARISERS = ("hard", "soft", "log")


def _check(kind: str) -> None:
    if kind not in REGULARISERS:
        raise ValueError(f"unknown self-paced regulariser '{kind}', expected one of {REGULARISERS}")


def v_star(loss: torch.Tensor, lam: float, kind: str = "log") -> torch.Tensor:
    """Closed-form self-paced weight minimising v*l + g(v; lam) over [0, 1]."""
    _check(kind)
    if kind == "hard":
        return (loss < lam).to(loss.dtype)
    if kind == "soft":
        return torch.where(loss < lam, 1.0 - loss / lam, torch.zeros_like(loss))
    # (1 + e^-lam) * sigmoid(lam - l), stable for any l
    return (1.0 + math.exp(-lam)) * torch.sigmoid(lam - loss)


def v_star_at_quantile(loss: torch.Tensor, lam_q: float, lambda_0: float,
                       kind: str = "log") -> torch.Tensor:
    """v* of :class:`QuantilePace`: v*(l lambda_0 / lambda_q; lambda_0), the loss in units
    of the quantile lambda_q (kept above 0)."""
    return v_star(loss * (lambda_0 / max(lam_q, 1e-12)), lambda_0, kind)


def regulariser(v: torch.Tensor, lam: float, kind: str = "log") -> torch.Tensor:
    """g(v; lam), defined for v in [0, 1]."""
    _check(kind)
    if kind == "hard":
        return -lam * v
    if kind == "soft":
        return lam * (0.5 * v**2 - v)
    mu = 1.0 + math.exp(-lam) - v
    return torch.special.xlogy(mu, mu) + torch.special.xlogy(v, v) - lam * v


def latent_objective(loss: torch.Tensor, lam: float, kind: str = "log") -> torch.Tensor:
    """F_lambda(l) = min_v [v l + g(v; lam)], in closed form."""
    _check(kind)
    if kind == "hard":
        return torch.clamp(loss - lam, max=0.0)
    if kind == "soft":
        return torch.where(loss < lam, -0.5 * lam * (1.0 - loss / lam) ** 2,
                           torch.zeros_like(loss))
    # Substituting v* gives (1 + e^-lam) ln((1 + e^-lam) sigmoid(l - lam)).
    c = 1.0 + math.exp(-lam)
    return c * (math.log(c) + F.logsigmoid(loss - lam))


@dataclass
class Pace:
    """lambda_k = lambda_0 + a * k, with k the number of student steps taken."""

    lambda_0: float
    a: float

    def __call__(self, step: int) -> float:
        return self.lambda_0 + self.a * step


@dataclass
class AdversarialRamp:
    """The generator's adversarial weight w_adv(e): w_adv0, then +grad_adv after each
    epoch e (0-based) with floor(E*begin) < e < floor(E*end), strict at both ends as in
    the official code, then constant. C10 R34->R18 (E 250, 0.25/0.75, grad 0.5) grows
    after epochs 63..186 and ends at 62.0."""

    w_adv0: float
    grad_adv: float
    begin: float
    end: float
    epochs: int

    def __call__(self, epoch: int) -> float:
        """The weight in effect during 0-based epoch ``epoch``."""
        start, stop = math.floor(self.epochs * self.begin), math.floor(self.epochs * self.end)
        # Growth steps taken before this epoch: after each e in (start, stop) with e < epoch.
        grown = max(0, min(epoch, stop) - start - 1)
        return self.w_adv0 + self.grad_adv * grown


class QuantilePace:
    """lambda = the q-quantile of the last ``window`` student losses, q moving linearly
    from ``q0`` (first epoch) to ``q_end`` (last epoch).

    v* is then taken on the loss measured in units of that quantile,
    ``v*(l lambda_0 / lambda_q; lambda_0)``: for ``hard`` and ``soft`` this is exactly
    v*(l; lambda_q) (a sample is admitted iff l < lambda_q, a fraction q of recent
    losses), and for ``log`` lambda_0 only sets how sharp the step at lambda_q is. The
    window (losses per sample, or batch means with ``weighting: batch``) lives on the
    losses' device and is checkpointed, so a resumed run continues exactly.
    """

    def __init__(self, q0: float, q_end: float, window: int, epochs: int) -> None:
        self.q0, self.q_end, self.epochs = q0, q_end, epochs
        self.window = window
        self.values: torch.Tensor | None = None   # ring buffer, allocated on first push
        self.count = 0
        self.next = 0
        self.last = float("nan")                  # the latest lambda, for the logs

    def q(self, epoch: int) -> float:
        return self.q0 + (self.q_end - self.q0) * min(1.0, epoch / max(1, self.epochs - 1))

    def push(self, losses: torch.Tensor) -> None:
        """Add losses (any shape) to the window, dropping the oldest beyond its size."""
        losses = losses.detach().flatten().float()[-self.window:]
        if self.values is None:
            self.values = losses.new_empty(self.window)
        index = (self.next + torch.arange(len(losses), device=losses.device)) % self.window
        self.values[index] = losses
        self.next = (self.next + len(losses)) % self.window
        self.count = min(self.count + len(losses), self.window)

    def __call__(self, epoch: int) -> float:
        """The current lambda: the q(epoch)-quantile of the window (push first)."""
        if self.values is None:
            raise RuntimeError("QuantilePace has no losses yet: push some first")
        self.last = torch.quantile(self.values[: self.count], self.q(epoch)).item()
        return self.last

    def state_dict(self) -> dict:
        values = None if self.values is None else self.values[: self.count].clone()
        if values is not None and self.count == self.window:  # oldest first
            values = torch.roll(self.values, -self.next).clone()
        return {"values": values, "last": self.last}

    def load_state_dict(self, state: dict, device: torch.device) -> None:
        self.values, self.count, self.next = None, 0, 0
        self.last = float(state["last"])
        if state["values"] is not None:
            self.push(state["values"].to(device))
