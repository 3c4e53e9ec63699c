"""``dfkd reproduce``: the CIFAR table of the papers, methods x pairs x seeds, in one command.

Given the official CIFAR python batches (``--data-root``) and a folder of teachers from the
public CIFAR model zoo (``--teachers``: ``cifar10_resnet34.pth``, ``cifar10_wrn40_2.pth``,
``cifar100_resnet34.pth``, ``cifar100_wrn40_2.pth``, as the CMI repository names them), every
method runs its official recipe (``configs/cifar10|cifar100/<row>_<teacher>_<student>.yaml``,
each value traced to its official script) on each pair of the CuDFKD paper's reference
table, through ``dfkd bench`` (one folder per pair, so an interrupted reproduction resumes
where it stopped). The table puts the measured test Acc@1 (mean ± std over seeds) beside the
published one, with the paired differences against CuDFKD and each run's hours. Its columns
and the published numbers are the methods' own declarations
(:attr:`dfkd.methods.base.Method.official`), so a method that declares official recipes
joins the table. The published hours are Fast-Datafree's README's for every method but
CuDFKD (its driver logs synthesis time as "Generation Cost"; the README does not say whether
its hours are that or the whole run; its DeepInv-2k and CMI-500 rows take 2000 and 500
synthesis steps per batch where the scripts take 1000 and 200), and CuDFKD's README's, on
one RTX 3090 Ti.

Precision: the papers' code runs fp32, and so does a reproduction by default; ``fast``
turns on bf16 autocast, channels_last and ``torch.compile`` (CUDA only), and the table says
which ran. The test split is read once per run, for the report; the official recipes were
chosen by their authors, not here, so nothing is selected on it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dfkd.bench import interval_text, run_bench
from dfkd.data import load_split
from dfkd.errors import ConfigError, DfkdError
from dfkd.methods import get_method, list_methods
from dfkd.methods.base import OfficialRecipes, Published
from dfkd.recipes import recipes_dir
from dfkd.report import dumps_strict, format_table


@dataclass(frozen=True)
class Pair:
    key: str       # folder and --pairs name
    label: str     # as the papers print it
    dataset: str
    teacher: str   # dfkd model names (the zoo's architectures)
    student: str
    teacher_acc1: Published   # the zoo teacher's published test Acc@1 (%)

    @property
    def recipe_suffix(self) -> str:
        return f"_{self.teacher}_{self.student}.yaml"

    @property
    def teacher_file(self) -> str:
        """The zoo's file name (CMI datafree_kd.py: checkpoints/pretrained/%s_%s.pth)."""
        return f"{self.dataset}_{self.teacher}.pth"


_README = "ljrprocc/DataFree README.md"
# The CuDFKD paper's reference table (its README's), in its order, with the zoo teachers'
# published accuracy.
PAIRS = {p.key: p for p in (
    Pair("c10_resnet34_resnet18", "C10 R34->R18", "cifar10", "resnet34", "resnet18",
         Published(95.7, f"{_README}:L25")),
    Pair("c10_wrn40_2_wrn16_1", "C10 WRN40-2->WRN16-1", "cifar10", "wrn40_2", "wrn16_1",
         Published(94.87, f"{_README}:L25")),
    Pair("c10_wrn40_2_wrn40_1", "C10 WRN40-2->WRN40-1", "cifar10", "wrn40_2", "wrn40_1",
         Published(94.87, f"{_README}:L25")),
    Pair("c100_resnet34_resnet18", "C100 R34->R18", "cifar100", "resnet34", "resnet18",
         Published(78.05, f"{_README}:L52")),
    Pair("c100_wrn40_2_wrn16_2", "C100 WRN40-2->WRN16-2", "cifar100", "wrn40_2", "wrn16_2",
         Published(75.83, f"{_README}:L52")),
)}
PRECISION = {
    "fp32": {"amp": False, "channels_last": False, "compile": False},
    "fast": {"amp": True, "channels_last": True, "compile": True},
}


def official_rows() -> dict[str, tuple[str, OfficialRecipes]]:
    """Every column the registered methods declare, in the table's order (their
    ``column``; the first, CuDFKD, is the one the bench compares every other row with):
    row -> (method, its declaration)."""
    declared = [(name, official) for name in list_methods()
                for official in get_method(name).official]
    declared.sort(key=lambda item: (item[1].column, item[1].row))
    return {official.row: (name, official) for name, official in declared}


def _official(row: str) -> OfficialRecipes | None:
    declared = official_rows().get(row)
    return declared[1] if declared else None


def label(row: str) -> str:
    """The papers' name of a row (its declared label; the row itself if none declares it)."""
    official = _official(row)
    return official.label if official else row


def published(pair: Pair, row: str) -> float | None:
    """The published test Acc@1 of ``row`` (or ``teacher``) on ``pair``, if any."""
    if row == "teacher":
        return pair.teacher_acc1.value
    official = _official(row)
    number = official.acc1.get(pair.key) if official else None
    return number.value if number else None


def published_hours(pair: Pair, row: str) -> float | None:
    """The published hours per run of ``row`` on ``pair``, if any."""
    official = _official(row)
    number = official.hours.get(pair.key) if official else None
    return number.value if number else None


def published_table() -> str:
    """The published numbers of every column on every pair, as Markdown: test Acc@1 % and,
    in parentheses, hours per run; "no recipe" where the authors' scripts cover no such pair
    (the reproduce guide's table; tests/test_reproduce.py keeps that copy equal to this)."""
    rows = list(official_rows())
    lines = ["| pair | teacher | " + " | ".join(label(r) for r in rows) + " |",
             "|---|---|" + "---|" * len(rows)]
    for pair in PAIRS.values():
        have = recipe_rows(pair)
        cells = []
        for row in rows:
            acc, hours = published(pair, row), published_hours(pair, row)
            cell = "-" if acc is None else f"{acc:.2f}"
            cell += "" if hours is None else f" ({hours:g} h)"
            cells.append(cell if row in have else "no recipe")
        lines.append(f"| {pair.label} | {pair.teacher_acc1.value:.2f} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines) + "\n"


def planned_hours(runs: list[dict[str, Any]]) -> dict[str, tuple[int, float, int]]:
    """The runs still to do (``new`` or ``resume``) by row: (how many, the sum of their
    published hours per run, how many of them have no published figure)."""
    plan: dict[str, tuple[int, float, int]] = {}
    for run in runs:
        if run["state"] == "done":
            continue
        hours = published_hours(PAIRS[run["pair"]], run["method"])
        count, total, unknown = plan.get(run["method"], (0, 0.0, 0))
        plan[run["method"]] = (count + 1, total + (hours or 0.0), unknown + (hours is None))
    return plan


def recipe_rows(pair: Pair) -> dict[str, Path]:
    """Every row with an official recipe for ``pair``, in the table's order."""
    root = recipes_dir()
    if root is None:
        raise DfkdError("the bundled recipes are missing: reinstall dfkd")
    rows = {}
    for row, (_, official) in official_rows().items():
        path = (official.folder or root) / pair.dataset / f"{row}{pair.recipe_suffix}"
        if path.is_file():
            rows[row] = path
    return rows


def _choose(asked: str | None, known: list[str], what: str) -> list[str]:
    if not asked or asked == "all":
        return list(known)
    chosen = [x.strip() for x in asked.split(",") if x.strip()]
    unknown = [x for x in chosen if x not in known]
    if unknown:
        raise ConfigError(f"unknown {what} {', '.join(unknown)}; known: {', '.join(known)}")
    return chosen


def find_teacher(teachers: Path, pair: Pair) -> Path:
    for name in (pair.teacher_file, pair.teacher_file[:-4] + ".pt"):
        if (teachers / name).is_file():
            return teachers / name
    raise DfkdError(f"--teachers {teachers} has no {pair.teacher_file}, the zoo's teacher for "
                    f"{pair.label} (the CMI repository's checkpoints/pretrained/ names); "
                    "download the zoo's teachers into that folder, or leave the pair out "
                    "with --pairs")


def bench_config(pair: Pair, teacher: Path, data_root: str, precision: str,
                 rows: dict[str, Path], device: str | None = None) -> dict[str, Any]:
    """The ``dfkd bench`` file of one pair: the recipes as they are, the pair, the data and
    the precision in the base (which wins over every recipe)."""
    base = {"teacher": str(teacher.resolve()), "teacher_model": pair.teacher,
            "student": pair.student, "dataset": pair.dataset,
            "data_root": str(Path(data_root).expanduser().resolve()), "eval_split": "test",
            **PRECISION[precision], **({"device": device} if device else {})}
    return {"base": base, "recipes": {row: str(path) for row, path in rows.items()}}


def run_reproduce(data_root: str, teachers: str, out: str | os.PathLike,
                  methods: str | None = None, pairs: str | None = None,
                  seeds: list[int] = (0,), precision: str = "fp32", gpus: int = 0,
                  overrides: list[str] = (), dry_run: bool = False,
                  report_only: bool = False, progress: bool | None = None,
                  device: str | None = None) -> list[dict[str, Any]]:
    """Run (or, with ``dry_run``, list) the reproduction and write ``out/table.md`` and
    ``out/table.json``; returns the planned runs. ``gpus`` > 0 runs that many runs at once,
    one per GPU; 0 runs one at a time on the default device. ``overrides`` ("key=value")
    apply to every run (e.g. ``epochs=1`` for a smoke run: the table then says so)."""
    if precision not in PRECISION:
        raise ConfigError(f"precision must be one of {', '.join(PRECISION)}, got {precision!r}")
    if gpus < 0:
        raise ConfigError(f"--gpus must be >= 0, got {gpus}")
    out = Path(out)
    teachers_dir = Path(teachers).expanduser()
    chosen_pairs = [PAIRS[k] for k in _choose(pairs, list(PAIRS), "pair")]
    order = list(official_rows())
    all_rows = sorted({r for p in chosen_pairs for r in recipe_rows(p)}, key=order.index)
    wanted = _choose(methods, all_rows, "method")
    plans: list[tuple[Pair, dict[str, Path], Path]] = []
    for pair in chosen_pairs:   # every missing file is found before any work
        rows = {r: path for r, path in recipe_rows(pair).items() if r in wanted}
        if not rows:
            continue
        teacher = find_teacher(teachers_dir, pair)
        if not dry_run and not report_only:
            load_split(pair.dataset, "test", data_root)   # fails with where it looked
        plans.append((pair, rows, teacher))
    if not plans:
        raise ConfigError("no official recipe for the chosen methods and pairs")
    runs = []
    for pair, rows, teacher in plans:
        folder = out / pair.key
        folder.mkdir(parents=True, exist_ok=True)
        config_file = folder / "bench.yaml"
        config_file.write_text(yaml.safe_dump(
            bench_config(pair, teacher, data_root, precision, rows, device),
            sort_keys=False))
        for run in run_bench(str(config_file), list(rows), list(seeds), folder,
                             dry_run=dry_run, report_only=report_only,
                             overrides=list(overrides), progress=progress,
                             jobs=max(1, gpus), gpus=gpus):
            runs.append({**run, "pair": pair.key})
    if not dry_run:
        write_table(out, [p for p, _, _ in plans], wanted, list(seeds), precision,
                    list(overrides))
    return runs


def _cell(measured: str, published: float | None) -> str:
    return measured if published is None else f"{measured} ({published:.2f})"


def write_table(out: Path, pairs: list[Pair], rows: list[str], seeds: list[int],
                precision: str, overrides: list[str]) -> str:
    """``out/table.md`` and ``out/table.json`` from the pairs' bench results."""
    acc_rows, paired_rows, hour_rows, records = [], [], [], []
    for pair in pairs:
        result_file = out / pair.key / "results.json"
        results = json.loads(result_file.read_text()) if result_file.is_file() else {}
        by_row = {r["method"]: r for r in results.get("methods", [])}
        teacher = _teacher_acc(out / pair.key, rows, seeds)
        acc_cells, hour_cells = [], []
        for row in rows:
            r = by_row.get(row) or {}
            acc, hours = r.get("final_acc1"), _hours(out / pair.key / row, seeds)
            paper_acc = published(pair, row)
            paper_hours = published_hours(pair, row)
            acc_cells.append(_cell("-" if acc is None else
                                   f"{acc:.2f} ± {r['final_acc1_std']:.2f}", paper_acc))
            hour_cells.append(_cell("-" if hours is None else f"{hours:.2f}", paper_hours))
            records.append({"pair": pair.key, "method": row, "seeds": r.get("seeds", 0),
                            "acc1": acc, "acc1_std": r.get("final_acc1_std"),
                            "acc1_ci95": r.get("final_acc1_ci95"), "published": paper_acc,
                            "hours_per_run": hours, "published_hours": paper_hours})
        acc_rows.append([pair.label,
                         _cell("-" if teacher is None else f"{teacher:.2f}",
                               published(pair, "teacher")), *acc_cells])
        hour_rows.append([pair.label, *hour_cells])
        for p in results.get("paired", []):
            if p["column"] == "final_acc1":
                names = f"{label(p['method'])} - {label(p['versus'])}"
                paired_rows.append([pair.label, names,
                                    p["seeds"], f"{p['mean_difference']:+.2f}",
                                    interval_text(_nan(p)), p["verdict"]])
    headers = [label(r) for r in rows]
    settings = ", ".join(f"{k}={v}" for k, v in PRECISION[precision].items())
    run_with = f"precision {precision} ({settings})"
    if overrides:
        run_with += f"; overrides for every run: {', '.join(overrides)} (NOT the full recipes)"
    text = (f"# dfkd reproduce: CIFAR test Acc@1 (%)\n\n{run_with}; seeds "
            f"{', '.join(map(str, seeds))}.\n\nmeasured mean ± sample std over seeds "
            "(published, where the paper or the official repository gives one)\n\n"
            + format_table(["pair", "teacher", *headers], acc_rows) + "\n")
    if paired_rows:
        text += ("\npaired differences of Acc@1 over the same seeds, with 95% t-intervals\n\n"
                 + format_table(["pair", "comparison", "seeds", "mean difference",
                                 "95% interval", "verdict"], paired_rows) + "\n")
    text += ("\nhours per run: mean over seeds of the run's elapsed time (published, from "
             "Fast-Datafree's README and CuDFKD's on one RTX 3090 Ti)\n\n"
             + format_table(["pair", *headers], hour_rows) + "\n")
    (out / "table.md").write_text(text)
    (out / "table.json").write_text(dumps_strict(
        {"precision": precision, "overrides": overrides, "seeds": seeds, "rows": records},
        indent=2) + "\n")
    return text


def _nan(p: dict[str, Any]) -> dict[str, Any]:
    """results.json stores a missing interval as null; :func:`interval_text` wants NaN."""
    return {**p, "ci95": math.nan if p.get("ci95") is None else p["ci95"]}


def _summaries(folder: Path, seeds: list[int]) -> list[dict[str, Any]]:
    files = [folder / f"seed{s}" / "summary.json" for s in seeds]
    return [json.loads(f.read_text()) for f in files if f.is_file()]


def _hours(folder: Path, seeds: list[int]) -> float | None:
    values = [s["elapsed_seconds"] / 3600 for s in _summaries(folder, seeds)
              if s.get("elapsed_seconds") is not None]
    return sum(values) / len(values) if values else None


def _teacher_acc(folder: Path, rows: list[str], seeds: list[int]) -> float | None:
    """The teacher's test Acc@1 as the runs measured it (the same for every run)."""
    for row in rows:
        for summary in _summaries(folder / row, seeds):
            if summary.get("teacher_acc1") is not None:
                return summary["teacher_acc1"]
    return None
