"""Teachers as they are shipped: black-box answers checked and turned into logits, a callable
and an ONNX file as the teacher of a run (white-box through onnx2torch, equal to the PyTorch
model and to ONNX Runtime; black-box through ONNX Runtime), the refusals in one line, the query
budget and an exact resume of a DFME run with its query count."""

from __future__ import annotations

import importlib.util
import json
import textwrap

import numpy as np
import pytest
import torch
from test_any_model import needs_timm
from test_cli import assert_user_error, dfkd
from torch import nn

from dfkd.api import build_trainer, distill
from dfkd.checkpoint import load_model_checkpoint
from dfkd.errors import DfkdError
from dfkd.teachers import BlackBoxTeacher, load_onnx_teacher, load_teacher

pytestmark = pytest.mark.usefixtures("one_thread")
pytest.importorskip("onnxruntime")
if importlib.util.find_spec("onnx2torch") is None:
    pytest.skip("onnx2torch is not installed (pip install 'dfkd[onnx]')", allow_module_level=True)
TIMING = ("synthesis_seconds", "student_seconds", "elapsed_seconds", "peak_memory_mb")


# ------------------------------------------------------------------ answers
def box(answer, num_classes=3, pixels=False):
    return BlackBoxTeacher(answer, num_classes, pixels=pixels, name="the box")


def test_probabilities_become_their_log_and_logits_stay():
    logits = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, 1.0]])
    probs = logits.softmax(1)
    torch.testing.assert_close(box(lambda x: probs.numpy())(torch.zeros(2, 1, 2, 2)),
                               probs.log())
    torch.testing.assert_close(box(lambda x: logits.tolist())(torch.zeros(2, 1, 2, 2)), logits)
    # Either way, a softmax gives the box's probabilities back.
    torch.testing.assert_close(box(lambda x: probs)(torch.zeros(2, 1, 2, 2)).softmax(1), probs)


@pytest.mark.parametrize("answer, message", [
    (lambda x: torch.zeros(len(x), dtype=torch.long), "answers class labels only"),
    (lambda x: np.zeros((len(x), 2), dtype=np.int64), "answers class labels only"),
    (lambda x: torch.zeros(len(x), 4), "returned shape (2, 4) for 2 images; expected (2, 3)"),
    (lambda x: torch.zeros(len(x) + 1, 3), "returned shape (3, 3)"),
    (lambda x: torch.full((len(x), 3), float("nan")), "NaN or infinite values for 2 of 2"),
    (lambda x: 1 / 0, "raised ZeroDivisionError: division by zero when asked about 2"),
    (lambda x: "yes", "returned a str, not a tensor, array or list of numbers"),
])
def test_a_wrong_answer_is_one_line(answer, message):
    with pytest.raises(DfkdError, match="the box") as info:
        box(answer)(torch.zeros(2, 1, 2, 2))
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_a_pixels_box_is_asked_about_pixels_in_0_1():
    seen = []
    b = box(lambda x: seen.append(x) or torch.zeros(len(x), 3), pixels=True)
    b.set_normalization((0.5,), (0.25,))
    normalised = torch.tensor([[[[-2.0, 0.0], [2.0, 9.0]]]])
    b(normalised)
    torch.testing.assert_close(seen[0], torch.tensor([[[[0.0, 0.5], [1.0, 1.0]]]]))
    assert seen[0].device.type == "cpu" and seen[0].dtype == torch.float32


# ------------------------------------------------------------------ a callable as the teacher
def write_box(tmp_path, teacher, labels=False):
    """file.py:answer, a black box around the Fashion-MNIST teacher (pixels in, probabilities
    or labels out)."""
    model, meta = load_model_checkpoint(teacher)
    torch.save(model, tmp_path / "model.pt")
    (tmp_path / "service.py").write_text(textwrap.dedent(f"""
        import torch
        model = torch.load({str(tmp_path / 'model.pt')!r}, weights_only=False).eval()
        mean, std = {meta['mean']!r}, {meta['std']!r}
        def answer(images):
            with torch.no_grad():
                out = model((images - mean[0]) / std[0]).softmax(1)
            return out.argmax(1) if {labels} else out
    """))
    return f"{tmp_path / 'service.py'}:answer"


def small_run(*args):
    return ["--epochs", "1", "--set", "rounds=2", "--set", "batch_size=16",
            "--set", "sample_grid=0", "--set", "eval_split=val", *args]


def test_a_callable_black_box_runs_dfme_by_default(fmnist_teacher, tmp_path):
    spec = write_box(tmp_path, fmnist_teacher)
    out = dfkd("distill", "--teacher", spec, "--teacher-blackbox", "--dataset", "fashion_mnist",
               "--out", str(tmp_path / "run"), "--no-progress", *small_run())
    assert out.returncode == 0, out.stderr
    assert "black box (it only answers queries): running dfme" in out.stderr
    assert "no synthetic probe" in out.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["method"] == "dfme"
    # dfme's Fashion-MNIST recipe: 1 generator step of 16 x (grad_m + 1) points and 5
    # student steps of 16, a round.
    m = summary["config"]["dfme"]["grad_m"]
    assert summary["teacher_queries"] == 2 * (16 * (m + 1) + 5 * 16)


def test_a_method_that_needs_gradients_refuses_a_black_box(fmnist_teacher, tmp_path):
    spec = write_box(tmp_path, fmnist_teacher)
    out = dfkd("distill", "--teacher", spec, "--teacher-blackbox", "--dataset", "fashion_mnist",
               "--method", "cudfkd", "--out", str(tmp_path / "run"), *small_run())
    assert_user_error(out, "method 'cudfkd' needs more of the teacher than its answers",
                      "can learn from one: dfme")


def test_a_box_that_answers_labels_is_refused_before_any_work(fmnist_teacher, tmp_path):
    spec = write_box(tmp_path, fmnist_teacher, labels=True)
    out = dfkd("distill", "--teacher", spec, "--teacher-blackbox", "--dataset", "fashion_mnist",
               "--out", str(tmp_path / "run"), *small_run())
    assert_user_error(out, "answers class labels only", "no method of dfkd learns from labels")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_the_api_takes_a_plain_callable_as_a_black_box(fmnist_teacher):
    model, meta = load_model_checkpoint(fmnist_teacher)
    asked = []

    def answer(images):
        asked.append(len(images))
        with torch.no_grad():
            return model((images - meta["mean"][0]) / meta["std"][0]).softmax(1)
    summary, _ = distill(answer, nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 10)),
                         num_classes=10, image_shape=(1, 32, 32), mean=tuple(meta["mean"]),
                         std=tuple(meta["std"]), epochs=1, rounds=1, batch_size=8,
                         synthetic_probe=0, sample_grid=0, progress=False)
    assert summary["method"] == "dfme"
    m = summary["config"]["dfme"]["grad_m"]
    assert summary["teacher_queries"] == 8 * (m + 1) + 5 * 8
    assert 8 in asked


# ------------------------------------------------------------------ ONNX
@pytest.fixture(scope="module")
def onnx_teacher(fmnist_teacher, tmp_path_factory):
    from dfkd.export import export_model

    path = tmp_path_factory.mktemp("onnx") / "teacher.onnx"
    export_model(fmnist_teacher, "onnx", path, keep_batchnorm=True)
    return path


def test_a_white_box_onnx_teacher_is_the_pytorch_model(fmnist_teacher, onnx_teacher):
    from dfkd.hooks import batchnorm_layers

    model, meta = load_model_checkpoint(fmnist_teacher)
    converted, onnx_meta = load_teacher(str(onnx_teacher))
    assert len(batchnorm_layers(converted)) == len(batchnorm_layers(model)) == 3
    assert onnx_meta["num_classes"] == 10 and onnx_meta["mean"] == meta["mean"]
    assert onnx_meta["conversion_max_diff"] < 1e-4
    x = torch.randn(5, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(converted(x), model.eval()(x), atol=1e-4, rtol=1e-4)
        # The BatchNorm statistics a BN-prior method reads are the model's own.
        for ours, theirs in zip(batchnorm_layers(converted), batchnorm_layers(model)):
            torch.testing.assert_close(ours.running_var, theirs.running_var)


def test_a_black_box_onnx_teacher_answers_with_onnx_runtime(fmnist_teacher, onnx_teacher):
    model, _ = load_model_checkpoint(fmnist_teacher)
    boxed, _ = load_onnx_teacher(onnx_teacher, blackbox=True)
    x = torch.randn(5, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(boxed(x), model.eval()(x), atol=1e-4, rtol=1e-4)


def test_an_onnx_teacher_runs_as_the_pt_teacher_does(fmnist_teacher, onnx_teacher, tmp_path):
    """The same seed and settings from the .pt and the .onnx teacher: the same student, up to
    float32's order of summation."""
    rows = []
    for name, teacher in (("pt", fmnist_teacher), ("onnx", onnx_teacher)):
        raw = {"method": "cudfkd", "teacher": str(teacher), "epochs": 1, "rounds": 2,
               "batch_size": 16, "sample_grid": 0, "synthetic_probe": 0, "eval_split": "val"}
        build_trainer(raw, tmp_path / name, progress=False).fit()
        rows.append(json.loads((tmp_path / name / "metrics.jsonl").read_text()))
    assert abs(rows[0]["acc1"] - rows[1]["acc1"]) < 0.5
    assert rows[0]["teacher_queries"] == rows[1]["teacher_queries"]


def onnx_of(model: nn.Module, path, shape=(1, 1, 8, 8), dynamic: bool = False):
    batch = ({0: torch.export.Dim("batch", min=1)},) if dynamic else None
    torch.onnx.export(model.eval(), (torch.randn(*shape),), str(path), dynamo=True,
                      dynamic_shapes=batch, external_data=False, verbose=False)
    return path


def test_an_onnx_file_that_is_not_a_classifier_is_one_line(tmp_path):
    path = onnx_of(nn.Conv2d(1, 2, 3), tmp_path / "conv.onnx")
    with pytest.raises(DfkdError, match=r"is not a classifier: its output .* not \(batch, "):
        load_teacher(str(path))
    (tmp_path / "junk.onnx").write_text("not a model")
    with pytest.raises(DfkdError, match="is not an ONNX model"):
        load_teacher(str(tmp_path / "junk.onnx"))


def test_a_graph_the_converter_cannot_take_suggests_the_black_box(onnx_teacher, monkeypatch):
    from dfkd.teachers import _import_onnx2torch

    onnx2torch = _import_onnx2torch()

    def fail(_proto):
        raise NotImplementedError("Converter is not implemented (Foo)")
    monkeypatch.setattr(onnx2torch, "convert", fail)
    with pytest.raises(DfkdError, match="onnx2torch cannot convert .* use it as a black box: "
                                        "--teacher-blackbox"):
        load_teacher(str(onnx_teacher))


def test_a_fixed_batch_graph_answers_any_batch_as_a_black_box_only(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
    path = onnx_of(model, tmp_path / "fixed.onnx", shape=(4, 1, 8, 8))
    boxed, meta = load_onnx_teacher(path, blackbox=True)
    assert meta["batch"] == 4
    x = torch.randn(6, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(boxed(x), model(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(DfkdError, match="takes a fixed batch of 4 images.*--teacher-blackbox"):
        load_onnx_teacher(path, blackbox=False)


# ------------------------------------------------------------------ queries
def dfme_raw(teacher, **extra):
    return {"method": "dfme", "teacher": str(teacher), "epochs": 3, "rounds": 3,
            "batch_size": 8, "kd_steps": 2, "sample_grid": 0, "synthetic_probe": 0,
            "eval_split": "val", "generator": {"nz": 16, "ngf": 8}, **extra}


def test_the_query_budget_ends_the_run_before_a_round_it_cannot_pay(fmnist_teacher, tmp_path):
    per_round = 8 * 2 + 2 * 8
    trainer = build_trainer(dfme_raw(fmnist_teacher, query_budget=4 * per_round + 5),
                            tmp_path, progress=False)
    summary = trainer.fit()
    assert summary["teacher_queries"] == 4 * per_round
    assert summary["stopped_by"] == "query_budget"
    # Epoch 1 (3 rounds), then a shorter epoch 2 of 1 round.
    assert [r["teacher_queries"] for r in trainer.history] == [3 * per_round, 4 * per_round]


def test_a_killed_dfme_run_resumes_to_the_same_metrics_and_queries(fmnist_teacher, tmp_path):
    straight = build_trainer(dfme_raw(fmnist_teacher), tmp_path / "a", progress=False)
    straight.fit()
    first = build_trainer(dfme_raw(fmnist_teacher), tmp_path / "b", progress=False)
    first.fit(stop_after_epoch=1)
    again = build_trainer(dfme_raw(fmnist_teacher), tmp_path / "b", resume=True,
                          progress=False)
    summary = again.fit()

    def rows(folder):
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
                for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert rows(tmp_path / "a") == rows(tmp_path / "b")
    assert summary["teacher_queries"] == straight.queries["total"] == 3 * 3 * (16 + 16)


# ------------------------------------------------------------------ a timm model as ONNX
@needs_timm
@pytest.mark.parametrize("name", ["timm:resnet18", "timm:mobilenetv3_small_100"])
def test_a_timm_model_exported_by_torch_is_a_white_and_a_black_box_teacher(name, tmp_path):
    """torch's exporter, BatchNorm kept (optimize=False): onnx2torch's module has the model's
    BatchNorm layers and answers as the model; ONNX Runtime's black box does too."""
    from dfkd.hooks import batchnorm_layers
    from dfkd.models import create_model

    torch.manual_seed(0)
    model = create_model(name, 10, 1).train()
    with torch.no_grad():
        model(torch.randn(16, 1, 32, 32))   # BatchNorm statistics off their defaults
    model.eval()
    path = tmp_path / "timm.onnx"
    torch.onnx.export(model, (torch.randn(2, 1, 32, 32),), str(path), dynamo=True,
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
                      external_data=False, verbose=False, optimize=False)
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        want = model(x)
        converted, meta = load_teacher(str(path))
        assert meta["num_classes"] == 10 and meta["image_shape"] == [1, 32, 32]
        assert len(batchnorm_layers(converted)) == len(batchnorm_layers(model))
        torch.testing.assert_close(converted(x), want, atol=1e-4, rtol=1e-4)
        boxed, _ = load_teacher(str(path), blackbox=True)
        torch.testing.assert_close(boxed(x), want, atol=1e-4, rtol=1e-4)


def test_an_onnx_file_of_another_layout_is_one_line(tmp_path):
    """A graph that takes (batch, height, width, channels) is refused before any work."""
    class Nhwc(nn.Module):
        def forward(self, x):
            return x.flatten(1)[:, :10]
    path = onnx_of(Nhwc(), tmp_path / "nhwc.onnx", shape=(2, 32, 32, 1), dynamic=True)
    out = dfkd("distill", "--teacher", str(path), "--dataset", "fashion_mnist",
               "--method", "dafl", "--out", str(tmp_path / "run"), *small_run())
    assert_user_error(out, "takes images of shape (32, 32, 1)", "are (1, 32, 32)")
