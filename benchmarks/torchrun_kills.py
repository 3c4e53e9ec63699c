"""SIGKILL the torchrun launcher at random moments of a 2-process gloo run, resume after each
kill, and check that nothing is lost: the final metrics equal an uninterrupted run's, and no
worker outlives its launcher by more than a few seconds. Usage:

    python benchmarks/torchrun_kills.py --teacher runs/bench_fmnist_s9/teacher.pt --kills 20 \\
        --out runs/torchrun_kills

The harness is tests/launcher_kills.py; tests/test_distributed.py runs it with 3 kills.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from launcher_kills import kill_and_resume  # noqa: E402

RUN = ["--set", "epochs=12", "--set", "rounds=4", "--set", "kd_steps=2", "--set", "batch_size=32",
       "--set", "sample_grid=0", "--no-progress", "--device", "cpu"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--teacher", required=True)
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--out", default="runs/torchrun_kills")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        sys.exit(f"{out} is not empty; give a new --out")
    result = kill_and_resume(Path(args.teacher), out, args.kills, RUN, seed=args.seed)
    print(json.dumps(result, indent=2))
    if not result["identical"] or result["leftover_processes"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
