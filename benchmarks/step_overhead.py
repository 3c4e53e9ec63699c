"""CPU efficiency: the engine's full CuDFKD round against a bare loop of the same
forward and backward passes of the same models and batch.

The bare loop is what a minimal hand-written script would run: generator step
= G(z) -> T (BN hooks) -> the same loss terms -> backward -> Adam; student step =
G(z) without grad -> T -> S -> KD loss -> backward -> SGD. The ratio
engine / bare is the engine's overhead (logging, curriculum, timing, hooks).

    OMP_NUM_THREADS=2 python benchmarks/step_overhead.py --rounds 10
"""

from __future__ import annotations

import argparse
import time

import torch

from dfkd.config import load_config, merge, parse_overrides, read_yaml
from dfkd.data import dataset_info
from dfkd.losses import entropy_of_mean, kd_kl, onehot_ce
from dfkd.models import create_model
from dfkd.run.spec import ImageSpec
from dfkd.run.trainer import Trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/fashion_mnist/cudfkd_lenet5.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    cfg = load_config(merge(read_yaml(args.config), parse_overrides(args.set)))
    info = dataset_info(cfg.dataset or "fashion_mnist")
    teacher = create_model("lenet5", info.num_classes, info.image_shape[0])
    student = create_model(cfg.student, info.num_classes, info.image_shape[0])
    spec = ImageSpec(info.num_classes, info.image_shape, info.mean, info.std)
    trainer = Trainer(cfg, teacher, student, spec, None, None, progress=False)
    m, s = trainer.method, cfg.method_settings
    G, T, S = m.generator, trainer.teacher, trainer.student
    hook = m.bn_hook

    def bare_round() -> None:
        for _ in range(cfg.g_steps):
            S.eval()
            with hook:
                x = m.ctx.normalize(G(torch.randn(cfg.batch_size, m.nz)))
                t = T(x)
                bn = hook.loss()
            S.requires_grad_(False)  # as the engine: G's gradient only
            st = S(x)
            S.requires_grad_(True)
            loss = (s.w_ent * entropy_of_mean(t, s.tau) + s.w_oh * onehot_ce(t) + s.w_bn * bn
                    + kd_kl(st, t, 3.0))
            m.opt_g.zero_grad()
            loss.backward()
            m.opt_g.step()
            S.train()
        for _ in range(cfg.kd_steps):
            with torch.no_grad():
                G.eval()
                x = m.ctx.normalize(G(torch.randn(cfg.batch_size, m.nz)))
                G.train()
                t = T(x)
            loss = kd_kl(S(x), t, s.tau)
            trainer.optimiser.opt.zero_grad()
            loss.backward()
            trainer.optimiser.opt.step()

    m.epoch = cfg.epochs - 1  # adversarial ramp on: the engine runs the student in G steps too

    def measure(fn) -> float:
        fn()
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            for _ in range(args.rounds):
                fn()
            best = min(best, (time.perf_counter() - start) / args.rounds)
        return best

    engine = measure(trainer._run_round)
    bare = measure(bare_round)
    print(f"threads {torch.get_num_threads()}  batch {cfg.batch_size}  g_steps {cfg.g_steps}  "
          f"kd_steps {cfg.kd_steps}")
    print(f"engine round {engine * 1000:.1f} ms   bare round {bare * 1000:.1f} ms   "
          f"ratio {engine / bare:.3f}")


if __name__ == "__main__":
    main()
