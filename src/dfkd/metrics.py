"""The paper's metrics: Acc@k, Agreement@1, probability loyalty, stability, convergence."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from dfkd.losses import js_divergence


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Acc@1, and Acc@5 where there are more than 5 classes, in percent."""
    out = {"acc1": 100.0 * (logits.argmax(dim=1) == labels).float().mean().item()}
    if logits.shape[1] > 5:
        top5 = logits.topk(5, dim=1).indices
        out["acc5"] = 100.0 * (top5 == labels[:, None]).any(dim=1).float().mean().item()
    return out


def fidelity_metrics(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     labels: torch.Tensor) -> dict[str, float]:
    """Acc@1 (and Acc@5 with more than 5 classes), Agreement@1 and loyalty, in one pass.

    Loyalty is ``1 - sqrt(JSD(p_S, p_T))`` at temperature 1, JSD in nats. The
    official CuDFKD code takes one more square root (scipy's ``jensenshannon``
    already returns sqrt(JSD)), so ``loyalty_official = 1 - JSD^(1/4)``; the
    paper's reported loyalties are of that kind.
    """
    s, t = student_logits.float(), teacher_logits.float()
    out = accuracy(s, labels)
    out["agreement"] = 100.0 * (s.argmax(dim=1) == t.argmax(dim=1)).float().mean().item()
    jsd = js_divergence(F.softmax(s.double(), dim=1), F.softmax(t.double(), dim=1))
    out["loyalty"] = (1.0 - jsd.sqrt()).mean().item()
    out["loyalty_official"] = (1.0 - jsd.sqrt().sqrt()).mean().item()
    return out


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, batch_size: int,
            transform, device: torch.device) -> torch.Tensor:
    """Logits for uint8 ``images`` (kept on CPU); ``transform`` maps a batch to model input."""
    was_training = model.training
    model.eval()
    outs = []
    for i in range(0, len(images), batch_size):
        x = transform(images[i:i + batch_size].to(device, non_blocking=True))
        outs.append(model(x).float().cpu())
    model.train(was_training)
    return torch.cat(outs)


def _first_reaching(values: Sequence[float], threshold: float) -> int | None:
    return next((i for i, v in enumerate(values) if v >= threshold), None)


def run_summary(acc1: Sequence[float], elapsed: Sequence[float]) -> dict[str, float | None]:
    """Stability (mean/variance of Acc@1 over all and the last 10% of epochs) and
    convergence (first epoch, 1-based, and wall time reaching 90% / 99% of final)."""
    n = len(acc1)
    if n == 0:
        return {}
    t = torch.tensor(acc1, dtype=torch.float64)
    last = t[-max(1, math.ceil(0.1 * n)):]
    out: dict[str, float | None] = {
        "acc1_mean": t.mean().item(),
        "acc1_var": t.var(unbiased=False).item(),
        "acc1_mean_last10pct": last.mean().item(),
        "acc1_var_last10pct": last.var(unbiased=False).item(),
    }
    for frac in (90, 99):
        i = _first_reaching(acc1, acc1[-1] * frac / 100.0)
        out[f"epochs_to_{frac}pct"] = None if i is None else i + 1
        out[f"seconds_to_{frac}pct"] = None if i is None else elapsed[i]
    return out
