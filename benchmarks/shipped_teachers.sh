#!/usr/bin/env bash
# The guide "A teacher you only have as ONNX or as a service" (docs/guides/onnx-and-services.md):
# the tables' clean teacher (results/tables/teacher.pt) exported to ONNX with its BatchNorm
# layers, then at the tables' budget (10 epochs of 800 student steps of 64, seed 0):
#   - core 0: the same CuDFKD run from the .pt and from the .onnx (white-box, onnx2torch);
#   - core 1: DFME from the .onnx as a black box (ONNX Runtime), its recipe's queries.
# Each run reads test once, when it ends, to report; nothing is chosen on it.
# Run from the repository root: bash benchmarks/shipped_teachers.sh   (OUT to change where)
set -euo pipefail
OUT=${OUT:-results/shipped_teachers}; DFKD=${DFKD:-dfkd}
mkdir -p "$OUT"
[ -f "$OUT/teacher.onnx" ] || $DFKD export results/tables/teacher.pt --format onnx \
    --keep-batchnorm --out "$OUT/teacher.onnx"
RUN=(--epochs 10 --seed 0 --no-progress --overwrite)
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
(taskset -c 0 $DFKD distill --config configs/fashion_mnist/cudfkd_lenet5_bench.yaml \
     --teacher results/tables/teacher.pt --out "$OUT/cudfkd_pt" "${RUN[@]}" &&
 taskset -c 0 $DFKD distill --config configs/fashion_mnist/cudfkd_lenet5_bench.yaml \
     --teacher "$OUT/teacher.onnx" --out "$OUT/cudfkd_onnx" "${RUN[@]}") > "$OUT/core0.log" 2>&1 &
taskset -c 1 $DFKD distill --config configs/fashion_mnist/dfme_lenet5.yaml \
    --teacher "$OUT/teacher.onnx" --teacher-blackbox --out "$OUT/dfme_onnx_blackbox" \
    "${RUN[@]}" > "$OUT/core1.log" 2>&1
wait
for run in cudfkd_pt cudfkd_onnx dfme_onnx_blackbox; do
    python -c "import json, sys; s = json.load(open(sys.argv[1])); \
print(sys.argv[2], 'test Acc@1', round(s['final_acc1'], 2), 'queries', s['teacher_queries'])" \
        "$OUT/$run/summary.json" "$run"
done
