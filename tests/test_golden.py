"""Behaviour is unchanged: each Fashion-MNIST recipe's golden run (tests/golden_runs.py: a
small teacher, 2 epochs of 2 rounds, seed 0, one thread, CPU) writes the metrics.jsonl
stored in tests/golden/, bit for bit. A change that is meant to change numbers rewrites the
references with ``python tests/golden_runs.py DIR --write`` and says why in its commit."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from golden_runs import ENV, GOLDEN, HERE, recipes, rows


@pytest.fixture(scope="module")
def golden_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("golden")
    subprocess.run([sys.executable, str(HERE / "golden_runs.py"), str(out)], check=True,
                   env={**os.environ, **ENV}, capture_output=True)
    return out


def test_every_recipe_has_a_reference():
    names = {p.stem.removesuffix("_lenet5") for p in recipes()}
    assert len(names) >= 8
    assert names == {p.stem for p in GOLDEN.glob("*.json")}


@pytest.mark.parametrize("name", [p.stem.removesuffix("_lenet5") for p in recipes()])
def test_golden_run_is_unchanged(golden_dir, name):
    expected = json.loads((GOLDEN / f"{name}.json").read_text())
    got = rows(golden_dir / name)
    assert [r["epoch"] for r in got] == [1, 2]
    assert got == expected   # JSON floats round-trip exactly: this is bit for bit
