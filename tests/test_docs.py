"""The documentation: the results page is what the committed data make, the user-facing files
speak of the project alone, the README stays short, and the site builds strictly."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import load_benchmark

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TABLES = ROOT / "results" / "tables"

# Internal milestones a user has no use for: work sessions ("stop 24", "stops 16-22").
MILESTONES = [re.compile(r"\bstops?[ -][0-9]+", re.IGNORECASE),
              re.compile(r"\bmilestones?\b", re.IGNORECASE)]


def user_files() -> list[Path]:
    """What a user reads: the docs, and the comments of the recipes and benchmark scripts."""
    return [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted(DOCS.rglob("*.md")),
            *sorted((ROOT / "configs").rglob("*.yaml")),
            *sorted((ROOT / "benchmarks").glob("*.py"))]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails if the file is not a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_results_page_is_what_the_committed_data_make():
    page = load_benchmark("results_page").render_page(TABLES)
    committed = (DOCS / "results.md").read_text()
    assert committed == page, "docs/results.md is stale: run python benchmarks/results_page.py"


def test_results_page_follows_the_data(tmp_path):
    """A changed figure in the data changes the page: the page is not a fixed text."""
    results_page = load_benchmark("results_page")
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


def test_results_page_names_tables_claims_and_hardware():
    page = (DOCS / "results.md").read_text()
    for title in ("Clean teacher", "20% of its labels flipped", "40% of its labels flipped",
                  "Which of the paper's claims hold here", "**Hardware.**"):
        assert title in page
    for figure in re.findall(r"\]\((img/[^)]+\.png)\)", page):
        width, height = png_size(DOCS / figure)
        assert width > 400 and height > 200


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None,
                    reason="matplotlib not installed (the plot extra)")
def test_figures_are_drawn_from_the_data(tmp_path):
    """The script draws every figure the page shows, at the committed figures' size."""
    results_page = load_benchmark("results_page")
    drawn = results_page.draw_figures(TABLES, tmp_path)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in drawn) == sorted(
        results_page.FIGURES.values())
    for path in drawn:
        committed = DOCS / path.relative_to(tmp_path)
        assert png_size(path) == png_size(committed)


def test_user_files_mention_no_internal_milestones():
    found = []
    for path in user_files():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if any(pattern.search(line) for pattern in MILESTONES):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not found, "internal milestones in user-facing files:\n" + "\n".join(found)


def test_milestone_check_catches_them():
    assert all(any(p.search(text) for p in MILESTONES)
               for text in ("as measured in Stop 24", "stops 16-22", "the stop-7 values",
                             "an internal milestone"))
    assert not any(p.search(text) for p in MILESTONES
                   for text in ("Ctrl-C stops the run after its round", "a stop-gap of 2 s"))


def test_readme_is_short_and_keeps_the_quick_start():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 220
    assert "scripts/quickstart.sh" in readme and "scripts/test.sh" in readme
    for guide in ("docs/guides/reproduce-cifar.md", "docs/guides/experiment-tracking.md"):
        assert guide in readme


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None,
                    reason="mkdocs not installed (the docs extra)")
def test_site_builds_strictly(tmp_path):
    """Every page in the nav exists, every link and anchor resolves, and the API reference
    finds the docstrings it names (mkdocs build --strict fails on any of them)."""
    result = subprocess.run(
        # no --quiet: it hides the warnings that --strict counts, and the build would pass
        [sys.executable, "-m", "mkdocs", "build", "--strict",
         "-f", str(ROOT / "mkdocs.yml"), "-d", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "api" / "index.html").read_text().count("dfkd.distill") > 0
