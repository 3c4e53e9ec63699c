"""The reference pages made from the code, so they cannot drift from it: every key of a run
config (:func:`settings_markdown`, from the settings dataclasses) and every command and flag
of ``dfkd`` (:func:`cli_markdown`, from its argument parser).

A key's meaning is the comment on its line in the dataclass, else the block of comment lines
right above it; a section's text is its dataclass's docstring. ``python -m dfkd.reference``,
run from the repository root, rewrites ``docs/reference/``; ``tests/test_reference.py``
checks that the committed pages are what this makes now.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import re
import textwrap
import tokenize
import typing
from pathlib import Path
from typing import Any

import yaml

from dfkd.commands import parser
from dfkd.config import _CHOICES, RunConfig
from dfkd.methods.catalog import documented
from dfkd.ranges import Range

PAGES = Path("docs") / "reference"
COMMAND = "python -m dfkd.reference"
# RunConfig's slot for the method's settings: the method's own section sets them.
NOT_A_KEY = "method_settings"


def generated_note(source: str) -> str:
    return (f"<!-- Generated from {source} by `{COMMAND}`; do not edit: "
            "tests/test_reference.py checks that this page is what it makes. -->\n")


# What plain words must not turn into in Markdown: emphasis, HTML, a table's cell break.
# (A code span keeps its characters; a `|` in one does not break a cell.)
ESCAPES = str.maketrans({"\\": "\\\\", "*": "\\*", "<": "&lt;", "|": "\\|"})


def text(raw: str) -> str:
    """Plain words as one line of Markdown, code spans kept as they are; a docstring's
    ``x`` and Sphinx roles (``:func:`x```) become code spans."""
    raw = re.sub(r":\w+:`~?", "`", " ".join(raw.split()).replace("``", "`"))
    parts = re.split(r"(`[^`]*`)", raw)   # odd parts: code spans
    return "".join(part if i % 2 else part.translate(ESCAPES) for i, part in enumerate(parts))


def row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    lines = [row(*header), "|" + "---|" * len(header), *(row(*cells) for cells in rows)]
    return "\n".join(lines) + "\n"


def code(value: str) -> str:
    return f"`{value}`"


# -- settings ---------------------------------------------------------------------------------


def source_notes(cls: type) -> tuple[str, dict[str, str]]:
    """The docstring of dataclass ``cls`` and the comment of each of its fields in its source:
    the one at the end of the field's line(s), else the comment lines right above it."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments, own_line = {}, set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
            if token.line.lstrip().startswith("#"):
                own_line.add(token.start[0])
    node = ast.parse(source).body[0]
    notes = {}
    for statement in node.body:
        if not (isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name)):
            continue
        lines = [line for line in range(statement.lineno, statement.end_lineno + 1)
                 if line in comments]
        if not lines:
            above = statement.lineno - 1
            while above in own_line:
                above -= 1
            lines = range(above + 1, statement.lineno)
        notes[statement.target.id] = " ".join(comments[line] for line in lines)
    return ast.get_docstring(node) or "", notes


def yaml_value(value: Any) -> str:
    """A default as a recipe (YAML) or ``--set`` writes it."""
    value = list(value) if isinstance(value, tuple) else value
    return yaml.safe_dump(value, default_flow_style=True, width=1000).removesuffix(
        "\n...\n").strip()


def allowed(field: dataclasses.Field, hint: Any) -> str:
    """The values a field takes beyond its type: its declared range or its choices."""
    bounds = next((v for v in field.metadata.values() if isinstance(v, Range)), None)
    if bounds is not None:
        return code(str(bounds))
    choices = _CHOICES.get(field.name)   # dfkd.config checks them for any section
    if typing.get_origin(hint) is typing.Literal:
        choices = typing.get_args(hint)
    return "one of " + ", ".join(map(code, choices)) if choices else ""


def default_of(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return field.default


def settings_table(cls: type, prefix: str, notes: dict[str, str]) -> str:
    """One row per key of dataclass ``cls`` (nested dataclasses are sections of their own):
    dotted key, type as annotated, default, allowed values, meaning (``notes``)."""
    hints = typing.get_type_hints(cls)
    rows = [(code(prefix + f.name), code(str(f.type)), code(yaml_value(default_of(f))),
             allowed(f, hints[f.name]), text(notes.get(f.name, "")))
            for f in dataclasses.fields(cls)
            if f.name != NOT_A_KEY and not dataclasses.is_dataclass(hints[f.name])]
    if not rows:
        return "No settings.\n"
    return table(("key", "type", "default", "allowed", "meaning"), rows)


def sections() -> list[tuple[str, str, type]]:
    """(heading, key prefix, dataclass) of every section of a run config, in page order: the
    top-level keys, the nested sections, then each method's settings."""
    hints = typing.get_type_hints(RunConfig)
    nested = [f.name for f in dataclasses.fields(RunConfig)
              if dataclasses.is_dataclass(hints[f.name])]
    return [("Top-level keys", "", RunConfig),
            *((code(name), name + ".", hints[name]) for name in nested),
            *((f"{code(cls.name)}: [{cls.title}](../methods/{cls.docs})", cls.name + ".",
               cls.Settings) for cls in documented())]


def settings_markdown() -> str:
    """docs/reference/settings.md: every key of a run config with its type, default,
    allowed values and meaning."""
    out = ["# Settings reference\n", generated_note("the settings dataclasses"),
           "Every key of a run config, as a recipe (YAML) or `--set KEY=VALUE` writes it; "
           "defaults are written the same way. Each method's keys sit in the section named "
           "after it (`--set cudfkd.tau=4`), and a run reads the section of its `method`. "
           "How recipes, flags and `--set` are layered: "
           "[Recipes and settings](../guides/recipes.md).\n"]
    for heading, prefix, cls in sections():
        docstring, notes = source_notes(cls)
        out.append(f"## {heading}\n")
        if docstring:
            out.append(text(docstring) + "\n")
        out.append(settings_table(cls, prefix, notes))
    return "\n".join(out)


# -- command line -----------------------------------------------------------------------------


def subcommands(p: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each subcommand, in --help's order."""
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    return [(choice.dest, choice.help or "", sub.choices[choice.dest])
            for choice in sub._choices_actions]


def invocation(action: argparse.Action) -> str:
    """How a flag or argument is written: ``--model SPEC``, ``--device {auto,cpu}``,
    ``[PATH]``."""
    value = action.metavar or ("{" + ",".join(map(str, action.choices)) + "}"
                               if action.choices else action.dest.upper())
    if not action.option_strings:
        return {"?": "[{}]", "*": "[{} ...]", "+": "{} ..."}.get(str(action.nargs),
                                                                "{}").format(value)
    flags = ", ".join(action.option_strings)
    return flags if action.nargs == 0 else f"{flags} {value}"


def flag_default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS, []):
        return ""
    return code(str(action.default))


def flags_table(p: argparse.ArgumentParser) -> str:
    rows = [(code(invocation(a)), flag_default(a), text(a.help or ""))
            for a in p._actions
            if a.dest != "help" and a.help != argparse.SUPPRESS
            and not isinstance(a, argparse._SubParsersAction)]
    return table(("flag", "default", "meaning"), rows)


def epilog(p: argparse.ArgumentParser) -> list[str]:
    return [f"```text\n{p.epilog.strip()}\n```\n"] if p.epilog else []


def cli_markdown() -> str:
    """docs/reference/cli.md: every command of ``dfkd`` with its flags, defaults and help."""
    p = parser()
    listed = subcommands(p)
    out = ["# Command-line reference\n", generated_note("the argument parser of `dfkd`"),
           text(p.description or "") + " Every command, its flags, their defaults and "
           "help, as `dfkd COMMAND --help` prints them; the keys that `--set` takes are in "
           "the [settings reference](settings.md).\n",
           table(("command", "what it does"),
                 [(f"[{code(name)}](#dfkd-{name})", text(help_)) for name, help_, _ in listed]),
           *epilog(p), "## Flags before the command\n", flags_table(p)]
    for name, _, sp in listed:
        out += [f"## dfkd {name}\n", text(sp.description or "") + "\n", flags_table(sp),
                *epilog(sp)]
    return "\n".join(out)


def main() -> None:
    if not Path("docs").is_dir():
        raise SystemExit(f"{COMMAND}: run it from the repository root (no docs/ folder here)")
    PAGES.mkdir(exist_ok=True)
    for name, page in (("settings.md", settings_markdown()), ("cli.md", cli_markdown())):
        (PAGES / name).write_text(page)
        print(f"wrote {PAGES / name}")


if __name__ == "__main__":
    main()
