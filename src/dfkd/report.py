"""Image grids, result tables and the curves of runs."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from dfkd.checkpoint import METRICS
from dfkd.errors import DfkdError


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


def json_ready(value: Any) -> Any:
    """``value`` with every non-finite float (NaN, infinity) replaced by None, in nested
    dicts, lists and tuples too: strict JSON has no NaN, and strict readers (jq, JavaScript,
    most non-Python parsers) reject the ``NaN`` token Python writes by default."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def dumps_strict(value: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`json_ready`'s copy, refusing anything that is not strict
    JSON: what dfkd writes to metrics.jsonl, summary.json and the bench's results."""
    return json.dumps(json_ready(value), allow_nan=False, **kwargs)


def format_table(headers: list[str], rows: list[list[Any]]) -> str:
    """A plain Markdown table, readable in a terminal too."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
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


# ------------------------------------------------------------------------------ curves
# Per-epoch keys that are not loss terms; every other number in metrics.jsonl is one,
# except the v* statistics of the self-paced weights.
_NOT_TERMS = {"epoch", "acc1", "acc5", "agreement", "loyalty", "loyalty_official", "lr",
              "lambda", "q", "adv_weight", "synthesis_seconds", "student_seconds",
              "elapsed_seconds", "peak_memory_mb", "bank", "synthetic_agreement",
              "synthetic_loyalty", "synthetic_kl"}
# Line styles that tell a panel's terms apart when colours name the runs.
_STYLES: tuple[Any, ...] = ("-", "--", ":", "-.", (0, (5, 1)), (0, (3, 1, 1, 1, 1, 1)),
                            (0, (1, 3)), (0, (8, 2, 1, 2)))
WALL_TIME = "elapsed_seconds"
# Panels whose keys are whatever the run logged (others may add terms and v* statistics).
_OPEN_PANELS = ("student loss terms", "generator loss terms", "self-paced weights v*")


class PlotUnavailable(DfkdError):
    """matplotlib is not installed."""


def is_vstar_key(key: str) -> bool:
    """v* statistics: the self-paced weights (``sp_weight``, and any ``sp_*``/``v_*``)."""
    return key.startswith(("sp_", "v_", "vstar"))


def is_generator_term(key: str) -> bool:
    """The trainer's own rule for generator-side terms (averaged over g_steps)."""
    return key.startswith(("loss_g", "g_"))


def read_metrics(folder: Path) -> list[dict[str, Any]]:
    """A run's per-epoch rows; a line cut short by a killed run is skipped."""
    rows = []
    for line in (Path(folder) / METRICS).read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def find_runs(paths: list[str | Path]) -> list[tuple[str, Path]]:
    """``(label, folder)`` for each run folder in ``paths``; a folder that is not a run
    (a bench's or a tune's output) stands for every run folder below it."""
    folders: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.name == METRICS and path.is_file():
            path = path.parent
        if (path / METRICS).is_file():
            folders.append(path)
            continue
        below = sorted(p.parent for p in path.glob(f"**/{METRICS}")) \
            if path.is_dir() else []
        if not below:
            what = "does not exist" if not path.exists() else f"holds no {METRICS}"
            raise DfkdError(f"'{raw}' {what}: give run folders of 'dfkd distill' (or a "
                            "folder that holds some)")
        folders.extend(below)
    resolved = [f.resolve() for f in folders]
    if len(resolved) == 1:
        return [(folders[0].resolve().name, folders[0])]
    common = Path(os.path.commonpath(resolved))
    return [(str(r.relative_to(common)) if r != common else r.name, f)
            for r, f in zip(resolved, folders)]


def _panels(rows: list[dict[str, Any]]) -> list[tuple[str, str, list[str]]]:
    """``(title, x key, y keys)`` for every panel the rows have data for, in order."""
    numeric = [k for row in rows for k, v in row.items()
               if isinstance(v, (int, float)) and not isinstance(v, bool)]
    keys = list(dict.fromkeys(numeric))  # first-seen order, no duplicates
    terms = [k for k in keys if k not in _NOT_TERMS and not is_vstar_key(k)]
    panels = [
        ("Acc@1 (%) by epoch", "epoch", ["acc1"]),
        ("Acc@1 (%) by training wall time (s)", WALL_TIME, ["acc1"]),
        ("Agreement@1 (%) by epoch", "epoch", ["agreement"]),
        ("Agreement@1 (%) by training wall time (s)", WALL_TIME, ["agreement"]),
        ("data-free signal: agreement on the synthetic probe (%)", "epoch",
         ["synthetic_agreement"]),
        ("student loss terms", "epoch", [k for k in terms if not is_generator_term(k)]),
        ("generator loss terms", "epoch", [k for k in terms if is_generator_term(k)]),
        ("pace λ", "epoch", ["lambda"]),
        ("adversarial weight", "epoch", ["adv_weight"]),
        ("self-paced weights v*", "epoch", [k for k in keys if is_vstar_key(k)]),
    ]
    return [(title, x, [k for k in ys if k in keys]) for title, x, ys in panels
            if x in keys and any(k in keys for k in ys)]


def _points(rows: list[dict[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
    pts = [(r[x], r[y]) for r in rows if isinstance(r.get(x), (int, float))
           and isinstance(r.get(y), (int, float)) and math.isfinite(r[y])]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_curves(runs: list[tuple[str, list[dict[str, Any]]]], out: str | Path,
                title: str | None = None) -> Path:
    """One figure of the runs' curves, one line per run: Acc@1 and Agreement@1 by epoch
    and by training wall time, the loss terms, λ, the adversarial weight and the v*
    statistics, each panel drawn only when some run logged its keys."""
    try:
        from matplotlib.figure import Figure  # no pyplot: no global state, no display
        from matplotlib.ticker import MaxNLocator
    except ImportError as exc:
        raise PlotUnavailable("plotting needs matplotlib: pip install 'dfkd[plot]'") from exc
    panels = _panels([row for _, rows in runs for row in rows])
    if not panels:
        raise DfkdError("the runs have no per-epoch metrics yet (metrics.jsonl is empty)")
    cols = min(3, len(panels))
    rows_n = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(5.2 * cols, 3.6 * rows_n), layout="constrained")
    axes = fig.subplots(rows_n, cols, squeeze=False).ravel()
    many = len(runs) > 1
    for ax, (panel, x, keys) in zip(axes, panels):
        for r, (label, rows) in enumerate(runs):
            for k, key in enumerate(keys):
                xs, ys = _points(rows, x, key)
                if not xs:
                    continue
                # One line per run; several terms in a panel differ by colour (one run) or
                # by line style (several runs, whose colours the first panel names).
                color = f"C{r % 10}" if many or len(keys) == 1 else f"C{k % 10}"
                style = _STYLES[k % len(_STYLES)] if many else "-"
                name = label if len(keys) == 1 else (key if not many else f"{label} {key}")
                ax.plot(xs, ys, linestyle=style, color=color,
                        marker="." if len(xs) < 12 else None, label=name)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("training wall time (s)" if x == WALL_TIME else "epoch")
        if x == "epoch":
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(keys) == 1 and panel in _OPEN_PANELS:  # no legend names the one term
            ax.set_ylabel(keys[0])
        _scale(ax, [v for _, rows in runs for key in keys for v in _points(rows, x, key)[1]])
        if len(keys) > 1 and not many:
            ax.legend(fontsize=7)
        elif len(keys) > 1:  # the terms' line styles, in black
            ax.legend(handles=[ax.plot([], [], linestyle=_STYLES[k % len(_STYLES)],
                                       color="black", label=key)[0]
                               for k, key in enumerate(keys)], fontsize=7)
    if many:
        axes[0].legend(fontsize=7)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(title or (runs[0][0] if not many else f"{len(runs)} runs"), fontsize=11)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def _scale(ax, values: list[float]) -> None:
    """Log scale for positive values over more than two decades; symlog when such a
    spread includes zero or negative values."""
    mags = [abs(v) for v in values if v != 0]
    if not mags or max(mags) / min(mags) <= 100:
        return
    if all(v > 0 for v in values):
        ax.set_yscale("log")
    else:
        ax.set_yscale("symlog", linthresh=max(min(mags), max(mags) * 1e-4))


def plot_run_folders(paths: list[str | Path], out: str | Path) -> list[str]:
    """``dfkd plot``: the curves of the run folders in ``paths``; returns their labels."""
    runs = [(label, read_metrics(folder)) for label, folder in find_runs(paths)]
    plot_curves(runs, out)
    return [label for label, _ in runs]


def draw_run_curves(folder: str | Path) -> Path | None:
    """``curves.png`` in a finished run's folder; None (silently) without matplotlib."""
    folder = Path(folder)
    try:
        return plot_curves([(folder.resolve().name, read_metrics(folder))],
                           folder / "curves.png")
    except PlotUnavailable:
        return None
