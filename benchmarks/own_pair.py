"""A new user's first run: their own grey-image teacher and student, no data, no settings.

Issue #15's first measurement. Everything is made here, outside dfkd's zoo and datasets:

1. ``data.pt``: *Shapes-10*, a procedural dataset of 28x28 grey images in 10 classes of
   drawn shapes (circle, disc, square, triangle, X, +, wave, L, rings, asterisk) at random
   places, sizes, angles, stroke widths and contrasts, with noise and, in half of them, a
   fainter clutter stroke; 24,000 training and 4,000
   test images from one seed (``--seed``), split at random. Not Fashion-MNIST.
2. ``teacher.pt``: a CNN of ``benchmarks/own_pair_models.py`` (loaded by file spec, as any
   user model), trained on the training images with Adam for ``--teacher-epochs`` epochs
   (4: about 99.9% on the test images).
3. ``distill/``: ``dfkd.distill(teacher, student, num_classes=10, image_shape=(1, 28, 28),
   mean=..., std=..., test_data=...)`` with **no settings**: dfkd picks the recipe of the
   images' geometry (grey, 28 px: the Fashion-MNIST recipe) and names it. The test images
   only measure the student.

Each step is skipped when its file exists, and an interrupted distillation resumes, so the
same command continues a run. ``--set KEY=VALUE`` passes settings to ``distill`` for smoke
runs only (``--set epochs=1 --set rounds=5``); the measurement passes none. Writes
``result.json`` and prints one table row.

    python benchmarks/own_pair.py --out runs/own_pair [--threads 2] [--set epochs=1 ...]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

import dfkd
from dfkd.checkpoint import CHECKPOINT, SUMMARY, load_model_checkpoint, save_model_checkpoint
from dfkd.config import parse_overrides
from dfkd.models import create_model, resolve_spec
from dfkd.run.signals import Interrupted

HERE = Path(__file__).resolve().parent
TEACHER_SPEC = str(HERE / "own_pair_models.py") + ":make_teacher"
STUDENT_SPEC = str(HERE / "own_pair_models.py") + ":make_student"
CLASSES = ("circle", "disc", "square", "triangle", "x", "plus", "wave", "corner", "rings",
           "asterisk")
SIZE, SCALE = 28, 4     # drawn at 4x, then reduced with a box filter (anti-aliased strokes)


# ------------------------------------------------------------------------------- the data
def _rotate(points: list[tuple[float, float]], angle: float, cx: float, cy: float
            ) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + c * x - s * y, cy + s * x + c * y) for x, y in points]


def draw_shape(label: int, rng: np.random.Generator) -> np.ndarray:
    """One 28x28 uint8 image of class ``label``."""
    big = SIZE * SCALE
    background = int(rng.integers(0, 70))
    ink = int(rng.integers(background + 60, 256))
    img = Image.new("L", (big, big), background)
    d = ImageDraw.Draw(img)
    r = rng.uniform(6.5, 11.0) * SCALE                   # the shape's radius
    cx = big / 2 + rng.uniform(-3.5, 3.5) * SCALE
    cy = big / 2 + rng.uniform(-3.5, 3.5) * SCALE
    width = int(rng.uniform(1.3, 3.0) * SCALE)
    angle = rng.uniform(0, 2 * math.pi)
    small_tilt = rng.uniform(-0.3, 0.3)               # X and + must not turn into each other
    name = CLASSES[label]

    def line(points, w=width):
        d.line(points, fill=ink, width=w, joint="curve")

    if name == "circle":
        d.ellipse([cx - r, cy - r * rng.uniform(0.8, 1.0), cx + r,
                   cy + r * rng.uniform(0.8, 1.0)], outline=ink, width=width)
    elif name == "disc":
        rr = r * rng.uniform(0.5, 0.8)
        d.ellipse([cx - rr, cy - rr, cx + rr, cy + rr], fill=ink)
    elif name == "square":
        h = r * 0.8
        pts = _rotate([(-h, -h), (h, -h), (h, h), (-h, h)], small_tilt, cx, cy)
        line([*pts, pts[0], pts[1]])
    elif name == "triangle":
        pts = _rotate([(r * math.cos(a), r * math.sin(a))
                       for a in (0, 2 * math.pi / 3, 4 * math.pi / 3)], angle, cx, cy)
        d.polygon(pts, fill=ink)
    elif name in ("x", "plus"):
        base = math.pi / 4 if name == "x" else 0.0
        for k in range(2):
            a = base + small_tilt + k * math.pi / 2
            line([(cx - r * math.cos(a), cy - r * math.sin(a)),
                  (cx + r * math.cos(a), cy + r * math.sin(a))])
    elif name == "wave":
        periods, amp = rng.uniform(1.2, 2.2), r * rng.uniform(0.25, 0.45)
        phase = rng.uniform(0, 2 * math.pi)
        xs = np.linspace(-r, r, 40)
        pts = [(x, amp * math.sin(phase + 2 * math.pi * periods * (x + r) / (2 * r)))
               for x in xs]
        line(_rotate(pts, small_tilt, cx, cy))
    elif name == "corner":
        pts = _rotate([(-r * 0.7, -r), (-r * 0.7, r * 0.7), (r, r * 0.7)], angle, cx, cy)
        line(pts)
    elif name == "rings":
        for rr in (r, r * rng.uniform(0.35, 0.55)):
            d.ellipse([cx - rr, cy - rr, cx + rr, cy + rr], outline=ink,
                      width=max(SCALE, int(width * 0.8)))
    elif name == "asterisk":
        for k in range(3):
            a = angle + k * math.pi / 3
            line([(cx - r * math.cos(a), cy - r * math.sin(a)),
                  (cx + r * math.cos(a), cy + r * math.sin(a))])
    if rng.random() < 0.5:   # clutter: a short, fainter stroke somewhere
        a, length = rng.uniform(0, 2 * math.pi), rng.uniform(3, 8) * SCALE
        x0, y0 = rng.uniform(0.15, 0.85, 2) * big
        d.line([(x0, y0), (x0 + length * math.cos(a), y0 + length * math.sin(a))],
               fill=(ink + background) // 2, width=max(SCALE, width // 2))
    small = np.asarray(img.resize((SIZE, SIZE), Image.Resampling.BOX), dtype=np.float32)
    small += rng.normal(0, rng.uniform(2, 20), small.shape)
    return np.clip(small, 0, 255).round().astype(np.uint8)


def make_dataset(n_train: int, n_test: int, seed: int) -> dict[str, torch.Tensor]:
    """Balanced classes, shuffled, then split: train and test come from one stream."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    labels = rng.permutation(np.arange(n) % len(CLASSES))
    images = np.stack([draw_shape(int(y), rng) for y in labels])[:, None]
    x, y = torch.from_numpy(images), torch.from_numpy(labels).long()
    return {"train_x": x[:n_train], "train_y": y[:n_train],
            "test_x": x[n_train:], "test_y": y[n_train:]}


# ----------------------------------------------------------------------------- the teacher
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, mean: float,
             std: float) -> float:
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model((x[i:i + 1000].float() / 255 - mean) / std).argmax(1)
                          for i in range(0, len(x), 1000)])
    return 100.0 * (pred == y).float().mean().item()


def train_teacher(data: dict[str, torch.Tensor], mean: float, std: float, epochs: int,
                  seed: int) -> tuple[torch.nn.Module, dict]:
    torch.manual_seed(seed)
    model = create_model(TEACHER_SPEC, len(CLASSES), 1)
    x, y = data["train_x"], data["train_y"]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3, weight_decay=1e-4)
    steps = epochs * math.ceil(len(x) / 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    start = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            idx = order[i:i + 128]
            loss = F.cross_entropy(model((x[idx].float() / 255 - mean) / std), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = accuracy(model, data["test_x"], data["test_y"], mean, std)
        print(f"teacher epoch {epoch + 1}/{epochs}: test Acc@1 {acc:.2f}%", flush=True)
    return model.eval(), {"test_acc1": acc, "train_seconds": time.perf_counter() - start,
                          "epochs": epochs}


# ------------------------------------------------------------------------------------ main
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            return names[0]
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the teacher")
    p.add_argument("--train-size", type=int, default=24000)
    p.add_argument("--test-size", type=int, default=4000)
    p.add_argument("--teacher-epochs", type=int, default=4)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a setting for distill, for smoke runs only (the measurement has none)")
    p.add_argument("--progress", action="store_true", help="a progress bar for the distillation")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)

    data_file = out / "data.pt"
    if data_file.is_file():
        data = torch.load(data_file, weights_only=True)
    else:
        t0 = time.perf_counter()
        data = make_dataset(args.train_size, args.test_size, args.seed)
        torch.save(data, data_file)
        print(f"data: {len(data['train_x'])} train / {len(data['test_x'])} test images of "
              f"{len(CLASSES)} shapes in {time.perf_counter() - t0:.1f} s -> {data_file}")
    pixels = data["train_x"].float() / 255
    mean, std = pixels.mean().item(), pixels.std().item()

    teacher_file = out / "teacher.pt"
    if teacher_file.is_file():
        teacher, tmeta = load_model_checkpoint(teacher_file)
    else:
        teacher, tmeta = train_teacher(data, mean, std, args.teacher_epochs, args.seed)
        tmeta = {"arch": resolve_spec(TEACHER_SPEC), "dataset": None, "num_classes": 10,
                 "image_shape": [1, SIZE, SIZE], "mean": [mean], "std": [std], **tmeta}
        save_model_checkpoint(teacher_file, teacher, tmeta)
    teacher_acc = accuracy(teacher, data["test_x"], data["test_y"], mean, std)

    run = out / "distill"
    settings = {k: v for k, v in parse_overrides(args.set).items()}
    if (run / SUMMARY).is_file():
        summary = json.loads((run / SUMMARY).read_text())
    else:
        resume = (run / CHECKPOINT).is_file()
        torch.manual_seed(args.seed)
        student = create_model(STUDENT_SPEC, len(CLASSES), 1)
        t0 = time.perf_counter()
        summary, _ = dfkd.distill(
            teacher, student, num_classes=10, image_shape=(1, SIZE, SIZE), mean=(mean,),
            std=(std,), test_data=(data["test_x"], data["test_y"]), out_dir=run,
            resume=resume, overwrite=not resume, progress=args.progress, **settings)
        print(f"distill: {time.perf_counter() - t0:.0f} s of wall time, evaluation included")
    n_params = sum(p.numel() for p in create_model(STUDENT_SPEC, 10, 1).parameters())
    result = {
        "pair": "Shapes-10 (procedural 28x28 grey), own_pair_models.py teacher -> student",
        "teacher_acc1": teacher_acc, "student_params": n_params,
        "settings_given": settings, "base_recipe": summary["config"].get("base_recipe"),
        "final_acc1": summary["final_acc1"], "final_agreement": summary["final_agreement"],
        "final_synthetic_agreement": summary.get("final_synthetic_agreement"),
        "final_synthetic_loyalty": summary.get("final_synthetic_loyalty"),
        "warnings": [w["kind"] for w in summary.get("warnings", [])],
        "epochs": summary["epochs"], "train_seconds": summary["elapsed_seconds"],
        "threads": torch.get_num_threads(), "cpu": _cpu_model(),
    }
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| teacher Acc@1 | student Acc@1 | Agreement@1 | synthetic agreement | recipe | "
          "epochs | train time (s) |")
    print(f"| {teacher_acc:.2f} | {result['final_acc1']:.2f} | "
          f"{result['final_agreement']:.2f} | {result['final_synthetic_agreement'] or 0:.2f} | "
          f"{result['base_recipe']} | {result['epochs']} | {result['train_seconds']:.0f} |")
    return result


if __name__ == "__main__":
    try:
        sys.exit(0 if main() else 1)
    except Interrupted as exc:  # the checkpoint is saved: the same command resumes
        print(f"own_pair: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
