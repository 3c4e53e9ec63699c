"""What a user who brings their own models meets on the first try: strict JSON files,
recipes found from any folder, a base recipe that runs its own method, a student.pt that
rebuilds itself, a diverging student stopped with the right advice, a GPU recipe sized to
the CPU's memory, and a long synthetic probe announced with its off switch."""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import dfkd
from dfkd import api, bench, commands, health, probe, recipes
from dfkd.checkpoint import load_model_checkpoint, safe_load
from dfkd.config import load_config, read_yaml
from dfkd.data import dataset_info
from dfkd.errors import ConfigError, DfkdError
from dfkd.report import plot_curves, read_metrics
from dfkd.run.callbacks import probe as probe_callback

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]
FM = dataset_info("fashion_mnist")
CUDFKD = "configs/fashion_mnist/cudfkd_lenet5.yaml"
DAFL = "configs/fashion_mnist/dafl_lenet5.yaml"
TINY = dict(epochs=1, rounds=1, kd_steps=1, batch_size=8, sample_grid=0, synthetic_probe=0,
            progress=False)
SMOKE = ["--set", "epochs=1", "--set", "rounds=2", "--set", "kd_steps=2",
         "--set", "batch_size=16", "--set", "sample_grid=0", "--set", "synthetic_probe=0",
         "--no-progress"]
GiB = 2**30


class GreyNet(nn.Module):
    """A user's small BatchNorm CNN, built from num_classes and in_channels."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class PlainNet(nn.Module):
    """A student with no normalisation layer at all."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2),
            nn.Flatten(), nn.Linear(4 * width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def strict_json(text: str):
    def refuse(token: str):
        raise AssertionError(f"not strict JSON: {token}")
    return json.loads(text, parse_constant=refuse)


def one_line_error(capsys, argv: list[str]) -> str:
    code = commands.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dfkd: error:"), err
    return lines[0]


def grey_pair(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    return GreyNet().eval(), GreyNet()


def test_extending_a_finished_run_stretches_the_student_schedule(tmp_path):
    # a 1-epoch run resumed with epochs=3 learns its new epochs at the rates of a 3-epoch
    # run (before: its cosine stayed at the 1-epoch end, lr 0, and then rose again)
    common = dict(num_classes=10, image_shape=FM.image_shape, mean=FM.mean, std=FM.std,
                  method="dafl", recipe=None, **TINY)
    dfkd.distill(*grey_pair(), out_dir=tmp_path / "short", **common)
    dfkd.distill(*grey_pair(), out_dir=tmp_path / "short", resume=True,
                 **{**common, "epochs": 3})
    dfkd.distill(*grey_pair(), out_dir=tmp_path / "long", **{**common, "epochs": 3})
    lrs = {name: [json.loads(line)["lr"] for line in
                  (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
           for name in ("short", "long")}
    assert lrs["short"] == pytest.approx(lrs["long"])
    assert lrs["long"][1] == pytest.approx(0.75 * lrs["long"][0])


# ------------------------------------------------------------------ 1. strict JSON files
def test_curriculum_none_writes_null_not_nan(tmp_path):
    teacher, student = grey_pair()
    run = tmp_path / "run"
    common = dict(num_classes=10, image_shape=FM.image_shape, mean=FM.mean, std=FM.std,
                  method="cudfkd", recipe=None, curriculum="none", pace_mode="quantile",
                  out_dir=run,
                  **{**TINY, "epochs": 1})
    dfkd.distill(teacher, student, **common)
    dfkd.distill(teacher, student, **{**common, "epochs": 2}, resume=True)  # rewrites the file
    rows = [strict_json(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert all("lambda" in row and row["lambda"] is None for row in rows)
    strict_json((run / "summary.json").read_text())
    # The readers take null where they took NaN.
    assert read_metrics(run)[0]["lambda"] is None
    pytest.importorskip("matplotlib")
    plot_curves([("run", read_metrics(run))], tmp_path / "curves.png")
    assert (tmp_path / "curves.png").is_file()


def test_strict_dump_turns_every_non_finite_number_into_null():
    from dfkd.report import dumps_strict

    text = dumps_strict({"a": math.nan, "b": [1.0, math.inf, {"c": -math.inf}], "d": (2, "x")})
    assert strict_json(text) == {"a": None, "b": [1.0, None, {"c": None}], "d": [2, "x"]}
    results = {"methods": [{"final_acc1_ci95": math.nan}], "paired": []}
    assert strict_json(dumps_strict(results))["methods"][0]["final_acc1_ci95"] is None


# ---------------------------------------------------------- 2. recipes found from anywhere
@pytest.mark.parametrize("name", ["fashion_mnist/cudfkd_lenet5", CUDFKD,
                                  "fashion_mnist/cudfkd_lenet5.yaml"])
def test_bundled_recipe_names_resolve_from_any_folder(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert recipes.resolve_named(name).resolve() == (ROOT / CUDFKD).resolve()


def test_distill_and_tune_take_a_bundled_recipe_from_another_folder(fmnist_teacher, tmp_path,
                                                                    monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert commands.main(["distill", "--config", "fashion_mnist/cudfkd_lenet5", "--teacher",
                          str(fmnist_teacher), "--out", "run", *SMOKE]) == 0
    stored = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert stored["g_steps"] == read_yaml(ROOT / CUDFKD)["g_steps"]
    seen = {}

    def fake_tune(recipe_path, *args, **kwargs):
        seen["recipe"] = recipe_path
        raise DfkdError("stopped here")

    monkeypatch.setattr("dfkd.tune.run_tune", fake_tune)
    assert commands.main(["tune", "--config", CUDFKD, "--teacher", str(fmnist_teacher),
                          "--trials", "1", "--out", "tune"]) == 2
    assert Path(seen["recipe"]).resolve() == (ROOT / CUDFKD).resolve()


def test_bench_file_finds_its_recipes_beside_it_then_bundled(fmnist_teacher, tmp_path,
                                                             monkeypatch):
    folder = tmp_path / "benches"
    folder.mkdir()
    (folder / "my_dafl.yaml").write_text(yaml.safe_dump({"method": "dafl", "rounds": 3}))
    (folder / "bench.yaml").write_text(yaml.safe_dump({
        "base": {"teacher": str(fmnist_teacher), "epochs": 1},
        "recipes": {"dafl": "my_dafl.yaml", "cudfkd": CUDFKD}}))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    runs = bench.run_bench(str(folder / "bench.yaml"), ["dafl", "cudfkd"], [0], "out",
                           dry_run=True)
    assert [r["method"] for r in runs] == ["dafl", "cudfkd"]
    config = read_yaml(folder / "bench.yaml")
    bench._resolve_recipe_files(config, folder)
    assert bench.run_config(config, "dafl", 0)["rounds"] == 3
    assert bench.run_config(config, "cudfkd", 0)["rounds"] == read_yaml(ROOT / CUDFKD)["rounds"]
    # A bundled bench by name, from another folder.
    assert commands.main(["bench", "--config", "fashion_mnist/bench", "--methods", "cudfkd,dafl",
                          "--teacher", str(fmnist_teacher), "--out", "b", "--dry-run"]) == 0


# ----------------------------------------------------- 3. a base recipe runs its method
def test_a_base_recipe_of_another_method_switches_it_or_is_refused(fmnist_teacher, tmp_path,
                                                                   capsys):
    raw, line = recipes.with_base_recipe({"base_recipe": DAFL}, (1, 32, 32), "cudfkd")
    cfg = load_config(raw)
    assert cfg.method == "dafl" and cfg.rounds == read_yaml(ROOT / DAFL)["rounds"]
    assert "dafl" in line
    with pytest.raises(ConfigError, match="'dafl' recipe, but method 'cudfkd'"):
        recipes.with_base_recipe({"method": "cudfkd", "base_recipe": DAFL}, (1, 32, 32),
                                 "cudfkd")
    # The API agrees: recipe= and base_recipe= run the recipe's method, another is refused.
    raw, _ = api._start_settings(None, "auto", {"base_recipe": DAFL}, (1, 32, 32))
    assert load_config(raw).method == "dafl" and raw["base_recipe"] == DAFL
    raw, _ = api._start_settings(None, DAFL, {}, (1, 32, 32))
    assert load_config(raw).method == "dafl"
    with pytest.raises(ConfigError, match="'dafl' recipe"):
        api._start_settings("cudfkd", DAFL, {}, (1, 32, 32))
    # The command line: without --method, dafl runs; with another --method, one line.
    out = tmp_path / "dafl"
    assert commands.main(["distill", "--teacher", str(fmnist_teacher), "--set",
                          f"base_recipe={DAFL}", "--out", str(out), *SMOKE]) == 0
    capsys.readouterr()
    assert yaml.safe_load((out / "config.yaml").read_text())["method"] == "dafl"
    line = one_line_error(capsys, ["distill", "--teacher", str(fmnist_teacher), "--method",
                                   "cudfkd", "--set", f"base_recipe={DAFL}", "--out",
                                   str(tmp_path / "no"), *SMOKE])
    assert "'dafl' recipe" in line and "--method" in line


# ------------------------------------------------- 4. student.pt says what rebuilds it
def test_an_api_student_records_its_class_and_dataset(tmp_path, capsys):
    teacher, student = grey_pair()
    run = tmp_path / "run"
    dfkd.distill(teacher, student, num_classes=10, image_shape=FM.image_shape, mean=FM.mean,
                 std=FM.std, method="dfad", recipe=None, out_dir=run, **TINY)
    meta = safe_load(run / "student.pt")["meta"]
    assert meta["arch"] == f"{__name__}:GreyNet" and meta["dataset"] == "fashion_mnist"
    rebuilt, _ = load_model_checkpoint(run)
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(),
                                                 student.state_dict().values()))
    # No flags needed for a run folder.
    assert commands.main(["evaluate", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["dataset"] == "fashion_mnist"
    assert commands.main(["export", str(run), "--format", "safetensors", "--out",
                          str(tmp_path / "s.safetensors")]) == 0
    # A class that needs other arguments, or a Sequential, is not claimed rebuildable.
    assert api.rebuild_spec(nn.Sequential(nn.Flatten(), nn.Linear(1024, 10)), 10, 1) is None


def test_missing_flags_are_named_in_one_message(tmp_path, capsys):
    class Local(GreyNet):   # defined in a function: not importable by name
        pass

    torch.manual_seed(0)
    run = tmp_path / "run"
    dfkd.distill(GreyNet().eval(), Local(), num_classes=10, image_shape=(1, 32, 32),
                 mean=(0.5,), std=(0.5,), method="dfad", recipe=None, out_dir=run, **TINY)
    meta = safe_load(run / "student.pt")["meta"]
    assert meta["arch"] is None and meta["dataset"] is None
    capsys.readouterr()
    line = one_line_error(capsys, ["evaluate", str(run)])
    assert "--model SPEC" in line and "--dataset NAME" in line and "Local" in line
    line = one_line_error(capsys, ["export", str(run), "--format", "safetensors", "--out",
                                   str(tmp_path / "s.safetensors")])
    assert "--model SPEC" in line and "--dataset" not in line   # its shape is recorded
    assert commands.main(["evaluate", str(run), "--model", f"{__name__}:GreyNet", "--dataset",
                          "fashion_mnist"]) == 0


# ------------------------------------------------------- 5. a diverging student is caught
def test_divergence_is_named_with_the_student_lr_and_normalisation():
    kw = dict(where="in epoch 2, round 1", lr=0.1, configured_lr=0.1, resume_hint="resume")
    assert health.student_divergence("loss_s", 20.0, 2.0, normalised=False, **kw) is None
    line = health.student_divergence("loss_s", 1e5, 2.0, normalised=False, **kw)
    assert "student_optim.lr 0.1" in line and "--set student_optim.lr=0.01" in line
    assert "no normalisation layer" in line and "generator" not in line
    line = health.student_divergence("loss_s", math.nan, 2.0, normalised=True, **kw)
    assert line.startswith("non-finite loss: 'loss_s' became nan") and "normalisation" \
        not in line
    assert not health.has_normalisation(PlainNet()) and health.has_normalisation(GreyNet())
    assert health.has_normalisation(nn.Sequential(nn.Linear(2, 2), nn.LayerNorm(2)))
    assert health.has_normalisation(nn.Sequential(nn.Conv2d(1, 4, 1), nn.GroupNorm(2, 4)))
    # A student whose own loss climbs is not sent to the generator's learning rate.
    cfg = load_config({"method": "dfad"})
    hints = health.hints_for(cfg, generator_method=True, recipe_name=None, student_lr=0.1,
                             student_loss_rise=50.0, student_normalised=False)
    text = " ".join(hints["agreement_at_chance"])
    assert "generator.lr" not in text and "student_optim.lr" in text and "normalisation" in text
    calm = health.hints_for(cfg, generator_method=True, recipe_name=None, student_lr=0.1,
                            student_loss_rise=1.5, student_normalised=True)
    assert any("generator.lr" in h for h in calm["agreement_at_chance"])


def test_a_diverging_student_stops_and_resumes_at_a_lower_rate(fmnist_teacher, tmp_path,
                                                               capsys):
    out = tmp_path / "run"
    start = ["distill", "--teacher", str(fmnist_teacher), "--method", "dfad", "--student",
             f"{__name__}:PlainNet", "--out", str(out), *SMOKE, "--set", "epochs=2",
             "--set", "student_optim.lr=0.01"]
    assert commands.main([*start, "--stop-after-epoch", "1"]) == 0
    before = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    line = one_line_error(capsys, ["distill", "--resume", str(out), "--no-progress",
                                   "--set", "student_optim.lr=1000"])
    assert "the student diverged" in line and "student_optim.lr 1000" in line
    assert "no normalisation layer" in line
    assert f"dfkd distill --resume {out} --set student_optim.lr=100" in line
    assert (out / "checkpoint.pt").read_bytes() == before   # the last good one
    assert commands.main(["distill", "--resume", str(out), "--no-progress",
                          "--set", "student_optim.lr=0.005"]) == 0
    rows = [strict_json(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    # Epoch 2 starts half-way down the cosine of 2 epochs, now from 0.005.
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[0]["lr"] == pytest.approx(0.01) and rows[1]["lr"] == pytest.approx(0.0025)
    assert yaml.safe_load((out / "config.yaml").read_text())["student_optim"]["lr"] == 0.005


# ------------------------------------------------ 6. a GPU recipe sized for the CPU's memory
ALL_FREE = {"batch_size", "batched_g"}


def memory():
    """dfkd.run.sizing, imported by the tests that use it."""
    return importlib.import_module("dfkd.run.sizing")


def tiny_imagenet():
    """Measured by dfkd.run.sizing.footprint for the Tiny-ImageNet recipe's pair (resnet34_tiny
    -> resnet18_imagenet at 64 px, and its generator): bytes of layer outputs per sample."""
    return memory().Footprint(teacher=39.1e6, student=1.81e6, generator=7.70e6,
                              generator_peak=2.10e6, image=49152.0, fixed=0.83e9)


def test_a_gpu_round_is_scaled_down_to_the_memory_available():
    available, size_round, fraction = 24 * GiB, memory().size_round, memory().SAFE_FRACTION
    assert memory().round_bytes(tiny_imagenet(), 512, 10, True) > fraction * available
    sized = size_round(tiny_imagenet(), batch_size=512, kd_steps=10, batched_g=True,
                       available=available, free=ALL_FREE)
    assert not sized.batched_g and 32 <= sized.batch_size < 512
    assert sized.estimate <= fraction * available
    assert "batch_size 512" in sized.line and f"batch_size {sized.batch_size}" in sized.line
    assert "GB" in sized.line and "--set batch_size" in sized.line
    # More memory, a bigger batch; the batch stays a multiple of the processes.
    roomy = size_round(tiny_imagenet(), batch_size=512, kd_steps=10, batched_g=True,
                       available=64 * GiB, free=ALL_FREE, world_size=2)
    assert roomy.batch_size >= sized.batch_size and roomy.batch_size % 2 == 0


def test_settings_the_user_gave_are_kept_and_warned_about():
    size_round = memory().size_round
    sized = size_round(tiny_imagenet(), batch_size=512, kd_steps=10, batched_g=True,
                       available=24 * GiB, free=set())
    assert (sized.batch_size, sized.batched_g) == (512, True)
    assert sized.line.startswith("warning:") and "GB" in sized.line
    # Only batched_g from the recipe: it goes, the user's batch stays.
    sized = size_round(tiny_imagenet(), batch_size=512, kd_steps=10, batched_g=True,
                       available=24 * GiB, free={"batched_g"})
    assert (sized.batch_size, sized.batched_g) == (512, False) and "may run out" in sized.line
    # A round that fits: nothing changes, nothing is said.
    fits = size_round(tiny_imagenet(), batch_size=64, kd_steps=10, batched_g=False,
                      available=24 * GiB, free=ALL_FREE)
    assert (fits.batch_size, fits.batched_g, fits.line) == (64, False, None)
    available = memory().available_bytes()
    assert available is None or available > 0


def test_a_colour_64px_pair_on_cpu_gets_a_smaller_round(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("dfkd.run.sizing.available_bytes", lambda: 200e6)
    torch.manual_seed(0)
    teacher, student = GreyNet(in_channels=3).eval(), GreyNet(in_channels=3)
    common = dict(num_classes=10, image_shape=(3, 64, 64), mean=(0.5,) * 3, std=(0.25,) * 3,
                  epochs=1, rounds=1, kd_steps=1, sample_grid=0, synthetic_probe=0,
                  generator={"nz": 16, "ngf": 8, "width": 1}, progress=False)
    summary, _ = dfkd.distill(teacher, student, **common)
    recipe = read_yaml(ROOT / "configs/tiny_imagenet/cudfkd_resnet34_resnet18.yaml")
    assert summary["config"]["base_recipe"] == "configs/tiny_imagenet/cudfkd_resnet34_resnet18.yaml"
    assert summary["config"]["batch_size"] < recipe["batch_size"] and recipe["batched_g"]
    assert "batched_g" not in summary["config"]   # off: written only when set
    err = capsys.readouterr().err
    assert "sized for a GPU" in err and f"batch_size {summary['config']['batch_size']}" in err
    # The user's own batch is never changed (only said to be too large).
    cfg = load_config(api._start_settings(None, "auto", {"batch_size": 512},
                                          (3, 64, 64))[0])
    kept, line = memory().size_for_cpu(cfg, {"batch_size"}, teacher, student, (3, 64, 64))
    assert kept.batch_size == 512 and not kept.batched_g and "batched_g off" in line


def test_a_config_run_on_cpu_is_warned_about_not_scaled(fmnist_teacher, tmp_path, monkeypatch,
                                                        capsys):
    """A --config file (or a bench or tune run) is the user's: its round is never scaled,
    and a round too large for the machine is said before the first one."""
    monkeypatch.setattr("dfkd.run.sizing.available_bytes", lambda: 200e6)
    raw = {"teacher": str(fmnist_teacher), "batch_size": 512, "batched_g": True,
           "kd_steps": 10, "epochs": 1, "rounds": 1, "sample_grid": 0, "synthetic_probe": 0}
    trainer = api.build_trainer(raw, tmp_path / "run", progress=False)
    assert (trainer.cfg.batch_size, trainer.cfg.batched_g) == (512, True)
    lines = [x for x in capsys.readouterr().err.splitlines() if "memory" in x]
    assert len(lines) == 1 and lines[0].startswith("dfkd: warning: on this CPU")
    assert "batch_size 512, batched_g" in lines[0] and "GB" in lines[0]


# ------------------------------------------------------- 7. the probe's cost is announced
def test_a_long_synthetic_probe_is_announced_with_its_off_switch(tmp_path, monkeypatch,
                                                                  capsys):
    teacher, student = grey_pair()
    common = dict(num_classes=10, image_shape=FM.image_shape, mean=FM.mean, std=FM.std,
                  method="dfad", recipe=None, **{**TINY, "synthetic_probe": 16})
    monkeypatch.setattr(probe_callback, "expected_seconds", lambda *args: 37.0)
    dfkd.distill(teacher, student, **common)
    lines = [x for x in capsys.readouterr().err.splitlines() if "synthetic probe" in x]
    assert len(lines) == 1 and "about 37 s" in lines[0]
    assert "--set synthetic_probe=0" in lines[0]
    monkeypatch.setattr(probe_callback, "expected_seconds", lambda *args: 2.0)
    dfkd.distill(teacher, GreyNet(), **common)
    assert "synthetic probe" not in capsys.readouterr().err


def test_the_probe_estimate_is_a_time_and_nothing_for_a_cached_probe():
    torch.manual_seed(1)
    teacher = GreyNet().eval()
    mean, std = torch.full((1, 1, 1, 1), 0.5), torch.full((1, 1, 1, 1), 0.5)
    state = torch.get_rng_state()
    seconds = probe.expected_seconds(teacher, (1, 32, 32), mean, std, torch.device("cpu"), 64)
    assert 0 < seconds < 600 and torch.equal(torch.get_rng_state(), state)
    probe.build_probe(teacher, (1, 32, 32), 10, mean, std, torch.device("cpu"), 64)
    assert probe.expected_seconds(teacher, (1, 32, 32), mean, std, torch.device("cpu"),
                                  64) == 0.0
