#!/usr/bin/env bash
# The tests of the timm extra (pytest -m timm), in their own virtual environment, .venv-timm.
# timm needs torchvision, and the torchvision wheels here are built for PyTorch's CUDA build,
# so this environment holds torch 2.14.1 (the CUDA build, about 5.6 GB; it runs on the CPU)
# with its torchvision, while .venv keeps the CPU build. Idempotent: a second call only checks.
# TIMM_TORCH_SPEC changes the pair, e.g. "torch==2.13.0+cpu torchvision==0.28.0+cpu".
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
V=.venv-timm
if [ ! -x $V/bin/python ]; then
    "$PY" -m venv $V
fi
# onnx: a timm model exported to ONNX as a teacher (tests/test_teachers.py)
if ! $V/bin/python -c "import dfkd, pytest, timm, torchvision, onnx2torch, onnxruntime, onnxscript" 2>/dev/null; then
    # shellcheck disable=SC2086  # the spec is a list of requirements
    $V/bin/pip install -q ${TIMM_TORCH_SPEC:-torch==2.14.1 torchvision==0.29.1} -e ".[dev,timm,onnx,export]"
fi
# a timm that does not import would make every test below skip: fail here instead
$V/bin/python -c "import timm, torchvision, torch; print('timm', timm.__version__, \
'torchvision', torchvision.__version__, 'torch', torch.__version__)"
OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} $V/bin/python -m pytest -m timm "$@"
