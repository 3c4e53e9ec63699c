"""What the product knows about its methods comes from their classes: the docs' method table
and the site's navigation are what the registry makes, and every method declares the facts the
rest of dfkd reads."""

from __future__ import annotations

from pathlib import Path

import yaml

from dfkd.methods import bn_free_methods, get_method, list_methods
from dfkd.methods.catalog import method_nav, method_table

ROOT = Path(__file__).resolve().parents[1]
INDEX = ROOT / "docs" / "methods" / "index.md"
START = "tests/test_method_catalog.py keeps this copy equal to it). -->\n\n"
END = "\n<!-- end of the generated table -->"


def committed_table() -> str:
    page = INDEX.read_text()
    return page[page.index(START) + len(START):page.index(END)]


def test_the_docs_method_table_is_the_registrys():
    assert committed_table() == method_table(), \
        f"docs/methods/index.md's table is stale; put this in its place:\n{method_table()}"


def test_the_site_navigation_lists_every_method_page():
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    methods = next(entry["Methods"] for entry in nav if "Methods" in entry)
    expected = [{"Overview": "methods/index.md"}, *method_nav()]
    assert methods == expected, f"mkdocs.yml's Methods section should be: {expected}"


def test_every_method_declares_what_the_product_reads():
    for name in list_methods():
        cls = get_method(name)
        assert cls.name == name and cls.title and cls.paper and cls.code
        assert (ROOT / "docs" / "methods" / cls.docs).is_file(), name
        assert f"({cls.docs})" in method_table()
        assert all(official.row and official.label for official in cls.official)
    assert bn_free_methods() == [n for n in list_methods() if not get_method(n).needs_bn]
    assert "cudfkd" not in bn_free_methods() and "dafl" in bn_free_methods()
