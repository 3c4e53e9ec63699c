"""Which input normalisation a teacher was trained with: it belongs to the teacher, not to
the dataset's name.

A teacher only sees its own input distribution: the same images normalised with other
constants are scaled and shifted, and its accuracy, the BatchNorm-statistics targets of the
generator, the student and every metric move with them, silently. So a run decides the
normalisation once, from the teacher, and uses it for the generator's output, the student
and the evaluation alike:

1. ``teacher_norm`` given (``--teacher-norm``): ``zoo``, ``dataset``, or explicit
   ``{mean: [...], std: [...]}`` (on the command line ``MEAN:STD``, e.g.
   ``0.5,0.5,0.5:0.25,0.25,0.25``);
2. a dfkd checkpoint (``train-teacher``'s, or a distilled ``student.pt``) carries its own;
3. a bare state dict (a file from the public CIFAR model zoo, which stores no metadata) on
   CIFAR-10 or CIFAR-100 gets the zoo's constants (:data:`ZOO`);
4. anything else gets the dataset's constants (:func:`dfkd.data.dataset_info`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from dfkd.data.registry import DatasetInfo
from dfkd.errors import ConfigError

# The constants the public CIFAR teacher zoo (the CMI benchmark's, also used by CuDFKD, Fast
# and NAYER) trained its teachers with: zju-vipa/CMI registry.py, NORMALIZE_DICT (lines
# 19-20 for CIFAR, 30-31 for SVHN and Tiny-ImageNet). CIFAR-10's std differs from the
# dataset's own (0.2470, 0.2435, 0.2616) by a factor of about 0.82.
ZOO: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "svhn": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "tiny_imagenet": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
# Bare state dicts on these datasets are taken to be zoo teachers (the zoo publishes these).
ZOO_BY_DEFAULT = frozenset({"cifar10", "cifar100"})
NAMES = ("zoo", "dataset")


@dataclass(frozen=True)
class Normalization:
    """Per-channel ``mean`` and ``std`` in [0, 1] pixel units, and where they came from."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str   # "checkpoint" (its own metadata), "zoo", "dataset" or "given"

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "source": self.source}


def parse_normalization(value: Any) -> str | tuple[tuple[float, ...], tuple[float, ...]] | None:
    """A ``teacher_norm`` setting: ``None`` (decide from the teacher), ``"zoo"``,
    ``"dataset"``, or ``(mean, std)`` from a mapping or a ``"MEAN:STD"`` string."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "auto")):
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        if text in NAMES:
            return text
        if ":" not in text:
            raise ConfigError(f"teacher_norm: '{value}' is not one of auto, zoo, dataset, or "
                              "MEAN:STD (comma-separated per channel, e.g. "
                              "0.5,0.5,0.5:0.25,0.25,0.25)")
        mean_text, std_text = text.split(":", 1)
        value = {"mean": mean_text.split(","), "std": std_text.split(",")}
    if not isinstance(value, dict) or set(value) != {"mean", "std"}:
        raise ConfigError(f"teacher_norm must be auto, zoo, dataset or a mapping with keys mean "
                          f"and std, got {value!r}")
    try:
        mean = tuple(float(v) for v in _as_list(value["mean"]))
        std = tuple(float(v) for v in _as_list(value["std"]))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"teacher_norm: mean and std must be numbers, got {value!r}") from exc
    if not mean or len(mean) != len(std):
        raise ConfigError(f"teacher_norm: mean and std need one value per channel each, got "
                          f"{len(mean)} and {len(std)}")
    if not all(math.isfinite(m) for m in mean) or not all(math.isfinite(s) and s > 0
                                                          for s in std):
        raise ConfigError(f"teacher_norm: mean must be finite and std positive, got {value!r}")
    return mean, std


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def resolve_normalization(setting: Any, meta: dict[str, Any], info: DatasetInfo) -> Normalization:
    """The normalisation to feed the teacher with (see the module's docstring for the
    order). ``meta`` is the teacher file's dfkd metadata (without ``mean``/``std`` for a bare
    state dict)."""
    parsed = parse_normalization(setting)
    if isinstance(parsed, tuple):
        norm = Normalization(*parsed, "given")
    elif parsed == "zoo":
        if info.name not in ZOO:
            raise ConfigError(f"teacher_norm: zoo: the CIFAR model zoo has no constants for "
                              f"{info.name} (it has {', '.join(ZOO)}); give MEAN:STD instead")
        norm = Normalization(*ZOO[info.name], "zoo")
    elif parsed == "dataset":
        norm = Normalization(tuple(info.mean), tuple(info.std), "dataset")
    elif meta.get("mean") and meta.get("std"):
        norm = Normalization(tuple(meta["mean"]), tuple(meta["std"]), "checkpoint")
    elif info.name in ZOO_BY_DEFAULT:   # no metadata: a bare state dict, as the zoo stores
        norm = Normalization(*ZOO[info.name], "zoo")
    else:
        norm = Normalization(tuple(info.mean), tuple(info.std), "dataset")
    channels = info.image_shape[0]
    if len(norm.mean) != channels:
        raise ConfigError(f"teacher_norm: {len(norm.mean)} channel(s) of mean/std for "
                          f"{info.name}'s {channels}-channel images")
    return norm


def describe(norm: Normalization, dataset: str) -> str:
    """One line for the user: which normalisation the teacher is fed, and why."""
    values = (f"mean {', '.join(f'{m:.4g}' for m in norm.mean)}, "
              f"std {', '.join(f'{s:.4g}' for s in norm.std)}")
    why = {"checkpoint": "recorded in the teacher checkpoint",
           "zoo": f"the CIFAR model zoo's for {dataset}",
           "dataset": f"{dataset}'s own statistics",
           "given": "given by teacher_norm"}[norm.source]
    return (f"teacher input normalisation: {values} ({why}; --teacher-norm, or --set "
            "teacher_norm=..., changes it)")
