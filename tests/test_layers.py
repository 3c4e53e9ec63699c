"""The layers read top to bottom: CLI/API -> engine -> methods -> building blocks.

Read from the source (imports inside functions count too), so a lazy import that runs
the wrong way is caught as well as a module-level one."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "dfkd"
PACKAGES = ("methods", "models", "data")   # each counts as one unit
# Building blocks: no loop, no method, no run config.
BLOCKS = {"errors", "generators", "hooks", "losses", "curriculum", "metrics", "models", "data",
          "teacher_wrap", "distributed", "checkpoint", "report", "runlock", "probe", "advice"}
TOP = {"cli", "api", "bench", "tune", "export", "teacher", "__init__", "__main__"}


def _unit(module: str) -> str:
    """``dfkd.methods.cmi`` -> ``methods``; ``dfkd.engine`` -> ``engine``."""
    parts = module.split(".")[1:] or ["__init__"]
    return parts[0]


def _imports() -> dict[str, set[str]]:
    """unit -> the dfkd units it imports (anywhere in its files)."""
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        rel = path.relative_to(SRC.parent).with_suffix("")
        module = ".".join(rel.parts)
        unit = _unit(module)
        targets = graph.setdefault(unit, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("dfkd.") and _unit(name) != unit:
                    if (SRC / _unit(name)).is_dir() or (SRC / f"{_unit(name)}.py").is_file():
                        targets.add(_unit(name))
    return graph


def test_methods_depend_on_building_blocks_only():
    graph = _imports()
    assert graph["methods"] - BLOCKS == set(), "methods import the loop or the config"


def test_building_blocks_depend_on_building_blocks_only():
    graph = _imports()
    for unit in BLOCKS:
        wrong = graph.get(unit, set()) - BLOCKS
        assert not wrong, f"{unit} imports {wrong}"


def test_config_and_engine_do_not_reach_up():
    graph = _imports()
    assert graph["config"] <= BLOCKS | {"methods"}
    # trackers sits between the run config and the engine that feeds it
    assert graph["trackers"] <= BLOCKS | {"config"}
    assert graph["engine"] <= BLOCKS | {"methods", "config", "trackers"}
    for unit in TOP:
        for lower in BLOCKS | {"methods", "config", "trackers", "engine"}:
            assert unit not in graph.get(lower, set()), f"{lower} imports {unit}"


def test_no_import_cycles_between_units():
    graph = _imports()
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

