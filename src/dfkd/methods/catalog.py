"""The methods as the documentation lists them, made from the registry: the table of
``docs/methods/index.md`` (:func:`method_table`) and the Methods section of the site's
navigation in ``mkdocs.yml`` (:func:`method_nav`). A test keeps the committed page and
navigation equal to these, so a new method shows up in both once it is registered."""

from __future__ import annotations

from dfkd.methods import get_method, list_methods
from dfkd.methods.base import BankMethod, GeneratorMethod, Method

# How each family makes the student's samples, as the docs' table names it.
FAMILIES: tuple[tuple[type[Method], str], ...] = (
    (GeneratorMethod, "one generator"),
    (BankMethod, "sample bank"),
)


def family(cls: type[Method]) -> str:
    return next((name for base, name in FAMILIES if issubclass(cls, base)), "its own")


def documented() -> list[type[Method]]:
    """The registered methods in the docs' order: by family (:data:`FAMILIES`), then name."""
    rank = {name: i for i, (_, name) in enumerate(FAMILIES)}
    methods = [get_method(name) for name in list_methods()]
    return sorted(methods, key=lambda cls: (rank.get(family(cls), len(rank)), cls.name))


def reads(cls: type[Method]) -> str:
    """What the method reads inside the teacher, beyond its logits."""
    if not cls.needs_white_box:
        return "nothing: its answers only (a black box will do)"
    parts = ["BatchNorm statistics"] if cls.needs_bn else []
    parts += [cls.reads_layers] if cls.reads_layers else []
    return "; ".join(parts) or "its logits only"


def method_table() -> str:
    """The Markdown table of every method: its page, family, what it reads inside the
    teacher, paper and original code."""
    lines = ["| method | family | reads inside the teacher | paper | original code |",
             "|---|---|---|---|---|"]
    lines += [f"| [{cls.title}]({cls.docs}) (`{cls.name}`) | {family(cls)} | {reads(cls)} | "
              f"{cls.paper} | {cls.code} |" for cls in documented()]
    return "\n".join(lines) + "\n"


def method_nav() -> list[dict[str, str]]:
    """The method pages as mkdocs' ``nav`` lists them: ``{title: methods/<page>}``."""
    return [{cls.title: f"methods/{cls.docs}"} for cls in documented()]
