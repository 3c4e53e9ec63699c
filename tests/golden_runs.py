"""The golden runs: a few rounds of each Fashion-MNIST recipe, whose metrics.jsonl must not
change when the code around the methods is reorganised (tests/test_golden.py).

Run as a script, in a process of its own: ``python tests/golden_runs.py OUT`` trains a small
teacher and distils it with each recipe through ``dfkd distill`` (the CLI's whole assembly
path), 2 epochs of 2 rounds; ``--write`` also stores each run's rows as the reference in
tests/golden/. The environment of :data:`ENV` makes a CPU give the same bits on any x86 model:
one thread, MKL's reproducible mode, PyTorch's portable kernels and no oneDNN.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden"
RECIPES = HERE.parent / "configs" / "fashion_mnist"
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MKL_CBWR": "COMPATIBLE",
       "ATEN_CPU_CAPABILITY": "default", "DFKD_GOLDEN_NO_ONEDNN": "1"}
# Wall-clock figures differ between runs of the same code; everything else must not.
TIMING = ("synthesis_seconds", "student_seconds", "elapsed_seconds", "peak_memory_mb")
ROUNDS, EPOCHS, MAX_STEPS = 2, 2, 6


def recipes() -> list[Path]:
    """Each method's Fashion-MNIST recipe: METHOD_lenet5.yaml."""
    return sorted(RECIPES.glob("*_lenet5.yaml"))


def rows(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING} for x in lines]


def train_teacher(path: Path) -> None:
    """A LeNet-5 trained for one pass over 6,000 real training images (~75% test)."""
    import torch
    import torch.nn.functional as F

    from dfkd.checkpoint import save_model_checkpoint
    from dfkd.data import dataset_info, load_split, normalize
    from dfkd.models import create_model

    torch.manual_seed(0)
    info = dataset_info("fashion_mnist")
    images, labels = load_split("fashion_mnist", "train")
    x, y = normalize(images[:6000], info), labels[:6000]
    model = create_model("lenet5", 10, 1)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for i in range(0, len(x), 100):
        loss = F.cross_entropy(model(x[i:i + 100]), y[i:i + 100])
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_model_checkpoint(path, model.eval(), {
        "arch": "lenet5", "dataset": "fashion_mnist", "num_classes": 10,
        "image_shape": list(info.image_shape), "mean": list(info.mean), "std": list(info.std)})


def main(out: Path, write: bool) -> None:
    import torch
    import yaml

    from dfkd.commands import main as dfkd

    if os.environ.get("DFKD_GOLDEN_NO_ONEDNN"):
        torch.backends.mkldnn.enabled = False
    out.mkdir(parents=True, exist_ok=True)
    teacher = out / "teacher.pt"
    train_teacher(teacher)
    for recipe in recipes():
        raw = yaml.safe_load(recipe.read_text())
        name = recipe.stem.removesuffix("_lenet5")
        steps = [f"--set=g_steps={min(raw.get('g_steps', 1), MAX_STEPS)}",
                 f"--set=kd_steps={min(raw.get('kd_steps', 1), MAX_STEPS)}"]
        code = dfkd(["distill", "--config", str(recipe), "--teacher", str(teacher),
                     "--out", str(out / name), "--device", "cpu", "--eval-split", "val",
                     "--seed", "0", "--epochs", str(EPOCHS), f"--set=rounds={ROUNDS}",
                     "--set=synthetic_probe=64", "--set=sample_grid=0", *steps,
                     "--no-progress"])
        if code:
            raise SystemExit(f"{name}: dfkd distill exited with {code}")
        if write:
            GOLDEN.mkdir(exist_ok=True)
            (GOLDEN / f"{name}.json").write_text(json.dumps(rows(out / name), indent=1) + "\n")


if __name__ == "__main__":
    if any(os.environ.get(k) != v for k, v in ENV.items()):   # read when torch loads
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **ENV})
    args = [a for a in sys.argv[1:] if a != "--write"]
    main(Path(args[0]), "--write" in sys.argv[1:])
