"""benchmarks/fmnist_claims.py: the paper's claims as paired differences over the tables'
seeds, on hand-made result folders whose verdicts are known."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import fmnist_claims
import pytest

SCRIPT = Path(fmnist_claims.__file__)


def _write(tables: Path, teacher: str, name: str, accs: list[float], **extra) -> None:
    """One summary.json per seed; an ``extra`` list gives one value per seed."""
    for seed, acc in enumerate(accs):
        folder = tables / teacher / name / f"seed{seed}"
        folder.mkdir(parents=True)
        more = {k: v[seed] if isinstance(v, list) else v for k, v in extra.items()}
        (folder / "summary.json").write_text(json.dumps({"final_acc1": acc, **more}))


def test_claims_by_hand(tmp_path):
    tables = tmp_path / "tables"
    # cud beats a by 2 +- 0.1 with the clean teacher and by about 4 with 20% noise, so it
    # also loses about 2 points less; against b it is even on accuracy (+-1: undecided).
    _write(tables, "clean", "cud", [80.0, 81.0, 79.0], seconds_to_90pct=[10.0, 11.0, 9.0])
    _write(tables, "clean", "a", [78.0, 78.9, 77.1], seconds_to_90pct=[20.0, 20.5, 19.8])
    _write(tables, "clean", "b", [79.0, 82.0, 78.0], seconds_to_90pct=5.0)
    _write(tables, "noise20", "cud", [78.0, 79.2, 76.9])
    _write(tables, "noise20", "a", [74.0, 74.9, 73.1])
    _write(tables, "noise40", "cud", [70.0])
    rows, overall = fmnist_claims.claims(tables, "cud", ["a", "b"], [0, 1, 2])
    found = {(r[1], r[2]): (r[3], float(r[4]) if r[3] else None, r[6]) for r in rows}
    assert found[("final Acc@1, clean teacher", "cud - a")] == (3, pytest.approx(2.0),
                                                                 "supported")
    assert found[("final Acc@1, clean teacher", "cud - b")][2] == "undecided"
    # lower is better for time: about 10 s faster than a, 4-6 s slower than b
    assert found[("seconds to 90% of final Acc@1", "cud - a")][1:] == (
        pytest.approx(-10.1), "supported")
    assert found[("seconds to 90% of final Acc@1", "cud - b")][1:] == (5.0, "not supported")
    assert found[("final Acc@1, teacher with 20% flipped labels", "cud - a")][1] == \
        pytest.approx(12.1 / 3, abs=0.005)
    loss = found[("Acc@1 lost to the 20% noisy teacher (clean - noisy)", "cud - a")]
    assert loss[1] == pytest.approx(-6.1 / 3, abs=0.005) and loss[2] == "supported"
    # b has no noisy runs: its row says so; cud has one seed on the 40% teacher, nothing else
    assert found[("final Acc@1, teacher with 20% flipped labels", "cud - b")] == (
        0, None, "no paired runs")
    assert [r[6] for r in rows if "40%" in r[1]] == ["no paired runs"] * 4
    verdict = {r[1]: (r[3], r[4]) for r in overall}
    assert verdict["final Acc@1, clean teacher"] == ("1 supported, 1 undecided", "undecided")
    # supported against a, but b is missing: never "supported" against all
    assert verdict["final Acc@1, teacher with 20% flipped labels"] == (
        "1 supported, 1 no paired runs", "undecided")


def test_every_measure_points_the_way_the_bench_does():
    from dfkd.bench import CLAIMS
    measures = fmnist_claims.MEASURES
    assert {column for *_, column, _, loss in measures if not loss} == set(CLAIMS)
    assert all(higher == CLAIMS[column] for *_, column, higher, loss in measures if not loss)
    assert all(not higher for *_, higher, loss in measures if loss)  # a loss: lower is better


def test_claim_fails_when_a_baseline_is_better(tmp_path):
    tables = tmp_path / "tables"
    _write(tables, "clean", "cud", [70.0, 71.0, 72.0])
    _write(tables, "clean", "a", [75.0, 76.1, 76.9])
    _write(tables, "clean", "b", [60.0, 61.0, 62.1])
    rows, overall = fmnist_claims.claims(tables, "cud", ["a", "b"], [0, 1, 2])
    assert [r[6] for r in rows if r[1] == "final Acc@1, clean teacher"] == [
        "not supported", "supported"]
    assert overall[0][4] == "not supported"


def test_a_row_with_no_runs_is_reported_not_a_crash(tmp_path):
    for teacher in ("clean", "noise20", "noise40"):
        _write(tmp_path, teacher, "a", [78.0, 79.0, 77.0])
    result = subprocess.run([sys.executable, str(SCRIPT), "--tables", str(tmp_path),
                             "--first", "cud", "--baselines", "a"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    claims_md = (tmp_path / "claims.md").read_text()
    assert claims_md.count("no runs of cud") == 8 and "16%" in claims_md


def test_missing_tables_are_a_clear_error(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--tables", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "has no bench for clean, noise20, noise40" in result.stderr
    assert "Traceback" not in result.stderr
