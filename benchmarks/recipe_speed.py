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
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dfkd.config import RunConfig, load_config, merge, parse_overrides, read_yaml
from dfkd.data import dataset_info
from dfkd.models import create_model
from dfkd.run.device import peak_memory_mb
from dfkd.run.spec import ImageSpec
from dfkd.run.trainer import Trainer


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


def random_models(cfg: RunConfig, teacher_model: str | None = None
                  ) -> tuple[str, nn.Module, nn.Module, ImageSpec]:
    """The recipe's teacher architecture (randomly initialised), its student and the data
    geometry: speed does not depend on the weights."""
    info = dataset_info(cfg.dataset or "fashion_mnist")
    arch = teacher_model or cfg.teacher_model or "lenet5"
    teacher = create_model(arch, info.num_classes, info.image_shape[0])
    student = create_model(cfg.student, info.num_classes, info.image_shape[0])
    spec = ImageSpec(info.num_classes, info.image_shape, info.mean, info.std, info.name)
    return arch, teacher, student, spec


def student_step(trainer: Trainer) -> None:
    """One student step as the engine takes it (without its EMA and logging)."""
    loss, _ = trainer.method.student_loss()
    trainer.optimiser.opt.zero_grad(set_to_none=True)
    loss.backward()
    trainer.optimiser.opt.step()


def measure(cfg: RunConfig, trainer: Trainer, steps: int) -> dict[str, Any]:
    """Time ``steps`` generator steps and student steps (after one of each as warm-up) and
    project the full run: epochs x rounds x (g_steps x G step + kd_steps x student step).
    Under ``batched_g`` a student step is 1 / kd_steps of a round's student steps,
    timed whole, since the round's one G forward feeds them all."""
    method, device = trainer.method, trainer.device

    def student_round() -> None:
        method.queue_fresh_images(cfg.kd_steps)
        for _ in range(cfg.kd_steps):
            student_step(trainer)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t_g = timed(method.generator_step, steps, device) if cfg.g_steps else 0.0
    if cfg.batched_g:
        rounds = max(1, -(-steps // cfg.kd_steps))
        t_s = timed(student_round, rounds, device) / cfg.kd_steps
    else:
        t_s = timed(lambda: student_step(trainer), steps, device)
    f_g = flops_of(method.generator_step) if cfg.g_steps else 0
    f_s = flops_of(student_round) / cfg.kd_steps if cfg.batched_g \
        else flops_of(lambda: student_step(trainer))
    round_s = cfg.g_steps * t_g + cfg.kd_steps * t_s
    return {
        "generator_step_s": t_g, "student_step_s": t_s,
        "synthesis_samples_per_s": cfg.batch_size / t_g if t_g else None,
        "student_samples_per_s": cfg.batch_size / t_s,
        "generator_tflops": f_g / t_g / 1e12 if t_g else None,
        "student_tflops": f_s / t_s / 1e12,
        "peak_memory_mb": peak_memory_mb(device),
        "round_s": round_s,
        "projected_hours": cfg.epochs * cfg.rounds * round_s / 3600,
    }


def describe(cfg: RunConfig, device: torch.device) -> dict[str, Any]:
    """The machine and the speed settings in effect."""
    cuda = device.type == "cuda"
    return {
        "device": str(device) if not cuda else torch.cuda.get_device_name(device),
        "cpu": cpu_name(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "batch_size": cfg.batch_size,
        "amp_bf16": cuda and cfg.amp, "channels_last": cuda and cfg.channels_last,
        "batched_g": cfg.batched_g, "teacher_graph": cuda and cfg.teacher_graph,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--steps", type=int, default=3, help="timed steps of each kind")
    p.add_argument("--teacher-model", default=None, help="default: the recipe's teacher_model")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    cfg = load_config(merge(read_yaml(args.config), parse_overrides(args.set)))
    arch, teacher, student, spec = random_models(cfg, args.teacher_model)
    trainer = Trainer(cfg, teacher, student, spec, None, None, progress=False)
    timing = measure(cfg, trainer, args.steps)
    result = {"config": args.config, "overrides": args.set, "teacher": arch,
              "student": cfg.student, **describe(cfg, trainer.device), **timing}
    del result["round_s"]
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key:>24}: {value:.4g}" if isinstance(value, float) else f"{key:>24}: {value}")


if __name__ == "__main__":
    main()
