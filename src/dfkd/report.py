"""Image grids and result tables."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from PIL import Image


def save_image_grid(images: torch.Tensor, path: Path, pad: int = 2) -> None:
    """Save (N, C, H, W) images in [0, 1] as one PNG grid."""
    n, c, h, w = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = torch.zeros(c, rows * (h + pad) + pad, cols * (w + pad) + pad)
    for i in range(n):
        r, q = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + q * (w + pad)
        grid[:, top:top + h, left:left + w] = images[i]
    array = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array[:, :, 0] if c == 1 else array).save(path)


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain Markdown table, readable in a terminal too."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in cells)])


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1.5 else f"{value:.2f}"
    return str(value)


def result_table(summary: dict[str, Any]) -> str:
    """Teacher vs student: Acc@1, Agreement@1, loyalty and time, on the run's eval split."""
    seconds = summary.get("synthesis_seconds", 0) + summary.get("student_seconds", 0)
    split = f" ({summary['eval_split']})" if summary.get("eval_split") else ""
    return format_table(
        ["model", f"Acc@1{split}", "Agreement@1", "loyalty", "loyalty (official)", "time (s)"],
        [
            ["teacher", summary.get("teacher_acc1"), 100.0, 1.0, 1.0, "-"],
            [f"student ({summary['method']})", summary.get("final_acc1"),
             summary.get("final_agreement"), summary.get("final_loyalty"),
             summary.get("final_loyalty_official"), f"{seconds:.1f}"],
        ],
    )
