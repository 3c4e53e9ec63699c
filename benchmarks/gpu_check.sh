#!/usr/bin/env bash
# GPU checks, run on a lent CUDA machine from the repository root (no install needed: the
# machine's python3 has torch, numpy, pyyaml, tqdm, pillow, matplotlib).
#   FMNIST_DIR  folder with the four Fashion-MNIST .gz files (default .fmnist)
#   OUT         folder for logs and JSON (default runs/gpu_check)
# Part 1: CUDA smoke: a LeNet-5 teacher and one epoch of every method on cuda (bf16 autocast,
#         channels_last), with seconds per epoch.
# Part 2: recipe_speed on the official CIFAR recipes: fp32, bf16, bf16 + compile.
set -uo pipefail
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
OUT=${OUT:-runs/gpu_check}; mkdir -p "$OUT"
DATA=${FMNIST_DIR:-.fmnist}
DFKD="python3 -m dfkd"
timed() { local label=$1; shift; local t0=$SECONDS; "$@"; echo "$label wall $((SECONDS - t0)) s"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"
T=runs/gpu_teacher.pt
timed teacher timeout 120 $DFKD train-teacher --device cuda --data-root "$DATA" \
    --model lenet5 --epochs 10 --seed 0 --out $T --no-progress 2>&1
# the generator methods: the quick ones (a bank method's epoch is minutes)
GENERATOR_METHODS=$(python3 -c 'from dfkd.methods import GeneratorMethod, get_method, list_methods
print(" ".join(m for m in list_methods() if issubclass(get_method(m), GeneratorMethod)))')
for m in ${METHODS:-$GENERATOR_METHODS}; do
    timed "$m 1-epoch" timeout 120 $DFKD distill --device cuda --data-root "$DATA" \
        --config configs/fashion_mnist/${m}_lenet5.yaml --teacher $T --epochs 1 \
        --out runs/gpu_$m --overwrite --no-progress 2>&1
done
for cfg in configs/cifar10/cudfkd_resnet34_resnet18.yaml configs/cifar10/cudfkd_wrn40_2_wrn16_1.yaml; do
    timeout 150 python3 benchmarks/recipe_speed.py --config $cfg --set device=cuda --set amp=false \
        --set channels_last=false --steps 5 --json | tee -a "$OUT/recipe_speed.jsonl"
    timeout 150 python3 benchmarks/recipe_speed.py --config $cfg --set device=cuda --steps 5 --json \
        | tee -a "$OUT/recipe_speed.jsonl"
    timeout 200 python3 benchmarks/recipe_speed.py --config $cfg --set device=cuda --set compile=true \
        --steps 5 --json 2>&1 | tail -2 | tee -a "$OUT/recipe_speed.jsonl"
done
