"""Any architecture from the command line: ``package.module:callable`` and
``path/to/file.py:callable`` for --teacher-model, --student and --model, recorded so
that --resume and evaluate rebuild them; bad input is one line, no traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import metrics_rows
from torch import nn

from dfkd import commands
from dfkd.errors import DfkdError
from dfkd.models import create_model, resolve_spec

NETS = '''
import torch
from torch import nn


def make_net(num_classes, in_channels, width=8):
    """A small BatchNorm CNN (the methods that match BN statistics need one)."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.MaxPool2d(2), nn.Conv2d(width, 2 * width, 3, padding=1),
        nn.BatchNorm2d(2 * width), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
        nn.Linear(8 * width, num_classes))


def make_student(num_classes):          # no in_channels: it is not passed
    return make_net(num_classes, 1, width=4)


class Wide(nn.Module):                  # a class taking **kwargs gets both
    def __init__(self, **kwargs):
        super().__init__()
        self.got = kwargs
        self.fc = nn.Linear(kwargs["in_channels"] * 1024, kwargs["num_classes"])

    def forward(self, x):
        return self.fc(x.flatten(1))


def not_a_model(num_classes, in_channels):
    return {"layers": 3}


def crashes(num_classes, in_channels):
    raise ValueError("width must be even\\nsecond line")


WIDTH = 8
'''

# The teachers here are random (they score at chance): distil them anyway.
RUN = ["--dataset", "fashion_mnist", "--set", "rounds=2", "--set", "kd_steps=2",
       "--set", "batch_size=16", "--set", "sample_grid=0", "--set", "check_teacher=false",
       "--no-progress"]


def dfkd(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "dfkd", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("user_models")
    (folder / "nets.py").write_text(NETS)
    (folder / "broken.py").write_text("import a_module_nobody_has_42\n")
    (folder / "syntax.py").write_text("def make_net(:\n")
    # A zoo-style teacher file: a bare state_dict of make_net, no dfkd metadata.
    torch.manual_seed(0)
    teacher = create_model(f"{folder}/nets.py:make_net", 10, 1)
    torch.save(teacher.state_dict(), folder / "teacher_zoo.pt")
    return folder


def test_specs_build_user_models(nets, monkeypatch):
    spec = f"{nets}/nets.py:make_net"
    model = create_model(spec, num_classes=7, in_channels=3)
    assert model[-1].out_features == 7 and model[0].in_channels == 3
    student = create_model(f"{nets}/nets.py:make_student", num_classes=5, in_channels=1)
    assert student[-1].out_features == 5
    wide = create_model(f"{nets}/nets.py:Wide", num_classes=4, in_channels=2)
    assert wide.got == {"num_classes": 4, "in_channels": 2}
    # The same file is loaded once: teacher and student share its module.
    assert type(create_model(f"{nets}/nets.py:Wide", 2, 1)) is type(wide)
    # package.module:callable, from sys.path.
    monkeypatch.syspath_prepend(str(nets))
    assert create_model("nets:make_net", 3, 1)[-1].out_features == 3
    assert isinstance(create_model("torch.nn:Identity"), nn.Identity)
    # Checkpoints record file specs with an absolute path.
    monkeypatch.chdir(nets)
    assert resolve_spec("nets.py:make_net") == f"{nets.resolve()}/nets.py:make_net"
    assert resolve_spec("nets:make_net") == "nets:make_net"
    assert resolve_spec("lenet5") == "lenet5"


def test_custom_teacher_and_student_run_and_resume_exactly(nets, tmp_path):
    args = ["--teacher", str(nets / "teacher_zoo.pt"), "--teacher-model", "nets.py:make_net",
            "--student", "nets.py:make_student", "--set", "epochs=2", *RUN]
    # Relative specs, run from the folder that holds the file.
    full = dfkd("distill", *args, "--out", str(tmp_path / "full"), cwd=nets)
    assert full.returncode == 0, full.stderr
    first = dfkd("distill", *args, "--out", str(tmp_path / "split"), "--stop-after-epoch", "1",
                 cwd=nets)
    assert first.returncode == 0, first.stderr
    assert [r["epoch"] for r in metrics_rows(tmp_path / "split")] == [1]
    # The resume rebuilds both models from config.yaml (relative paths, like --teacher's,
    # from the same folder).
    resumed = dfkd("distill", "--resume", str(tmp_path / "split"), cwd=nets)
    assert resumed.returncode == 0, resumed.stderr
    assert metrics_rows(tmp_path / "split") == metrics_rows(tmp_path / "full")
    meta = torch.load(tmp_path / "full" / "student.pt", weights_only=True)["meta"]
    assert meta["arch"] == f"{nets.resolve()}/nets.py:make_student"
    # student.pt rebuilds the custom student from any working folder.
    result = dfkd("evaluate", str(tmp_path / "full"), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert json.loads(result.stdout)["acc1"] == summary["final_acc1"]


def _one_line_error(capsys, argv: list[str]) -> str:
    code = commands.main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dfkd: error:"), err
    return lines[0]


@pytest.mark.parametrize("spec, fragments", [
    ("a_package_nobody_has_42.nets:make_net",
     ["module 'a_package_nobody_has_42.nets' does not import",
      "ModuleNotFoundError: No module named 'a_package_nobody_has_42'"]),
    ("{nets}/broken.py:make_net",
     ["broken.py' does not import", "No module named 'a_module_nobody_has_42'"]),
    ("{nets}/syntax.py:make_net", ["syntax.py' does not import", "SyntaxError"]),
    ("{nets}/missing.py:make_net", ["the file", "missing.py' does not exist"]),
    ("{nets}/nets.py:make_nett", ["has no 'make_nett'", "Did you mean 'make_net'?"]),
    ("{nets}/nets.py:WIDTH", ["'WIDTH' is an int, not a callable"]),
    ("{nets}/nets.py:not_a_model", ["returned a dict, not a torch.nn.Module"]),
    ("{nets}/nets.py:crashes", ["failed: ValueError: width must be even"]),
    ("{nets}/nets.py:make_student",  # builds, but the teacher's weights do not fit it
     ["do not fit the Sequential architecture", "shape mismatch in 0.weight (8, 1, 3, 3)"]),
])
def test_bad_teacher_model_is_one_line(nets, capsys, spec, fragments):
    spec = spec.format(nets=nets)
    for argv in (["evaluate", str(nets / "teacher_zoo.pt"), "--model", spec,
                  "--dataset", "fashion_mnist"],
                 ["distill", "--teacher", str(nets / "teacher_zoo.pt"), "--teacher-model",
                  spec, "--dataset", "fashion_mnist", "--out", str(nets / "never")]):
        line = _one_line_error(capsys, argv)
        for fragment in fragments:
            assert fragment in line, (fragment, line)
    assert not (nets / "never").exists()


def test_bad_student_is_one_line(nets, fmnist_teacher, tmp_path, capsys):
    line = _one_line_error(capsys, ["distill", "--teacher", str(fmnist_teacher), "--student",
                                    f"{nets}/nets.py:not_a_model", "--out",
                                    str(tmp_path / "r")])
    assert "returned a dict, not a torch.nn.Module" in line
    line = _one_line_error(capsys, ["distill", "--teacher", str(fmnist_teacher), "--student",
                                    "lenet6", "--out", str(tmp_path / "r")])
    assert "unknown model 'lenet6'" in line and "path/to/file.py:callable" in line


def test_a_user_error_in_the_callable_keeps_its_traceback_for_debug(nets):
    with pytest.raises(DfkdError) as info:
        create_model(f"{nets}/nets.py:crashes", 10, 1)
    assert isinstance(info.value.__cause__, ValueError)  # --debug prints the chain
    assert "\n" not in str(info.value)
