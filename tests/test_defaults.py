"""Defaults chosen by the data's geometry: with no recipe, a run starts from the validated
recipe of the nearest family; the run names it and config.yaml records it; explicit settings
win; a recipe never replaces the user's models or data; a resume keeps what was recorded;
an installed package carries the recipes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import dfkd
from dfkd import recipes
from dfkd.bench import plan, run_config
from dfkd.commands import main
from dfkd.config import flatten, load_config, read_yaml
from dfkd.errors import ConfigError
from dfkd.methods import list_methods

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
# A smoke budget for runs from the command line (no signal: these tests are about settings).
SMOKE = ["--set", "epochs=1", "--set", "rounds=2", "--set", "kd_steps=2",
         "--set", "batch_size=16", "--set", "sample_grid=0", "--set", "synthetic_probe=0",
         "--no-progress"]


@pytest.mark.parametrize("shape, family", [
    ((1, 28, 28), "fashion_mnist"), ((1, 32, 32), "fashion_mnist"), ((1, 16, 16), "fashion_mnist"),
    ((3, 32, 32), "cifar10"), ((3, 28, 28), "cifar10"), ((1, 48, 48), "cifar10"),
    ((3, 64, 64), "tiny_imagenet"), ((1, 64, 64), "tiny_imagenet"),
    ((3, 96, 96), "tiny_imagenet"),
])
def test_each_geometry_gets_its_familys_recipe(shape, family):
    choice = recipes.recipe_for("cudfkd", shape)
    assert choice is not None and choice.family.folder == family
    expected = {"fashion_mnist": "cudfkd_lenet5.yaml", "cifar10": "cudfkd_resnet34_resnet18.yaml",
                "tiny_imagenet": "cudfkd_resnet34_resnet18.yaml"}[family]
    assert choice.name == f"configs/{family}/{expected}"
    assert choice.path == ROOT / "configs" / family / expected


def test_every_method_with_a_recipe_gets_it_and_the_others_the_engine_defaults():
    for method in list_methods():   # every method has a Fashion-MNIST recipe
        choice = recipes.recipe_for(method, (1, 28, 28))
        assert choice.name == f"configs/fashion_mnist/{method}_lenet5.yaml"
        assert read_yaml(choice.path)["method"] == method
    assert recipes.recipe_for("dafl", (3, 64, 64)) is None   # no Tiny-ImageNet recipe for DAFL
    raw, line = recipes.with_base_recipe({"method": "dafl"}, (3, 64, 64), "cudfkd")
    assert raw["base_recipe"] is None and "none for method 'dafl'" in line
    assert "engine defaults" in line


def test_a_bench_family_gives_every_method_its_recipe(tmp_path, monkeypatch):
    """The Fashion-MNIST bench names its family, not its methods: each registered method's
    row runs that family's recipe unless the bench names another for it."""
    monkeypatch.chdir(ROOT)  # the bench's recipe paths are relative to the repository
    config = read_yaml("configs/fashion_mnist/bench.yaml")
    assert config["family"] == "fashion_mnist"
    assert not set(list_methods()) <= set(config["recipes"])
    rows = list(dict.fromkeys([*list_methods(), *config["recipes"]]))
    plan(config, rows, [0], tmp_path)
    for name in rows:
        recipe = read_yaml(config["recipes"].get(name) or
                           recipes.family_recipe("fashion_mnist", name).path)
        resolved = run_config(config, name, 0)
        assert resolved["method"] == recipe["method"] and resolved["rounds"] == recipe["rounds"]
        assert resolved["epochs"] == config["base"]["epochs"]   # one budget for every row
    without = {k: v for k, v in config.items() if k != "family"}
    assert run_config(without, "dafl", 0)["rounds"] == load_config({}).rounds   # engine's
    with pytest.raises(ConfigError, match="unknown recipe family 'fmnist'.*fashion_mnist"):
        recipes.family_recipe("fmnist", "dafl")


@pytest.mark.parametrize("method", list_methods())
def test_the_recipe_gives_every_training_setting_and_never_the_pair(method):
    # The user names their own models and a budget; everything else is the recipe's.
    user = {"method": method, "teacher": "mine.pt", "student": "my_models.py:small",
            "epochs": 3}
    raw, line = recipes.with_base_recipe(user, (1, 28, 28), "cudfkd")
    cfg = load_config(raw)
    name = f"configs/fashion_mnist/{method}_lenet5.yaml"
    assert cfg.base_recipe == name and name in line and "Fashion-MNIST" in line
    recipe = read_yaml(ROOT / name)
    resolved = flatten(cfg.to_dict())
    for key, value in flatten(recipes.training_settings(recipe)).items():
        if key == "epochs":
            continue
        assert resolved[key] == value, key
    assert (cfg.epochs, cfg.teacher, cfg.student) == (3, "mine.pt", "my_models.py:small")
    assert recipe["student"] == "lenet5_half" and cfg.dataset is None   # not the recipe's


def test_explicit_settings_win_key_by_key():
    user = {"method": "cudfkd", "rounds": 7, "generator": {"lr": 0.02},
            "cudfkd": {"tau": 9.0}, "student_optim": {"lr": 0.03}}
    cfg = load_config(recipes.with_base_recipe(user, (1, 32, 32), "cudfkd")[0])
    recipe = read_yaml(ROOT / "configs/fashion_mnist/cudfkd_lenet5.yaml")
    assert (cfg.rounds, cfg.generator.lr, cfg.method_settings.tau, cfg.student_optim.lr) == \
        (7, 0.02, 9.0, 0.03)
    # Keys of the same sections that the user did not give stay the recipe's.
    assert cfg.generator.nz == recipe["generator"]["nz"]
    assert cfg.method_settings.kd_loss == recipe["cudfkd"]["kd_loss"]
    assert cfg.student_optim.momentum == recipe["student_optim"]["momentum"]
    assert cfg.kd_steps == recipe["kd_steps"] and cfg.batch_size == recipe["batch_size"]


def test_base_recipe_none_or_named():
    cfg = load_config(recipes.with_base_recipe({"base_recipe": "none"}, (1, 32, 32),
                                               "cudfkd")[0])
    assert cfg.base_recipe is None and cfg.rounds == 40 and cfg.batch_size == 256  # engine
    named = "configs/fashion_mnist/dfq_lenet5.yaml"
    raw, line = recipes.with_base_recipe({"method": "dfq", "base_recipe": named}, (3, 32, 32),
                                         "cudfkd")
    cfg = load_config(raw)
    assert cfg.base_recipe == named and named in line
    assert cfg.rounds == read_yaml(ROOT / named)["rounds"]
    with pytest.raises(ConfigError, match="nope.yaml' does not exist"):
        recipes.with_base_recipe({"base_recipe": "nope.yaml"}, (1, 32, 32), "cudfkd")


def test_resolved_config_keeps_its_old_keys_at_the_defaults():
    # Runs stored before these keys existed still compare equal (dfkd bench refuses others).
    saved = load_config({}).to_dict()
    assert "base_recipe" not in saved and "synthetic_probe" not in saved
    again = load_config({"base_recipe": "configs/x.yaml", "synthetic_probe": 0}).to_dict()
    assert again["base_recipe"] == "configs/x.yaml" and again["synthetic_probe"] == 0
    assert load_config(again).to_dict() == again
    with pytest.raises(ConfigError, match="'synthetic_probe' must be >= 0"):
        load_config({"synthetic_probe": -1})


def test_command_line_without_config_names_and_records_the_recipe(fmnist_teacher, tmp_path,
                                                                   capsys):
    out = tmp_path / "auto"
    assert main(["distill", "--teacher", str(fmnist_teacher), "--out", str(out),
                 "--set", "generator.lr=0.002", *SMOKE]) == 0
    err = capsys.readouterr().err
    name = "configs/fashion_mnist/cudfkd_lenet5.yaml"
    line = [x for x in err.splitlines() if "no recipe given" in x]
    assert len(line) == 1 and name in line[0] and line[0].startswith("dfkd: ")
    stored = yaml.safe_load((out / "config.yaml").read_text())
    recipe = read_yaml(ROOT / name)
    assert stored["base_recipe"] == name
    assert stored["g_steps"] == recipe["g_steps"] and stored["cudfkd"] == \
        {**load_config({}).to_dict()["cudfkd"], **recipe["cudfkd"]}
    assert stored["generator"]["lr"] == 0.002 and stored["batch_size"] == 16   # flags win
    assert stored["student"] == "lenet5_half" and stored["teacher"] == str(fmnist_teacher)

    # With --config, that file is the recipe: no geometry default and nothing to record.
    conf = tmp_path / "mine.yaml"
    conf.write_text(yaml.safe_dump({"method": "cudfkd", "g_steps": 3}))
    out2 = tmp_path / "given"
    assert main(["distill", "--config", str(conf), "--teacher", str(fmnist_teacher),
                 "--out", str(out2), *SMOKE]) == 0
    assert "no recipe given" not in capsys.readouterr().err
    stored2 = yaml.safe_load((out2 / "config.yaml").read_text())
    assert "base_recipe" not in stored2 and stored2["g_steps"] == 3
    assert stored2["rounds"] == 2 and stored2["generator"]["lr"] == 1e-3   # engine default
    assert main(["distill", "--config", str(conf), "--teacher", str(fmnist_teacher),
                 "--out", str(tmp_path / "x"), "--set", "base_recipe=none"]) == 2
    assert "with --config, that file is the recipe" in capsys.readouterr().err


def test_resume_keeps_the_recorded_settings_even_if_the_recipe_changed(
        fmnist_teacher, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    args = ["--teacher", str(fmnist_teacher), "--out", str(out), *SMOKE, "--set", "epochs=2"]
    assert main(["distill", *args, "--stop-after-epoch", "1"]) == 0
    before = yaml.safe_load((out / "config.yaml").read_text())
    # The recipe is retuned between the two halves of the run.
    fake = tmp_path / "configs"
    (fake / "fashion_mnist").mkdir(parents=True)
    changed = {**read_yaml(ROOT / "configs/fashion_mnist/cudfkd_lenet5.yaml"), "g_steps": 4}
    (fake / "fashion_mnist" / "cudfkd_lenet5.yaml").write_text(yaml.safe_dump(changed))
    monkeypatch.setattr(recipes, "recipes_dir", lambda: fake)
    assert recipes.recipe_for("cudfkd", (1, 32, 32)).path.parent.parent == fake
    capsys.readouterr()
    # --data-root goes with --resume (the data moved): a folder without the files says so
    empty = tmp_path / "no_data"
    empty.mkdir()
    assert main(["distill", "--resume", str(out), "--no-progress",
                 "--data-root", str(empty)]) != 0
    assert str(empty) in capsys.readouterr().err
    assert main(["distill", "--resume", str(out), "--no-progress"]) == 0
    assert "no recipe given" not in capsys.readouterr().err
    summary = yaml.safe_load((out / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["config"]["g_steps"] == before["g_steps"] != 4
    assert summary["config"]["base_recipe"] == before["base_recipe"]


def _grey_net(num_classes: int = 10, width: int = 4) -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * width, num_classes))


def test_python_api_starts_from_the_recipe_of_its_geometry(tmp_path, capsys):
    torch.manual_seed(0)
    teacher, student = _grey_net().eval(), _grey_net()
    common = dict(num_classes=10, image_shape=(1, 28, 28), mean=(0.5,), std=(0.5,),
                  epochs=1, rounds=1, kd_steps=1, batch_size=8, sample_grid=0,
                  synthetic_probe=0, progress=False)
    summary, _ = dfkd.distill(teacher, student, out_dir=tmp_path / "api", **common)
    name = "configs/fashion_mnist/cudfkd_lenet5.yaml"
    recipe = read_yaml(ROOT / name)
    cfg = summary["config"]
    assert cfg["base_recipe"] == name and cfg["g_steps"] == recipe["g_steps"]
    assert cfg["cudfkd"]["tau"] == recipe["cudfkd"]["tau"] and cfg["batch_size"] == 8
    assert yaml.safe_load((tmp_path / "api" / "config.yaml").read_text()) == cfg
    assert name in capsys.readouterr().err
    # recipe=None: the engine defaults; a named recipe: its method unless one is given.
    summary, _ = dfkd.distill(teacher, _grey_net(), recipe=None, **common)
    assert "base_recipe" not in summary["config"] and summary["config"]["g_steps"] == 1
    named = "configs/fashion_mnist/dfad_lenet5.yaml"
    summary, _ = dfkd.distill(teacher, _grey_net(), recipe=named, **common)
    assert summary["method"] == "dfad" and summary["config"]["base_recipe"] == named
    assert summary["config"]["rounds"] == 1 and summary["config"]["g_steps"] == \
        read_yaml(ROOT / named)["g_steps"]


def test_help_says_where_the_defaults_come_from(capsys):
    with pytest.raises(SystemExit):
        main(["distill", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for fragment in ("Without --config", "nearest family", "configs/fashion_mnist/",
                     "configs/cifar10/", "configs/tiny_imagenet/", "base_recipe",
                     "synthetic_agreement"):
        assert fragment in text, fragment
    assert "recipe" in dfkd.distill.__doc__ and "image_shape" in dfkd.distill.__doc__


def test_the_package_carries_the_recipes():
    tomllib = pytest.importorskip("tomllib") if sys.version_info < (3, 11) else \
        __import__("tomllib")
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setup["packages"])
    found = {".".join(p.parent.relative_to(ROOT / "src").parts)
             for p in (ROOT / "src" / "dfkd").rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to pyproject's packages"
    assert setup["package-dir"]["dfkd.configs"] == "configs"
    assert "*/*.yaml" in setup["package-data"]["dfkd.configs"]
    # An installed copy is looked for first, the checkout's configs/ second.
    assert recipes.recipes_dir() == ROOT / "configs"


def test_a_recipe_with_keys_that_are_not_names_is_a_one_line_error(tmp_path):
    path = tmp_path / "odd.yaml"
    path.write_text("null: 1\ngenerator: {1: 2}\n")
    with pytest.raises(ConfigError, match="config keys are names, got None in 'config'"):
        load_config(read_yaml(path))
    with pytest.raises(ConfigError, match="got 1 in 'generator'"):
        load_config({"generator": {1: 2}})
