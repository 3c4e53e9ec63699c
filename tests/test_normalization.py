"""A teacher is fed the input normalisation it was trained with (dfkd.data.normalization).

The public CIFAR-10 teacher zoo trained with std (0.2023, 0.1994, 0.2010), not CIFAR-10's
own (0.2470, 0.2435, 0.2616). A teacher trained here under the zoo's constants, on made-up
CIFAR-10 files whose class is the images' brightness (so a wrong scale moves the class), and
saved as a bare state dict as the zoo stores them, must score through ``dfkd evaluate`` and
``dfkd distill`` exactly what it scores in its own process.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cifar_files import write_cifar

from dfkd.checkpoint import safe_load
from dfkd.commands import main
from dfkd.data import dataset_info, load_split
from dfkd.data.normalization import ZOO, parse_normalization, resolve_normalization
from dfkd.errors import ConfigError
from dfkd.models import create_model

pytestmark = pytest.mark.usefixtures("one_thread")

ZOO_MEAN, ZOO_STD = ZOO["cifar10"]


def brightness_images(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Grey-ish images of one brightness each; the class is the brightness's tenth."""
    level = rng.uniform(0.05, 0.95, n)
    labels = np.minimum((level - 0.05) / 0.09, 9).astype(np.int64)
    pixels = level[:, None, None, None] * 255 + rng.normal(0, 3, (n, 3, 32, 32))
    return np.clip(pixels, 0, 255).astype(np.uint8), labels


def normalised(images: torch.Tensor, mean, std) -> torch.Tensor:
    return (images.float() / 255 - torch.tensor(mean).view(1, -1, 1, 1)) \
        / torch.tensor(std).view(1, -1, 1, 1)


@pytest.fixture(scope="module")
def zoo_teacher(tmp_path_factory):
    """(data root, bare zoo-layout checkpoint, its test Acc@1 in its own process,
    its test Acc@1 under CIFAR-10's own constants)."""
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    write_cifar(root, 10, brightness_images(2500, rng), brightness_images(500, rng))
    torch.manual_seed(0)
    model = create_model("lenet5", 10, 3)
    x_train, y_train = load_split("cifar10", "train", root)
    inputs = normalised(x_train, ZOO_MEAN, ZOO_STD)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(6):
        order = torch.randperm(len(y_train))
        for i in range(0, len(order), 64):
            idx = order[i:i + 64]
            loss = F.cross_entropy(model(inputs[idx]), y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    x_test, y_test = load_split("cifar10", "test", root)
    info = dataset_info("cifar10")
    with torch.no_grad():
        own = (model(normalised(x_test, ZOO_MEAN, ZOO_STD)).argmax(1) == y_test)
        old = (model(normalised(x_test, info.mean, info.std)).argmax(1) == y_test)
    path = root / "cifar10_lenet5.pth"
    # The zoo's layout: a bare state dict under 'state_dict' (DDP's 'module.' prefix too).
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return root, path, own.float().mean().item() * 100, old.float().mean().item() * 100


def test_the_teacher_is_sensitive_to_the_normalisation(zoo_teacher):
    """Without this the test below could not tell the zoo's constants from the dataset's."""
    _, _, own, old = zoo_teacher
    assert own > 70
    assert own - old > 5


def test_evaluate_feeds_a_bare_cifar_teacher_the_zoo_normalisation(zoo_teacher, capsys):
    root, path, own, old = zoo_teacher
    args = ["evaluate", str(path), "--model", "lenet5", "--dataset", "cifar10",
            "--data-root", str(root), "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["acc1"] == pytest.approx(own, abs=0.2)   # 0.2: one image of 500
    assert result["normalization"] == {"mean": list(ZOO_MEAN), "std": list(ZOO_STD),
                                       "source": "zoo"}
    # The same file under the dataset's constants (the behaviour before) scores the old way.
    assert main([*args, "--norm", "dataset"]) == 0
    assert json.loads(capsys.readouterr().out)["acc1"] == pytest.approx(old, abs=0.2)
    # Explicit constants equal to the zoo's give the zoo's result.
    explicit = ",".join(map(str, ZOO_MEAN)) + ":" + ",".join(map(str, ZOO_STD))
    assert main([*args, "--norm", explicit]) == 0
    assert json.loads(capsys.readouterr().out)["acc1"] == pytest.approx(own, abs=0.2)


def test_distill_feeds_the_teacher_its_normalisation_and_records_it(zoo_teacher, tmp_path,
                                                                     capsys):
    root, path, own, _ = zoo_teacher
    out = tmp_path / "run"
    code = main(["distill", "--teacher", str(path), "--teacher-model", "lenet5",
                 "--dataset", "cifar10", "--data-root", str(root), "--student", "lenet5_half",
                 "--no-progress", "--out", str(out),
                 *[x for kv in ("epochs=1", "rounds=1", "kd_steps=1", "batch_size=8",
                                "batched_g=false", "synthetic_probe=0", "sample_grid=0",
                                "generator.nz=16", "generator.ngf=8")
                   for x in ("--set", kv)]])
    assert code == 0
    assert "the CIFAR model zoo's for cifar10" in capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["teacher_acc1"] == pytest.approx(own, abs=0.2)
    zoo = {"mean": list(ZOO_MEAN), "std": list(ZOO_STD), "source": "zoo"}
    assert summary["normalization"] == zoo
    meta = safe_load(out / "student.pt")["meta"]
    assert (meta["mean"], meta["std"], meta["normalization"]) == (zoo["mean"], zoo["std"], "zoo")
    # The student is evaluated on inputs normalised the same way: its recorded accuracy is
    # what `dfkd evaluate` measures from its own metadata.
    assert main(["evaluate", str(out), "--data-root", str(root), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["acc1"] == pytest.approx(summary["final_acc1"], abs=0.2)
    assert result["normalization"]["source"] == "checkpoint"


def test_a_teacher_near_chance_stops_the_run_with_the_likely_causes(zoo_teacher, tmp_path,
                                                                    capsys):
    root, _, _, _ = zoo_teacher
    torch.manual_seed(1)
    blind = create_model("lenet5", 10, 3)
    for p in blind.parameters():
        p.data.zero_()   # constant logits: one class for every image, 10% here at best
    path = tmp_path / "blind.pth"
    torch.save(blind.state_dict(), path)
    args = ["distill", "--teacher", str(path), "--teacher-model", "lenet5", "--dataset",
            "cifar10", "--data-root", str(root), "--no-progress", "--out", str(tmp_path / "r"),
            "--set", "epochs=1", "--set", "rounds=1", "--set", "kd_steps=1",
            "--set", "batch_size=8", "--set", "synthetic_probe=0", "--set", "sample_grid=0",
            "--set", "generator.nz=16", "--set", "generator.ngf=8"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("dfkd: error: the teacher scores")
    for cause in ("normalisation", "--dataset", "class count", "check_teacher=false"):
        assert cause in err
    assert "Traceback" not in err
    assert main([*args, "--overwrite", "--set", "check_teacher=false"]) == 0


def test_resolution_order():
    c10, svhn = dataset_info("cifar10"), dataset_info("svhn")
    mine = {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}
    # A dfkd checkpoint carries its own; a setting wins over it.
    assert resolve_normalization(None, mine, c10).source == "checkpoint"
    assert resolve_normalization(None, mine, c10).std == (0.4, 0.5, 0.6)
    assert resolve_normalization("dataset", mine, c10).std == c10.std
    # A bare state dict: the zoo's on CIFAR-10/100, the dataset's elsewhere.
    assert resolve_normalization(None, {"arch": "resnet34"}, c10).std == ZOO_STD
    assert resolve_normalization(None, {}, dataset_info("cifar100")).source == "zoo"
    assert resolve_normalization(None, {}, svhn).source == "dataset"
    assert resolve_normalization("zoo", {}, svhn).mean == (0.5, 0.5, 0.5)
    given = resolve_normalization({"mean": [0.5] * 3, "std": [0.25] * 3}, {}, c10)
    assert (given.mean, given.std, given.source) == ((0.5,) * 3, (0.25,) * 3, "given")


@pytest.mark.parametrize("value, message", [
    ("zooo", "not one of auto, zoo, dataset"),
    ("0.5,0.5:0.2", "one value per channel"),
    ("0.5:0", "std positive"),
    ({"mean": [0.5]}, "keys mean and std"),
    ("a:b", "must be numbers"),
])
def test_bad_settings_are_one_line(value, message):
    with pytest.raises(ConfigError, match=message):
        parse_normalization(value)


def test_wrong_channel_count_and_unknown_zoo_dataset():
    with pytest.raises(ConfigError, match="1 channel"):
        resolve_normalization("0.5:0.5", {}, dataset_info("cifar10"))
    with pytest.raises(ConfigError, match="no constants for fashion_mnist"):
        resolve_normalization("zoo", {}, dataset_info("fashion_mnist"))
