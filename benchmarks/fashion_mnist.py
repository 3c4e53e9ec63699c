"""The Fashion-MNIST numbers of BENCHMARKS.md: LeNet-5 teacher -> LeNet-5-half student.

Runs (skipping any whose output already exists, so an interrupted benchmark resumes):
  * the teacher (10 epochs), the student from scratch and KD with the real data (references);
  * CuDFKD with the recipe configs/fashion_mnist/cudfkd_lenet5.yaml, and its
    ``curriculum: none`` ablation, for each seed.
Then prints one Markdown table. Usage:

    python benchmarks/fashion_mnist.py --out runs/bench_fmnist --seeds 0
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

RECIPE = "configs/fashion_mnist/cudfkd_lenet5.yaml"


def sh(*args: str) -> None:
    print("+ dfkd " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "dfkd", *args], check=True)


def supervised(out: Path, name: str, *extra: str) -> dict:
    path = out / f"{name}.pt"
    if not path.exists():
        sh("train-teacher", "--dataset", "fashion_mnist", "--epochs", "10", "--out", str(path),
           "--no-progress", *extra)
    meta = torch.load(path, weights_only=True)["meta"]
    return {"acc1": meta["test_acc1"], "seconds": meta["train_seconds"]}


def distill(out: Path, name: str, teacher: Path, seed: int, *extra: str) -> dict:
    run = out / f"{name}_seed{seed}"
    if not (run / "summary.json").exists():
        sh("distill", "--config", RECIPE, "--teacher", str(teacher), "--seed", str(seed),
           "--out", str(run), "--overwrite", "--no-progress", *extra)
    return json.loads((run / "summary.json").read_text())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench_fmnist")
    p.add_argument("--seeds", default="0")
    p.add_argument("--skip-ablation", action="store_true")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.strftime("%Y-%m-%d")
    teacher = supervised(out, "teacher", "--model", "lenet5")
    scratch = supervised(out, "scratch", "--model", "lenet5_half")
    kd = supervised(out, "kd_with_data", "--model", "lenet5_half", "--kd-from",
                    str(out / "teacher.pt"))
    rows = [("teacher LeNet-5 (real data)", teacher["acc1"], None, None, teacher["seconds"]),
            ("LeNet-5-half from scratch (real data)", scratch["acc1"], None, None,
             scratch["seconds"]),
            ("LeNet-5-half KD with real data", kd["acc1"], None, None, kd["seconds"])]
    variants = [("cudfkd", ())] + ([] if args.skip_ablation else
                                   [("cudfkd_none", ("--set", "cudfkd.curriculum=none"))])
    for name, extra in variants:
        for seed in map(int, args.seeds.split(",")):
            s = distill(out, name, out / "teacher.pt", seed, *extra)
            rows.append((f"{name} (data-free) seed {seed}", s["final_acc1"], s["final_agreement"],
                         s["final_loyalty"], s["synthesis_seconds"] + s["student_seconds"]))
            rows[-1] += (s["acc1_mean"], s["acc1_var"], s["epochs_to_90pct"])
    print(f"\n{started}, {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| run | Acc@1 | Agreement@1 | loyalty | train seconds | acc1 mean / var | "
          "epochs to 90% |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        name, acc, agr, loy, sec = row[:5]
        extra = f"{row[5]:.2f} / {row[6]:.2f} | {row[7]}" if len(row) > 5 else "- | -"
        print(f"| {name} | {acc:.2f} | {'-' if agr is None else f'{agr:.2f}'} | "
              f"{'-' if loy is None else f'{loy:.3f}'} | {sec:.0f} | {extra} |")


if __name__ == "__main__":
    main()
