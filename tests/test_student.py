"""The distilled student as a product: student.pt / student.safetensors in every run
folder, `dfkd evaluate RUN_DIR`, a student that teaches the next one, `dfkd export`
(ONNX, TorchScript, safetensors) and `dfkd plot`."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dfkd import commands
from dfkd.api import build_trainer
from dfkd.checkpoint import (
    load_model_checkpoint,
    load_safetensors,
    metadata_strings,
    safe_load,
)
from dfkd.data import dataset_info, load_split, normalize
from dfkd.export import export_model
from dfkd.report import _panels, draw_run_curves, plot_curves, read_metrics

SHORT = ["--set", "rounds=2", "--set", "kd_steps=2", "--set", "batch_size=32",
         "--set", "sample_grid=0", "--no-progress"]
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None


def dfkd(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "dfkd", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI in this process; it must fail with one 'dfkd: error:' line."""
    code = commands.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dfkd: error:"), err
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(fmnist_teacher, tmp_path_factory) -> Path:
    """A two-epoch distillation from the command line."""
    out = tmp_path_factory.mktemp("student") / "run"
    result = dfkd("distill", "--teacher", str(fmnist_teacher), "--out", str(out),
                  "--set", "epochs=2", *SHORT)
    assert result.returncode == 0, result.stderr
    assert "student.pt" in result.stdout
    return out


def test_a_run_leaves_its_student(run_dir):
    # The train-teacher format, readable with the weights-only unpickler.
    ckpt = torch.load(run_dir / "student.pt", weights_only=True)
    meta = ckpt["meta"]
    info = dataset_info("fashion_mnist")
    assert meta["arch"] == "lenet5_half" and meta["dataset"] == "fashion_mnist"
    assert meta["num_classes"] == 10 and meta["image_shape"] == [1, 32, 32]
    assert meta["mean"] == list(info.mean) and meta["std"] == list(info.std)
    assert (meta["epoch"], meta["epochs"], meta["method"]) == (2, 2, "cudfkd")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert meta["eval_split"] == summary["eval_split"] == "test"
    assert meta["test_acc1"] == summary["final_acc1"]
    assert meta["test_agreement"] == summary["final_agreement"]
    # The same weights as the run's final checkpoint (its average, with student_ema).
    run_state = safe_load(run_dir / "checkpoint.pt")
    final = run_state["student"] if run_state.get("student_ema") is None else {
        k.removeprefix("module."): v for k, v in run_state["student_ema"].items()
        if k.startswith("module.")}
    assert ckpt["state_dict"].keys() == final.keys()
    for key, value in final.items():
        assert torch.equal(ckpt["state_dict"][key], value), key
    # safetensors: the same tensors, the same metadata as strings.
    state, st_meta = load_safetensors(run_dir / "student.safetensors")
    for key, value in final.items():
        assert torch.equal(state[key], value), key
    assert st_meta == meta
    from safetensors import safe_open
    with safe_open(str(run_dir / "student.safetensors"), framework="pt") as f:
        fields = f.metadata()
    assert fields["arch"] == "lenet5_half" and fields["num_classes"] == "10"
    assert {k: fields[k] for k in metadata_strings(meta)} == metadata_strings(meta)
    # And the figure of the run, when matplotlib is there.
    assert (run_dir / "curves.png").is_file() == HAS_MATPLOTLIB


def test_student_files_are_written_at_each_checkpoint(fmnist_teacher, tmp_path):
    raw = {"teacher": str(fmnist_teacher), "epochs": 3, "rounds": 1, "kd_steps": 2,
           "batch_size": 16, "sample_grid": 0}
    trainer = build_trainer(raw, tmp_path, progress=False)
    trainer.fit(stop_after_epoch=1)
    student, meta = load_model_checkpoint(tmp_path / "student.pt")
    assert meta["epoch"] == 1 and meta["epochs"] == 3
    assert meta["test_acc1"] == trainer.history[-1]["acc1"]
    for key, value in trainer.student.state_dict().items():
        assert torch.equal(student.state_dict()[key], value), key
    # Atomic writes leave no temporary files behind.
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_evaluate_run_dir_gives_the_summary_accuracy(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    for args in ([str(run_dir)], ["--checkpoint", str(run_dir)],
                 [str(run_dir / "student.safetensors")]):
        result = dfkd("evaluate", *args, "--json")
        assert result.returncode == 0, result.stderr
        got = json.loads(result.stdout)
        assert (got["arch"], got["split"]) == ("lenet5_half", "test")
        assert got["acc1"] == summary["final_acc1"], args


def test_evaluate_on_the_val_split_of_a_val_run(fmnist_teacher, tmp_path):
    from dfkd.supervised import evaluate_checkpoint

    raw = {"teacher": str(fmnist_teacher), "epochs": 1, "rounds": 1, "kd_steps": 2,
           "batch_size": 16, "sample_grid": 0, "eval_split": "val"}
    summary = build_trainer(raw, tmp_path, progress=False).fit()
    assert summary["eval_split"] == "val"
    assert evaluate_checkpoint(str(tmp_path), split="val")["acc1"] == summary["final_acc1"]


def test_a_student_teaches_the_next_student(run_dir, tmp_path):
    out = tmp_path / "next"
    result = dfkd("distill", "--teacher", str(run_dir / "student.pt"), "--student",
                  "lenet5_half", "--out", str(out), "--set", "epochs=1",
                  # a student of 4 steps scores at chance: distil it anyway
                  "--set", "check_teacher=false", *SHORT)
    assert result.returncode == 0, result.stderr
    first = torch.load(run_dir / "student.pt", weights_only=True)["meta"]
    summary = json.loads((out / "summary.json").read_text())
    # The teacher's accuracy is its own metadata's: the first student's final Acc@1.
    assert summary["teacher_acc1"] == first["test_acc1"]
    second = torch.load(out / "student.pt", weights_only=True)["meta"]
    assert second["teacher"] == str(run_dir / "student.pt")
    assert second["dataset"] == "fashion_mnist" and second["epoch"] == 1


def _need_export_extra() -> None:
    missing = [m for m in ("onnx", "onnxruntime", "onnxscript")
               if importlib.util.find_spec(m) is None]
    if missing:
        pytest.skip(f"the export extra is not installed (missing {', '.join(missing)}): "
                    "pip install -e '.[export]'")


def test_onnx_export_matches_pytorch(run_dir, tmp_path):
    _need_export_extra()
    import onnx
    import onnxruntime as ort

    out = tmp_path / "student.onnx"
    result = dfkd("export", str(run_dir), "--format", "onnx", "--out", str(out))
    assert result.returncode == 0, result.stderr
    reported = float(re.search(r"on a batch of 8: (\S+) ", result.stdout).group(1))
    assert reported < 1e-4
    # Its own check aside: real images, a third batch size (the batch axis is dynamic).
    model, meta = load_model_checkpoint(run_dir)
    images, _ = load_split("fashion_mnist", "test")
    x = normalize(images[:3], dataset_info("fashion_mnist"))
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "input" and isinstance(inp.shape[0], str)
    got = torch.from_numpy(session.run(["logits"], {"input": x.numpy()})[0])
    with torch.no_grad():
        want = model.eval()(x)
    assert (got - want).abs().max().item() < 1e-4
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert props["arch"] == "lenet5_half" and json.loads(props["mean"]) == meta["mean"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student.onnx"]


def test_export_without_the_extra_names_it(run_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    out = tmp_path / "s.onnx"
    line = one_line_error(capsys, ["export", str(run_dir), "--format", "onnx",
                                   "--out", str(out)])
    assert "onnxruntime" in line and "pip install 'dfkd[export]'" in line
    assert not out.exists()


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated")
def test_torchscript_and_safetensors_exports(run_dir, tmp_path):
    model, meta = load_model_checkpoint(run_dir)
    x = torch.randn(5, 1, 32, 32)
    lines = export_model(run_dir, "torchscript", tmp_path / "s.ts")
    assert "TorchScript check" in lines[1]
    scripted = torch.jit.load(str(tmp_path / "s.ts"))
    with torch.no_grad():
        assert torch.allclose(scripted(x), model.eval()(x), atol=1e-5)
    export_model(run_dir, "safetensors", tmp_path / "s.safetensors")
    again, meta2 = load_model_checkpoint(tmp_path / "s.safetensors")
    assert meta2 == meta
    for key, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_evaluate_refuses_the_run_checkpoint_with_a_hint(run_dir, capsys):
    line = one_line_error(capsys, ["evaluate", str(run_dir / "checkpoint.pt")])
    assert "run checkpoint (for --resume)" in line and "student.pt" in line


# ------------------------------------------------------------------------------ plots
def _fake_run(folder: Path, rows: list[dict]) -> Path:
    folder.mkdir(parents=True)
    text = "".join(json.dumps(r) + "\n" for r in rows)
    (folder / "metrics.jsonl").write_text(text + '{"epoch": 9, "acc')  # a killed run's tail
    return folder


def _rows(n: int, **extra) -> list[dict]:
    return [{"epoch": e, "acc1": 10.0 + e, "agreement": 20.0 + e, "elapsed_seconds": 1.5 * e,
             "lr": 0.1, "loss_s": 1.0 / e, **{k: v * e for k, v in extra.items()}}
            for e in range(1, n + 1)]


def test_plot_panels_follow_the_keys_present():
    cud = _rows(3, loss_g=-2.0, g_bn=5.0, kd=0.5, sp_weight=0.3, sp_weight_std=0.1,
                **{"lambda": 2.0, "adv_weight": 0.5})
    titles = {title: keys for title, _, keys in _panels(cud)}
    assert list(titles) == [
        "Acc@1 (%) by epoch", "Acc@1 (%) by training wall time (s)",
        "Agreement@1 (%) by epoch", "Agreement@1 (%) by training wall time (s)",
        "student loss terms", "generator loss terms", "pace λ", "adversarial weight",
        "self-paced weights v*"]
    assert titles["student loss terms"] == ["loss_s", "kd"]
    assert titles["generator loss terms"] == ["loss_g", "g_bn"]
    assert titles["self-paced weights v*"] == ["sp_weight", "sp_weight_std"]  # new keys too
    # A method without a curriculum: no λ, adversarial weight or v* panels.
    dafl = _rows(2, loss_g=1.0, g_entropy=2.0)
    assert [t for t, _, _ in _panels(dafl)][-2:] == ["student loss terms",
                                                     "generator loss terms"]


def test_plot_command(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    a = _fake_run(tmp_path / "a", _rows(4, sp_weight=0.2, **{"lambda": 2.0}))
    b = _fake_run(tmp_path / "b", _rows(2, loss_g=1.0))
    assert len(read_metrics(a)) == 4
    out = tmp_path / "figs" / "both.png"
    assert commands.main(["plot", str(a), str(b), "--out", str(out)]) == 0
    assert "2 runs: a, b" in capsys.readouterr().out
    assert out.read_bytes().startswith(b"\x89PNG")
    # A folder of runs (a bench's) stands for the runs below it.
    assert commands.main(["plot", str(tmp_path), "--out", str(tmp_path / "all.png")]) == 0
    assert "2 runs" in capsys.readouterr().out
    line = one_line_error(capsys, ["plot", str(tmp_path / "nope"), "--out", str(out)])
    assert "does not exist" in line


def test_plot_without_matplotlib(tmp_path, monkeypatch, capsys):
    run = _fake_run(tmp_path / "run", _rows(2))
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    line = one_line_error(capsys, ["plot", str(run), "--out", str(tmp_path / "x.png")])
    assert "pip install 'dfkd[plot]'" in line
    assert draw_run_curves(run) is None  # distill skips it silently
    assert not (run / "curves.png").exists()


def test_bench_curves_are_the_same_figure(tmp_path):
    pytest.importorskip("matplotlib", reason="the plot extra is not installed")
    from dfkd import bench

    assert bench.draw_curves is plot_curves
    _fake_run(tmp_path / "cudfkd" / "seed0", _rows(3, sp_weight=0.5))
    _fake_run(tmp_path / "dafl" / "seed0", _rows(3, g_act=1.0))
    (tmp_path / "scratch" / "seed0").mkdir(parents=True)  # references log no epochs
    assert bench.plot_curves(tmp_path, ["cudfkd", "dafl", "scratch"])
    assert (tmp_path / "curves.png").read_bytes().startswith(b"\x89PNG")


def test_train_teacher_without_a_bar_prints_one_line_per_epoch(monkeypatch, capsys):
    import dfkd.supervised as teacher
    from dfkd.data import load_split as real

    # 512 images per split keep it to a second; the training loop is the real one
    monkeypatch.setattr(teacher, "load_split",
                        lambda name, split, *a: tuple(t[:512] for t in real(name, split, *a)))
    settings = teacher.SupervisedSettings(dataset="fashion_mnist", model="lenet5_half",
                                          epochs=2, batch_size=128, device="cpu")
    teacher.train_supervised(settings, progress=False)
    lines = [x for x in capsys.readouterr().err.splitlines() if x.startswith("train ")]
    assert [x.split(",")[0] for x in lines] == ["train lenet5_half: epoch 1/2",
                                                "train lenet5_half: epoch 2/2"]


def test_kd_from_a_checkpoint_without_its_architecture_is_one_line(tmp_path):
    import dfkd.models
    import dfkd.supervised as teacher
    from dfkd.errors import CheckpointError

    bare = tmp_path / "zoo.pt"    # a bare state dict: nothing says what builds it
    torch.save(dfkd.models.create_model("lenet5", 10, 1).state_dict(), bare)
    settings = teacher.SupervisedSettings(dataset="fashion_mnist", model="lenet5_half",
                                          epochs=1, device="cpu", kd_from=str(bare))
    with pytest.raises(CheckpointError, match="--kd-from .*names its architecture") as info:
        teacher.train_supervised(settings, progress=False)
    assert "--teacher-model" not in str(info.value)   # no such flag in train-teacher


def test_kd_from_a_dfkd_checkpoint_trains_by_kd_and_reads_the_teacher_once(tmp_path,
                                                                             monkeypatch):
    import dfkd.checkpoint
    import dfkd.models
    import dfkd.supervised as teacher

    full = teacher.load_split
    monkeypatch.setattr(teacher, "load_split",   # 256 images a split keep it quick
                        lambda *a: tuple(t[:256] for t in full(*a)))
    source = tmp_path / "teacher.pt"
    net = dfkd.models.create_model("lenet5", 10, 1)
    dfkd.checkpoint.save_model_checkpoint(source, net, {
        "arch": "lenet5", "dataset": "fashion_mnist", "num_classes": 10,
        "image_shape": [1, 32, 32], "mean": [0.286], "std": [0.353]})
    reads, read = [], dfkd.checkpoint._read_model_file
    monkeypatch.setattr(dfkd.checkpoint, "_read_model_file",
                        lambda path: reads.append(path) or read(path))
    settings = teacher.SupervisedSettings(dataset="fashion_mnist", model="lenet5_half",
                                          epochs=1, device="cpu", kd_from=str(source))
    model, meta = teacher.train_supervised(settings, progress=False)
    assert meta["dfkd_kind"] == "kd_with_data"
    assert [str(p) for p in reads] == [str(source)]
    assert all(torch.isfinite(p).all() for p in model.parameters())
