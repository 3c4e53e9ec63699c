#!/usr/bin/env bash
# Prepare a fresh machine: virtual environment, CPU PyTorch, dfkd, and Fashion-MNIST.
# Idempotent: a second call only checks. Source of truth for the README quick start.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import torch" 2>/dev/null; then
    # Pinned: on this platform torch==2.13.0 is a CPU build from local disk; an
    # unpinned 'torch' may pull a multi-GB CUDA build. Pass TORCH_SPEC to change it.
    .venv/bin/pip install -q "${TORCH_SPEC:-torch==2.13.0}"
fi
if ! .venv/bin/python -c "import dfkd, pytest, ruff, hypothesis, optuna, matplotlib, safetensors, onnx, onnxruntime, onnxscript, mkdocs, tensorboard, mlflow, wandb" 2>/dev/null \
        || ! .venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('onnx2torch') is None)" \
        || ! .venv/bin/dfkd --help >/dev/null 2>&1; then   # an install older than the entry point
    .venv/bin/pip install -q -e ".[dev,plot,tune,export,docs,tensorboard,mlflow,wandb]"
    # The onnx extra without its torchvision: onnx2torch names torchvision, whose newest
    # wheel here wants another (CUDA, multi-GB) torch; dfkd runs onnx2torch without it.
    .venv/bin/pip install -q --no-deps "onnx2torch>=1.5"
fi
FMNIST=/usr/share/datasets/fashion-mnist
if [ ! -e "$FMNIST/t10k-labels-idx1-ubyte.gz" ] && [ ! -e "$FMNIST/t10k-labels-idx1-ubyte" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "installing Debian's dataset-fashion-mnist ..."
        apt-get install -y -q dataset-fashion-mnist >/dev/null \
            || { apt-get update -q >/dev/null && apt-get install -y -q dataset-fashion-mnist >/dev/null; }
    else
        echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist'," \
             "or pass --data-root DIR to dfkd" >&2
    fi
fi
