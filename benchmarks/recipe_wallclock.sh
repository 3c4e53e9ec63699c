#!/usr/bin/env bash
# Issue #14, item 3: recipe_wallclock on one CUDA GPU for the CIFAR-10 recipes resnet34 ->
# resnet18 and wrn40_2 -> wrn16_1, each as the fp32 baseline (no bf16, no channels_last, no
# batched_g: the path of the numbers measured before batched_g) and as the fast path (the
# recipe as shipped: bf16, channels_last, batched_g; plus teacher_graph). First
# graphed_forward_check.py compares the captured teacher graph with the eager forward; if it
# fails, the fast runs go without teacher_graph. 2 measured epochs of 40 rounds each (the
# first warms up); each run under its own timeout (590 s in all, so a 10-minute limit covers
# the script; it took 160 s on an H200). Run from the repository root:
#   OUT=runs/recipe_wallclock bash benchmarks/recipe_wallclock.sh
# ROWS picks the runs (default: the four above). Also defined: r34_compile (fast path plus
# compile: true), r34_fast_adv and r34_compile_adv (the adversarial term on from the first
# epoch, w_adv0 0.5: what every epoch after the ramp's start costs, 186 of the recipe's 250):
#   ROWS="r34_fast r34_compile r34_fast_adv wrn_fast" OUT=$OUT bash benchmarks/recipe_wallclock.sh
# One table row per run on stdout; JSON per run and logs in $OUT.
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
OUT=${OUT:-runs/recipe_wallclock}; mkdir -p "$OUT"
PY=${PYTHON:-python3}
EPOCHS=${EPOCHS:-2}
FP32="--set amp=false --set channels_last=false --set batched_g=false"
FAST="--set teacher_graph=true"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' | tee -a "$OUT/gpu.txt"
timeout 60 $PY benchmarks/graphed_forward_check.py | tee "$OUT/graphed_forward_check.txt"
[ "${PIPESTATUS[0]}" = 0 ] || FAST=""
run() {  # name timeout config overrides...
    local name=$1 limit=$2 cfg=$3; shift 3
    local t0=$SECONDS
    timeout "$limit" $PY benchmarks/recipe_wallclock.py --config "$cfg" --set device=cuda "$@" \
        --epochs "$EPOCHS" --json-out "$OUT/$name.json" > "$OUT/$name.out" 2> "$OUT/$name.log"
    echo "== $name: exit $? after $((SECONDS - t0)) s"
    grep '^| ' "$OUT/$name.out" | tail -1
    grep -E '^epochs measured|Error|error' "$OUT/$name.log" | tail -3
}
R34=configs/cifar10/cudfkd_resnet34_resnet18.yaml
WRN=configs/cifar10/cudfkd_wrn40_2_wrn16_1.yaml
ADV="--set cudfkd.w_adv0=0.5"
for row in ${ROWS:-wrn_fast r34_fast r34_fp32 wrn_fp32}; do
    case $row in
        wrn_fast) run wrn_fast 80 $WRN $FAST ;;
        wrn_fp32) run wrn_fp32 140 $WRN $FP32 ;;
        r34_fast) run r34_fast 110 $R34 $FAST ;;
        r34_fp32) run r34_fp32 200 $R34 $FP32 ;;
        r34_compile) run r34_compile 170 $R34 $FAST --set compile=true ;;
        r34_fast_adv) run r34_fast_adv 110 $R34 $FAST $ADV ;;
        r34_compile_adv) run r34_compile_adv 170 $R34 $FAST --set compile=true $ADV ;;
        *) echo "unknown row $row"; exit 2 ;;
    esac
done
