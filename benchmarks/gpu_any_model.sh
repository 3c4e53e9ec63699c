#!/usr/bin/env bash
# The zoo ResNet-18 teacher's part of the any-model matrix, on one GPU machine: its matrix row
# (3 students x 8 methods, 100 student steps per cell) and its default runs at the full default
# budget (seeds 0 and 1), then the two tables. On the 2-core CPU VM this teacher costs about 4
# CPU-hours for the row and 4.4-4.6 per default run (about 480 s per epoch, two at once); see
# BENCHMARKS.md, "Any model a user brings".
# Run from the repository root (no install needed: torch, numpy, pyyaml and tqdm suffice, the
# zoo ResNet-18 needs no timm):
#   FMNIST_DIR=.fmnist OUT=runs/gpu_any_model bash benchmarks/gpu_any_model.sh
# Knobs: PYTHON, DEVICE (default cuda), JOBS (matrix cells at once, default one per core),
# DEADLINE (seconds for all runs; what finished by then is kept and rendered), WORK (where the
# runs' folders go). The FMNIST_DIR folder holds the four Fashion-MNIST .gz files.
# $OUT receives the records the tables are rendered from (teachers/, cells/, default/ with each
# run's summary.json, metrics.jsonl and config.yaml) and the logs; not checkpoints or samples.
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
PY=${PYTHON:-python3}
OUT=${OUT:-runs/gpu_any_model}
WORK=${WORK:-/tmp/gpu_any_model}
DEADLINE=${DEADLINE:-540}
JOBS=${JOBS:-$(nproc --all)}   # one process per core
mkdir -p "$OUT/logs" "$WORK"
if [ -n "${FMNIST_DIR:-}" ]; then   # dfkd finds the data in the standard place
    mkdir -p /usr/share/datasets/fashion-mnist && cp "$FMNIST_DIR"/*.gz /usr/share/datasets/fashion-mnist/
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt" || true
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt" || true
M="$PY benchmarks/any_model_matrix.py --out $WORK --device ${DEVICE:-cuda} --only-teachers zoo_resnet18"
start=$SECONDS
timeout "$DEADLINE" $M --jobs "$JOBS" > "$OUT/logs/matrix.log" 2>&1
echo "matrix row: exit $? after $((SECONDS - start)) s"
left=$(( DEADLINE - (SECONDS - start) ))
if [ $left -gt 60 ]; then
    timeout "$left" $M --jobs 2 --default-runs 0,1 > "$OUT/logs/default.log" 2>&1
    echo "default runs: exit $? after $((SECONDS - start)) s"
fi
tail -n 3 "$OUT"/logs/*.log
# the records, without checkpoints and samples
cp -r "$WORK/teachers" "$WORK/cells" "$WORK/matrix.json" "$OUT/" 2>/dev/null
rm -f "$OUT"/teachers/*.pt
for run in "$WORK"/default/zoo_resnet18/seed*; do
    [ -d "$run" ] || continue
    mkdir -p "$OUT/default/zoo_resnet18/$(basename "$run")"
    cp "$run"/summary.json "$run"/metrics.jsonl "$run"/config.yaml \
        "$OUT/default/zoo_resnet18/$(basename "$run")/" 2>/dev/null
done
cp "$WORK"/default/*.json "$OUT/default/" 2>/dev/null
$PY benchmarks/any_model_matrix.py --out "$OUT" --only-teachers zoo_resnet18 --render-only
$PY benchmarks/any_model_matrix.py --out "$OUT" --render-only --default-runs 0,1
