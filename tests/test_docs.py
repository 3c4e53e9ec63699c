"""The documentation: the results page shows its tables, figures and hardware (that it is
what the committed data make is benchmarks/tests/test_results_page.py's check), the
user-facing files speak of the project alone, the README stays short, and the site builds
strictly."""

from __future__ import annotations

import importlib.util
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

# Internal milestones a user has no use for: work sessions ("stop 24", "stops 16-22").
MILESTONES = [re.compile(r"\bstops?[ -][0-9]+", re.IGNORECASE),
              re.compile(r"\bmilestones?\b", re.IGNORECASE)]


def user_files() -> list[Path]:
    """What a user reads: the docs, and the comments of the recipes and benchmark scripts."""
    return [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted(DOCS.rglob("*.md")),
            *sorted((ROOT / "configs").rglob("*.yaml")), ROOT / "benchmarks" / "README.md",
            *sorted((ROOT / "benchmarks").glob("*.py"))]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails if the file is not a PNG."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


def test_results_page_names_tables_claims_and_hardware():
    page = (DOCS / "results.md").read_text()
    for title in ("Clean teacher", "20% of its labels flipped", "40% of its labels flipped",
                  "Which of the paper's claims hold here", "**Hardware.**"):
        assert title in page
    for figure in re.findall(r"\]\((img/[^)]+\.png)\)", page):
        width, height = png_size(DOCS / figure)
        assert width > 400 and height > 200


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


def test_paper_titles_are_quoted_as_the_methods_declare_them():
    """Each method's paper title is written once, on its class (``paper``); where a page
    names it in italics, the words are the same (a misquoted title fails)."""
    from dfkd.methods import get_method, list_methods
    titles = {name: re.search(r"\*(.+?)\*", get_method(name).paper).group(1)
              for name in list_methods()}
    quoted = []
    for path in (ROOT / "README.md", *sorted(DOCS.rglob("*.md"))):
        text = " ".join(path.read_text().split())   # titles may wrap across lines
        quoted += [(path, m) for m in re.findall(r"\*([^*]{25,}?)\*", text)]
    for name, title in titles.items():
        head = " ".join(title.split()[:3])   # the pages that quote this paper's title
        for path, text in quoted:
            if text.startswith(head):
                assert text == title, f"{path.relative_to(ROOT)} quotes {name}'s paper as " \
                                      f"'{text}', its class as '{title}'"


def test_the_cudfkd_page_lists_every_cudfkd_recipe_with_its_values():
    """The recipe table of docs/methods/cudfkd.md is the recipe files' values, one row per
    CuDFKD recipe of CIFAR-10/100 and Tiny-ImageNet (a missing pair or a changed value fails)."""
    import yaml
    names = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "tiny_imagenet": "Tiny-ImageNet"}

    def cell(value) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)

    expected = []
    for folder, title in names.items():
        for path in sorted((ROOT / "configs" / folder).glob("cudfkd_*.yaml")):
            raw = yaml.safe_load(path.read_text())
            c = raw["cudfkd"]
            expected.append(
                f"| {title} {raw['teacher_model']} → {raw['student']} | {raw['batch_size']} | "
                f"{raw['epochs']} | {cell(c['tau'])} | {cell(c['w_adv0'])} | "
                f"{cell(c['grad_adv'])} | {cell(c['begin'])} / {cell(c['end'])} | "
                f"{cell(c['lambda_0'])} | {cell(c['pace'])} | {c['kd_loss']} |")
    page = (DOCS / "methods" / "cudfkd.md").read_text().splitlines()
    table = [line for line in page if line.startswith(tuple(f"| {t} " for t in names.values()))]
    assert table == expected


def test_the_api_page_shows_docstrings_without_sphinx_roles():
    """mkdocstrings renders docstrings as Markdown: a Sphinx role (:func:`x`) would show as
    literal text on the API page, so the objects it shows have none."""
    import importlib
    shown = re.findall(r"^::: ([\w.]+)", (DOCS / "api.md").read_text(), re.MULTILINE)
    assert shown
    for name in shown:
        module, _, attr = name.rpartition(".")
        doc = getattr(importlib.import_module(module), attr).__doc__ or ""
        assert not re.search(r":\w+:`", doc), f"{name}'s docstring has a Sphinx role"
