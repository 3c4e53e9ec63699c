"""``dfkd reproduce`` end to end on CPU: files in the official CIFAR-10/100 formats (random
pixels), zoo-layout teachers with random weights, every method on one pair of each
architecture family (ResNet on CIFAR-10, WRN on CIFAR-100), one round each."""

from __future__ import annotations

import json

import pytest
import torch
from cifar_files import random_cifar

from dfkd.commands import main
from dfkd.methods import get_method, list_methods
from dfkd.models import create_model
from dfkd.reproduce import PAIRS, label, official_rows, published_hours, recipe_rows

pytestmark = pytest.mark.usefixtures("one_thread")

SMOKE = ["epochs=1", "rounds=1", "g_steps=1", "kd_steps=1", "batch_size=4",
         "synthetic_probe=0", "sample_grid=0", "eval_batch_size=64", "batched_g=false",
         # random teachers score at chance: this smoke test distils them anyway
         "check_teacher=false",
         # bank methods: learn from the first epoch, and keep a tiny bank
         "fast.warmup=0", "cmi.bank_size=8", "deepinv.bank_size=8", "fast.bank_size=8",
         "nayer.warmup=0", "nayer.synthesis_batch=4", "nayer.bank_size=8",
         "adadfkd.negatives=8", "spaceshipnet.bank_size=8"]
SMOKE_PAIRS = ("c10_resnet34_resnet18", "c100_wrn40_2_wrn16_2")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """(data root, teachers folder): random CIFAR files and random zoo-layout teachers."""
    root = tmp_path_factory.mktemp("repro")
    data, teachers = root / "data", root / "pretrained"
    teachers.mkdir()
    random_cifar(data, 10, 60, 16, seed=0)
    random_cifar(data, 100, 60, 16, seed=1)
    torch.manual_seed(0)
    for key in SMOKE_PAIRS:
        pair = PAIRS[key]
        model = create_model(pair.teacher, 100 if pair.dataset == "cifar100" else 10, 3)
        torch.save({"state_dict": model.state_dict(), "epoch": 200, "best_acc1": 0.0},
                   teachers / pair.teacher_file)
    return data, teachers


def _smoke_args(data, teachers, out, *extra):
    return ["reproduce", "--data-root", str(data), "--teachers", str(teachers),
            "--pairs", ",".join(SMOKE_PAIRS), "--device", "cpu", "--no-progress",
            "--out", str(out), *[x for kv in SMOKE for x in ("--set", kv)], *extra]


def test_every_method_runs_one_round_and_the_table_renders(zoo, tmp_path, capsys):
    data, teachers = zoo
    out = tmp_path / "repro"
    assert main(_smoke_args(data, teachers, out)) == 0
    printed = capsys.readouterr().out
    table = (out / "table.md").read_text()
    assert printed.strip().endswith(table.strip())
    rows = {row for key in SMOKE_PAIRS for row in recipe_rows(PAIRS[key])}
    methods = {official_rows()[row][0] for row in rows}
    assert methods == set(list_methods()), \
        f"official recipes missing for {set(list_methods()) - methods}"
    # Every method ran on every smoke pair it has a recipe for, and finished its run.
    for key in SMOKE_PAIRS:
        for row in recipe_rows(PAIRS[key]):
            summary = json.loads((out / key / row / "seed0" / "summary.json").read_text())
            assert summary["epochs"] == 1 and summary["final_acc1"] is not None
            # the zoo's teacher gets the zoo's normalisation, in fp32
            assert summary["normalization"]["source"] == "zoo"
            assert summary["config"]["amp"] is False and summary["config"]["compile"] is False
    # The paper's columns, in the paper's order, with the pair labels and the precision.
    header = next(line for line in table.splitlines() if line.startswith("| pair"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[:8] == ["pair", "teacher", "CuDFKD", "DAFL", "ZSKT", "ADI", "DFQ", "CMI"]
    assert {"DFAD", "Fast-2", "Fast-5", "Fast-10", "NAYER", "AdaDFKD"} <= set(cells)
    assert "C10 R34->R18" in table and "C100 WRN40-2->WRN16-2" in table
    assert "precision fp32" in table and "NOT the full recipes" in table
    # Published numbers sit beside the measured ones (SPEC: CuDFKD 95.28 on C10 R34->R18).
    assert "(95.28)" in table and "(95.70)" in table
    assert "hours per run" in table
    record = json.loads((out / "table.json").read_text())
    assert record["precision"] == "fp32"
    assert {(r["pair"], r["method"]) for r in record["rows"] if r["seeds"] == 1} == \
        {(key, row) for key in SMOKE_PAIRS for row in recipe_rows(PAIRS[key])}
    # Repeating the command runs nothing again: every run is done.
    assert main([*_smoke_args(data, teachers, out), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    states = [line.split()[0] for line in printed.splitlines() if " seed " in line]
    assert states and set(states) == {"done"}
    assert "nothing to run: every run is done" in printed


def test_the_dry_run_adds_up_the_published_hours_of_the_runs_to_do(zoo, tmp_path, capsys):
    data, teachers = zoo
    out = tmp_path / "plan"
    assert main(["reproduce", "--teachers", str(teachers), "--out", str(out), "--dry-run",
                 "--pairs", "c10_resnet34_resnet18", "--methods", "cudfkd,fast,nayer",
                 "--seeds", "0,1"]) == 0
    printed = capsys.readouterr().out
    rows = {line.split()[0]: line for line in printed.splitlines()
            if line.startswith("  ") and " runs " in line}
    pair = PAIRS["c10_resnet34_resnet18"]
    cudfkd = 2 * published_hours(pair, "cudfkd")   # 5.48 h per run (CuDFKD's README)
    fast = 2 * published_hours(pair, "fast")
    assert f"{cudfkd:8.1f} h" in rows["cudfkd"] and f"{fast:8.1f} h" in rows["fast"]
    assert "2 without a published figure" in rows["nayer"]   # NAYER publishes C100 only
    assert f"{cudfkd + fast:8.1f} h (2 without a published figure)" in rows["total"]
    assert "6 runs" in rows["total"]


def test_missing_inputs_are_one_line(zoo, tmp_path, capsys):
    data, teachers = zoo
    assert main(["reproduce", "--teachers", str(teachers), "--out", str(tmp_path)]) == 2
    assert "--data-root DIR is required" in capsys.readouterr().err
    assert main(["reproduce", "--data-root", str(data), "--teachers", str(tmp_path),
                 "--pairs", "c10_resnet34_resnet18", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "has no cifar10_resnet34.pth" in err and "Traceback" not in err
    assert main(["reproduce", "--data-root", str(data), "--teachers", str(teachers),
                 "--pairs", "c10_r34", "--out", str(tmp_path / "o")]) == 2
    assert "unknown pair c10_r34" in capsys.readouterr().err


def test_labels_and_rows_are_the_methods_declarations():
    assert [label(r) for r in ("cudfkd", "deepinv", "fast", "fast5", "fast10")] == \
        ["CuDFKD", "ADI", "Fast-2", "Fast-5", "Fast-10"]
    assert label("kd_with_data") == "kd_with_data"   # a row no method declares
    rows = official_rows()
    assert next(iter(rows)) == "cudfkd"   # the row every other one is compared with
    assert {method for method, _ in rows.values()} == set(list_methods())
    for row, (method, official) in rows.items():
        assert official.row == row and official in get_method(method).official


def test_the_guides_published_table_is_the_declarations():
    from pathlib import Path

    from dfkd.reproduce import published_table
    page = (Path(__file__).resolve().parents[1] / "docs" / "guides" /
            "reproduce-cifar.md").read_text()
    start = "equal to it). -->\n\n"
    committed = page[page.index(start) + len(start):page.index("\n<!-- end of the generated")]
    assert committed == published_table(), \
        f"docs/guides/reproduce-cifar.md's table is stale; put this in its place:\n" \
        f"{published_table()}"
    # what the table must hold: CuDFKD's 95.28 in 5.48 h, SpaceshipNet's C100 R34->R18 only
    assert "| C10 R34->R18 | 95.70 | 95.28 (5.48 h) |" in committed
    assert committed.count("77.41") == 1
