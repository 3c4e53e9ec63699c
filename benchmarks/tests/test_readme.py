"""benchmarks/README.md lists every script of benchmarks/, and only those."""

from __future__ import annotations

import re
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1]


def test_readme_lists_every_script():
    readme = (BENCHMARKS / "README.md").read_text()
    listed = set(re.findall(r"^\| `([\w.]+\.(?:py|sh))` \|", readme, re.MULTILINE))
    scripts = {p.name for p in BENCHMARKS.iterdir() if p.suffix in (".py", ".sh")}
    assert listed == scripts
