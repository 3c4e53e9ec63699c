"""Default settings chosen by the data's geometry: the validated recipe of the nearest family.

A run given no recipe (``dfkd distill`` without ``--config``, ``dfkd.distill`` without
``recipe=``) starts from the recipe that was validated on the family of datasets its images
look like:

* grey images of 32 px or less: Fashion-MNIST (``configs/fashion_mnist/<method>_lenet5.yaml``);
* other images up to 48 px (32 px colour): CIFAR-10 (``configs/cifar10/``, the ResNet pair);
* larger images (64 px): Tiny-ImageNet (``configs/tiny_imagenet/``).

Only the recipe's *training* settings are taken (epochs, rounds, steps, batch size,
optimisers, generator, the method's section); what names the pair and the data (teacher,
student, dataset, ...) is the user's. Every setting the user gives wins over the recipe.
The run records the recipe as ``base_recipe`` in its config; a method with no recipe for
the family runs on the engine defaults, and says so. A teacher without BatchNorm, given no
method, gets the method measured for such a teacher (:func:`bn_free_default`).

Recipes are read from the installed package (``dfkd/configs``, which the wheel carries) or,
in a source checkout or editable install, from the repository's ``configs/`` folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from dfkd.config import merge, read_yaml
from dfkd.errors import ConfigError
from dfkd.hooks import batchnorm_layers
from dfkd.methods import list_methods
from dfkd.registry import did_you_mean
from dfkd.teachers import is_blackbox

# What names the pair, the data and where to run: never taken from a base recipe.
PAIR_KEYS = frozenset({"teacher", "teacher_model", "student", "dataset", "data_root",
                       "eval_split", "device", "method", "search", "base_recipe"})
NONE = ("none", "null", "")   # base_recipe values that ask for the engine defaults


@dataclass(frozen=True)
class Family:
    folder: str          # under configs/
    name: str            # for people
    geometry: str        # the images it stands for, in words
    pattern: str         # the file of a method's validated recipe in the folder


FASHION_MNIST = Family("fashion_mnist", "Fashion-MNIST", "grey images of 32 px or less",
                       "{method}_lenet5.yaml")
CIFAR10 = Family("cifar10", "CIFAR-10", "images of 33-48 px, or 32 px colour",
                 "{method}_resnet34_resnet18.yaml")   # the official headline pair
TINY_IMAGENET = Family("tiny_imagenet", "Tiny-ImageNet", "images larger than 48 px",
                       "{method}_resnet34_resnet18.yaml")
FAMILIES = {f.folder: f for f in (FASHION_MNIST, CIFAR10, TINY_IMAGENET)}


@dataclass(frozen=True)
class BaseRecipe:
    family: Family
    path: Path           # the file read
    name: str            # as recorded: configs/<family>/<file>


def recipes_dir() -> Path | None:
    """The folder holding the recipe families: the installed copy, else the checkout's."""
    here = Path(__file__).resolve().parent
    for folder in (here / "configs", here.parents[1] / "configs"):
        if (folder / FASHION_MNIST.folder).is_dir():
            return folder
    return None


def family_for(image_shape: tuple[int, int, int]) -> Family:
    """The nearest validated family for images of shape (C, H, W)."""
    channels, height, width = image_shape
    side = max(height, width)
    if channels == 1 and side <= 32:
        return FASHION_MNIST
    if side <= 48:   # nearer 32 px than 64 px
        return CIFAR10
    return TINY_IMAGENET


def recipe_for(method: str, image_shape: tuple[int, int, int]) -> BaseRecipe | None:
    """The recipe of ``method`` for the family of ``image_shape``, if there is one."""
    return family_recipe(family_for(image_shape), method)


def family_recipe(family: Family | str, method: str) -> BaseRecipe | None:
    """The validated recipe of ``method`` in ``family`` (a :class:`Family` or its folder
    name, e.g. ``fashion_mnist``), if there is one."""
    if isinstance(family, str):
        if family not in FAMILIES:
            raise ConfigError(f"unknown recipe family '{family}'.{did_you_mean(family, FAMILIES)}"
                              f" Known families: {', '.join(FAMILIES)}.")
        family = FAMILIES[family]
    root = recipes_dir()
    if root is None:
        return None
    path = root / family.folder / family.pattern.format(method=method)
    if not path.is_file():
        return None
    return BaseRecipe(family, path, f"configs/{family.folder}/{path.name}")


def resolve_named(name: str | Path) -> Path:
    """A recipe (or bench file) given by path or by name, from any working folder: the file
    itself, else a bundled one under configs/, where ``configs/`` and ``.yaml`` are optional
    (``fashion_mnist/cudfkd_lenet5`` is ``configs/fashion_mnist/cudfkd_lenet5.yaml``)."""
    name = str(name)
    path = Path(name).expanduser()
    bare = path.suffix not in (".yaml", ".yml")
    for candidate in (path, path.with_name(path.name + ".yaml")) if bare else (path,):
        if candidate.is_file():
            return candidate
    root = recipes_dir()
    if root is not None and not path.is_absolute():
        rel = name[len("configs/"):] if name.startswith("configs/") else name
        for candidate in (root / rel, root / (rel + ".yaml")) if bare else (root / rel,):
            if candidate.is_file():
                return candidate
    return path  # read_yaml names it in its error


def recipe_method(recipe: dict[str, Any], asked: str | None, name: str,
                  default_method: str) -> str:
    """The method a run started from ``recipe`` runs: the recipe's own. A method the user
    named explicitly (``asked``) must agree: a recipe's step counts, batch and generator are
    tuned for its method, so running another method on them is refused, in one line."""
    own = recipe.get("method")
    if asked and own and asked != own:
        raise ConfigError(
            f"the recipe {name} is a '{own}' recipe, but method '{asked}' was asked for: drop "
            f"--method (method=) to run {own}, or start from a '{asked}' recipe")
    return asked or own or default_method


def training_settings(recipe: dict[str, Any]) -> dict[str, Any]:
    """A recipe without what names the pair and the data (:data:`PAIR_KEYS`)."""
    return {k: v for k, v in recipe.items() if k not in PAIR_KEYS}


def with_base_recipe(raw: dict[str, Any], image_shape: tuple[int, int, int],
                     default_method: str) -> tuple[dict[str, Any], str]:
    """``raw`` (the user's settings, no recipe) on top of the geometry's recipe, and the
    line that tells the user which recipe it was.

    A ``base_recipe`` key in ``raw`` picks the recipe instead: a name such as
    ``configs/fashion_mnist/dafl_lenet5.yaml`` (or a path), or ``none`` for the engine
    defaults. A named recipe runs its own method (as the API's ``recipe=`` does); a
    ``method`` in ``raw`` (given explicitly) must then be the recipe's, or it is refused."""
    method = raw.get("method") or default_method
    if "base_recipe" in raw:
        asked = raw["base_recipe"]
        if asked is None or str(asked).strip().lower() in NONE:
            return {**raw, "base_recipe": None}, \
                "no recipe (base_recipe: none): the engine defaults, and your settings"
        path = resolve_named(str(asked))
        recipe = read_yaml(path)
        method = recipe_method(recipe, raw.get("method"), str(asked), default_method)
        base = training_settings(recipe)
        return {**merge(base, raw), "method": method, "base_recipe": str(asked)}, \
            f"starting from the recipe {asked} (method {method}); your settings override it"
    choice = recipe_for(method, image_shape)
    geometry = _describe(image_shape)
    if choice is None:
        return {**raw, "base_recipe": None}, (
            f"no recipe given, and none for method '{method}' on {geometry}: the engine "
            "defaults (pass --config FILE to choose one)")
    base = training_settings(read_yaml(choice.path))
    return {**merge(base, raw), "base_recipe": choice.name}, (
        f"no recipe given: starting from {choice.name}, the {choice.family.name} recipe "
        f"({choice.family.geometry}; yours are {geometry}); your settings override it")


def _describe(image_shape: tuple[int, int, int]) -> str:
    channels, height, width = image_shape
    kind = "grey" if channels == 1 else ("colour" if channels == 3 else f"{channels}-channel")
    side = f"{height} px" if height == width else f"{height}x{width} px"
    return f"{side} {kind} images"


# The default method for a teacher without BatchNorm.
#
# The default method (cudfkd) and the BN-prior methods read the teacher's BatchNorm running
# statistics; a teacher without BatchNorm (GroupNorm, LayerNorm, no normalisation) stores
# none. When the user names no method, such a teacher gets :data:`BN_FREE_METHOD` (with
# :data:`BN_FREE_SETTINGS`) instead, and one line says so. A method given by name is never
# replaced: the methods that read BatchNorm statistics then need ``METHOD.w_bn=0``.
#
# Chosen on the val split of Fashion-MNIST (never test): a small GroupNorm CNN (val Acc@1
# 85.62), trained by ``dfkd train-teacher --epochs 3 --out gn.pt --model FILE.py:callable``,
# distilled into LeNet-5-half by each candidate's Fashion-MNIST recipe at an equal short
# budget (4 epochs of 200 student steps of 64: a quarter of each recipe's rounds, R = 25 for
# cudfkd, 40 dfad, 20 zskt, 200 dafl), seeds S = 0..3:
#
#     OMP_NUM_THREADS=1 dfkd distill --teacher gn.pt --method M --eval-split val --epochs 4 \
#         --seed S --set rounds=R --set synthetic_probe=0 --set sample_grid=0 \
#         [--set cudfkd.w_bn=0] --out runs/M_S
#
# Final val Acc@1 by seed 0/1/2/3 (mean):
#     dafl             17.26 14.10 16.12 19.92  (16.85)
#     cudfkd w_bn=0    10.76 27.22 15.62 13.00  (16.65)
#     dfad             15.82 19.26 20.54 10.36  (16.50)
#     zskt              9.80 11.10              (10.45)
# dafl has the highest mean and by far the smallest spread; the three are within seed noise
# of one another at this budget, and all learn far less from this teacher than from a
# BatchNorm one (its BN prior is what the stronger methods use). The default run itself
# (``dfkd distill --teacher gn.pt --eval-split val --epochs 4 --seed 0 --set
# synthetic_probe=0``: dafl's recipe, 800 student steps per epoch) reached val Acc@1 17.98,
# 19.38, 18.56, 20.02 after epochs 1-4.
BN_FREE_METHOD = "dafl"
BN_FREE_SETTINGS: dict[str, Any] = {}
# The default method for a black-box teacher: the one method that needs only its answers.
BLACKBOX_METHOD = "dfme"


def _named(raw: dict[str, Any]) -> bool:
    """The user chose a method: by name, by a recipe (``base_recipe``, whose method it
    is; ``none`` names no recipe), or by setting a method's own keys."""
    recipe = str(raw.get("base_recipe") or "").strip().lower()
    return bool(raw.get("method")) or recipe not in NONE \
        or any(key in raw for key in list_methods())


def bn_free_default(teacher: nn.Module, raw: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """``raw`` with the method for a teacher without BatchNorm when it names none, and the
    line that tells the user; ``raw`` unchanged (and no line) otherwise. A black-box teacher
    (:mod:`dfkd.teachers`) gets the method that needs nothing but its answers."""
    if _named(raw):
        return raw, None
    if is_blackbox(teacher):
        return {**raw, "method": BLACKBOX_METHOD}, (
            f"the teacher is a black box (it only answers queries): running "
            f"{BLACKBOX_METHOD}, the method that learns from its answers alone")
    if batchnorm_layers(teacher):
        return raw, None
    chosen = {**raw, "method": BN_FREE_METHOD}
    if BN_FREE_SETTINGS:
        chosen[BN_FREE_METHOD] = dict(BN_FREE_SETTINGS)
    terms = ", ".join(f"{BN_FREE_METHOD}.{k}={v:g}" for k, v in BN_FREE_SETTINGS.items())
    running = f"{BN_FREE_METHOD} with {terms}" if terms else BN_FREE_METHOD
    return chosen, (f"the teacher has no BatchNorm layer, so no BatchNorm prior can be read "
                    f"from it: running {running} (the best measured for such a teacher on "
                    "the Fashion-MNIST val split); --method NAME chooses another")
