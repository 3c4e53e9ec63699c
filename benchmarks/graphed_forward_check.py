"""Issue #14: GraphedForward (``teacher_graph``) against the eager teacher on one CUDA GPU.

A randomly initialised CIFAR ResNet-34 in eval mode, fed three different batches through one
captured graph (fp32, then bf16 autocast with channels_last, as the fast path runs it): each
replay must give the eager forward's logits. Prints the largest absolute difference per
case and exits 1 if one is above its tolerance. On a machine without CUDA it says so and
exits 0 (there is no graph to check).

    python benchmarks/graphed_forward_check.py
"""

from __future__ import annotations

import sys

import torch

from dfkd.frozen_teacher import FrozenTeacher, GraphedForward
from dfkd.models import create_model


def check(bf16: bool, device: torch.device) -> float:
    torch.manual_seed(0)
    teacher = FrozenTeacher(create_model("resnet34", 10, 3)).to(device)
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    teacher = teacher.to(memory_format=fmt)
    graphed = GraphedForward(teacher)
    worst = 0.0
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        for _ in range(3):
            x = torch.randn(256, 3, 32, 32, device=device).to(memory_format=fmt)
            worst = max(worst, (graphed(x).float() - teacher(x).float()).abs().max().item())
    assert graphed.graph is not None, "the graph was never captured"
    return worst


def main() -> int:
    if not torch.cuda.is_available():
        print("graphed_forward_check: no CUDA device, nothing to check")
        return 0
    device = torch.device("cuda")
    failed = False
    for bf16, tol in ((False, 1e-3), (True, 5e-2)):
        worst = check(bf16, device)
        ok = worst <= tol
        failed |= not ok
        print(f"graphed_forward_check bf16={bf16}: max |graph - eager| = {worst:.2e} "
              f"(tolerance {tol:g}) {'ok' if ok else 'FAILED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
