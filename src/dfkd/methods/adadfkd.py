"""AdaDFKD: adaptive inter-sample relationships on top of CuDFKD (Li et al., Neural Networks
2024), as in the authors' code (ljrprocc/DFKD, ``datafree/synthesis/adadfkd.py``,
``datafree/utils/_utils.py`` (``MoCo``, ``difficulty_mining``), ``datafree_kd.py`` and
``scripts/adadfkd/``).

CuDFKD's algorithm as the AdaDFKD code runs it (one generator for the run, the class-balance,
confidence and BN terms, the adversarial ramp, the student's self-paced weight with a linear
pace, from :mod:`dfkd.curriculum`), plus two terms on the classifier's input features (the
input of the last Linear layer: f_T of the teacher, f_S of the student):

Generator step:
    L_G = w_ent H(p_bar) + w_oh CE(t, argmax t) + w_bn L_bn + w_adv(e) L_adv + w_hard L_NCE
    L_adv = -mean_i tau_a^2 KL(t_i || s_i) at tau_a = ``adv_tau``, over every sample (the
            AdaDFKD code does not mask it, unlike CuDFKD's)
    L_NCE: q = f_T / |f_T| (with gradient to G), k = sg(f_S / |f_S|) of the same images;
           against a queue Q of the ``negatives`` latest keys (random unit rows at first),
           each row's negatives q . Q sorted from least to most similar, and only the window
           [floor(h K), floor((h + length) K)) kept:
           L_NCE = mean_i CE([q_i . k_i, window_i] / nce_tau, 0); then the batch's keys
           replace the oldest rows of Q.
    h(e) = min(max(0, (1 - length) (e - floor(E begin)) / floor(E (end - begin))), 1 - length)
           per 0-based epoch e: the negatives slide from the easiest to the hardest.
Student step:
    l = KD(s, t) + s_nce InfoNCE(f_T, f_S),  InfoNCE = CE((f_T/|f_T|)(f_S/|f_S|)^T / nce_tau,
        arange(B)): each teacher feature must pick the student's feature of the same image
        among the batch's; v = v*(l; lambda_k), minimise v * l (one weight per batch by
        default, as the official code).
When the two feature sizes differ, f_S passes a Linear(d_S, d_T) drawn afresh (PyTorch's
default initialisation) at every use and never trained, as the official code does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from dfkd import curriculum as cur
from dfkd import distributed
from dfkd.errors import ConfigError
from dfkd.hooks import last_linear
from dfkd.losses import entropy_of_mean, kd_kl, kd_l1, onehot_ce
from dfkd.methods import register_method
from dfkd.methods.base import GeneratorMethod, OfficialRecipes, Published
from dfkd.ranges import ranged

README = "ljrprocc/DFKD README.md"


@dataclass
class AdaDFKDSettings:
    # CuDFKD's terms and schedule, with the defaults of the AdaDFKD C10 R34->R18 script
    tau: float = ranged(20.0, gt=0)   # temperature of H(p_bar) and of the KL KD loss (--T)
    w_ent: float = -20.0       # negative: generation maximises class balance
    w_oh: float = 1.0          # confidence: CE(t, argmax t)
    w_bn: float = 1.0          # BatchNorm statistics term (0: off; a teacher without BN)
    w_adv0: float = 1.0        # the adversarial weight at the start
    grad_adv: float = 0.0      # added to w_adv after each epoch e, E*begin < e < E*end
    begin: float = ranged(0.25, ge=0, le=1)   # share of the epochs where the ramp starts
    end: float = ranged(0.75, ge=0, le=1)     # ... and where it ends
    adv_tau: float = ranged(3.0, gt=0)   # temperature of the (unmasked) adversarial KL
    lambda_0: float = 2.2      # pace: lambda_k = lambda_0 + pace * k (student steps k)
    pace: float = 1e-4         # lambda's growth per student step
    kd_loss: Literal["l1", "kl"] = "kl"   # the student's loss: L1 of logits or KL at tau
    curriculum: Literal["none", "hard", "soft", "log"] = "log"   # self-paced regulariser
    # batch: one weight for the batch-mean loss (official code); sample: one per sample
    weighting: Literal["batch", "sample"] = "batch"
    w_hard: float = ranged(0.1, ge=0)     # the generator's L_NCE (0: off; --hard)
    length: float = ranged(0.9, gt=0, le=1)  # the share of the queue each row keeps
    negatives: int = ranged(4096, ge=1)   # the queue's keys (--N_neg)
    nce_tau: float = ranged(0.07, gt=0)   # temperature of both InfoNCE terms (--tau)
    s_nce: float = ranged(0.1, ge=0)      # the student's InfoNCE (0: off)

    def validate(self) -> None:
        if self.begin > self.end:
            raise ConfigError(f"adadfkd.begin/end must satisfy 0 <= begin <= end <= 1, got "
                              f"{self.begin}/{self.end}")
        if self.curriculum != "none" and self.lambda_0 <= 0:
            raise ConfigError(f"adadfkd.lambda_0 must be > 0, got {self.lambda_0}")


def classifier_layer(model: nn.Module, role: str) -> nn.Linear:
    """The model's last Linear layer: its input is the feature AdaDFKD reads."""
    classifier = last_linear(model)
    if classifier is None:
        raise ConfigError(f"adadfkd reads the {role}'s classifier features (the input of its "
                          f"last Linear layer), but the {role} has no Linear layer; set "
                          "adadfkd.w_hard=0 and adadfkd.s_nce=0 to run without them")
    return classifier


class ClassifierInputs:
    """The latest input of a model's last Linear layer, flattened to (B, d)."""

    def __init__(self, model: nn.Module, role: str) -> None:
        self.value: torch.Tensor | None = None
        classifier_layer(model, role).register_forward_hook(self._keep)

    def _keep(self, _module, inputs, _output) -> None:
        self.value = inputs[0].flatten(1)

    def take(self) -> torch.Tensor:
        value, self.value = self.value, None
        if value is None:
            raise RuntimeError("no classifier input recorded; run a forward pass first")
        return value


def fit_width(f_s: torch.Tensor, width: int) -> torch.Tensor:
    """f_S as is, or through a fresh, untrained Linear to ``width`` (the official code)."""
    if f_s.shape[1] == width:
        return f_s
    return nn.Linear(f_s.shape[1], width).to(f_s.device)(f_s)


def info_nce_pairs(f_t: torch.Tensor, f_s: torch.Tensor, tau: float) -> torch.Tensor:
    """Row i of the (B, B) cosine similarities of teacher to student features must pick
    column i: CE(sim / tau, arange(B))."""
    sim = F.normalize(f_t.float(), dim=1) @ F.normalize(f_s.float(), dim=1).T
    return F.cross_entropy(sim / tau, torch.arange(len(sim), device=sim.device))


def hard_factor(epoch: int, epochs: int, begin: float, end: float, length: float) -> float:
    """Where the window of negatives starts in epoch ``epoch`` (0-based), as a share."""
    span = int(epochs * (end - begin))
    grown = (1 - length) * (epoch - int(begin * epochs)) / span if span else 1 - length
    return min(max(0.0, grown), 1 - length)


class NegativeQueue:
    """The latest ``size`` keys (unit rows), the oldest replaced first."""

    def __init__(self, size: int, dim: int, device: torch.device) -> None:
        self.rows = F.normalize(torch.randn(dim, size), dim=0).T.contiguous().to(device)
        self.next = 0

    def loss(self, f_t: torch.Tensor, f_s: torch.Tensor, hard: float, length: float,
             tau: float) -> torch.Tensor:
        q = F.normalize(f_t.float(), dim=1)
        k = F.normalize(f_s.detach().float(), dim=1)
        positive = (q * k).sum(1, keepdim=True)
        negative = q @ self.rows.clone().T   # the keys are replaced below
        size = len(self.rows)
        order = negative.argsort(dim=1)[:, int(hard * size): int((hard + length) * size)]
        logits = torch.cat([positive, negative.gather(1, order)], dim=1) / tau
        loss = F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))
        self.add(distributed.all_gather_cat(k))
        return loss

    @torch.no_grad()
    def add(self, keys: torch.Tensor) -> None:
        keys = keys[-len(self.rows):]
        index = (self.next + torch.arange(len(keys))) % len(self.rows)
        self.rows[index.to(self.rows.device)] = keys
        self.next = int((self.next + len(keys)) % len(self.rows))

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "next": self.next}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows.copy_(state["rows"])
        self.next = int(state["next"])


@register_method
class AdaDFKD(GeneratorMethod):
    name = "adadfkd"
    Settings = AdaDFKDSettings
    title = "AdaDFKD"
    paper = ("Li et al., *AdaDFKD: Exploring adaptive inter-sample relationship in data-free "
             "knowledge distillation*, Neural Networks 2024 "
             "([doi:10.1016/j.neunet.2024.106386](https://doi.org/10.1016/j.neunet.2024.106386))")
    code = "[ljrprocc/DFKD](https://github.com/ljrprocc/DFKD)"
    docs = "adadfkd.md"
    needs_bn = True
    reads_layers = "the input of its last Linear layer (teacher and student)"
    official = (OfficialRecipes("adadfkd", "AdaDFKD", column=11, acc1={
        "c10_resnet34_resnet18": Published(95.32, f"{README}:L32"),
        "c10_wrn40_2_wrn16_1": Published(90.05, f"{README}:L32"),
        "c10_wrn40_2_wrn40_1": Published(93.38, f"{README}:L32"),
        "c100_resnet34_resnet18": Published(77.13, f"{README}:L49"),
        "c100_wrn40_2_wrn16_2": Published(67.54, f"{README}:L49"),
    }),)

    def __init__(self, ctx, settings: AdaDFKDSettings) -> None:
        super().__init__(ctx, settings)
        s = settings
        self.pace = cur.Pace(s.lambda_0, s.pace)
        self.ramp = cur.AdversarialRamp(s.w_adv0, s.grad_adv, s.begin, s.end, ctx.epochs)
        self.student_steps = 0   # k in lambda_k
        self.queue = None
        if s.w_hard > 0 or s.s_nce > 0:
            self.f_teacher = ClassifierInputs(ctx.teacher, "teacher")
            self.f_student = ClassifierInputs(ctx.student_raw, "student")
            if s.w_hard > 0:
                width = classifier_layer(ctx.teacher, "teacher").in_features
                self.queue = NegativeQueue(s.negatives, width, ctx.device)

    @property
    def adv_weight(self) -> float:
        # The ablation stops the ramp but keeps the constant term (official code).
        s = self.settings
        return s.w_adv0 if s.curriculum == "none" else self.ramp(self.epoch)

    @property
    def hard(self) -> float:
        s = self.settings
        return hard_factor(self.epoch, self.ctx.epochs, s.begin, s.end, s.length)

    def generator_step(self) -> dict[str, torch.Tensor]:
        s = self.settings
        adv_weight = self.adv_weight
        x, t, bn = self.teacher_with_bn()
        ent = entropy_of_mean(t, s.tau)
        oh = onehot_ce(t)
        loss = s.w_ent * ent + s.w_oh * oh + s.w_bn * bn
        terms = {"g_entropy": ent.detach(), "g_onehot": oh.detach(), "g_bn": bn.detach()}
        if adv_weight > 0 or self.queue is not None:
            st = self.frozen_student(x)
        if adv_weight > 0:   # every sample: the AdaDFKD code has no agreement mask
            adv = -kd_kl(st, t, s.adv_tau, per_sample=True).mean()
            loss = loss + adv_weight * adv
            terms["g_adv"] = adv.detach()
        if self.queue is not None:
            f_t = self.f_teacher.take()
            nce = self.queue.loss(f_t, fit_width(self.f_student.take(), f_t.shape[1]),
                                  self.hard, s.length, s.nce_tau)
            loss = loss + s.w_hard * nce
            terms["g_nce"] = nce.detach()
        self.update_generator(loss)
        return {"loss_g": loss.detach(), **terms}

    def student_loss(self) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        s = self.settings
        st, t = self.student_teacher_logits(hooked=True)   # the teacher's hooks run
        per_sample = s.weighting == "sample"
        kd = kd_l1(st, t, per_sample) if s.kd_loss == "l1" else kd_kl(st, t, s.tau, per_sample)
        logs = {"kd": kd.detach().mean()}
        term = kd
        if s.s_nce > 0:
            f_t = self.f_teacher.take()
            nce = info_nce_pairs(f_t, fit_width(self.f_student.take(), f_t.shape[1]),
                                 s.nce_tau)
            term = kd + s.s_nce * nce
            logs["s_nce"] = nce.detach()
        weight = torch.ones_like(term) if s.curriculum == "none" else \
            cur.v_star(term.detach(), self.pace(self.student_steps), s.curriculum)
        loss = (weight * term).mean()
        self.student_steps += 1
        return loss, {"loss_s": loss.detach(), **logs, "sp_weight": weight.mean(),
                      "sp_below_half": (weight < 0.5).float().mean()}

    def status(self) -> dict[str, float]:
        return {"lambda": self.pace(self.student_steps), "adv_weight": self.adv_weight,
                "hard": self.hard}

    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), "student_steps": self.student_steps}
        if self.queue is not None:
            state["queue"] = self.queue.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.student_steps = int(state["student_steps"])
        if self.queue is not None:
            self.queue.load_state_dict(state["queue"])
