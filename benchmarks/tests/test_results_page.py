"""benchmarks/results_page.py: docs/results.md and its figures are what the committed runs in
results/tables make, and follow them."""

from __future__ import annotations

import importlib.util
import json
import shutil
import struct
from pathlib import Path

import pytest
import results_page

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
TABLES = ROOT / "results" / "tables"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails if the file is not a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_results_page_is_what_the_committed_data_make():
    page = results_page.render_page(TABLES)
    committed = (DOCS / "results.md").read_text()
    assert committed == page, "docs/results.md is stale: run python benchmarks/results_page.py"


def test_which_method_page_is_what_the_committed_data_make():
    page = results_page.which_method_page(TABLES)
    committed = (DOCS / "which-method.md").read_text()
    assert committed == page, "docs/which-method.md is stale: run benchmarks/results_page.py"


def test_cost_ratios_are_to_the_yardstick_timed_beside_them(tmp_path):
    def costs(name: str, **hours: float) -> Path:
        path = tmp_path / name
        path.write_text(json.dumps({"rows": [{"row": r, "projected_hours": h}
                                             for r, h in hours.items()]}))
        return path

    ratios = results_page.cost_ratios([costs("a.json", cmi=200.0, fast=100.0),
                                       costs("b.json", nayer=30.0, fast=20.0)])
    assert ratios == {"nayer": 1.5, "cmi": 2.0}   # cheapest first, fast itself left out


def test_results_page_follows_the_data(tmp_path):
    """A changed figure in the data changes the page: the page is not a fixed text."""
    tables = tmp_path / "tables"
    shutil.copytree(TABLES, tables, ignore=shutil.ignore_patterns("*.pt", "*.png"))
    aggregate_path = tables / "clean" / "results.json"
    aggregate = json.loads(aggregate_path.read_text())
    cmi = next(row for row in aggregate["methods"] if row["method"] == "cmi")
    cmi["final_acc1"] = 12.345
    aggregate_path.write_text(json.dumps(aggregate))
    page = results_page.render_page(tables)
    assert page != results_page.render_page(TABLES)
    assert "| CMI (`cmi`) | 5 | 12.35 ± " in page


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                    reason="matplotlib not installed (the plot extra)")
def test_figures_are_drawn_from_the_data(tmp_path):
    """The script draws every figure the page shows, at the committed figures' size."""
    drawn = results_page.draw_figures(TABLES, tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in drawn) == sorted(
        results_page.FIGURES.values())
    for path in drawn:
        committed = DOCS / path.relative_to(tmp_path)
        assert png_size(path) == png_size(committed)
