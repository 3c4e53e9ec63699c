"""benchmarks/recipe_wallclock.py: a few real epochs of a recipe next to recipe_speed's
projection, as a table row and a JSON file (a tiny CPU smoke run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_recipe_wallclock_smoke(tmp_path):
    out = tmp_path / "result.json"
    result = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "recipe_wallclock.py"), "--config",
         str(ROOT / "configs/fashion_mnist/cudfkd_lenet5.yaml"), "--set", "rounds=2",
         "--set", "kd_steps=2", "--set", "batch_size=16", "--set", "synthetic_probe=16",
         "--set", "batched_g=true", "--epochs", "2", "--steps", "1", "--test-size", "64",
         "--out", str(tmp_path / "run"), "--json-out", str(out)],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    row = [line for line in result.stdout.splitlines() if line.startswith("| cudfkd_lenet5")]
    assert len(row) == 1
    data = json.loads(out.read_text())
    assert len(data["epoch_s"]) == 2 and data["batched_g"] is True
    assert data["wallclock_hours"] == data["epochs"] * data["steady_epoch_s"] / 3600
    assert data["ratio"] > 0 and data["projected_hours"] > 0
    # The real loop ran: metrics for 2 epochs and a checkpoint in the run folder.
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
