"""``dfkd tune``: choose a recipe's hyperparameters on the val split, with Optuna.

A recipe declares its search space in a ``search:`` section of dotted keys::

    search:
      generator.lr: {low: 1.0e-3, high: 2.0e-2, log: true}
      cudfkd.tau: {low: 1, high: 20, log: true}
      g_steps: {low: 1, high: 4, int: true}
      cudfkd.kd_loss: {choices: [l1, kl]}

Each trial is a short distillation (the recipe, the sampled values, then ``--set``
overrides) with ``eval_split: val``; its objective is the **final** epoch's val Acc@1
(never the test set, never the best epoch). Per-epoch val accuracy feeds a median
pruner. Trial 0 is the recipe's own values, so the best is never below the starting
point. The study lives in Optuna's RDB storage: SQLite in the output folder by
default, so a killed tune resumes where it was (a trial cut short is run again with
the same values, from its last checkpoint), or a shared database (``--storage``) so
several machines work on one study. ``distill`` ignores ``search:``.

Each trial also keeps its final epoch's data-free signal (``synthetic_agreement``,
``synthetic_loyalty``: dfkd.probe) next to its val Acc@1 in ``trials.csv``, and
``signal.json`` holds Spearman's rank correlation of each with the final val Acc@1 over
the completed trials: how well a user with no data would have ranked them.
"""

from __future__ import annotations

import csv
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

import yaml

from dfkd import probe, runlock
from dfkd.api import build_trainer
from dfkd.checkpoint import CHECKPOINT
from dfkd.config import first_difference, flatten, load_config, merge, parse_overrides, read_yaml
from dfkd.errors import ConfigError, DfkdError
from dfkd.run.callbacks.health import NonFiniteLoss
from dfkd.run.signals import Interrupted

SEARCH = "search"
STUDY_DB = "study.db"
SIGNAL = "signal.json"
SIGNAL_KEYS = ("synthetic_agreement", "synthetic_loyalty")


# Keys that a worker sets for its own machine: a continued study may change them.
LOCAL_KEYS = ("device", "data_root", "tracker", "tracker_uri")


def _optuna():
    try:
        import optuna
    except ImportError as exc:
        raise DfkdError("dfkd tune needs Optuna: pip install 'dfkd[tune]'") from exc
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats (how a shared study notices a dead worker) are marked experimental.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def _nested(key: str, value: Any) -> dict[str, Any]:
    out: dict[str, Any] = value
    for part in reversed(key.split(".")):
        out = {part: out}
    return out


def parse_search(recipe: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """The recipe's ``search:`` section, checked: every key exists and every range is
    non-empty. Returns ``{dotted key: spec}``."""
    space = recipe.get(SEARCH)
    if not space:
        raise ConfigError(f"{source} has no '{SEARCH}:' section; add one that maps dotted "
                          "keys to {low, high[, log, int]} or {choices: [...]}")
    if not isinstance(space, dict):
        raise ConfigError(f"{source}: '{SEARCH}' must map dotted keys to ranges")
    base = {k: v for k, v in recipe.items() if k != SEARCH}
    for key, spec in space.items():
        where = f"{source}: {SEARCH}.{key}"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where} must be {{low, high[, log, int]}} or {{choices: [...]}}")
        if "choices" in spec:
            if set(spec) != {"choices"} or not isinstance(spec["choices"], list) \
                    or not spec["choices"]:
                raise ConfigError(f"{where}: 'choices' must be a non-empty list, alone")
            probes = spec["choices"]
        else:
            extra = set(spec) - {"low", "high", "log", "int"}
            if extra:
                raise ConfigError(f"{where}: unknown field(s) {', '.join(sorted(extra))}; "
                                  "use low, high, log, int or choices")
            if not {"low", "high"} <= set(spec):
                raise ConfigError(f"{where} needs 'low' and 'high' (and optionally 'log', "
                                  "'int')")
            low, high = spec["low"], spec["high"]
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                       and math.isfinite(v) for v in (low, high)):
                raise ConfigError(f"{where}: low and high must be finite numbers")
            if not low < high:
                raise ConfigError(f"{where}: the range [{low}, {high}] is empty (need low < high)")
            if spec.get("log") and low <= 0:
                raise ConfigError(f"{where}: a log range needs low > 0, got {low}")
            if spec.get("int") and not (float(low).is_integer() and float(high).is_integer()):
                raise ConfigError(f"{where}: an int range needs whole-number bounds")
            probes = [int(low), int(high)] if spec.get("int") else [low, high]
        for value in probes:  # the key must exist and accept the range's values
            try:
                load_config(merge(base, _nested(key, value)))
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from exc
    return space


def recipe_values(fixed: dict[str, Any], space: dict[str, dict[str, Any]],
                  source: str) -> dict[str, Any]:
    """The value each search key has in the recipe (or the engine default), checked to
    lie in its range."""
    table = flatten(load_config(fixed).to_dict())
    values = {}
    for key, spec in space.items():
        value = table[key]
        inside = value in spec["choices"] if "choices" in spec else \
            spec["low"] <= value <= spec["high"]
        if not inside:
            raise ConfigError(f"{source}: the recipe's {key} = {value} lies outside its "
                              f"search range; widen the range to include it")
        values[key] = value
    return values


def _suggest(trial, key: str, spec: dict[str, Any]) -> Any:
    if "choices" in spec:
        return trial.suggest_categorical(key, spec["choices"])
    if spec.get("int"):
        return trial.suggest_int(key, int(spec["low"]), int(spec["high"]),
                                 log=bool(spec.get("log")))
    return trial.suggest_float(key, float(spec["low"]), float(spec["high"]),
                               log=bool(spec.get("log")))


def run_tune(recipe_path: str, teacher: str | None, trials: int, out: str | os.PathLike,
             overrides: list[str] = (), storage: str | None = None,
             study_name: str | None = None, seed: int = 0,
             progress: bool | None = None) -> Any:
    """Run (or continue) the study until ``trials`` trials have finished; returns it."""
    optuna = _optuna()
    from optuna.trial import TrialState

    if trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    recipe = read_yaml(recipe_path)
    space = parse_search(recipe, recipe_path)
    fixed = {k: v for k, v in recipe.items() if k != SEARCH}
    fixed = merge(fixed, parse_overrides(list(overrides)))
    if teacher is not None:
        fixed["teacher"] = teacher
    if not fixed.get("teacher"):
        raise ConfigError("no teacher given: pass --teacher CHECKPOINT")
    fixed["eval_split"] = "val"  # the objective never reads the test set
    fixed.setdefault("sample_grid", 0)
    start = recipe_values(fixed, space, recipe_path)  # also checks the fixed part alone
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = study_name or Path(recipe_path).stem
    shared = storage is not None
    url = storage or f"sqlite:///{(out / STUDY_DB).resolve()}"
    finished = (TrialState.COMPLETE, TrialState.PRUNED)

    with runlock.holding(out):  # one tune per folder: its running trials are then stale
        # A worker of a shared study that stops beating for 2 minutes is taken for dead:
        # its trial fails and is queued again with the same values (and run folder).
        rdb = optuna.storages.RDBStorage(
            url, heartbeat_interval=30, grace_period=120,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=3))
        study = optuna.create_study(
            study_name=name, storage=rdb, direction="maximize", load_if_exists=True,
            pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1))
        _check_same_question(study, fixed, out)
        # A seeded sampler starts its random stream again in every process, so it is seeded
        # past the trials the study holds: a continued study would otherwise sample its
        # first trials' values again (a new study is seeded with ``seed`` itself).
        study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials))
        if not study.trials:
            # Trial 0 is the recipe as written, so the study's best is never below the
            # starting point (at the trial budget, on val).
            study.enqueue_trial(start)
        if not shared:
            # This process holds the folder's lock, so a running trial in the local study
            # is one that a killed tune left behind: run its values again.
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                study.tell(t.number, state=TrialState.FAIL)
                study.enqueue_trial(t.params, user_attrs=t.user_attrs)
        count = lambda: len(study.get_trials(deepcopy=False, states=finished))  # noqa: E731
        while (done := count()) < trials:
            try:
                study.optimize(
                    lambda trial: _objective(trial, fixed, space, out, progress),
                    n_trials=trials - done, catch=(),
                    callbacks=[optuna.study.MaxTrialsCallback(trials, states=finished)])
            except Interrupted as exc:
                write_outputs(study, recipe, recipe_path, out, overrides)
                raise Interrupted(f"interrupted; the study is saved in {out}. Run the same "
                                  "dfkd tune command to continue it", exc.exit_code) from exc
            if count() == done:  # every trial of this pass diverged
                raise DfkdError(f"the last {trials - done} trials all diverged (non-finite "
                                "loss); narrow the search ranges (learning rates, weights)")
        write_outputs(study, recipe, recipe_path, out, overrides)
    return study


def _check_same_question(study, fixed: dict[str, Any], out: Path) -> None:
    """A continued study must tune the same fixed part (recipe, --set, teacher), or its
    trials would answer different questions: refuse a change, naming the key."""
    now = {k: v for k, v in flatten(fixed).items() if k not in LOCAL_KEYS}
    stored = study.user_attrs.get("fixed")
    if stored is None:  # a new study (or one from before this check): remember it
        study.set_user_attr("fixed", now)
        return
    key = first_difference(stored, now)
    if key is not None:
        raise ConfigError(
            f"the study in {out} was started with {key}={stored.get(key, '<unset>')!r}, but "
            f"the recipe and --set now give {key}={now.get(key, '<unset>')!r}; use another "
            "--out, or delete that folder to start the study again")


def _origin(trial) -> int:
    """The number of the first attempt of a trial's values: a retry (which copies the
    user attributes) continues that attempt's run folder."""
    return int(trial.user_attrs.get("origin", trial.number))


def _objective(trial, fixed: dict[str, Any], space: dict[str, dict[str, Any]], out: Path,
               progress: bool | None) -> float:
    import optuna

    raw = dict(fixed)
    for key, spec in space.items():
        raw = merge(raw, _nested(key, _suggest(trial, key, spec)))
    origin = _origin(trial)
    trial.set_user_attr("origin", origin)
    folder = out / "trials" / f"{origin:04d}"
    resume = (folder / CHECKPOINT).is_file()
    trainer = build_trainer(raw, folder, resume=resume, overwrite=not resume,
                            progress=progress)
    # Trackers (dfkd.trackers): each trial a run, in one experiment / group per study.
    study = f"tune-{trial.study.study_name}"
    trainer.tracking.set_context(experiment=study, group=study, name=f"trial-{origin:04d}",
                                 tags={"tune_trial": origin})
    for row in trainer.history:  # epochs a killed attempt already finished
        trial.report(row["acc1"], row["epoch"])
    while trainer.epoch < trainer.cfg.epochs:
        try:
            trainer.fit(stop_after_epoch=trainer.epoch + 1)
        except Interrupted:
            # Optuna marks this trial failed; queue its values so the next start continues
            # them from the checkpoint just written.
            trial.study.enqueue_trial(trial.params, user_attrs=trial.user_attrs)
            raise
        except NonFiniteLoss as exc:
            # A configuration that diverges is a result, not a crash of the study: the
            # trial fails (Optuna's reading of NaN) and another one takes its place.
            print(f"tune: trial {trial.number} diverged: {exc}", flush=True)
            return float("nan")
        acc = trainer.history[-1]["acc1"]
        for key in SIGNAL_KEYS:  # the data-free signal of the last epoch run
            if key in trainer.history[-1]:
                trial.set_user_attr(key, trainer.history[-1][key])
        trial.report(acc, trainer.epoch)
        if trial.should_prune():
            print(f"tune: trial {trial.number} pruned after epoch {trainer.epoch} "
                  f"(val Acc@1 {acc:.2f})", flush=True)
            trainer.tracking.close("stopped")
            raise optuna.TrialPruned()
    value = trainer.history[-1]["acc1"]  # the final epoch, never the best one
    for key in SIGNAL_KEYS:
        if key in trainer.history[-1]:
            trial.set_user_attr(key, trainer.history[-1][key])
    print(f"tune: trial {trial.number} val Acc@1 {value:.2f}  {trial.params}", flush=True)
    return value


def write_outputs(study, recipe: dict[str, Any], recipe_path: str, out: Path,
                  overrides: list[str] = ()) -> None:
    """best.yaml (a runnable recipe), trials.csv and search.png (needs matplotlib)."""
    from optuna.trial import TrialState

    rows = study.get_trials(deepcopy=False)
    keys = sorted({k for t in rows for k in t.params})
    with open(out / "trials.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["number", "state", "val_acc1", "epochs_run", "retry_of", *SIGNAL_KEYS,
                         *keys])
        for t in rows:
            retry_of = _origin(t) if _origin(t) != t.number else ""
            writer.writerow([t.number, t.state.name, t.value, len(t.intermediate_values),
                             retry_of, *(t.user_attrs.get(k, "") for k in SIGNAL_KEYS),
                             *(t.params.get(k, "") for k in keys)])
    completed = [t for t in rows if t.state == TrialState.COMPLETE]
    signal = {"trials": "completed", **{
        key: probe.signal_correlation((t.user_attrs.get(key), t.value) for t in completed)
        for key in SIGNAL_KEYS}}
    (out / SIGNAL).write_text(json.dumps(signal, indent=2) + "\n")
    if not completed:
        return
    best = study.best_trial
    tuned = {k: v for k, v in recipe.items() if k != SEARCH}
    for key, value in best.params.items():
        tuned = merge(tuned, _nested(key, value))
    tuned[SEARCH] = recipe[SEARCH]
    header = (f"# Tuned on the val split by dfkd tune (never the test set): trial "
              f"{best.number}, the best of {len(completed)} completed, final-epoch val Acc@1 "
              f"{best.value:.2f}.\n# Search started from {recipe_path}; study "
              f"'{study.study_name}' in {out}.\n")
    if overrides:  # the trial budget, which best.yaml leaves to whoever runs it
        header += f"# Each trial ran it with --set {' --set '.join(overrides)}.\n"
    (out / "best.yaml").write_text(header + yaml.safe_dump(tuned, sort_keys=False))
    plot_search(study, out)


def plot_search(study, out: Path) -> bool:
    """Val Acc@1 of every finished trial against its number, with the best so far, and one
    panel per searched key (needs matplotlib)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("tune: matplotlib is not installed, so no search.png (pip install 'dfkd[plot]')")
        return False
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    pruned = study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
    keys = sorted({k for t in complete + pruned for k in t.params})
    fig, axes = plt.subplots(1, 1 + len(keys), figsize=(4 * (1 + len(keys)), 3.5),
                             squeeze=False)
    ax = axes[0][0]
    ax.scatter([t.number for t in complete], [t.value for t in complete], label="complete")
    ax.scatter([t.number for t in pruned],
               [t.intermediate_values[max(t.intermediate_values)] for t in pruned
                if t.intermediate_values], marker="x", label="pruned (last epoch)")
    best, best_so_far = -math.inf, []
    for t in complete:
        best = max(best, t.value)
        best_so_far.append(best)
    ax.step([t.number for t in complete], best_so_far, where="post", label="best so far")
    ax.set(xlabel="trial", ylabel="final val Acc@1 (%)")
    ax.legend(fontsize=7)
    for ax, key in zip(axes[0][1:], keys):
        pts = [(t.params[key], t.value) for t in complete if key in t.params]
        if pts:
            ax.scatter(*zip(*pts))
        if all(isinstance(v, (int, float)) and v > 0 for v, _ in pts) and pts \
                and max(v for v, _ in pts) / min(v for v, _ in pts) > 20:
            ax.set_xscale("log")
        ax.set(xlabel=key, ylabel="final val Acc@1 (%)")
    fig.tight_layout()
    fig.savefig(out / "search.png", dpi=110)
    plt.close(fig)
    return True
