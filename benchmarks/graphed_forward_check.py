"""Issue #14: ``teacher_graph``'s teacher against the eager teacher on one CUDA GPU.

A randomly initialised CIFAR ResNet-34 in eval mode (BatchNorm statistics made non-trivial),
fed three different batches through one captured graph, first of the teacher itself and then
of its BN-folded copy (``folded_batchnorm``, what the engine captures), in fp32 and in bf16
autocast with channels_last, as the fast path runs it. The graph of the teacher must give
the eager logits exactly; the folded copy the same function up to rounding. Prints the
largest difference relative to the largest logit per case and exits 1 if one is above its
tolerance. On a machine without CUDA it says so and
exits 0 (there is no graph to check).

    python benchmarks/graphed_forward_check.py
"""

from __future__ import annotations

import sys

import torch

from dfkd.models import create_model
from dfkd.teacher_wrap import FrozenTeacher, GraphedForward, folded_batchnorm


def check(bf16: bool, fold: bool, device: torch.device) -> float:
    torch.manual_seed(0)
    model = create_model("resnet34", 10, 3)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    fmt = torch.channels_last if bf16 else torch.contiguous_format
    teacher = FrozenTeacher(model).to(device, memory_format=fmt)
    graphed = GraphedForward((folded_batchnorm(teacher) if fold else teacher)
                             .to(memory_format=fmt))
    worst = 0.0
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
        for _ in range(3):
            x = torch.randn(256, 3, 32, 32, device=device).to(memory_format=fmt)
            eager = teacher(x).float()
            diff = (graphed(x).float() - eager).abs().max() / eager.abs().max()
            worst = max(worst, diff.item())
    assert graphed.graph is not None, "the graph was never captured"
    return worst


def main() -> int:
    if not torch.cuda.is_available():
        print("graphed_forward_check: no CUDA device, nothing to check")
        return 0
    device = torch.device("cuda")
    failed = False
    # Folding reorders the arithmetic: fp32 (TF32 convolutions) and bf16 round differently.
    for bf16, fold, tol in ((False, False, 0.0), (True, False, 0.0), (False, True, 1e-2),
                            (True, True, 5e-2)):
        worst = check(bf16, fold, device)
        ok = worst <= tol
        failed |= not ok
        print(f"graphed_forward_check bf16={bf16} folded={fold}: max |graph - eager| / "
              f"max |eager| = {worst:.2e} (tolerance {tol:g}) {'ok' if ok else 'FAILED'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
