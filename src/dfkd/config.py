"""The run configuration: typed dataclasses, YAML recipes and dotted ``--set`` overrides.

Every key is checked before any work starts: unknown keys get a "did you mean",
wrong types and out-of-range values name the key. Method settings live in a
section named after the method (``cudfkd: {tau: 20}``), validated against the
method's own ``Settings`` dataclass.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dfkd.data.normalization import parse_normalization
from dfkd.errors import ConfigError
from dfkd.generators import GeneratorConfig
from dfkd.methods import GeneratorMethod, get_method, list_methods
from dfkd.ranges import check_range, ranged
from dfkd.registry import did_you_mean


@dataclass(frozen=True)
class StudentOptimConfig:
    lr: float = ranged(0.1, ge=0)               # SGD learning rate (its schedule: below)
    momentum: float = ranged(0.9, ge=0, le=1)   # SGD momentum
    weight_decay: float = ranged(1e-4, ge=0)    # SGD weight decay
    # The rate's schedule over the epochs: "cosine" to 0, or "multistep": times decay from
    # the start of epoch int(f * epochs) (1-based) on, for each fraction f of decay_at (DFME's).
    schedule: Literal["cosine", "multistep"] = "cosine"
    decay_at: tuple[float, ...] = (0.1, 0.3, 0.5)   # multistep: fractions of the epochs
    decay: float = ranged(0.3, gt=0, le=1)   # multistep: the factor at each of them

    def validate(self) -> None:
        if any(not 0 < f <= 1 for f in self.decay_at):
            raise ConfigError("'student_optim.decay_at' are fractions of the epochs, each in "
                              f"(0, 1], got {list(self.decay_at)}")


@dataclass(frozen=True)
class RunConfig:
    """One run's resolved settings: the top-level keys, then the sections of the student's
    optimiser, the generator and the run's method (dotted keys in ``--set``). Build it with
    ``load_config``, which validates; ``config.yaml`` of a run folder is its dump.
    Frozen, as its sections are: nothing changes a run's settings once they are resolved."""

    method: str = "cudfkd"   # the DFKD method (dfkd.list_methods())
    teacher: str | None = None        # checkpoint path
    teacher_model: str | None = None  # only for zoo checkpoints without dfkd metadata
    # Use the teacher through its answers only (dfkd.teachers): an .onnx file through ONNX
    # Runtime, a file.py:callable as the function that answers a batch of images. Only
    # methods that need no gradient through the teacher can use it (dfme).
    teacher_blackbox: bool = False
    # End the run once the teacher has answered this many training queries (images), before
    # a round that would go past it; None: no budget. Queries are counted either way
    # (teacher_queries in metrics.jsonl and the summary).
    query_budget: int | None = ranged(None, ge=1)
    # The teacher's input normalisation (dfkd.data.normalization): None decides from the
    # teacher (its checkpoint's, the CIFAR zoo's for a bare CIFAR state dict, else the
    # dataset's); "zoo", "dataset", or {mean: [...], std: [...]} choose it.
    teacher_norm: Any = None
    # Stop before training when the teacher scores near chance on the eval split (a wrong
    # normalisation, dataset or class count); false forces the run.
    check_teacher: bool = True
    dataset: str | None = None        # evaluation data; default: the teacher's dataset
    eval_split: Literal["val", "test"] = "test"  # what the per-epoch metrics are computed on
    data_root: str | None = None   # the dataset files' folder; None: system folders, then cache
    student: str = "lenet5_half"   # a model name (dfkd.list_models()), module:callable or timm:NAME
    epochs: int = ranged(40, ge=1)   # epochs of `rounds` rounds each
    rounds: int = ranged(40, ge=1)    # rounds per epoch
    g_steps: int = ranged(1, ge=0)    # generator steps per round
    kd_steps: int = ranged(10, ge=1)  # student steps per round
    batch_size: int = ranged(256, ge=1)  # global synthetic batch
    eval_batch_size: int = ranged(1024, ge=1)  # batch of the per-epoch evaluation
    seed: int = ranged(0, ge=0)   # seeds every random stream of the run
    device: str = "auto"   # auto: CUDA when present, else CPU
    amp: bool = True                  # bf16 autocast, CUDA only
    channels_last: bool = True        # CUDA only
    compile: bool = False             # torch.compile the student and generator (opt-in)
    deterministic: bool = False       # deterministic algorithms (exact resume on CUDA)
    # Generator methods: one G forward (eval mode, no gradient) per round makes all kd_steps
    # student batches (kd_steps x batch_size images at once, e.g. 63 MB for CIFAR-10 at
    # 10 x 512), instead of one small forward per student step. Same distribution, another
    # random stream, so runs differ from batched_g: false ones (opt-in; on in GPU recipes).
    batched_g: bool = False
    # CUDA only (a no-op on CPU, like amp): the student steps' no-grad teacher forward is
    # captured once as a CUDA graph and replayed (one launch instead of one per layer).
    teacher_graph: bool = False
    # Decay of an exponential moving average of the student's weights and BatchNorm buffers,
    # updated after every student step (torch.optim.swa_utils.AveragedModel). When > 0 the
    # average is the student that is evaluated, saved and returned, and each epoch also logs
    # the live student's raw_acc1. The decay ramps up, min(decay, (1+n)/(10+n)) at the n-th
    # step, so the average follows the live student early on. Beyond the papers; 0 = off
    # (e.g. 0.999: about the last 1,000 steps).
    student_ema: float = ranged(0.0, ge=0, le=1)
    sample_grid: int = ranged(64, ge=0)  # synthetic images saved per epoch (0: none)
    # Held-out synthetic images the data-free signal is measured on each epoch (dfkd.probe;
    # 0: no signal and no warnings).
    synthetic_probe: int = ranged(1024, ge=0)
    # The recipe whose training settings the run started from when it was given none
    # (dfkd.recipes): a record, or the recipe to start from (none: the engine defaults).
    base_recipe: str | None = None
    # Experiment trackers (dfkd.trackers): a name or a list of tensorboard, mlflow, wandb
    # (None: none). tracker_uri: MLflow's tracking URI (default: MLFLOW_TRACKING_URI, else
    # sqlite:///mlflow.db in the current folder).
    tracker: Any = None
    tracker_uri: str | None = None   # MLflow's tracking URI (see tracker above)
    student_optim: StudentOptimConfig = field(default_factory=StudentOptimConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    method_settings: Any = None       # the method's Settings instance (filled by load_config)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "method_settings"
               and not (f.name in _WRITTEN_WHEN_SET and getattr(self, f.name) == f.default)}
        out["student_optim"] = {k: list(v) if isinstance(v, tuple) else v
                                for k, v in dataclasses.asdict(self.student_optim).items()}
        out["generator"] = dataclasses.asdict(self.generator)
        out["generator"]["betas"] = list(self.generator.betas)
        if self.method_settings is not None:
            out[self.method] = dataclasses.asdict(self.method_settings)
        return out


# Keys added after runs were stored: written only when they differ from their default, so the
# config.yaml of a run made before them still compares equal (dfkd bench refuses to resume or
# reuse a run whose stored config differs from the one it asks for). The bench also reads any
# key absent from a stored config as its default (bench.check_same_config), method settings
# included, so a new key need not be listed here.
_WRITTEN_WHEN_SET = frozenset({"synthetic_probe", "base_recipe", "batched_g",
                               "teacher_graph", "student_ema", "teacher_norm",
                               "check_teacher", "tracker", "tracker_uri", "teacher_blackbox",
                               "query_budget"})

_CHOICES: dict[str, tuple[str, ...]] = {"device": ("auto", "cpu", "cuda")}


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against a type hint, allowing int -> float and list -> tuple."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is tuple and typing.get_args(hint)[-1:] == (Ellipsis,):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{key}' must be a list, got {value!r}")
        return tuple(_coerce(v, typing.get_args(hint)[0], key) for v in value)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"'{key}' must be a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(v, a, key) for v, a in zip(value, args))
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{key}' must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"'{key}' must be a finite number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{key}' must be an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"'{key}' must be true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{key}' must be a string, got {value!r}")
        return value
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(
                f"'{key}' must be one of {', '.join(map(str, choices))}, got {value!r}"
                + (did_you_mean(value, choices) if isinstance(value, str) else "")
            )
        return value
    return value


def build_dataclass(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from ``data`` with full key, type and range checks
    (the ranges its fields declare: ``dfkd.ranges``), then its ``validate()``."""
    if not isinstance(data, dict):
        raise ConfigError(f"'{prefix.rstrip('.') or 'config'}' must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "method_settings"}
    names = list(fields)
    kwargs = {}
    for key, value in data.items():
        if not isinstance(key, str):   # YAML allows `null:` or `1:` as keys
            raise ConfigError(f"config keys are names, got {key!r} in "
                              f"'{prefix.rstrip('.') or 'config'}'")
        full = prefix + key
        if key not in names:
            raise ConfigError(f"unknown config key '{full}'.{did_you_mean(key, names)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = build_dataclass(hint, value, full + ".")
            continue
        value = _coerce(value, hint, full)
        check_range(fields[key], value, full)
        if key in _CHOICES and value not in _CHOICES[key]:
            raise ConfigError(f"'{full}' must be one of {', '.join(_CHOICES[key])}, got {value!r}")
        kwargs[key] = value
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if check is not None:
        check()
    return obj


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` -> nested dict; values are parsed as YAML scalars."""
    out: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"--set expects key=value, got '{pair}'")
        key, raw = pair.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot parse the value of --set {key}: {exc}") from exc
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {key}: '{part}' is not a section")
        node[parts[-1]] = value
    return out


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{dotted key: value}`` (tuples as lists, as YAML stores them)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = list(value) if isinstance(value, tuple) else value
    return out


def first_difference(stored: dict[str, Any], now: dict[str, Any]) -> str | None:
    """The first dotted key (sorted) whose value differs between two flat configs."""
    for key in sorted(set(stored) | set(now)):
        if stored.get(key, "<unset>") != now.get(key, "<unset>"):
            return key
    return None


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file '{path}' does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{path}' must hold a mapping of keys")
    return data


def load_config(raw: dict[str, Any]) -> RunConfig:
    """Validate a raw dict (recipe merged with overrides) into a ``RunConfig``, frozen:
    a run's settings change only as a new config (``dataclasses.replace``), never in place."""
    raw = dict(raw)
    raw.pop("search", None)  # dfkd tune's search space (see tune.py); a run ignores it
    method_name = raw.get("method", RunConfig.method)
    method_cls = get_method(method_name)
    sections = {name: raw.pop(name) for name in list(raw) if name in list_methods()}
    cfg = build_dataclass(RunConfig, raw)
    parse_normalization(cfg.teacher_norm)   # a bad value fails here, before any work
    cfg = dataclasses.replace(cfg, method_settings=build_dataclass(
        method_cls.Settings, sections.get(method_name) or {}, method_name + "."))
    if cfg.g_steps < method_cls.min_g_steps:
        raise ConfigError(f"method '{method_name}' synthesises each round's samples in "
                          f"g_steps optimisation steps, so 'g_steps' must be >= "
                          f"{method_cls.min_g_steps}, got {cfg.g_steps}")
    if cfg.batched_g and not issubclass(method_cls, GeneratorMethod):
        raise ConfigError(f"batched_g batches a generator's forwards, but method "
                          f"'{method_name}' synthesises from a sample bank; set "
                          "batched_g: false for it")
    if cfg.student_ema == 1:
        raise ConfigError("'student_ema' 1 would keep the initial student forever; use a "
                          "decay below 1 (e.g. 0.999), or 0 for no average")
    return cfg
