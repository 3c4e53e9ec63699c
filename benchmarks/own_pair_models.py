"""The models of benchmarks/own_pair.py, any_model_matrix.py and plain_student_lr.py: a
user's own teacher and students, outside dfkd's zoo, which tests/own_models.py defines (the
tests use them too).

dfkd loads them by file spec (``benchmarks/own_pair_models.py:make_teacher``), as a user's
own models are loaded. The BatchNorm pair takes 28x28 grey images (no padding to 32 px).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from own_models import (  # noqa: E402,F401  (the models, by their names here)
    ConvNeXtLN,
    make_convnext_ln,
    make_groupnorm_teacher,
    make_plain_student,
    make_student,
    make_teacher,
)
