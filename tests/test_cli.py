"""The command line: user mistakes give one clear line, a non-zero exit and no traceback."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dfkd.supervised import flip_labels

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def dfkd(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    return subprocess.run([sys.executable, "-m", "dfkd", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def assert_user_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("dfkd: error:"), result.stderr
    for fragment in fragments:
        assert fragment in line, (fragment, line)


def test_help_explains_commands():
    out = dfkd("--help")
    assert out.returncode == 0
    for cmd in ("train-teacher", "evaluate", "distill"):
        assert cmd in out.stdout
    out = dfkd("distill", "--help")
    assert "--resume" in out.stdout and "cudfkd" in out.stdout


def test_unknown_names(tmp_path):
    assert_user_error(dfkd("train-teacher", "--dataset", "fashion_mnst", "--out",
                           str(tmp_path / "t.pt")), "fashion_mnst", "fashion_mnist")
    assert_user_error(dfkd("train-teacher", "--model", "lenet6", "--out", str(tmp_path / "t.pt")),
                      "unknown model 'lenet6'", "lenet5")


def test_missing_dataset_names_files_and_fix(tmp_path):
    result = dfkd("train-teacher", "--dataset", "cifar10", "--data-root", str(tmp_path),
                  "--out", str(tmp_path / "t.pt"))
    assert_user_error(result, "--data-root", "--download")


def test_corrupt_dataset_file(tmp_path):
    root = tmp_path / "fm"
    root.mkdir()
    for name in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(FMNIST / name, root / name)
    raw = gzip.decompress((FMNIST / "train-images-idx3-ubyte.gz").read_bytes())
    (root / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(raw[: len(raw) // 3]))
    result = dfkd("train-teacher", "--data-root", str(root), "--epochs", "1",
                  "--out", str(tmp_path / "t.pt"))
    assert_user_error(result, "train-images-idx3-ubyte")


@pytest.mark.parametrize("data", [b"hello world", b"\x80\x02garbage", b"PK\x03\x04junk", b"",
                                  bytes(range(256)) * 8])
def test_unreadable_checkpoint_bytes(tmp_path, data):
    from dfkd.checkpoint import safe_load
    from dfkd.errors import CheckpointError

    (tmp_path / "x.pt").write_bytes(data)
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        safe_load(tmp_path / "x.pt")


def test_unreadable_checkpoint_on_the_command_line(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"this is not a checkpoint at all")
    assert_user_error(dfkd("evaluate", "--checkpoint", str(tmp_path / "x.pt")),
                      "not a readable PyTorch checkpoint", "x.pt")


def test_data_root_without_the_dataset(tmp_path, fmnist_teacher):
    result = dfkd("distill", "--teacher", str(fmnist_teacher), "--data-root", str(tmp_path),
                  "--out", str(tmp_path / "r"))
    assert_user_error(result, f"--data-root {tmp_path} does not hold the fashion_mnist")


def test_bad_config_and_missing_teacher(tmp_path):
    assert_user_error(dfkd("distill", "--out", str(tmp_path / "r"), "--set", "epoch=3"),
                      "unknown config key 'epoch'", "Did you mean 'epochs'")
    assert_user_error(dfkd("distill", "--teacher", str(tmp_path / "nope.pt"),
                           "--out", str(tmp_path / "r")), "nope.pt", "does not exist")


def test_resume_refuses_flags_it_would_ignore(tmp_path):
    # refused before the checkpoint is read: nothing of a new run's setup applies to it
    assert_user_error(dfkd("distill", "--resume", str(tmp_path), "--epochs", "40", "--seed", "3"),
                      "--epochs, --seed would not apply", "--set KEY=VALUE")


def test_debug_shows_traceback(tmp_path):
    result = dfkd("--debug", "distill", "--out", str(tmp_path / "r"), "--set", "epoch=3")
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_evaluate_json_and_short_distill(fmnist_teacher, tmp_path):
    ev = dfkd("evaluate", "--checkpoint", str(fmnist_teacher), "--json")
    assert ev.returncode == 0, ev.stderr
    acc = json.loads(ev.stdout)
    assert acc["dataset"] == "fashion_mnist" and acc["acc1"] > 70 and "acc5" in acc
    out = tmp_path / "run"
    result = dfkd("distill", "--teacher", str(fmnist_teacher), "--out", str(out),
                  "--set", "epochs=1", "--set", "rounds=2", "--set", "kd_steps=2",
                  "--set", "batch_size=32", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "teacher" in result.stdout and "Agreement@1" in result.stdout
    again = dfkd("distill", "--teacher", str(fmnist_teacher), "--out", str(out))
    assert_user_error(again, "already holds a run", "--overwrite")


def test_label_noise_flips_the_exact_fraction():
    labels = torch.arange(10).repeat(1000)
    for rate in (0.0, 0.2, 0.5):
        noisy = flip_labels(labels, rate, 10, torch.Generator().manual_seed(1))
        assert (noisy != labels).float().mean().item() == pytest.approx(rate)
        assert noisy.min() >= 0 and noisy.max() <= 9
    # Flipped labels spread over the other classes.
    noisy = flip_labels(labels, 0.5, 10, torch.Generator().manual_seed(1))
    changed = noisy[noisy != labels]
    assert len(torch.unique(changed)) == 10
