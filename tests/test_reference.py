"""The reference pages are made from the code (dfkd.reference): the committed ones are what it
makes now, every key of a run config shows its real default and range, every command shows
every flag and default of its parser, and a changed default changes the page."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from dfkd import reference
from dfkd.commands import parser, train_teacher
from dfkd.config import RunConfig
from dfkd.methods import get_method, list_methods
from dfkd.ranges import Range

ROOT = Path(__file__).resolve().parent.parent
PAGES = {"settings.md": reference.settings_markdown, "cli.md": reference.cli_markdown}
# A table cell: code spans (which may hold a "|"), escaped characters, or plain ones.
CELL = re.compile(r"((?:`[^`]*`|\\.|[^|`\\])*)\|")


def table_rows(markdown: str) -> dict[str, list[str]]:
    """The cells of each table row of a page, by its first cell without backticks."""
    rows = [[cell.strip() for cell in CELL.findall(line[1:])]
            for line in markdown.splitlines() if line.startswith("| `")]
    return {cells[0].strip("`"): cells for cells in rows}


def run_config_keys() -> dict[str, tuple[dataclasses.Field, object]]:
    """Every key of a run config, its field and default, found from the dataclasses
    themselves: the keys of RunConfig and its sections, then each method's."""
    def keys(settings: object, prefix: str = ""):
        for field in dataclasses.fields(settings):
            value = getattr(settings, field.name)
            if dataclasses.is_dataclass(value):
                yield from keys(value, f"{prefix}{field.name}.")
            elif field.name != "method_settings":
                yield prefix + field.name, (field, value)
    methods = (keys(get_method(name).Settings(), name + ".") for name in list_methods())
    return dict(kv for found in (keys(RunConfig()), *methods) for kv in found)


def command_section(page: str, name: str) -> str:
    return page.split(f"\n## dfkd {name}\n")[1].split("\n## ")[0]


def subcommands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("name", sorted(PAGES))
def test_the_committed_pages_are_what_the_code_makes(name):
    committed = ROOT / "docs" / "reference" / name
    assert committed.is_file() and committed.read_text() == PAGES[name](), (
        f"docs/reference/{name} is not what the code makes now; run "
        f"`{reference.COMMAND}` from the repository root and commit the page")


def test_every_key_shows_its_default_and_range():
    rows = table_rows(reference.settings_markdown())
    keys = run_config_keys()
    assert set(rows) == set(keys)
    for key, (field, default) in keys.items():
        _, _, shown, allowed, _ = rows[key]
        assert yaml.safe_load(shown.strip("`")) == \
            (list(default) if isinstance(default, tuple) else default), key
        bounds = [v for v in field.metadata.values() if isinstance(v, Range)]
        if bounds:
            assert allowed == f"`{bounds[0]}`", key


def test_every_method_has_its_section():
    page = reference.settings_markdown()
    for name in list_methods():
        cls = get_method(name)
        assert f"## `{name}`: [{cls.title}](../methods/{cls.docs})\n" in page
    assert "No settings." in page.split("## `dfad`")[1].split("## ")[0]   # DFAD has none


def test_meanings_and_choices_come_from_the_source():
    rows = table_rows(reference.settings_markdown())
    assert rows["rounds"][4] == "rounds per epoch"   # the comment on the field's line
    assert rows["student_ema"][4].startswith("Decay of an exponential moving average")
    assert rows["cudfkd.ent_tau"][4].startswith("temperature of H(p_bar) alone")
    assert rows["eval_split"][3] == "one of `val`, `test`"
    assert rows["device"][3] == "one of `auto`, `cpu`, `cuda`"
    assert rows["cudfkd.grad_adv"][4] == r"added to w_adv after each epoch e, " \
        r"E\*begin &lt; e &lt; E\*end"   # no emphasis, no HTML


def test_every_command_shows_every_flag_and_default():
    page = reference.cli_markdown()
    for name, sp in subcommands().items():
        assert f"[`{name}`](#dfkd-{name})" in page
        flags = set(re.findall(r"(?<![\w-])--[a-z][\w-]*", sp.format_usage())) - {"--help"}
        rows = table_rows(command_section(page, name))
        assert flags == {flag.split()[0] for flag in rows if flag.startswith("--")}, name
        for flag, (_, shown, _) in rows.items():
            if not flag.startswith("--"):
                continue
            default = sp.get_default(flag.split()[0].lstrip("-").replace("-", "_"))
            if shown != "required" and default not in (None, argparse.SUPPRESS, []) \
                    and default is not False:
                assert shown == f"`{default}`", (name, flag)


def test_a_changed_default_changes_the_pages(monkeypatch):
    monkeypatch.setattr(RunConfig.__dataclass_fields__["epochs"], "default", 41)
    monkeypatch.setattr(get_method("cudfkd").Settings.__dataclass_fields__["tau"],
                        "default", 4.0)
    build = train_teacher.add_parser

    def with_new_default(sub):
        sp = build(sub)
        sp.set_defaults(epochs=11)
        return sp

    monkeypatch.setattr(train_teacher, "add_parser", with_new_default)
    rows = table_rows(reference.settings_markdown())
    assert rows["epochs"][2] == "`41`" and rows["cudfkd.tau"][2] == "`4.0`"
    teacher_flags = table_rows(command_section(reference.cli_markdown(), "train-teacher"))
    assert teacher_flags["--epochs EPOCHS"][1] == "`11`"
    for name, make in PAGES.items():
        assert make() != (ROOT / "docs" / "reference" / name).read_text()


def test_main_writes_both_pages_from_the_repository_root(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="run it from the repository root"):
        reference.main()
    (tmp_path / "docs").mkdir()
    reference.main()
    for name, make in PAGES.items():
        assert (tmp_path / "docs" / "reference" / name).read_text() == make()
    assert "wrote docs/reference/cli.md" in capsys.readouterr().out
