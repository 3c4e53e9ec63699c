"""Profile whole rounds of a recipe with torch.profiler: where a round's time goes.

Builds the recipe's trainer as recipe_speed.py does (randomly initialised teacher of the
recipe's architecture), runs one warm-up round, then profiles ``--rounds`` rounds
(``g_steps`` generator steps and ``kd_steps`` student steps each, with ``batched_g`` as the
recipe sets it). Prints the wall time per round, the time per phase, how busy the device was
(summed kernel time / wall time: well under 1 means launch- or host-bound), and the top
operators by device time (self time, so nothing is counted twice). ``--trace FILE`` writes
a Chrome trace (gzip it; open in Perfetto).

    python benchmarks/profile_round.py --config configs/cifar10/cudfkd_resnet34_resnet18.yaml \
        --set device=cuda [--set teacher_graph=true] [--rounds 3] [--top 25] [--trace t.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_speed import describe, random_models, student_step  # noqa: E402

from dfkd.config import load_config, merge, parse_overrides, read_yaml  # noqa: E402
from dfkd.run.trainer import Trainer  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--rounds", type=int, default=3, help="profiled rounds (default 3)")
    p.add_argument("--top", type=int, default=25, help="operators listed (default 25)")
    p.add_argument("--trace", default=None, help="write a Chrome trace to this file")
    args = p.parse_args()
    if args.rounds < 1 or args.top < 1:
        p.error("--rounds and --top must be >= 1")
    cfg = load_config(merge(read_yaml(args.config), parse_overrides(args.set)))
    _, teacher, student, spec = random_models(cfg)
    trainer = Trainer(cfg, teacher, student, spec, None, None, progress=False)
    method, device = trainer.method, trainer.device
    cuda = device.type == "cuda"

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def one_round() -> None:
        with record_function("generator_steps"):
            for _ in range(cfg.g_steps):
                method.generator_step()
        with record_function("student_steps"):
            if cfg.batched_g:
                method.queue_fresh_images(cfg.kd_steps)
            for _ in range(cfg.kd_steps):
                student_step(trainer)

    one_round()   # warm-up: allocator, cuDNN algorithm choice, graph capture
    sync()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(args.rounds):
            one_round()
        sync()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    attr = "self_device_time_total" if cuda else "self_cpu_time_total"
    # Kernels only: user annotations (the phases, optimiser steps) also carry device time.
    busy_us = sum(e.device_time_total for e in prof.events() if e.device_type.name == "CUDA"
                  and not e.is_user_annotation) if cuda else None
    print(f"{describe(cfg, device)}")
    print(f"rounds {args.rounds}: {wall / args.rounds * 1e3:.1f} ms per round (under the "
          f"profiler, which adds host time)")
    for phase in ("generator_steps", "student_steps"):
        e = next((e for e in events if e.key == phase), None)
        if e is not None:
            print(f"  {phase}: {e.cpu_time_total / args.rounds / 1e3:.1f} ms per round (host)")
    if busy_us is not None:
        print(f"device busy: {busy_us / 1e3 / args.rounds:.1f} ms of kernels per round, "
              f"{busy_us / 1e6 / wall:.0%} of the wall time")
    print(events.table(sort_by=attr, row_limit=args.top, max_name_column_width=60))
    if args.trace:
        prof.export_chrome_trace(args.trace)


if __name__ == "__main__":
    main()
