"""``dfkd bench``: methods x seeds on one teacher/student pair at one budget.

A bench config holds the shared budget (``base``: teacher, student, epochs,
rounds, batch_size, ...), optional per-method recipes (``recipes: {method: file}``; with
``family: F``, every method without an entry there runs its recipe of that family, e.g.
``configs/fashion_mnist/<method>_lenet5.yaml``) and the reference trainings
(``references: {epochs: N}``). A recipe may also give a
row of its own name (``cudfkd_paper: cudfkd_lenet5_paper.yaml``): that row runs the
recipe's ``method`` with its settings, beside the method's own row. The base always wins
over a recipe, so every method gets the same teacher, student, budget and seeds.
Runs live in ``DIR/<method>/seed<k>``; finished runs are skipped and interrupted
ones resumed, so an interrupted bench loses nothing, and a run whose stored config
differs from the current one is refused (naming the key) instead of being mixed in.

``jobs`` > 1 runs the queue in a pool of that many worker processes (never more at
once), each with ``threads_per_job(jobs)`` threads. Results are mean ± sample std over
seeds with a 95% t-interval, and every method is compared with the first one (normally
``cudfkd``) as a paired difference over the seeds both have finished, for accuracy,
convergence and stability (``CLAIMS``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import multiprocessing
import os
import signal
import statistics
import threading
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from dfkd import runlock
from dfkd.api import build_trainer
from dfkd.checkpoint import CHECKPOINT, METRICS, SUMMARY, load_model_checkpoint
from dfkd.config import first_difference, flatten, load_config, merge, parse_overrides, read_yaml
from dfkd.data import dataset_info, load_split
from dfkd.data.normalization import resolve_normalization
from dfkd.errors import ConfigError, DfkdError
from dfkd.launcher_watch import die_with_parent
from dfkd.methods import get_method, list_methods
from dfkd.methods.catalog import documented
from dfkd.metrics import fidelity_metrics, predict
from dfkd.recipes import family_recipe, resolve_named
from dfkd.report import PlotUnavailable, dumps_strict, format_table, read_metrics
from dfkd.report import plot_curves as draw_curves
from dfkd.run.signals import Interrupted
from dfkd.supervised import SupervisedSettings, normalizer, train_supervised
from dfkd.trackers import SETTINGS as TRACKER_SETTINGS

REFERENCES = ("scratch", "kd_with_data")
COLUMNS = ["final_acc1", "final_agreement", "final_loyalty", "final_loyalty_official",
           "acc1_mean", "acc1_var", "epochs_to_90pct", "seconds_to_90pct", "synthesis_seconds",
           "student_seconds", "peak_memory_mb", "teacher_queries"]
# Two-sided 95% quantiles of Student's t by degrees of freedom (1.96 beyond 30).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262, 10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131,
         16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086, 21: 2.080, 22: 2.074,
         23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045,
         30: 2.042}


def all_rows(config: dict[str, Any]) -> list[str]:
    """``--methods all``: every registered method (in the docs' order, CuDFKD first, the row
    the others are compared with) when the config names a recipe ``family``, then the rows
    named in its ``recipes:``, then the references."""
    methods = [cls.name for cls in documented() if _family_recipe(config, cls.name)]
    return list(dict.fromkeys([*methods, *(config.get("recipes") or {}), *REFERENCES]))


def plan(config: dict[str, Any], methods: list[str], seeds: list[int], out: Path
         ) -> list[dict[str, Any]]:
    """Every (method, seed) run with its folder and state: done, resume or new."""
    for name in methods:
        if name not in REFERENCES:
            _row_recipe(config, name)  # unknown names fail before any work
    runs = []
    for name in methods:
        for seed in seeds:
            folder = out / name / f"seed{seed}"
            if name in REFERENCES:
                state = "done" if (folder / "result.json").exists() else "new"
            elif (folder / SUMMARY).exists():
                state = "done"
            else:
                state = "resume" if (folder / CHECKPOINT).exists() else "new"
            runs.append({"method": name, "seed": seed, "folder": folder, "state": state})
    return runs


def _resolve_recipe_files(config: dict[str, Any], folder: Path) -> None:
    """The ``recipes:`` entries as the files they name, whatever the working folder: a
    relative entry is looked for next to the bench file first, then in the working folder,
    then among the bundled recipes (:func:`dfkd.recipes.resolve_named`). ``base.teacher``
    and the other paths stay relative to the working folder, as on the command line."""
    entries = config.get("recipes")
    if not isinstance(entries, dict):
        return
    for name, entry in entries.items():
        if not isinstance(entry, (str, os.PathLike)):
            continue
        beside = folder / Path(entry).expanduser()
        entries[name] = str(beside if beside.is_file() else resolve_named(entry))


def _family_recipe(config: dict[str, Any], name: str) -> Path | None:
    """``family: F`` (e.g. ``fashion_mnist``): a registered method's row with no ``recipes:``
    entry runs the method's recipe of family F (:func:`dfkd.recipes.family_recipe`)."""
    if not config.get("family") or name not in list_methods():
        return None
    found = family_recipe(config["family"], name)
    return found.path if found else None


def _row_recipe(config: dict[str, Any], name: str) -> dict[str, Any]:
    """A row's recipe (empty if it has none) with the method the row runs: the recipe's
    ``method``, else the row's own name."""
    recipe = (config.get("recipes") or {}).get(name) or _family_recipe(config, name)
    raw = read_yaml(recipe) if recipe else {}
    method = raw.get("method", name)
    get_method(method)
    if method != name and name in list_methods():
        raise ConfigError(f"recipes.{name} is a '{method}' recipe ({recipe}); give it a row "
                          f"name of its own, e.g. {method}_{Path(recipe).stem}")
    return {**raw, "method": method}


def _method_config(config: dict[str, Any], name: str, seed: int) -> dict[str, Any]:
    return merge(_row_recipe(config, name), {**config.get("base", {}), "seed": seed})


def _reference_settings(config: dict[str, Any], kind: str, seed: int) -> SupervisedSettings:
    base = config.get("base", {})
    if str(base["teacher"]).lower().endswith(".onnx") or base.get("teacher_blackbox"):
        raise DfkdError(f"the reference rows ({', '.join(REFERENCES)}) train on real data "
                        "with the teacher as a PyTorch checkpoint; with an ONNX or black-box "
                        "teacher, leave them out of --methods")
    _, meta = load_model_checkpoint(base["teacher"])
    return SupervisedSettings(
        dataset=dataset_info(meta["dataset"]).name, model=base.get("student", "lenet5_half"),
        seed=seed, epochs=int((config.get("references") or {}).get("epochs", 10)),
        device=base.get("device", "auto"), data_root=base.get("data_root"),
        kd_from=base["teacher"] if kind == "kd_with_data" else None,
        kd_norm=base.get("teacher_norm") if kind == "kd_with_data" else None)


def run_config(config: dict[str, Any], method: str, seed: int) -> dict[str, Any]:
    """The resolved configuration of one run, as its folder stores it."""
    if method in REFERENCES:
        split = config.get("base", {}).get("eval_split", "test")
        settings = asdict(_reference_settings(config, method, seed))
        if settings["kd_norm"] is None:   # added later: runs stored before compare equal
            del settings["kd_norm"]
        return {**settings, "eval_split": split}
    return load_config(_method_config(config, method, seed)).to_dict()


def check_same_config(folder: Path, current: dict[str, Any]) -> None:
    """Refuse to resume or reuse a run whose stored config differs from ``current``."""
    stored_file = folder / "config.yaml"
    if not stored_file.is_file():
        return
    stored = flatten(yaml.safe_load(stored_file.read_text()) or {})
    now = flatten(current)
    if "method" in current:
        # A setting added after the run was made is absent from its file. New settings
        # default to the behaviour they extend, so the run had the default value.
        defaults = flatten(load_config({"method": current["method"]}).to_dict())
        stored = {**{k: defaults[k] for k in now.keys() - stored.keys() if k in defaults},
                  **stored}
    # Where a run is logged (dfkd.trackers) does not change its results.
    stored, now = ({k: v for k, v in d.items() if k not in TRACKER_SETTINGS}
                   for d in (stored, now))
    key = first_difference(stored, now)
    if key is not None:
        raise ConfigError(
            f"'{folder}' was run with {key}={stored.get(key, '<unset>')!r}, but the bench "
            f"now asks for {key}={now.get(key, '<unset>')!r}; use another --out, or delete "
            "that run to redo it")


def _reference(config: dict[str, Any], kind: str, seed: int, folder: Path,
               progress: bool) -> dict[str, Any]:
    base = config.get("base", {})
    settings = _reference_settings(config, kind, seed)
    teacher, meta = load_model_checkpoint(base["teacher"])
    info = dataset_info(settings.dataset)
    student, smeta = train_supervised(settings, folder / "student.pt", progress=progress)
    split = base.get("eval_split", "test")
    images, labels = load_split(info.name, split, settings.data_root)
    device = next(student.parameters()).device
    norm = normalizer(info.mean, info.std, device)   # the student's: train_supervised's
    teacher_norm = resolve_normalization(base.get("teacher_norm"), meta, info)
    s_logits = predict(student, images, 1024, norm, device)
    t_logits = predict(teacher.to(device), images, 1024,
                       normalizer(teacher_norm.mean, teacher_norm.std, device), device)
    m = fidelity_metrics(s_logits, t_logits, labels)
    result = {"final_acc1": m["acc1"], "final_agreement": m["agreement"],
              "final_loyalty": m["loyalty"], "final_loyalty_official": m["loyalty_official"],
              "student_seconds": smeta["train_seconds"],
              "teacher_acc1": meta.get(f"{split}_acc1"), "eval_split": split}
    (folder / "result.json").write_text(dumps_strict(result, indent=2))
    return result


def _run_one(config: dict[str, Any], run: dict[str, Any], progress: bool | None) -> None:
    """One run of the queue."""
    folder = run["folder"]
    if run["method"] in REFERENCES:
        with runlock.holding(folder):
            _reference(config, run["method"], run["seed"], folder, progress is not False)
            (folder / "config.yaml").write_text(yaml.safe_dump(run["config"], sort_keys=False))
        return
    raw = _method_config(config, run["method"], run["seed"])
    resume = run["state"] == "resume"
    trainer = build_trainer(raw, folder, resume=resume, overwrite=not resume, progress=progress)
    # Trackers (dfkd.trackers): one MLflow experiment / W&B group per bench, named after it.
    bench = f"bench-{folder.resolve().parent.parent.name}"
    trainer.tracking.set_context(experiment=bench, group=bench,
                                 name=f"{run['method']}/seed{run['seed']}",
                                 tags={"bench": bench, "row": run["method"]})
    trainer.fit()


def _init_worker(gpu_ids: Any = None) -> None:
    """A pool worker ends with the bench (``die_with_parent``), and its progress bars take a
    thread lock: tqdm's default one is a multiprocessing lock, whose semaphore a worker that
    a signal stops (``os._exit``) would leave to Python's resource tracker, which warns.
    With ``gpu_ids`` (a queue holding one GPU index per worker) the worker takes one GPU and
    sees only it, before anything touches CUDA: one run per GPU at a time."""
    from tqdm import tqdm

    die_with_parent()
    tqdm.set_lock(threading.RLock())
    if gpu_ids is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_ids.get())


def _pool_run(config: dict[str, Any], run: dict[str, Any], threads: int) -> None:
    """One run in a pool worker, with its share of the cores. A run stopped by a signal
    (the bench died: see ``die_with_parent``; or Ctrl-C) has checkpointed its round; the
    worker then ends instead of waiting for work from a bench that is gone."""
    import torch

    torch.set_num_threads(threads)
    try:
        _run_one(config, run, False)
    except Interrupted as exc:
        os._exit(exc.exit_code)


def run_bench(config_path: str, methods: list[str], seeds: list[int], out: str | Path,
              dry_run: bool = False, report_only: bool = False, teacher: str | None = None,
              overrides: list[str] = (), progress: bool | None = None,
              jobs: int = 1, gpus: int = 0) -> list[dict[str, Any]]:
    """``teacher`` and ``overrides`` ("key=value") replace keys of the config's base;
    ``jobs`` runs at most that many runs at once, each in its own process. ``gpus`` > 1
    runs one run per GPU at a time on that many GPUs (it sets ``jobs``); 1 runs the queue
    one run at a time on the default device."""
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    if gpus < 0:
        raise ConfigError(f"--gpus must be >= 0, got {gpus}")
    jobs = gpus or jobs
    config_path = resolve_named(config_path)
    config = read_yaml(config_path)
    _resolve_recipe_files(config, config_path.parent)
    base = merge(config.get("base") or {}, parse_overrides(list(overrides)))
    config["base"] = {**base, "teacher": teacher} if teacher is not None else base
    if "teacher" not in config.get("base", {}):
        raise ConfigError(f"{config_path}: 'base.teacher' (the teacher checkpoint) is required")
    out = Path(out)
    if methods == ["all"]:
        methods = all_rows(config)
    runs = plan(config, methods, seeds, out)
    if dry_run:
        return runs
    for run in runs:  # every mismatch is found before any work
        run["config"] = run_config(config, run["method"], run["seed"])
        check_same_config(run["folder"], run["config"])
    with runlock.holding(out):  # one bench per folder; each run locks its own folder too
        todo = [] if report_only else [r for r in runs if r["state"] != "done"]
        for run in todo:
            print(f"bench: {run['method']} seed {run['seed']} ({run['state']})", flush=True)
        if jobs == 1 or len(todo) <= 1:
            for run in todo:
                _run_one(config, run, progress)
        else:
            _run_pool(config, todo, jobs, gpus)
        rows = collect(out, methods, seeds)
        write_results(out, rows, paired_differences(out, methods, seeds))
    return runs


def usable_cores() -> int:
    """The CPU cores this process may run on: its affinity mask where the OS has one
    (taskset, a SLURM or cgroup cpuset), else every core of the machine."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def threads_per_job(jobs: int) -> int:
    """Each of ``jobs`` concurrent runs' share of the usable cores (at least 1 thread)."""
    return max(1, usable_cores() // jobs)


@contextlib.contextmanager
def _sigterm_stops_the_workers():
    """SIGTERM stops a pooled bench as Ctrl-C does: the workers (every child process of the
    bench: ``multiprocessing.active_children``) get it too, checkpoint their round and end,
    and the bench waits for them, then exits (143) through its usual cleanup. (Killed at
    once, it left the pool's semaphores to Python's resource tracker, which warned of leaks.)
    A second SIGTERM ends the bench at once; its workers still checkpoint
    (``die_with_parent``). Signal handlers belong to the main thread: elsewhere, no change."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, _frame) -> None:
        signal.signal(signum, signal.SIG_DFL)
        for child in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)
        raise Interrupted("bench stopped by SIGTERM after the runs in flight saved a "
                          "checkpoint; the same command resumes them", 128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run_pool(config: dict[str, Any], todo: list[dict[str, Any]], jobs: int,
              gpus: int = 0) -> None:
    """The queue in at most ``jobs`` worker processes; the first failure stops the rest
    (a stopped run resumes from its last checkpoint next time). ``gpus``: each worker
    takes one of that many GPUs."""
    jobs = min(jobs, len(todo))
    threads = threads_per_job(jobs)
    context = multiprocessing.get_context("spawn")  # no forked copies of torch's threads
    gpu_ids = None
    if gpus:
        gpu_ids = context.Queue()
        for index in range(jobs):
            gpu_ids.put(index)
    # Workers stop (checkpointing their round) when the bench dies, e.g. under `timeout`.
    with _sigterm_stops_the_workers(), ProcessPoolExecutor(
            max_workers=jobs, mp_context=context, initializer=_init_worker,
            initargs=(gpu_ids,)) as pool:
        futures = {pool.submit(_pool_run, config, run, threads): run for run in todo}
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = [f for f in done if f.exception() is not None]
        if failed:
            pool.shutdown(cancel_futures=True)
            run = futures[failed[0]]
            raise DfkdError(f"bench: {run['method']} seed {run['seed']} failed: "
                            f"{failed[0].exception()}") from failed[0].exception()
        for future in futures:
            future.result()


def _load_result(folder: Path) -> dict[str, Any] | None:
    for name in (SUMMARY, "result.json"):
        if (folder / name).exists():
            return json.loads((folder / name).read_text())
    return None


def interval95(values: list[float]) -> tuple[float, float, float]:
    """Mean, sample std and the half-width of the 95% t-interval of the mean."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0, math.nan
    std = statistics.stdev(values)
    t = _T975.get(len(values) - 1, 1.96)
    return mean, std, t * std / math.sqrt(len(values))


def collect(out: Path, methods: list[str], seeds: list[int]) -> list[dict[str, Any]]:
    """One row per method: mean, sample std and 95% interval over seeds of every column."""
    rows = []
    for name in methods:
        results = [r for s in seeds if (r := _load_result(out / name / f"seed{s}"))]
        row: dict[str, Any] = {"method": name, "seeds": len(results)}
        for col in COLUMNS:
            values = [r[col] for r in results if r.get(col) is not None]
            mean, std, half = interval95(values) if values else (None, None, None)
            row[col], row[col + "_std"], row[col + "_ci95"] = mean, std, half
        rows.append(row)
    return rows


# The paper's claims that a bench can check (docs/methods/cudfkd.md), column by column, and
# whether a higher value is better: accuracy, convergence (the first epoch / wall time at 90%
# of the final Acc@1) and stability (the variance of Acc@1 over the run's epochs).
CLAIMS = {"final_acc1": True, "seconds_to_90pct": False, "epochs_to_90pct": False,
          "acc1_var": False}


# A difference that is the same on every seed (likely for whole epochs) has a zero-width
# t-interval, which would decide on 2 seeds; it decides only from the seeds at which an
# exact sign test would too (all of 6 on one side: p = 2 / 2**6 = 0.03).
SIGN_SEEDS = 6


def compare(first: str, other: str, mine: dict[int, float], theirs: dict[int, float],
            higher_is_better: bool = True) -> dict[str, Any] | None:
    """``first`` minus ``other`` on the seeds both have (values by seed): the mean
    difference, its 95% t-interval, and the verdict: which one is better, or "undecided"
    when the interval holds 0 (or has zero width on fewer than ``SIGN_SEEDS`` seeds).
    None when no seed is shared."""
    diffs = [mine[s] - theirs[s] for s in sorted(mine) if s in theirs]
    if not diffs:
        return None
    mean, std, half = interval95(diffs)
    flat = std <= 1e-9 * max(1.0, abs(mean)) and len(diffs) < SIGN_SEEDS
    if math.isnan(half) or abs(mean) <= half or flat:
        verdict = "undecided"
    else:
        verdict = f"{first if (mean > 0) == higher_is_better else other} better"
    return {"method": first, "versus": other, "seeds": len(diffs), "mean_difference": mean,
            "std": std, "ci95": half, "low": mean - half, "high": mean + half,
            "verdict": verdict}


def interval_text(row: dict[str, Any]) -> str:
    """A :func:`compare` row's 95% interval as "[low, high]" ("-" from one seed)."""
    return "-" if math.isnan(row["ci95"]) else f"[{row['low']:+.2f}, {row['high']:+.2f}]"


def seed_values(folder: Path, seeds: list[int], column: str) -> dict[int, float]:
    """``column`` of every finished run ``folder/seed<k>`` that has it, by seed."""
    values = {}
    for seed in seeds:
        result = _load_result(folder / f"seed{seed}")
        if result and result.get(column) is not None:
            values[seed] = result[column]
    return values


def paired_differences(out: Path, methods: list[str], seeds: list[int],
                       columns: list[str] | None = None) -> list[dict[str, Any]]:
    """For every claim column (default: all of ``CLAIMS``), the first method minus each
    other one, seed by seed over the seeds both finished, as :func:`compare` gives it."""
    rows = []
    for column in columns or list(CLAIMS):
        a = seed_values(out / methods[0], seeds, column) if methods else {}
        for other in methods[1:]:
            row = compare(methods[0], other, a, seed_values(out / other, seeds, column),
                          CLAIMS.get(column, True))
            if row:
                rows.append({"column": column, **row})
    return rows


def write_results(out: Path, rows: list[dict[str, Any]],
                  paired: list[dict[str, Any]] = ()) -> None:
    # One seed has no interval: NaN in memory (the tables print "-"), null in the file.
    (out / "results.json").write_text(dumps_strict({"methods": rows, "paired": list(paired)},
                                                   indent=2) + "\n")
    with open(out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)

    def cell(row: dict[str, Any], col: str) -> str:
        value = row[col]
        if value is None:
            return "-"
        digits = 3 if "loyalty" in col else 0 if col == "teacher_queries" else 2
        text = f"{value:.{digits}f} ± {row[col + '_std']:.{digits}f}"
        half = row[col + "_ci95"]
        return text if math.isnan(half) else f"{text} [±{half:.{digits}f}]"

    table = format_table(["method", "seeds", *COLUMNS],
                         [[r["method"], r["seeds"], *(cell(r, c) for c in COLUMNS)]
                          for r in rows])
    text = ("mean ± sample std over seeds [± half-width of the 95% t-interval of the mean]\n\n"
            + table + "\n")
    if paired:
        text += ("\npaired differences over the same seeds (95% t-interval); lower is "
                 "better for the time to 90% of the final Acc@1 and the variance over "
                 "epochs\n\n")
        text += format_table(
            ["column", "comparison", "seeds", "mean difference", "95% interval", "verdict"],
            [[p["column"], f"{p['method']} - {p['versus']}", p["seeds"],
              f"{p['mean_difference']:+.2f}", interval_text(p), p["verdict"]]
             for p in paired]) + "\n"
    (out / "results.md").write_text(text)
    plot_curves(out, [r["method"] for r in rows])


def plot_curves(out: Path, methods: list[str]) -> bool:
    """Every run's curves in ``out/curves.png`` (the figure of ``dfkd plot``: accuracy and
    agreement by epoch and wall time, loss terms, λ, adversarial weight, v*)."""
    runs = [(f"{name} {folder.name}", read_metrics(folder))
            for name in methods for folder in sorted((out / name).glob("seed*"))
            if (folder / METRICS).is_file()]
    runs = [(label, rows) for label, rows in runs if rows]
    if not runs:  # references only: they log no epochs
        return False
    try:
        draw_curves(runs, out / "curves.png", title=f"dfkd bench: {out.name}")
    except PlotUnavailable:
        print("bench: matplotlib is not installed, so no curves.png "
              "(pip install 'dfkd[plot]')")
        return False
    return True
