"""benchmarks/fmnist_claims.py: the paper's claims as paired differences over the tables'
seeds, on hand-made result folders whose verdicts are known."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BENCHMARKS, load_benchmark

SCRIPT = BENCHMARKS / "fmnist_claims.py"


def _write(tables: Path, teacher: str, name: str, accs: list[float], **extra) -> None:
    for seed, acc in enumerate(accs):
        folder = tables / teacher / name / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text(json.dumps({"final_acc1": acc, **extra}))


def test_claims_by_hand(tmp_path):
    tables = tmp_path / "tables"
    # cud beats a by 2 +- 0.1 with the clean teacher and by 4 +- 0.1 with 20% noise, so it
    # also loses 2 points less; against b it is even on accuracy (+-1: undecided).
    _write(tables, "clean", "cud", [80.0, 81.0, 79.0], seconds_to_90pct=10.0)
    _write(tables, "clean", "a", [78.0, 78.9, 77.1], seconds_to_90pct=20.0)
    _write(tables, "clean", "b", [79.0, 82.0, 78.0], seconds_to_90pct=5.0)
    _write(tables, "noise20", "cud", [78.0, 79.0, 77.0])
    _write(tables, "noise20", "a", [74.0, 74.9, 73.1])
    _write(tables, "noise40", "cud", [70.0])
    claims = load_benchmark("fmnist_claims").claims
    rows, overall = claims(tables, "cud", ["a", "b"], [0, 1, 2])
    found = {(r[1], r[2]): (r[3], float(r[4]), r[6]) for r in rows}
    assert found[("final Acc@1, clean teacher", "cud - a")] == (3, pytest.approx(2.0),
                                                                 "supported")
    assert found[("final Acc@1, clean teacher", "cud - b")][2] == "undecided"
    # lower is better for time: 10 s faster than a, 5 s slower than b on every seed (a
    # constant difference has a zero-width interval, so it decides)
    assert found[("seconds to 90% of final Acc@1", "cud - a")][1:] == (-10.0, "supported")
    assert found[("seconds to 90% of final Acc@1", "cud - b")][1:] == (5.0, "not supported")
    assert found[("final Acc@1, teacher with 20% flipped labels", "cud - a")][1] == \
        pytest.approx(4.0)
    loss = found[("Acc@1 lost to the 20% noisy teacher (clean - noisy)", "cud - a")]
    assert loss[1] == pytest.approx(-2.0) and loss[2] == "supported"
    # b has no noisy runs, so it is left out there; nothing pairs on the 40% teacher
    assert ("final Acc@1, teacher with 20% flipped labels", "cud - b") not in found
    assert not any("40%" in r[1] for r in rows)
    verdict = {r[1]: r[4] for r in overall}
    assert verdict["final Acc@1, clean teacher"] == "undecided"  # supported, undecided
    assert verdict["final Acc@1, teacher with 20% flipped labels"] == "supported"


def test_claim_fails_when_a_baseline_is_better(tmp_path):
    tables = tmp_path / "tables"
    _write(tables, "clean", "cud", [70.0, 71.0, 72.0])
    _write(tables, "clean", "a", [75.0, 76.1, 76.9])
    _write(tables, "clean", "b", [60.0, 61.0, 62.1])
    rows, overall = load_benchmark("fmnist_claims").claims(tables, "cud", ["a", "b"], [0, 1, 2])
    assert [r[6] for r in rows if r[1] == "final Acc@1, clean teacher"] == [
        "not supported", "supported"]
    assert overall[0][4] == "not supported"


def test_missing_tables_are_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--tables", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "has no bench for clean, noise20, noise40" in result.stderr
    assert "Traceback" not in result.stderr
