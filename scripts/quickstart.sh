#!/usr/bin/env bash
# The main job, end to end on Fashion-MNIST with 2 CPU cores:
# LeNet-5 teacher (trained once, then reused) -> CuDFKD into LeNet-5-half -> result table.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
OUT=${OUT:-runs/quickstart}
mkdir -p "$OUT"
if [ ! -f "$OUT/teacher.pt" ]; then
    .venv/bin/dfkd train-teacher --dataset fashion_mnist --model lenet5 --epochs 10 \
        --seed 0 --out "$OUT/teacher.pt"
else
    echo "reusing the teacher in $OUT/teacher.pt"
fi
.venv/bin/dfkd distill --config configs/fashion_mnist/cudfkd_lenet5.yaml \
    --teacher "$OUT/teacher.pt" --out "$OUT/cudfkd" --overwrite "$@"
