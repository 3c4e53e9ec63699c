"""Each method's cost on one CIFAR pair: timed steps, projected to the full official recipe.

For every row with an official recipe for the pair (``dfkd.reproduce``), a trainer is built
as ``benchmarks/recipe_speed.py`` builds it (random teacher of the recipe's architecture:
speed does not depend on the weights), one generator step and one student step are timed
after a warm-up at ``--batch`` samples, and the full recipe's hours are projected as
``epochs x rounds x (g_steps x G step + kd_steps x student step)``, with the steps scaled
linearly from ``--batch`` to the recipe's batch size (on a CPU the cost of a step is close
to linear in its batch; on a GPU it is not, so time there at the recipe's batch). A method's
own schedule is counted epoch by epoch: its generator steps per round (NAYER's synthesis
loops, more of them in its warm-up) and no student step in its warm-up epochs (Fast,
NAYER). What the projection leaves out: evaluation, the probe, checkpoints, and CuDFKD's
adversarial term, which adds a student forward to each generator step once its weight is
above 0.

    OMP_NUM_THREADS=1 python benchmarks/cifar_costs.py --pair c10_resnet34_resnet18 \
        --set device=cpu --batch 16 --json-out results/cifar_costs_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_speed import describe, random_models, student_step, timed  # noqa: E402

from dfkd.config import load_config, merge, parse_overrides, read_yaml  # noqa: E402
from dfkd.reproduce import PAIRS, label, published_hours, recipe_rows  # noqa: E402
from dfkd.run.trainer import Trainer  # noqa: E402


def cost(recipe: Path, batch: int | None, overrides: list[str]) -> dict[str, Any]:
    """One row: its timed steps at ``batch`` and the full recipe projected from them."""
    # batched_g makes one G forward for a round's student steps: time one step at a time.
    overrides = [*overrides, "batched_g=false"]
    raw = read_yaml(recipe)
    full = load_config(merge(raw, parse_overrides(overrides)))
    # A method with a synthesis batch of its own (NAYER) synthesises at the same share of it.
    synth = getattr(full.method_settings, "synthesis_batch", 0)
    small_synth = max(1, round(synth * batch / full.batch_size)) if synth and batch else synth
    extra = [f"{full.method}.synthesis_batch={small_synth}"] if synth and batch else []
    small = full if batch is None else load_config(
        merge(raw, parse_overrides([*overrides, f"batch_size={batch}", *extra])))
    arch, teacher, student, spec = random_models(small)
    trainer = Trainer(small, teacher, student, spec, None, None, progress=False)
    method = trainer.method
    # As the engine runs a round: synthesis (a bank method's ends by banking its batch),
    # then student steps on fresh samples or the bank.
    method.start_synthesis()
    g_step = timed(method.generator_step, 1, trainer.device) if full.g_steps else 0.0
    method.end_synthesis()

    s_step = timed(lambda: student_step(trainer), 1, trainer.device)
    scale = full.batch_size / small.batch_size
    g_step, s_step = g_step * (synth / small_synth if synth else scale), s_step * scale
    g_total = kd_total = 0
    for epoch in range(full.epochs):   # the method's schedule: its steps in each epoch
        method.on_epoch_start(epoch)
        g_total += full.rounds * method.generator_steps()
        kd_total += full.rounds * full.kd_steps * (epoch >= method.warmup_epochs)
    return {"recipe": str(recipe), "teacher": arch, "student": full.student,
            "method": full.method, "recipe_batch": full.batch_size,
            "timed_batch": small.batch_size, "epochs": full.epochs, "rounds": full.rounds,
            "g_steps": full.g_steps, "kd_steps": full.kd_steps,
            "generator_step_s": g_step, "student_step_s": s_step,
            "generator_steps": g_total, "student_steps": kd_total,
            "synthesis_hours": g_total * g_step / 3600, "student_hours": kd_total * s_step / 3600,
            "projected_hours": (g_total * g_step + kd_total * s_step) / 3600,
            **{k: v for k, v in describe(small, trainer.device).items() if k != "batch_size"}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pair", default="c10_resnet34_resnet18", choices=list(PAIRS))
    p.add_argument("--batch", type=int, default=None,
                   help="time at this batch and scale linearly to the recipe's (CPU only)")
    p.add_argument("--rows", default=None, help="comma-separated rows (default: all)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json-out", default=None)
    args = p.parse_args()
    pair = PAIRS[args.pair]
    rows = recipe_rows(pair)
    if args.rows:
        rows = {r: rows[r] for r in args.rows.split(",")}
    results = []
    for row, recipe in rows.items():
        torch.manual_seed(0)
        result = {"row": row, "name": label(row), "published_hours": published_hours(pair, row),
                  **cost(recipe, args.batch, args.set)}
        results.append(result)
        print(f"{result['name']:>8}: G step {result['generator_step_s']:.3f} s, student step "
              f"{result['student_step_s']:.3f} s at batch {result['recipe_batch']}, "
              f"projected {result['projected_hours']:.1f} h "
              f"(published {result['published_hours']} h)", flush=True)
    if args.json_out:
        Path(args.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_out).write_text(json.dumps({"pair": args.pair, "batch": args.batch,
                                                   "overrides": args.set, "rows": results},
                                                  indent=2) + "\n")


if __name__ == "__main__":
    main()
