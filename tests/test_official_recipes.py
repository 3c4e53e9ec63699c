"""The CIFAR recipes (configs/cifar10/, configs/cifar100/) against the table of the official values
they come from (configs/official/recipes.yaml), and the official rows and published results the
methods declare (read by the reproduction command).

Every key of every recipe is held to the table with exact equality, every recipe file must have an
entry and every entry a file, and every value's comment must cite the lines the table names: a
change to a recipe, to the table, or to a comment alone fails here. The published results are
checked for shape, range and citation.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from dfkd import recipes
from dfkd.config import flatten, load_config, read_yaml
from dfkd.methods import get_method, list_methods
from dfkd.reproduce import PAIRS, official_rows

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
TABLE = CONFIGS / "official" / "recipes.yaml"
FOLDERS = ("cifar10", "cifar100")
# What names the pair: checked against the table's pairs and rows, not its settings.
PAIR_KEYS = frozenset({"method", "dataset", "teacher_model", "student"})
# "<owner>/<repository> <path>:L<line>[-L<line>]"
REFERENCE = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+) (?P<path>\S+):L(?P<lo>\d+)(?:-L(?P<hi>\d+))?$")


@cache
def table() -> dict[str, Any]:
    return read_yaml(TABLE)


def recipe_files() -> list[str]:
    return sorted(f"{folder}/{p.name}" for folder in FOLDERS
                  for p in (CONFIGS / folder).glob("*.yaml"))


def same(a: Any, b: Any) -> bool:
    """Equal and of the same kind: a bool is not a number (True == 1 in Python) and a string is
    not a number; an int may equal a float (YAML's 20 and 20.0 are one dfkd setting)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def mismatches(name: str, raw: dict[str, Any], entry: dict[str, Any]) -> list[str]:
    """Every way recipe ``raw`` (file ``name``) differs from its table ``entry``."""
    found = []
    method, pair = official_rows()[entry["row"]][0], table()["pairs"][entry["pair"]]
    expected_pair = {"method": method, "dataset": pair["dataset"],
                     "teacher_model": pair["teacher"], "student": pair["student"]}
    for key, value in expected_pair.items():
        if not same(raw.get(key), value):
            found.append(f"{key}: recipe {raw.get(key)!r}, table {value!r}")
    flat = flatten(raw)
    official = entry["settings"]
    extras = entry.get("not_official", {})
    for key, setting in official.items():
        if key not in flat:
            found.append(f"{key}: missing from the recipe (official {setting['value']!r})")
        elif not same(flat[key], setting["value"]):
            found.append(f"{key}: recipe {flat[key]!r}, official {setting['value']!r} "
                         f"({'; '.join(setting['from'])})")
    for key, extra in extras.items():
        if key not in flat or not same(flat[key], extra["value"]):
            found.append(f"{key}: recipe {flat.get(key)!r}, table (not official) "
                         f"{extra['value']!r}")
    for key in sorted(set(flat) - set(official) - set(extras) - PAIR_KEYS):
        found.append(f"{key}: in the recipe but not in the table")
    return found


def value_comments(text: str) -> dict[str, str]:
    """Dotted key -> the comment on its line, for a recipe written one key per line (top-level
    keys, and sections of indented keys)."""
    comments: dict[str, str] = {}
    section = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        key, _, rest = line.strip().partition(":")
        comment = rest.partition("#")[2].strip()
        if indent == 0:
            section = key if not rest.partition("#")[0].strip() else None
            comments[key] = comment
        elif section is not None:
            comments[f"{section}.{key}"] = comment
    return comments


def test_every_recipe_file_has_an_entry_and_every_entry_a_file():
    files, entries = set(recipe_files()), set(table()["recipes"])
    assert not files - entries, f"recipes without official values: {sorted(files - entries)}"
    assert not entries - files, f"table entries without a recipe file: {sorted(entries - files)}"


@pytest.mark.parametrize("name", sorted(table()["recipes"]))
def test_recipe_is_the_official_values_and_loads(name):
    entry = table()["recipes"][name]
    path = CONFIGS / name
    raw = read_yaml(path)
    assert mismatches(name, raw, entry) == []
    # The name is the lookup key (dfkd.recipes' "{method}_resnet34_resnet18.yaml" pattern).
    pair = table()["pairs"][entry["pair"]]
    assert name == f"{pair['dataset']}/{entry['row']}_{pair['teacher']}_{pair['student']}.yaml"
    cfg = load_config(raw)   # dfkd's own validation: keys, types, ranges, the method's Settings
    assert cfg.method == official_rows()[entry["row"]][0]
    assert (cfg.dataset, cfg.teacher_model, cfg.student) == \
        (pair["dataset"], pair["teacher"], pair["student"])


@pytest.mark.parametrize("name", sorted(table()["recipes"]))
def test_each_value_comment_cites_the_tables_sources(name):
    entry = table()["recipes"][name]
    text = (CONFIGS / name).read_text()
    script = REFERENCE.match(entry["script"])
    assert script and script["path"] in text, "the header names the official script"
    comments = value_comments(text)
    for key, setting in entry["settings"].items():
        comment = comments.get(key, "")
        for source in setting["from"]:
            ref = REFERENCE.match(source)
            # "<path>:L10,L9" or "<path>:L49-L63": the path, then a list holding this line
            lines = rf"{re.escape(ref['path'])}:(?:L\d+(?:-L\d+)?,)*L{ref['lo']}(?![\d])"
            assert re.search(lines, comment), \
                f"{key}: its comment {comment!r} does not cite {source}"


def test_sources_are_well_formed_and_pinned():
    t = table()
    repos = t["sources"]
    for repo, info in repos.items():
        assert re.fullmatch(r"[0-9a-f]{40}", info["commit"]), repo
    cited = [entry["script"] for entry in t["recipes"].values()]
    cited += [s for entry in t["recipes"].values() for setting in entry["settings"].values()
              for s in setting["from"]]
    cited += [s for entry in t["recipes"].values() for item in entry.get("unmapped", [])
              for s in item["from"]]
    cited += [p.teacher_acc1.source for p in PAIRS.values()]
    cited += [number.source for _, official in official_rows().values()
              for numbers in (official.acc1, official.hours) for number in numbers.values()]
    for source in cited:
        ref = REFERENCE.match(source)
        assert ref, f"not '<repository> <path>:L<line>': {source!r}"
        assert ref["repo"] in repos, f"{source}: repository not in sources"
        assert ref["hi"] is None or int(ref["hi"]) >= int(ref["lo"]), source
    for entry in t["recipes"].values():
        assert entry["row"] in official_rows() and entry["pair"] in t["pairs"]
        if "script_pair" in entry:   # only when the script was written for another pair
            assert entry["script_pair"] != entry["pair"]


def test_published_results_cover_the_reference_table():
    reference = {f"{info['dataset']}/{info['teacher']}_{info['student']}"
                 for info in table()["pairs"].values() if info["in_reference_table"]}
    assert {f"{p.dataset}/{p.teacher}_{p.student}" for p in PAIRS.values()} == reference
    assert len(PAIRS) == 5
    rows = official_rows()
    for row, (method, official) in rows.items():
        assert official in get_method(method).official and official.label, row
        assert set(official.acc1) <= set(PAIRS), row   # NAYER publishes one pair only
        assert set(official.hours) <= set(PAIRS), row
        for key, number in official.acc1.items():
            assert 0 < number.value <= PAIRS[key].teacher_acc1.value, f"{key} {row}"
        assert all(number.value > 0 for number in official.hours.values()), row
    # Fast's variants are in order of their cost
    for key in PAIRS:
        hours = [rows[row][1].hours[key].value for row in ("fast", "fast5", "fast10")]
        assert hours == sorted(hours)
    # numbers the papers' tables quote for C10 R34->R18
    c10 = PAIRS["c10_resnet34_resnet18"]
    assert c10.teacher_acc1.value == 95.7 and rows["cudfkd"][1].acc1[c10.key].value == 95.28
    assert rows["deepinv"][1].hours[c10.key].value == 42.1
    assert rows["cudfkd"][1].hours[c10.key].value == 5.48
    # the CuDFKD paper's columns (the rows its README publishes) come first
    cudfkd_readme = [row for row, (_, o) in rows.items()
                     if any(n.source.startswith("ljrprocc/DataFree ") for n in o.acc1.values())]
    assert list(rows)[:len(cudfkd_readme)] == cudfkd_readme


def test_every_method_finds_its_cifar10_recipe_by_default():
    # A method's own row (the one named as the method) is its default CIFAR-10 recipe.
    methods = {method for row, (method, _) in official_rows().items() if row == method}
    assert methods and methods <= set(list_methods())
    for method in sorted(methods):
        choice = recipes.recipe_for(method, (3, 32, 32))
        assert choice is not None, method
        assert choice.name == f"configs/cifar10/{method}_resnet34_resnet18.yaml"
        assert read_yaml(choice.path)["method"] == method
    # The plain fast row is Fast-2.
    assert official_rows()["fast"][1].label == "Fast-2"
    fast = table()["recipes"]["cifar10/fast_resnet34_resnet18.yaml"]
    assert fast["settings"]["g_steps"]["value"] == 2


@pytest.mark.parametrize("key, value", [("student_optim.lr", 0.2), ("dafl.w_ent", 5.0),
                                        ("batched_g", False), ("dafl.tau", "1"),
                                        ("generator.betas", [0.9, 0.99])])
def test_a_changed_recipe_value_is_caught(key, value):
    name = "cifar10/dafl_resnet34_resnet18.yaml"
    raw = read_yaml(CONFIGS / name)
    node = raw
    *sections, leaf = key.split(".")
    for section in sections:
        node = node[section]
    node[leaf] = value
    found = mismatches(name, raw, table()["recipes"][name])
    assert len(found) == 1 and found[0].startswith(f"{key}:")


def test_a_recipe_key_the_table_does_not_know_is_caught():
    name = "cifar100/cmi_resnet34_resnet18.yaml"
    raw = yaml.safe_load((CONFIGS / name).read_text())
    raw["cmi"]["negatives"] = raw["cmi"]["negatives"]   # unchanged: still clean
    assert mismatches(name, raw, table()["recipes"][name]) == []
    raw["student_ema"] = 0.999
    del raw["cmi"]["cr_tau"]
    found = mismatches(name, raw, table()["recipes"][name])
    assert sorted(f.split(":")[0] for f in found) == ["cmi.cr_tau", "student_ema"]
