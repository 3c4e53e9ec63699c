"""Every committed recipe loads, every search space parses, and every row of the
Fashion-MNIST bench resolves to a run config (a typo or a missing file fails here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dfkd.bench import plan, run_config
from dfkd.config import load_config, read_yaml
from dfkd.methods import list_methods
from dfkd.recipes import family_recipe
from dfkd.tune import parse_search

ROOT = Path(__file__).resolve().parents[1]
# configs/official/ holds the table of official values behind the CIFAR recipes, not a recipe
RECIPES = sorted(p for p in (ROOT / "configs").rglob("*.yaml")
                 if p.name != "bench.yaml" and p.parent.name != "official")


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_recipe_loads_and_its_search_parses(path):
    raw = read_yaml(path)
    assert load_config(raw).method == raw["method"]
    if "search" in raw:
        assert parse_search(raw, str(path))


def test_fmnist_bench_rows_resolve(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)  # the bench's recipe paths are relative to the repository
    config = read_yaml("configs/fashion_mnist/bench.yaml")
    rows = list(dict.fromkeys([*list_methods(), *config["recipes"]]))   # every method's row
    plan(config, rows, [0], tmp_path)
    for name in rows:
        resolved = run_config(config, name, 0)
        assert resolved["epochs"] == config["base"]["epochs"]  # one budget for every row
        recipe = config["recipes"].get(name) or family_recipe(config["family"], name).path
        assert resolved["method"] == read_yaml(recipe)["method"]


def test_a_resolved_config_is_frozen():
    import dataclasses

    cfg = load_config({"method": "cudfkd", "epochs": 3})
    for section, key in ((cfg, "epochs"), (cfg.student_optim, "lr"), (cfg.generator, "lr")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(section, key, 1)
    assert dataclasses.replace(cfg, epochs=4).epochs == 4 and cfg.epochs == 3


def test_the_bench_configs_name_files_a_clean_clone_has():
    """A bench config's ``base`` paths (its teacher) are in the repository, so the
    documented ``dfkd bench --config ...`` runs from a clean clone."""
    for path in sorted((ROOT / "configs").rglob("bench.yaml")):
        base = read_yaml(path).get("base", {})
        for key in ("teacher",):
            if key in base:
                assert (ROOT / base[key]).is_file(), f"{path.relative_to(ROOT)}: base.{key} " \
                                                     f"{base[key]} is not in the repository"
