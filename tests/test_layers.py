"""The layers read bottom to top: building blocks -> methods -> run config -> trackers -> the
run's loop -> commands and API. Every module of dfkd is in one layer and imports only its own
layer and those below; the units do not import each other in a cycle; and no method imports
another method (only the methods' shared interface and what reads their registry).

Read from the source (imports inside functions count too), so a lazy import that runs
the wrong way is caught as well as a module-level one."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "dfkd"
# Units: a top-level module, or a package (whose modules count as one); bottom layer first.
LAYERS: dict[str, set[str]] = {
    # what methods and the loop share: no loop, no method, no run config
    "blocks": {"errors", "registry", "ranges", "distributed", "hooks", "losses", "generators",
               "curriculum", "metrics", "attention", "augment", "bank", "frozen_teacher",
               "teachers", "models", "data", "checkpoint", "report", "runlock", "probe", "health",
               "launcher_watch"},
    "methods": {"methods"},
    "config": {"config", "recipes"},
    # trackers sit between the run config and the loop that feeds them
    "trackers": {"trackers"},
    "loop": {"run"},
    "top": {"commands", "api", "bench", "tune", "reproduce", "export", "supervised", "reference",
            "__init__", "__main__"},
}
# The modules of dfkd/methods/ that are not a method: the interface, the registry, and
# what reads the registry.
METHODS_SHARED = {"__init__", "base", "catalog"}


def _unit(module: str) -> str:
    """``dfkd.methods.cmi`` -> ``methods``; ``dfkd.config`` -> ``config``; ``dfkd`` ->
    ``__init__``."""
    parts = module.split(".")[1:] or ["__init__"]
    return parts[0]


def _modules() -> dict[str, Path]:
    """Every module of dfkd by dotted name (a package by its ``__init__``'s)."""
    out = {}
    for path in SRC.rglob("*.py"):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports() -> dict[str, set[str]]:
    """module -> the dfkd modules it imports (``from dfkd.x import y`` imports x.y when y
    is a module, else x; the package ``dfkd`` itself, which every import runs, is left out)."""
    modules = _modules()
    graph = {}
    for module, path in modules.items():
        found = graph.setdefault(module, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                while name not in modules and "." in name:
                    name = name.rpartition(".")[0]
                if name in modules and name != "dfkd":
                    found.add(name)
    return graph


def _units() -> dict[str, set[str]]:
    """unit -> the other units it imports."""
    graph: dict[str, set[str]] = {}
    for module, targets in _imports().items():
        unit = _unit(module)
        graph.setdefault(unit, set()).update(t for t in map(_unit, targets) if t != unit)
    return graph


def layer_of(unit: str) -> str | None:
    return next((name for name, units in LAYERS.items() if unit in units), None)


def upward_imports() -> list[str]:
    """Every import of a unit from a layer above its own (units in no layer: see
    :func:`test_every_module_is_in_a_layer`)."""
    rank = {name: i for i, name in enumerate(LAYERS)}
    return [f"{unit} ({layer_of(unit)}) imports {target} ({layer_of(target)})"
            for unit, targets in sorted(_units().items()) for target in sorted(targets)
            if layer_of(unit) and layer_of(target)
            and rank[layer_of(target)] > rank[layer_of(unit)]]


def methods_importing_methods() -> list[str]:
    """Every import of a method module by another module of dfkd/methods/."""
    return [f"{module} imports {target}" for module, targets in sorted(_imports().items())
            if module.startswith("dfkd.methods.") for target in sorted(targets)
            if target.startswith("dfkd.methods.") and target != module
            and target.split(".")[2] not in METHODS_SHARED]


def test_every_module_is_in_a_layer():
    missing = sorted(module for module in _modules() if layer_of(_unit(module)) is None)
    assert not missing, f"put these modules' units in a layer of tests/test_layers.py: {missing}"


def test_no_unit_imports_a_layer_above_its_own():
    assert upward_imports() == []


def test_no_method_imports_another_method():
    assert methods_importing_methods() == []


def test_the_checks_catch_what_they_guard(tmp_path, monkeypatch):
    """In a made-up tree: a method importing another, and a building block importing the
    methods from inside a function, are both found."""
    src = tmp_path / "dfkd"
    (src / "methods").mkdir(parents=True)
    for name in ("__init__", "base", "dafl"):
        (src / "methods" / f"{name}.py").write_text("from dfkd.methods.base import Method\n")
    (src / "methods" / "zskt.py").write_text("from dfkd.methods.dafl import user_model\n")
    (src / "losses.py").write_text("def f():\n    from dfkd.methods import get_method\n")
    (src / "__init__.py").write_text("from dfkd.methods import get_method\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", src)
    assert methods_importing_methods() == ["dfkd.methods.zskt imports dfkd.methods.dafl"]
    assert upward_imports() == ["losses (blocks) imports methods (methods)"]


def test_no_import_cycles_between_units():
    graph = _units()
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(unit: str, path: list[str]) -> None:
        seen[unit] = 1
        for nxt in sorted(graph.get(unit, ())):
            assert seen.get(nxt) != 1, "import cycle: " + " -> ".join([*path, unit, nxt])
            if nxt not in seen:
                visit(nxt, [*path, unit])
        seen[unit] = 2

    for unit in sorted(graph):
        if unit not in seen:
            visit(unit, [])
