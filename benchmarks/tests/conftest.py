"""The benchmark scripts' own tests (scripts/test.sh runs them after the product's tests):
the scripts in benchmarks/ import by their names here."""

from __future__ import annotations

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BENCHMARKS))
