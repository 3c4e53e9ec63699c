"""The default method for a teacher without BatchNorm.

The default method (cudfkd) and the BN-prior methods read the teacher's BatchNorm running
statistics; a teacher without BatchNorm (GroupNorm, LayerNorm, no normalisation) stores
none. When the user names no method, such a teacher gets :data:`BN_FREE_METHOD` (with
:data:`BN_FREE_SETTINGS`) instead, and one line says so. A method given by name is never
replaced: cudfkd, deepinv, dfq, cmi and fast then need ``METHOD.w_bn=0``.

Chosen on the val split of Fashion-MNIST (never test): a small GroupNorm CNN (val Acc@1
85.62), trained by ``dfkd train-teacher --epochs 3 --out gn.pt --model FILE.py:callable``,
distilled into LeNet-5-half by each candidate's Fashion-MNIST recipe at an equal short
budget (4 epochs of 200 student steps of 64: a quarter of each recipe's rounds, R = 25 for
cudfkd, 40 dfad, 20 zskt, 200 dafl), seeds S = 0..3:

    OMP_NUM_THREADS=1 dfkd distill --teacher gn.pt --method M --eval-split val --epochs 4 \
        --seed S --set rounds=R --set synthetic_probe=0 --set sample_grid=0 \
        [--set cudfkd.w_bn=0] --out runs/M_S

Final val Acc@1 by seed 0/1/2/3 (mean):
    dafl             17.26 14.10 16.12 19.92  (16.85)
    cudfkd w_bn=0    10.76 27.22 15.62 13.00  (16.65)
    dfad             15.82 19.26 20.54 10.36  (16.50)
    zskt              9.80 11.10              (10.45)
dafl has the highest mean and by far the smallest spread; the three are within seed noise
of one another at this budget, and all learn far less from this teacher than from a
BatchNorm one (its BN prior is what the stronger methods use). The default run itself
(``dfkd distill --teacher gn.pt --eval-split val --epochs 4 --seed 0 --set
synthetic_probe=0``: dafl's recipe, 800 student steps per epoch) reached val Acc@1 17.98,
19.38, 18.56, 20.02 after epochs 1-4.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from dfkd.hooks import batchnorm_layers
from dfkd.methods import list_methods

# The measured choice (see the module doc).
BN_FREE_METHOD = "dafl"
BN_FREE_SETTINGS: dict[str, Any] = {}
# base_recipe values that name no recipe (dfkd.recipes.NONE: methods do not import it)
NO_RECIPE = ("none", "null", "")


def _named(raw: dict[str, Any]) -> bool:
    """The user chose a method: by name, by a recipe (``base_recipe``, whose method it
    is; ``none`` names no recipe), or by setting a method's own keys."""
    recipe = str(raw.get("base_recipe") or "").strip().lower()
    return bool(raw.get("method")) or recipe not in NO_RECIPE \
        or any(key in raw for key in list_methods())


def bn_free_default(teacher: nn.Module, raw: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """``raw`` with the method for a teacher without BatchNorm when it names none, and the
    line that tells the user; ``raw`` unchanged (and no line) otherwise."""
    if _named(raw) or batchnorm_layers(teacher):
        return raw, None
    chosen = {**raw, "method": BN_FREE_METHOD}
    if BN_FREE_SETTINGS:
        chosen[BN_FREE_METHOD] = dict(BN_FREE_SETTINGS)
    terms = ", ".join(f"{BN_FREE_METHOD}.{k}={v:g}" for k, v in BN_FREE_SETTINGS.items())
    running = f"{BN_FREE_METHOD} with {terms}" if terms else BN_FREE_METHOD
    return chosen, (f"the teacher has no BatchNorm layer, so no BatchNorm prior can be read "
                    f"from it: running {running} (the best measured for such a teacher on "
                    "the Fashion-MNIST val split); --method NAME chooses another")
