"""Time a few steps of any recipe and project the full run's wall time.

Speed does not depend on the weights, so the teacher is a randomly initialised
model of the recipe's architecture (no CIFAR files needed). Generator steps and
student steps are timed separately, after warm-up; FLOPs are counted with
``torch.utils.flop_counter`` on one step of each kind.

    python benchmarks/recipe_speed.py --config configs/cifar10/cudfkd_resnet34_resnet18.yaml \
        [--set device=cuda] [--set amp=false] [--set channels_last=false] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from dfkd.config import load_config, merge, parse_overrides, read_yaml
from dfkd.data import dataset_info
from dfkd.engine import ImageSpec, Trainer, peak_memory_mb
from dfkd.models import create_model


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timed(fn, steps: int, device: torch.device) -> float:
    fn()  # warm-up (allocator, oneDNN/cuDNN algorithm choice)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def flops_of(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=3, help="timed steps of each kind")
    p.add_argument("--teacher-model", default=None, help="default: the recipe's teacher_model")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    raw = merge(read_yaml(args.config), parse_overrides(args.set))
    cfg = load_config(raw)
    info = dataset_info(cfg.dataset or "fashion_mnist")
    arch = args.teacher_model or cfg.teacher_model or "lenet5"
    teacher = create_model(arch, info.num_classes, info.image_shape[0])
    student = create_model(cfg.student, info.num_classes, info.image_shape[0])
    spec = ImageSpec(info.num_classes, info.image_shape, info.mean, info.std)
    trainer = Trainer(cfg, teacher, student, spec, None, None, progress=False)
    method, device = trainer.method, trainer.device

    def student_step() -> None:
        loss, _ = method.student_loss()
        trainer.opt_s.zero_grad(set_to_none=True)
        loss.backward()
        trainer.opt_s.step()

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_g = timed(method.generator_step, args.steps, device) if cfg.g_steps else 0.0
    t_s = timed(student_step, args.steps, device)
    f_g = flops_of(method.generator_step) if cfg.g_steps else 0
    f_s = flops_of(student_step)
    round_s = cfg.g_steps * t_g + cfg.kd_steps * t_s
    result = {
        "config": args.config, "overrides": args.set, "teacher": arch, "student": cfg.student,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "cpu": cpu_name(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "batch_size": cfg.batch_size,
        "amp_bf16": device.type == "cuda" and cfg.amp,
        "channels_last": device.type == "cuda" and cfg.channels_last,
        "generator_step_s": t_g, "student_step_s": t_s,
        "synthesis_samples_per_s": cfg.batch_size / t_g if t_g else None,
        "student_samples_per_s": cfg.batch_size / t_s,
        "generator_tflops": f_g / t_g / 1e12 if t_g else None,
        "student_tflops": f_s / t_s / 1e12,
        "peak_memory_mb": peak_memory_mb(device),
        "projected_hours": cfg.epochs * cfg.rounds * round_s / 3600,
    }
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>24}: {value:.4g}" if isinstance(value, float) else f"{key:>24}: {value}")


if __name__ == "__main__":
    main()
