"""A method written outside dfkd's package (tests/toy_method.py, one file) joins the product by
registering: ``dfkd bench --methods`` runs it, ``dfkd reproduce`` lists the official recipes it
declares, ``dfkd distill --method`` trains with it, and the docs' method table has its row.

The toy is registered in a Python of its own, so this process's registry (which the other
tests read) never holds it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def with_toy(code: str, cwd: Path) -> str:
    """The output of ``code`` run in a new Python that has imported tests/toy_method.py."""
    script = f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nimport toy_method\n{code}"
    done = subprocess.run([sys.executable, "-c", script], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.usefixtures("one_thread")
def test_a_registered_method_is_everywhere_methods_are_listed(fmnist_teacher, tmp_path):
    teachers = tmp_path / "zoo"
    teachers.mkdir()
    (teachers / "cifar10_resnet34.pth").write_bytes(b"")   # a dry run reads no teacher
    commands = [
        ["bench", "--config", "fashion_mnist/bench", "--methods", "dafl,toy", "--dry-run",
         "--out", str(tmp_path / "bench")],
        ["reproduce", "--teachers", str(teachers), "--pairs", "c10_resnet34_resnet18",
         "--methods", "cudfkd,toy", "--dry-run", "--out", str(tmp_path / "reproduce")],
        ["distill", "--teacher", str(fmnist_teacher), "--method", "toy", "--no-progress",
         "--out", str(tmp_path / "run"), *[x for kv in ("epochs=1", "rounds=2", "kd_steps=2",
                                                        "batch_size=16", "sample_grid=0",
                                                        "synthetic_probe=0")
                                           for x in ("--set", kv)]],
    ]
    out = with_toy(f"""
from dfkd.commands import main
from dfkd.methods.catalog import method_nav, method_table
from dfkd.reproduce import PAIRS, label, published
for argv in {commands!r}:
    assert main(argv) == 0
print(method_table())
print(method_nav())
print(label("toy"), published(PAIRS["c10_resnet34_resnet18"], "toy"))
""", tmp_path)
    # dfkd bench: the toy's row runs the engine defaults (it has no Fashion-MNIST recipe)
    assert f"new  toy seed 0  -> {tmp_path / 'bench' / 'toy' / 'seed0'}" in out
    # dfkd reproduce: the recipe it declares, in its column after CuDFKD's
    bench = (tmp_path / "reproduce" / "c10_resnet34_resnet18" / "bench.yaml").read_text()
    assert str(TESTS / "toy_recipes" / "cifar10" / "toy_resnet34_resnet18.yaml") in bench
    pair = "new  c10_resnet34_resnet18"
    assert out.index(f"{pair}  cudfkd seed 0") < out.index(f"{pair}  toy seed 0")
    # dfkd distill: the engine trains with it
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["method"] == "toy" and summary["config"]["toy"] == {"w_adv": 1.0}
    # the docs: its row in the method table and its page in the navigation
    assert "| [Toy](toy.md) (`toy`) | one generator | its logits only | none: a made-up" in out
    assert "{'Toy': 'methods/toy.md'}" in out
    assert "Toy-1 12.34" in out
