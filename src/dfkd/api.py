"""The Python API: distil a student from a teacher, from modules or from checkpoints."""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from dfkd import distributed, recipes, runlock
from dfkd.checkpoint import (
    CHECKPOINT,
    METRICS,
    STUDENT,
    STUDENT_SAFETENSORS,
    SUMMARY,
    safe_load,
)
from dfkd.config import RunConfig, load_config, merge, read_yaml
from dfkd.data import DATASETS, dataset_info, load_split
from dfkd.data.normalization import describe as describe_normalization
from dfkd.data.normalization import resolve_normalization
from dfkd.errors import ConfigError, DfkdError
from dfkd.methods import get_method
from dfkd.models import create_model, resolve_spec
from dfkd.models.timm_models import timm_spec_of
from dfkd.registry import did_you_mean
from dfkd.run.device import resolve_device
from dfkd.run.seeding import seed_everything
from dfkd.run.sizing import ROUND_SETTINGS, size_for_cpu
from dfkd.run.spec import EvalData, ImageSpec
from dfkd.run.trainer import Trainer
from dfkd.teachers import as_teacher, is_blackbox, load_teacher
from dfkd.trackers import check_trackers


def prepare_out_dir(out: str | os.PathLike, resume: bool = False, overwrite: bool = False) -> Path:
    """Check the output folder before any work: writable, and not someone else's run, and
    take its lock (one writer per folder) before anything in it is touched."""
    out = Path(out)
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise DfkdError(f"cannot resume: '{out / CHECKPOINT}' does not exist")
        runlock.hold(out)
        return out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DfkdError(f"output folder '{out}' is not writable: {exc.strerror or exc}") from exc
    runlock.hold(out)
    existing = [n for n in (CHECKPOINT, METRICS, SUMMARY) if (out / n).exists()]
    if existing and not overwrite:
        raise DfkdError(f"'{out}' already holds a run ({', '.join(existing)}); pass "
                        f"--resume {out} to continue it or --overwrite to replace it")
    if existing:
        for name in (CHECKPOINT, METRICS, SUMMARY, "config.yaml", STUDENT, STUDENT_SAFETENSORS,
                     "curves.png"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "samples", ignore_errors=True)
    try:
        probe = out / ".dfkd-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise DfkdError(f"output folder '{out}' is not writable: {exc.strerror or exc}") from exc
    return out


def _split_settings(method: str, settings: dict[str, Any]) -> dict[str, Any]:
    """Route flat keyword settings to the run config or to the method's section."""
    run_keys = {f.name for f in dataclasses.fields(RunConfig)} - {"method_settings"}
    method_keys = {f.name for f in dataclasses.fields(get_method(method).Settings)}
    raw: dict[str, Any] = {"method": method}
    for key, value in settings.items():
        if key in run_keys:
            raw[key] = value
        elif key in method_keys:
            raw.setdefault(method, {})[key] = value
        elif key == method and isinstance(value, dict):
            raw[method] = merge(raw.get(method, {}), value)
        else:
            raise ConfigError(f"unknown setting '{key}' for method '{method}'."
                              f"{did_you_mean(key, run_keys | method_keys)}")
    return raw


def say(line: str) -> None:
    """One line for the user on stderr (each line of ``line``), from rank 0 only."""
    if distributed.current().is_main:
        for part in line.splitlines():
            print(f"dfkd: {part}", file=sys.stderr, flush=True)


def distill(teacher: nn.Module | Callable, student: nn.Module, *, num_classes: int,
            image_shape: tuple[int, int, int], mean: tuple[float, ...], std: tuple[float, ...],
            method: str | None = None, recipe: str | os.PathLike | None = "auto",
            test_data: tuple[torch.Tensor, torch.Tensor] | None = None,
            out_dir: str | os.PathLike | None = None, resume: bool = False,
            overwrite: bool = False, progress: bool | None = None,
            **settings: Any) -> tuple[dict[str, Any], nn.Module]:
    """Distil ``student`` from ``teacher`` with no training data.

    ``teacher`` is a module, or a black box: any other callable that answers a batch of
    pixels in [0, 1] (N, C, H, W) with probabilities or logits (see dfkd.teachers; only
    ``dfme`` learns from one, and it is the method a black box gets when none is named).

    ``mean`` and ``std`` (per channel, in [0, 1] pixel units) are the input normalisation the
    teacher was trained with: the generator's images, the student and the evaluation are
    normalised with them, and student.pt records them (see
    ``dfkd.data.normalization``; the CIFAR model zoo's constants are its ``ZOO``).

    ``recipe`` is where the settings start from. ``"auto"`` (the default): the validated
    recipe of the nearest family by ``image_shape`` (grey images of 32 px or less: the
    Fashion-MNIST recipe; other images up to 48 px: CIFAR-10's; larger: Tiny-ImageNet's;
    see ``dfkd.recipes``), for ``method`` (default ``cudfkd``; for a teacher without
    BatchNorm, ``dafl``, said in one line: ``dfkd.recipes.bn_free_default``). A path
    (or a name such as ``"configs/fashion_mnist/dafl_lenet5.yaml"``, or the setting
    ``base_recipe=`` as in the CLI): that recipe and its ``method``; a ``method`` given too
    must be the recipe's (a recipe's settings are tuned for its method), else a ConfigError.
    ``None``: the engine defaults. Only a recipe's training settings are used (its teacher,
    student and dataset keys are not: the models are the ones given here); the run prints
    which recipe it started from, and the summary's config (and ``config.yaml``) records it
    as ``base_recipe``.

    ``settings`` are run keys (``epochs``, ``rounds``, ``batch_size``, ``device``...)
    or the method's own keys (``tau``, ``curriculum``...); they win over the recipe.
    ``test_data`` is an optional ``(images, labels)`` pair used only to measure the
    student: uint8 images are scaled and normalised with ``mean``/``std``, float images
    are taken as model inputs. With no test data, watch ``synthetic_agreement`` (see
    ``dfkd.probe``). ``resume=True`` continues the run in ``out_dir`` with the
    configuration its checkpoint recorded (``settings`` given again win over it).
    Returns the run summary and the trained student (your module; with student_ema it
    holds the average).

    On a CPU, a recipe's ``batch_size`` and ``batched_g`` that would need more memory than
    the machine has are scaled down, with one line (``dfkd.run.sizing``); yours (and with
    ``recipe=None`` the engine's) are never changed, only warned about.
    ``student.pt`` records what rebuilds the student, so that ``dfkd evaluate`` and ``dfkd
    export`` need no flags: ``timm:NAME`` for a timm model, else its class as
    ``package.module:Class`` when that class, called with ``num_classes`` and
    ``in_channels``, builds the same weights (see ``rebuild_spec``); and the dataset
    named by the ``dataset=`` setting or the known one these classes, image shape, mean and
    std are.
    """
    teacher = as_teacher(teacher, num_classes)
    state, lines = None, []
    if resume:
        if out_dir is None:
            raise ConfigError("resume=True continues the run in out_dir; pass out_dir")
        state = load_run_checkpoint(out_dir)
        recorded = state["config"]
        raw = merge(recorded, _split_settings(method or recorded.get("method", RunConfig.method),
                                              settings))
    else:
        raw, line = _start_settings(method, recipe, settings, tuple(image_shape), teacher)
        lines.append(line)
    cfg = load_config(raw)
    if cfg.teacher_norm is not None:
        raise ConfigError("dfkd.distill feeds the teacher the mean and std it is given: pass "
                          "the teacher's normalisation as mean= and std= (teacher_norm is "
                          "for teacher checkpoints)")
    spec = ImageSpec(num_classes, tuple(image_shape), tuple(mean), tuple(std),
                     dataset=cfg.dataset or dataset_like(num_classes, image_shape, mean, std))
    ready_blackbox(teacher, spec)
    trainer = _assemble(
        cfg, teacher, student, spec, EvalData(*test_data) if test_data is not None else None,
        out_dir, resume=resume, state=state, overwrite=overwrite, progress=progress,
        own=set(settings) if cfg.base_recipe else ROUND_SETTINGS,
        student_arch=rebuild_spec(student, num_classes, image_shape[0]), lines=lines)
    summary = trainer.fit()
    if trainer.kept_student is not student:  # student_ema: your module gets the average
        student.load_state_dict(trainer.kept_student.state_dict())
    return summary, student


def ready_blackbox(teacher: nn.Module, spec: ImageSpec) -> None:
    """A black-box teacher learns the run's normalisation (to hand a box pixels) and answers
    two images, so that a box that answers wrongly is refused before any work."""
    if not is_blackbox(teacher):
        return
    if teacher.num_classes is None:
        teacher.num_classes = spec.num_classes
    teacher.set_normalization(spec.mean, spec.std)
    with torch.random.fork_rng(devices=[]):   # the run's random numbers stay untouched
        teacher(torch.randn(2, *spec.image_shape))


def rebuild_spec(model: nn.Module, num_classes: int, in_channels: int) -> str | None:
    """The model spec that rebuilds ``model`` (``dfkd.models.create_model``), which
    student.pt records so that evaluate and export need no flags: its class as
    ``package.module:Class`` (or ``file.py:Class`` for a file loaded as a spec), when that
    imports and, called with ``num_classes`` and ``in_channels`` as far as it takes them,
    builds a model with the same weight names and shapes. None otherwise (a class defined
    in a function or in the script being run, or one that needs other arguments): student.pt
    then records the class name only, and evaluate asks for --model. A model timm built is
    recorded as ``timm:NAME``."""
    spec = timm_spec_of(model)
    if spec is None:
        cls = type(model)
        module, name = cls.__module__, cls.__qualname__
        if module == "__main__" or "<locals>" in name:
            return None
        loaded = sys.modules.get(module)
        # A file given as a spec is imported under a private name (dfkd.models.registry).
        target = getattr(loaded, "__file__", None) if module.startswith("dfkd_user_") \
            else module
        if not target:
            return None
        spec = resolve_spec(f"{target}:{name}")
    try:
        with torch.random.fork_rng(devices=[]):   # the run's random numbers stay untouched
            twin = create_model(spec, num_classes, in_channels)
    except Exception:  # noqa: BLE001  (the user's constructor may raise anything)
        return None
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return spec if shapes == {k: tuple(v.shape) for k, v in twin.state_dict().items()} \
        else None


def dataset_like(num_classes: int, image_shape, mean, std) -> str | None:
    """The known dataset whose class count, image shape and normalisation these are (to
    3 decimals), so that a student distilled through the API can be evaluated on it."""
    for name in DATASETS:
        info = dataset_info(name)
        if (info.num_classes, tuple(info.image_shape)) == (num_classes, tuple(image_shape)) \
                and len(mean) == len(info.mean) and len(std) == len(info.std) \
                and all(abs(a - b) < 5e-4 for a, b in zip((*mean, *std),
                                                          (*info.mean, *info.std))):
            return info.name
    return None


def _recipe_hint(method: str, image_shape: tuple[int, int, int]) -> str | None:
    """The name of the validated recipe for ``method`` on these images, if there is one."""
    choice = recipes.recipe_for(method, image_shape)
    return choice.name if choice is not None else None


def _start_settings(method: str | None, recipe: str | os.PathLike | None,
                    settings: dict[str, Any], image_shape: tuple[int, int, int],
                    teacher: nn.Module | None = None) -> tuple[dict[str, Any], str | None]:
    """The raw configuration of a new API run (the recipe, then ``settings``), and the line
    that names the recipe (after the one naming the method chosen for a teacher without
    BatchNorm, when no method was given: ``dfkd.recipes.bn_free_default``)."""
    if str(recipe) == "auto" and settings.get("base_recipe") is not None:
        # base_recipe=NAME (as --set base_recipe= in the CLI) is recipe=NAME: its method.
        settings = dict(settings)
        asked = str(settings.pop("base_recipe"))
        recipe = None if asked.strip().lower() in recipes.NONE else asked
    if recipe is None:
        return _split_settings(method or RunConfig.method, settings), None
    if str(recipe) == "auto":
        raw = _split_settings(method or RunConfig.method, settings)
        chosen = None
        if method is None and teacher is not None:
            raw, chosen = recipes.bn_free_default(teacher, {k: v for k, v in raw.items()
                                                    if k != "method"})
        raw, line = recipes.with_base_recipe(raw, image_shape, RunConfig.method)
        return raw, "\n".join(t for t in (chosen, line) if t)
    path = recipes.resolve_named(str(recipe))
    recipe_raw = read_yaml(path)
    base = recipes.training_settings(recipe_raw)
    chosen = recipes.recipe_method(recipe_raw, method, str(recipe), RunConfig.method)
    raw = {**merge(base, _split_settings(chosen, settings)), "base_recipe": str(recipe)}
    return raw, f"starting from the recipe {recipe} (method {chosen}); your settings override it"


def build_trainer(raw: dict[str, Any], out_dir: str | os.PathLike, resume: bool = False,
                  overwrite: bool = False, progress: bool | None = None,
                  state: dict[str, Any] | None = None, base_recipe: bool = False) -> Trainer:
    """Everything ``dfkd distill`` checks and builds, in the order that fails fastest: the
    run of the teacher checkpoint and dataset that ``raw`` names.
    ``state``: the checkpoint to resume from, if the caller has already read it.
    ``base_recipe``: ``raw`` holds only the user's settings (no recipe), so start them from
    the recipe of the data's geometry (``dfkd.recipes``); not on a resume, which keeps
    what the run recorded."""
    cfg = load_config(raw)   # the user's settings first: a mistake fails before any work
    if not cfg.teacher:
        raise ConfigError("no teacher given: pass --teacher CHECKPOINT (or set 'teacher' in "
                          "the config)")
    given = set(raw)   # the user's own keys: a recipe's are the ones not in it
    info_hint = dataset_info(cfg.dataset) if cfg.dataset else None
    teacher, meta = load_teacher(
        cfg.teacher, blackbox=cfg.teacher_blackbox, arch=cfg.teacher_model,
        num_classes=info_hint.num_classes if info_hint else None,
        in_channels=info_hint.image_shape[0] if info_hint else None,
        image_shape=info_hint.image_shape if info_hint else None)
    dataset = cfg.dataset or meta.get("dataset")
    if dataset is None:
        raise ConfigError(f"the teacher '{cfg.teacher}' does not name its dataset; pass "
                          "--dataset NAME")
    info = dataset_info(dataset)
    meta.setdefault("num_classes", info.num_classes)   # a callable black box says nothing
    shape = meta.get("image_shape")
    if shape and tuple(shape) != tuple(info.image_shape):
        raise DfkdError(f"the teacher takes images of shape {tuple(shape)}, but {info.name}'s "
                        f"are {tuple(info.image_shape)} (channels, height, width); give a "
                        "teacher that takes the dataset's images in that layout")
    if meta["num_classes"] != info.num_classes:
        raise DfkdError(f"the teacher has {meta['num_classes']} classes but {info.name} has "
                        f"{info.num_classes}")
    lines: list[str | None] = []
    if base_recipe and not resume:
        # No method named and a teacher without BatchNorm: the method measured for it.
        raw, chosen = recipes.bn_free_default(teacher, raw)
        raw, line = recipes.with_base_recipe(raw, tuple(info.image_shape), RunConfig.method)
        lines += [chosen, line]
        cfg = load_config(raw)   # with the recipe under them
    eval_data = EvalData(*load_split(info.name, cfg.eval_split, cfg.data_root))
    seed_everything(cfg.seed)  # the student's initialisation is part of the run's seed
    student = create_model(cfg.student, info.num_classes, info.image_shape[0])
    # The teacher's own normalisation feeds the generator's output, the student and the
    # evaluation alike (dfkd.data.normalization).
    norm = resolve_normalization(cfg.teacher_norm, meta, info)
    if norm.source != "checkpoint" and not resume:
        say(describe_normalization(norm, info.name))
    spec = ImageSpec(info.num_classes, info.image_shape, norm.mean, norm.std, info.name,
                     normalization=norm.source)
    ready_blackbox(teacher, spec)
    return _assemble(cfg, teacher, student, spec, eval_data, out_dir, resume=resume,
                     state=state, overwrite=overwrite, progress=progress,
                     own=given if base_recipe and cfg.base_recipe else ROUND_SETTINGS,
                     teacher_acc1=meta.get(f"{cfg.eval_split}_acc1"),
                     student_arch=resolve_spec(cfg.student), lines=lines)


def _assemble(cfg: RunConfig, teacher: nn.Module, student: nn.Module, spec: ImageSpec,
              eval_data: EvalData | None, out_dir: str | os.PathLike | None, *, resume: bool,
              state: dict[str, Any] | None, overwrite: bool, progress: bool | None,
              own: set[str] | frozenset[str], student_arch: str | None,
              teacher_acc1: float | None = None,
              lines: list[str | None] = ()) -> Trainer:
    """The one assembly of a run, for the CLI, the API, bench and tune: the validated
    settings sized for the device (on a CPU, a recipe's round that would not fit in memory
    is scaled down; ``own``: the keys the user set, which are only warned about), the run
    folder prepared (one process; the others wait) with the config.yaml of the frozen
    settings, the trainer built and, on a resume, its state restored. ``lines`` (the
    recipe's and the method's) are said once the run is built, so an error stays one line."""
    cfg = dataclasses.replace(cfg, tracker=check_trackers(cfg.tracker))   # names: a list
    if not resume and resolve_device(cfg.device).type == "cpu":
        cfg, sized = size_for_cpu(cfg, set(own), teacher, student, tuple(spec.image_shape),
                                  distributed.current().world_size)
        lines = [*lines, sized]
    out = None if out_dir is None else Path(out_dir)
    if out is not None:
        if distributed.current().is_main:
            prepare_out_dir(out, resume, overwrite)
            (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        distributed.barrier()
    trainer = Trainer(cfg, teacher, student, spec, eval_data, out, teacher_acc1=teacher_acc1,
                      progress=progress, student_arch=student_arch,
                      recipe_hint=_recipe_hint(cfg.method, tuple(spec.image_shape)))
    if resume:
        trainer.resume(state)
    for text in lines:
        if text:
            say(text)
    return trainer


def load_run_checkpoint(out_dir: str | os.PathLike) -> dict[str, Any]:
    """A run's checkpoint: its resolved ``config`` and the state to resume from."""
    path = Path(out_dir) / CHECKPOINT
    if not path.is_file():
        raise DfkdError(f"cannot resume: '{path}' does not exist")
    return safe_load(path)
