"""Run a recipe for a few whole epochs and compare its wall time with recipe_speed's projection.

The run is the real one (``Trainer.fit``: rounds, evaluation each epoch, the synthetic probe,
the sample grid, metrics.jsonl and an fsync'ed checkpoint), with a randomly initialised
teacher of the recipe's architecture and random test images of the dataset's shape (speed
does not depend on either; no CIFAR files are needed). It reports the seconds of each
measured epoch, the steady epoch (the mean after the first, which also warms up), epochs x
that as the full recipe's time, and recipe_speed's step-level projection for the same config
(measured after the real loop, on a trainer of its own); ``ratio`` is wall clock / projection.

    python benchmarks/recipe_wallclock.py --config configs/cifar10/cudfkd_resnet34_resnet18.yaml \
        --set device=cuda [--set KEY=VALUE ...] [--epochs 3] [--json-out FILE]

What the projection leaves out, and the wall clock counts: per epoch, evaluation on
``--test-size`` images, the probe, the grid and the checkpoint (its copy to the CPU; the
write runs in the background during the next epoch); per round, the host sync that
fetches the round's losses. Neither sees what only later epochs do (CuDFKD's adversarial term
adds a student forward to each generator step once its weight is above 0).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_speed import describe, measure, random_models  # noqa: E402

from dfkd.config import RunConfig, load_config, merge, parse_overrides, read_yaml  # noqa: E402
from dfkd.run.callbacks.evaluation import Evaluation  # noqa: E402
from dfkd.run.callbacks.probe import Probe  # noqa: E402
from dfkd.run.device import synchronize  # noqa: E402
from dfkd.run.spec import EvalData  # noqa: E402
from dfkd.run.trainer import Trainer  # noqa: E402


def wallclock(cfg: RunConfig, epochs: int, out_dir: Path, test_size: int,
              teacher_model: str | None = None) -> dict[str, Any]:
    """Seconds of set-up and of each of the first ``epochs`` epochs of the real loop."""
    start = time.perf_counter()
    arch, teacher, student, spec = random_models(cfg, teacher_model)
    gen = torch.Generator().manual_seed(cfg.seed)
    images = torch.randint(0, 256, (test_size, *spec.image_shape), dtype=torch.uint8,
                           generator=gen)
    labels = torch.randint(0, spec.num_classes, (test_size,), generator=gen)
    cfg = dataclasses.replace(cfg, check_teacher=False)   # a random teacher: timing only
    trainer = Trainer(cfg, teacher, student, spec, EvalData(images, labels), out_dir,
                      progress=False, student_arch=cfg.student)
    evaluation, probe = trainer.callback(Evaluation), trainer.callback(Probe)
    probe.on_fit_start(trainer)   # makes the synthetic probe, as fit would
    synchronize(trainer.device)
    setup = time.perf_counter() - start
    # Where the time outside the steps goes: the engine's per-epoch calls, timed in place.
    parts = {"evaluate": 0.0, "measure_probe": 0.0, "save_checkpoint": 0.0}

    owners = {"evaluate": (evaluation, "measure"), "measure_probe": (probe, "measure"),
              "save_checkpoint": (trainer, "save_checkpoint")}

    def timing(name: str):
        call = getattr(*owners[name])

        def timed_call(*args, **kwargs):
            t0 = time.perf_counter()
            out = call(*args, **kwargs)
            synchronize(trainer.device)
            parts[name] += time.perf_counter() - t0
            return out
        return timed_call

    for name in parts:
        setattr(*owners[name], timing(name))
    # One fit call, as a run makes: an epoch ends when its checkpoint is handed to the
    # background writer, whose write then overlaps the next epoch (a fit call per epoch
    # would wait for each write before it returns).
    ends = [time.perf_counter()]
    save = trainer.save_checkpoint

    def marked_save():
        save()
        ends.append(time.perf_counter())
    trainer.save_checkpoint = marked_save
    trainer.fit(stop_after_epoch=epochs)
    seconds = [b - a for a, b in zip(ends, ends[1:])]
    train = [row["elapsed_seconds"] for row in trainer.history]
    train = [b - a for a, b in zip([0.0, *train], train)]  # per epoch: G + student steps
    steady = seconds[1:] or seconds
    steady_s = sum(steady) / len(steady)
    steady_train = train[1:] or train
    steady_train_s = sum(steady_train) / len(steady_train)
    return {"teacher": arch, "setup_s": setup, "epoch_s": seconds, "train_s": train,
            "steady_epoch_s": steady_s, "steady_train_s": steady_train_s,
            "epoch_overhead_s": steady_s - steady_train_s,
            **{f"{name}_s_per_epoch": total / epochs for name, total in parts.items()},
            "full_hours_with_setup": (setup + seconds[0] + (cfg.epochs - 1) * steady_s) / 3600,
            "checkpoint_mb": (out_dir / "checkpoint.pt").stat().st_size / 2**20,
            "peak_memory_mb": trainer.history[-1]["peak_memory_mb"],
            "wallclock_hours": cfg.epochs * steady_s / 3600}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--epochs", type=int, default=3, help="measured epochs (default 3)")
    p.add_argument("--steps", type=int, default=5,
                   help="recipe_speed's timed steps of each kind (default 5)")
    p.add_argument("--test-size", type=int, default=10000,
                   help="random test images evaluated each epoch (default 10000, CIFAR's)")
    p.add_argument("--teacher-model", default=None, help="default: the recipe's teacher_model")
    p.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    p.add_argument("--json-out", default="recipe_wallclock.json",
                   help="where the JSON result goes (default: ./recipe_wallclock.json)")
    args = p.parse_args()
    if args.epochs < 1 or args.steps < 1 or args.test_size < 1:
        p.error("--epochs, --steps and --test-size must be >= 1")
    cfg = load_config(merge(read_yaml(args.config), parse_overrides(args.set)))
    if args.epochs > cfg.epochs:
        p.error(f"--epochs {args.epochs} is more than the recipe's {cfg.epochs} epochs")

    # The real loop first: it is what a run gets, including anything done once per process
    # (``compile: true`` compiles in the first trainer, and a later one may reuse its code).
    with tempfile.TemporaryDirectory(prefix="recipe_wallclock_") as tmp:
        out = Path(args.out or tmp)
        out.mkdir(parents=True, exist_ok=True)
        wall = wallclock(cfg, args.epochs, out, args.test_size, args.teacher_model)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

    _, teacher, student, spec = random_models(cfg, args.teacher_model)
    speed = Trainer(cfg, teacher, student, spec, None, None, progress=False)
    projection = measure(cfg, speed, args.steps)
    device = speed.device
    per_epoch_projected = cfg.rounds * projection["round_s"]
    result = {
        "config": args.config, "overrides": args.set, **describe(cfg, device),
        "student": cfg.student, "epochs": cfg.epochs, "rounds": cfg.rounds,
        "measured_epochs": args.epochs, "test_size": args.test_size, **wall,
        "projected_epoch_s": per_epoch_projected,
        "projected_hours": projection["projected_hours"],
        "generator_step_s": projection["generator_step_s"],
        "student_step_s": projection["student_step_s"],
        "ratio": wall["wallclock_hours"] / projection["projected_hours"],
        "train_ratio": wall["steady_train_s"] / per_epoch_projected,
        "peak_memory_mb": max(projection["peak_memory_mb"], wall["peak_memory_mb"]),
    }
    result["agree_within_10pct"] = abs(result["ratio"] - 1) <= 0.10
    Path(args.json_out).write_text(json.dumps(result, indent=2) + "\n")
    name = Path(args.config).stem
    print("| recipe | device | batched_g | teacher_graph | amp | epoch s (measured) | "
          "train s | overhead s | epoch s (projected) | full h (wall) | full h (proj) | ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    print(f"| {name} {' '.join(args.set)} | {result['device']} | {cfg.batched_g} | "
          f"{result['teacher_graph']} | {result['amp_bf16']} | "
          f"{wall['steady_epoch_s']:.2f} | {wall['steady_train_s']:.2f} | "
          f"{wall['epoch_overhead_s']:.2f} | {per_epoch_projected:.2f} | "
          f"{wall['wallclock_hours']:.3f} | {projection['projected_hours']:.3f} | "
          f"{result['ratio']:.3f} |")
    print(f"epochs measured: {', '.join(f'{s:.2f}' for s in wall['epoch_s'])} s; set-up "
          f"{wall['setup_s']:.1f} s; per epoch: evaluate {wall['evaluate_s_per_epoch']:.2f} s, "
          f"probe {wall['measure_probe_s_per_epoch']:.2f} s, checkpoint "
          f"{wall['save_checkpoint_s_per_epoch']:.2f} s ({wall['checkpoint_mb']:.0f} MB); "
          f"steps / projection {result['train_ratio']:.3f}; JSON: {args.json_out}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
