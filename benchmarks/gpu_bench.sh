#!/usr/bin/env bash
# The Fashion-MNIST comparison tables (clean and 20%-noisy-label teacher) on one GPU machine:
# one `dfkd bench` per table, side by side, each running its queue of method x seed runs with
# --jobs JOBS worker processes (the LeNet pair is launch-bound, so one process per CPU core
# keeps the GPU and the cores busy; both benches together use at most nproc processes).
# `dfkd bench --report-only` then writes each table. Run from the repository root:
#   FMNIST_DIR=.fmnist OUT=runs/gpu_bench bash benchmarks/gpu_bench.sh
# Knobs: PYTHON, CONFIG (bench YAML), SEEDS, METHODS, DEADLINE (seconds the benches may take;
# runs not finished by then are left resumable and reported as missing seeds), JOBS,
# TEACHER_EPOCHS.
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
CONFIG=${CONFIG:-configs/fashion_mnist/bench.yaml}
SEEDS=${SEEDS:-"0 1"}
METHODS=${METHODS:-all}   # all: every registered method, cudfkd_paper and the references
DEADLINE=${DEADLINE:-430}
OUT=${OUT:-runs/gpu_bench}
DATA=${FMNIST_DIR:+--data-root $FMNIST_DIR}
DFKD="${PYTHON:-python3} -m dfkd"
mkdir -p "$OUT/logs"
if [ -n "${FMNIST_DIR:-}" ]; then   # the bench configs find the data in the standard place
    mkdir -p /usr/share/datasets/fashion-mnist && cp "$FMNIST_DIR"/*.gz /usr/share/datasets/fashion-mnist/
fi
T=$OUT/teacher.pt
N=$OUT/teacher_noise20.pt
start=$SECONDS
$DFKD train-teacher --model lenet5 --epochs "${TEACHER_EPOCHS:-10}" --seed 0 --out $T \
    --no-progress $DATA > "$OUT/logs/teacher.log" 2>&1 &
$DFKD train-teacher --model lenet5 --epochs "${TEACHER_EPOCHS:-10}" --seed 0 --label-noise 0.2 \
    --out $N --no-progress $DATA > "$OUT/logs/teacher_noise20.log" 2>&1 &
wait
cat "$OUT"/logs/teacher*.log
echo "teachers: $((SECONDS - start)) s"
all=$(echo $METHODS | tr ' ' ','); seeds=$(echo $SEEDS | tr ' ' ',')
JOBS=${JOBS:-$(( $(nproc) / 2 ))}
for table in clean noisy; do
    teacher=$T; [ $table = noisy ] && teacher=$N
    timeout "$DEADLINE" $DFKD bench --config "$CONFIG" --methods "$all" --seeds "$seeds" \
        --teacher $teacher --out "$OUT/$table" --jobs "$JOBS" --no-progress \
        > "$OUT/logs/$table.log" 2>&1 &
done
wait
echo "runs: $((SECONDS - start)) s"
for table in clean noisy; do
    teacher=$T; [ $table = noisy ] && teacher=$N
    echo "== $table teacher"
    $DFKD bench --config "$CONFIG" --methods "$all" --seeds "$seeds" --teacher $teacher \
        --out "$OUT/$table" --report-only --no-progress
done
grep -h "test Acc@1" "$OUT"/logs/teacher*.log
