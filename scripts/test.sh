#!/usr/bin/env bash
# The test suite (what CI runs): lint, pytest on tests/ and then, without arguments, the
# benchmark scripts' own tests (benchmarks/tests/).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest "$@"
[ $# -gt 0 ] || .venv/bin/python -m pytest benchmarks/tests
