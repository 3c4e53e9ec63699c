"""Any model a user brings: timm architectures by name, layer pairs found from the models
themselves, and teachers without BatchNorm."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import metrics_rows
from torch import nn

import dfkd
from dfkd.checkpoint import load_model_checkpoint
from dfkd.errors import ConfigError, DfkdError
from dfkd.methods import get_method, list_methods
from dfkd.methods.cudfkd import CuDFKDSettings
from dfkd.methods.zskt import ZSKTSettings
from dfkd.models import create_model
from dfkd.recipes import BN_FREE_METHOD, BN_FREE_SETTINGS

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "tests" / "own_models.py"
HAS_TIMM = importlib.util.find_spec("timm") is not None


def needs_timm(test):
    """Marked ``timm`` (scripts/test_timm.sh runs them where timm is installed) and skipped
    where it is not."""
    skip = pytest.mark.skipif(not HAS_TIMM, reason="timm is not installed (dfkd[timm]; "
                                                    "scripts/test_timm.sh runs these)")
    return pytest.mark.timm(skip(test))


# A tiny run: one round of one generator and one student step, batch 8, no probe, no grid;
# the teachers are untrained, measured on random images (not checked against chance).
TINY = {"epochs": 1, "rounds": 1, "g_steps": 1, "kd_steps": 1, "batch_size": 8,
        "synthetic_probe": 0, "sample_grid": 0, "progress": False, "check_teacher": False}


def own(name: str, num_classes: int = 10, in_channels: int = 1) -> nn.Module:
    return create_model(f"{MODELS}:{name}", num_classes, in_channels)


def distill(teacher: nn.Module, student: nn.Module, tmp_path: Path, **settings):
    """A tiny API run on 32 px grey images, measured on 16 random test images."""
    torch.manual_seed(0)
    test = (torch.randint(0, 255, (16, 1, 32, 32), dtype=torch.uint8),
            torch.randint(0, 10, (16,)))
    return dfkd.distill(teacher, student, num_classes=10, image_shape=(1, 32, 32),
                        mean=(0.5,), std=(0.5,), test_data=test, out_dir=tmp_path / "run",
                        **{**TINY, **settings})


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dfkd", *args], capture_output=True,
                          text=True, env=env, timeout=600, cwd=ROOT)


def warnings_about(stderr: str, fragment: str) -> list[str]:
    return [line for line in stderr.splitlines() if fragment in line]


# ------------------------------------------------------------------ timm by name
@needs_timm
@pytest.mark.parametrize("name", ["timm:resnet18", "timm:mobilenetv3_small_100",
                                  "timm:efficientnet_b0", "timm:convnext_atto",
                                  "timm:vit_tiny_patch16_224"])
@pytest.mark.parametrize("channels", [1, 3])
def test_timm_models_by_name_run_on_32px(name, channels):
    """Built for the data's channels and classes; ImageNet models still run on 32 px, a
    transformer with a fixed input size too (built with dynamic_img_size)."""
    model = create_model(name, num_classes=7, in_channels=channels).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, 32, 32))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


@needs_timm
def test_timm_never_downloads(monkeypatch):
    """pretrained=False always, and the hub offline while timm builds the model."""
    import timm

    seen = {}
    real = timm.create_model
    hub = sys.modules.get("huggingface_hub.constants")   # timm imports it when installed
    hub_before = getattr(hub, "HF_HUB_OFFLINE", None)

    def spy(name, **kwargs):
        seen.update(kwargs, offline=os.environ.get("HF_HUB_OFFLINE"),
                    hub_offline=getattr(hub, "HF_HUB_OFFLINE", True))
        return real(name, **kwargs)

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(timm, "create_model", spy)
    create_model("timm:resnet18", 10, 1)
    assert seen["pretrained"] is False and seen["offline"] == "1"
    # huggingface_hub read the variable at import: its own switch is what it obeys now
    assert seen["hub_offline"] is True
    assert seen["num_classes"] == 10 and seen["in_chans"] == 1
    assert "HF_HUB_OFFLINE" not in os.environ   # restored afterwards
    assert getattr(hub, "HF_HUB_OFFLINE", None) == hub_before


@needs_timm
def test_timm_unknown_name_suggests_close_ones():
    with pytest.raises(DfkdError, match=r"unknown timm model 'resnet181'\. Did you mean "
                                        r"timm:resnet18\b"):
        create_model("timm:resnet181", 10, 1)


def test_missing_timm_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)   # import timm raises ImportError
    with pytest.raises(DfkdError, match=r"needs timm.*pip install 'dfkd\[timm\]'") as info:
        create_model("timm:resnet18", 10, 1)
    assert "\n" not in str(info.value)


@needs_timm
@pytest.mark.parametrize("under_key", [False, True])
def test_timm_teacher_loads_the_users_state_dict(tmp_path, under_key):
    """torch.save(model.state_dict()) (or under 'state_dict'), rebuilt by timm:NAME."""
    torch.manual_seed(1)
    trained = create_model("timm:mobilenetv3_small_050", 10, 1)
    state = trained.state_dict()
    path = tmp_path / "teacher.pt"
    torch.save({"state_dict": state} if under_key else state, path)
    model, meta = load_model_checkpoint(path, arch="timm:mobilenetv3_small_050",
                                        num_classes=10)
    assert meta["arch"] == "timm:mobilenetv3_small_050"
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key]), key


@needs_timm
def test_timm_teacher_and_student_in_the_api(tmp_path):
    torch.manual_seed(0)
    teacher = create_model("timm:mobilenetv3_small_050", 10, 1)
    student = create_model("timm:convnext_atto", 10, 1)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    summary, trained = distill(teacher, student, tmp_path, method="dfad")
    assert summary["method"] == "dfad" and trained is student
    assert any(not torch.equal(v, before[k]) for k, v in student.state_dict().items())
    # student.pt records what rebuilds it: evaluate and export need no --model
    rebuilt, meta = load_model_checkpoint(tmp_path / "run")
    assert meta["arch"] == "timm:convnext_atto"
    for key, value in rebuilt.state_dict().items():
        assert torch.equal(value, student.state_dict()[key]), key


@needs_timm
def test_timm_teacher_and_student_on_the_command_line(tmp_path):
    """A user's timm teacher saved as a bare state_dict, a timm student by name."""
    torch.manual_seed(0)
    teacher = create_model("timm:mobilenetv3_small_050", 10, 1)
    torch.save(teacher.state_dict(), tmp_path / "teacher.pt")
    out = cli("distill", "--teacher", str(tmp_path / "teacher.pt"),
              "--teacher-model", "timm:mobilenetv3_small_050", "--dataset", "fashion_mnist",
              "--student", "timm:mobilenetv3_small_050", "--method", "dfad",
              "--eval-split", "val", "--out", str(tmp_path / "run"), "--no-progress",
              "--set", "epochs=1", "--set", "rounds=1", "--set", "kd_steps=1",
              "--set", "g_steps=1", "--set", "batch_size=8", "--set", "synthetic_probe=0",
              "--set", "sample_grid=0", "--set", "check_teacher=false")
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    student, meta = load_model_checkpoint(tmp_path / "run")
    assert meta["arch"] == "timm:mobilenetv3_small_050"
    assert type(student).__name__ == "MobileNetV3"


# ------------------------------------------------------------------ layer pairs
def test_zskt_on_own_models_pairs_layers_automatically(tmp_path):
    """The zskt recipe names no layer: own models pair their stage ends of equal size."""
    teacher = own("make_teacher")          # BN CNN, 32 -> 16 -> 8 px
    student = own("make_plain_student")    # no normalisation, 32 -> 16 -> 8 px
    summary, _ = distill(teacher, student, tmp_path, method="zskt")
    assert summary["method"] == "zskt"
    assert summary["config"]["zskt"]["teacher_layers"] is None
    rows = metrics_rows(tmp_path / "run")
    # the attention term was computed (logged, finite and positive) on the paired stages
    assert rows and all(math.isfinite(r["at"]) and r["at"] > 0 for r in rows)


def test_stage_pairs_of_two_own_architectures():
    from types import SimpleNamespace

    from dfkd.attention import AttentionPairs

    ctx = SimpleNamespace(teacher=own("make_groupnorm_teacher").eval(),
                          student_raw=own("make_convnext_ln"), image_shape=(1, 32, 32),
                          device=torch.device("cpu"))
    pairs = AttentionPairs(ctx, None, None, ("t", "s"))
    # GN CNN: 32, 16, 8 px; the ConvNeXt: 16 (stem, stage1), 8 (stage2): 16 and 8 pair up,
    # each at the end of its stage (the GN CNN's last ReLU at that size; stage1, not the
    # LayerNorm of the downsample module after it).
    assert pairs.layers == [("9", "stage1"), ("13", "stage2")]
    x = torch.randn(3, 1, 32, 32)
    ctx.teacher(x), ctx.student_raw(x)
    assert pairs.loss() > 0


def test_default_cudfkd_on_an_own_bn_teacher_warns_once_and_runs(tmp_path, capfd):
    """LeNet-5-half's 28 and 10 px maps meet none of a 32/16/8 px CNN's: the attention
    term of the recipe is skipped with one warning, and the run finishes."""
    teacher = own("make_teacher")
    summary, _ = distill(teacher, create_model("lenet5_half", 10, 1), tmp_path)
    assert summary["method"] == "cudfkd"
    lines = warnings_about(capfd.readouterr().err, "attention transfer is skipped")
    assert len(lines) == 1 and "cudfkd.at_weight=0" in lines[0], lines


def test_no_pair_in_zskt_warns_once_and_the_term_is_skipped(tmp_path, capfd):
    teacher = own("make_teacher")
    summary, _ = distill(teacher, create_model("lenet5_half", 10, 1), tmp_path,
                         method="zskt", kd_steps=2)
    lines = warnings_about(capfd.readouterr().err, "attention transfer is skipped")
    assert len(lines) == 1 and "zskt.beta=0" in lines[0], lines
    assert summary["final_agreement"] is not None


def test_attention_off_switches_give_no_warning(tmp_path, capfd):
    teacher = own("make_teacher")
    distill(teacher, create_model("lenet5_half", 10, 1), tmp_path, at_weight=0.0)
    assert not warnings_about(capfd.readouterr().err, "attention transfer")


@pytest.mark.parametrize("method, keys", [
    ("zskt", ("teacher_layers", "student_layers")),
    ("cudfkd", ("at_teacher_layers", "at_student_layers")),
])
def test_empty_layer_lists_are_one_line(tmp_path, method, keys):
    with pytest.raises(ConfigError, match="are empty") as info:
        distill(own("make_teacher"), own("make_plain_student"), tmp_path, method=method,
                **{keys[0]: [], keys[1]: []})
    assert "\n" not in str(info.value)


def test_empty_layer_lists_with_the_term_off_are_accepted():
    # the off switch the refusal names works whether or not the empty lists stay
    ZSKTSettings(beta=0.0, teacher_layers=[], student_layers=[]).validate()
    CuDFKDSettings(at_weight=0.0, at_teacher_layers=[], at_student_layers=[]).validate()
    with pytest.raises(ConfigError, match="are empty"):
        CuDFKDSettings(at_weight=1.0, at_teacher_layers=[], at_student_layers=[]).validate()


def test_empty_layer_lists_on_the_command_line(tmp_path, fmnist_teacher):
    out = cli("distill", "--teacher", str(fmnist_teacher), "--method", "zskt",
              "--out", str(tmp_path / "run"), "--set", "zskt.teacher_layers=[]",
              "--set", "zskt.student_layers=[]")
    assert out.returncode != 0 and "Traceback" not in out.stderr
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("dfkd: error:") and "zskt.beta=0" in last, out.stderr


def test_named_layer_that_is_no_feature_map_is_one_line(tmp_path):
    teacher = own("make_teacher")    # module '19' is the Linear head
    with pytest.raises(ConfigError, match=r"zskt.teacher_layers: '19' outputs \(1, 10\)"):
        distill(teacher, own("make_plain_student"), tmp_path, method="zskt",
                teacher_layers=["19"], student_layers=["2"])


# ------------------------------------------------------------------ teachers without BN
@pytest.mark.parametrize("method", [m for m in list_methods() if get_method(m).needs_bn])
def test_bn_free_teacher_runs_with_the_bn_term_off(tmp_path, method):
    teacher = own("make_groupnorm_teacher")
    student = own("make_plain_student")
    before = {k: v.clone() for k, v in student.state_dict().items()}
    extra = {"warmup": 0} if method in ("fast", "nayer") else {}
    summary, _ = distill(teacher, student, tmp_path, method=method, w_bn=0.0, **extra)
    assert summary["method"] == method
    assert any(not torch.equal(v, before[k]) for k, v in student.state_dict().items())


def test_bn_free_teacher_with_the_bn_term_on_names_the_switch(tmp_path):
    with pytest.raises(DfkdError, match=r"no BatchNorm layer; set deepinv\.w_bn=0"):
        distill(own("make_groupnorm_teacher"), own("make_plain_student"), tmp_path,
                method="deepinv")


def test_cmi_features_of_a_layernorm_teacher():
    from dfkd.methods.cmi import InstanceMeans

    teacher = own("make_convnext_ln").eval()
    features = InstanceMeans(teacher)
    _, f = features(teacher, torch.randn(4, 1, 32, 32))
    # every LayerNorm's input, per sample, one mean per channel: the stem's, two blocks'
    # and the downsample's at 24 channels; two blocks' and the head's at 48
    assert f.shape == (4, 24 * 4 + 48 * 3)
    plain = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 10))
    _, logits = InstanceMeans(plain)(plain, torch.randn(4, 1, 32, 32))
    assert logits.shape == (4, 10)


@pytest.mark.parametrize("teacher_name", ["make_groupnorm_teacher", "make_convnext_ln"])
def test_bn_free_default_picks_the_measured_method_with_one_line(tmp_path, capfd,
                                                                 teacher_name):
    summary, _ = distill(own(teacher_name), create_model("lenet5_half", 10, 1), tmp_path)
    assert summary["method"] == BN_FREE_METHOD
    section = summary["config"].get(BN_FREE_METHOD, {})
    assert all(section[k] == v for k, v in BN_FREE_SETTINGS.items())
    lines = warnings_about(capfd.readouterr().err, "no BatchNorm layer")
    assert len(lines) == 1 and BN_FREE_METHOD in lines[0], lines


def test_a_named_method_is_not_replaced(tmp_path):
    """--method given (or its settings): the user's choice stands, refused in one line."""
    with pytest.raises(DfkdError, match="no BatchNorm layer"):
        distill(own("make_groupnorm_teacher"), own("make_plain_student"), tmp_path,
                method="cudfkd")


def test_bn_free_default_only_when_nothing_names_a_method():
    from dfkd.recipes import bn_free_default

    gn, bn = own("make_groupnorm_teacher"), own("make_teacher")
    raw, line = bn_free_default(gn, {"epochs": 2})
    assert raw == {"epochs": 2, "method": BN_FREE_METHOD, **(
        {BN_FREE_METHOD: BN_FREE_SETTINGS} if BN_FREE_SETTINGS else {})} and line
    for named in ({"method": "dfad"}, {"cudfkd": {"w_bn": 0.0}},
                  {"base_recipe": "fashion_mnist/cudfkd_lenet5.yaml"}):
        assert bn_free_default(gn, named) == (named, None)
    assert bn_free_default(bn, {"epochs": 2}) == ({"epochs": 2}, None)
    # base_recipe=none (the engine defaults) names no method, however it is spelt
    for none in ("none", "None", "null", ""):
        assert bn_free_default(gn, {"base_recipe": none})[0]["method"] == BN_FREE_METHOD


@pytest.mark.parametrize("method", ["nayer", "adadfkd", "spaceshipnet"])
def test_the_newer_methods_run_on_an_own_pair_with_the_recipes_values(tmp_path, method):
    """NAYER, AdaDFKD and SpaceshipNet on a user's teacher and student: the family recipe's
    values (NAYER's warm-up epoch, then one epoch of student steps), nothing
    method-specific from the user."""
    student = own("make_student")
    before = {k: v.clone() for k, v in student.state_dict().items()}
    summary, _ = distill(own("make_teacher"), student, tmp_path, method=method,
                         **{**TINY, "epochs": 2, "g_steps": 2, "kd_steps": 2})
    assert summary["method"] == method and summary["epochs"] == 2
    assert any(not torch.equal(v, before[k]) for k, v in student.state_dict().items())
