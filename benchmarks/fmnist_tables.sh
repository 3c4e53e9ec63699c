#!/usr/bin/env bash
# Issue #11: the final Fashion-MNIST tables of BENCHMARKS.md ("All methods on one pair").
# Every method's recipe (configs/fashion_mnist/, tuned on the val split) at bench.yaml's one
# budget, for three teachers trained on the train split: clean, and with 20% and 40% of the
# labels flipped. Seeds: 5 for cudfkd (both rows: the recipe, and the paper's method alone)
# and the two strongest baselines (TOP: the two best
# baselines by their tune study's best val Acc@1, never test: cmi 84.30 and fast 83.42 in
# runs/tune_fmnist10, 8 trials of 10 epochs each), 3 for the rest (REST: every other row
# unless set) and the references. NEW (nayer, adadfkd, spaceshipnet: the methods added after
# the tables were first run) get 5 seeds with the clean teacher and 3 with the noisy ones.
# A queue of JOBS runs at a time (cores/JOBS threads each). Finished runs are skipped and
# interrupted ones resumed, so the same command continues the tables; a failed run stops
# its bench, the others still run, and the script exits 1. To free the cores for a while,
# stop it (Ctrl-C; or SIGTERM to this script, then to its dfkd bench: each run checkpoints
# its round) and run it again later. Do not pause it (SIGSTOP): the runs time wall clock,
# so a pause would count in the seconds of the runs in flight. Then
# benchmarks/fmnist_claims.py says which of the paper's claims hold ($OUT/claims.md).
# The tables take longer than a session, and a session's processes and untracked files do not
# outlive it: before a session ends, commit the finished runs with benchmarks/save_tables.sh
# (results/ is in git; checkpoints are not, so a run in flight starts again next time).
# Run from the repository root:
#   JOBS=2 bash benchmarks/fmnist_tables.sh            # all three teachers
#   TEACHERS=clean JOBS=2 bash benchmarks/fmnist_tables.sh
set -euo pipefail
OUT=${OUT:-results/tables}; JOBS=${JOBS:-2}; DFKD=${DFKD:-dfkd}; PYTHON=${PYTHON:-python}
TOP=${TOP:-cudfkd,cudfkd_paper,cmi,fast}
NEW=${NEW:-nayer,adadfkd,spaceshipnet}
"$PYTHON" -c 'import dfkd' 2>/dev/null || {  # before hours of benches, not after
    echo "PYTHON=$PYTHON cannot import dfkd (set PYTHON=.venv/bin/python)" >&2; exit 2; }
# Every registered method's row, and the paper's CuDFKD beside dfkd's recipe.
ROWS=$("$PYTHON" -c 'from dfkd.methods import list_methods; print(",".join(["cudfkd_paper", *list_methods()]))')
if [ -z "${REST:-}" ]; then   # every row that is not in TOP, so none is left out
    REST=$(tr , '\n' <<< "$ROWS" | grep -vxF -f <(tr , '\n' <<< "$TOP,$NEW") | paste -sd ,) || true
fi
TEACHERS=${TEACHERS:-clean noise20 noise40}
BENCH=(--config configs/fashion_mnist/bench.yaml --jobs "$JOBS" --no-progress)
mkdir -p "$OUT"
failed=0   # a run that fails stops its bench; the other benches still run
for name in $TEACHERS; do
    case $name in
        clean) teacher=$OUT/teacher.pt; noise=0 ;;
        noise20) teacher=$OUT/teacher_noise20.pt; noise=0.2 ;;
        noise40) teacher=$OUT/teacher_noise40.pt; noise=0.4 ;;
        *) echo "unknown teacher '$name' (clean, noise20, noise40)" >&2; exit 2 ;;
    esac
    [ -f "$teacher" ] || $DFKD train-teacher --model lenet5 --epochs 10 --seed 0 \
        --label-noise "$noise" --out "$teacher" --no-progress
    if [ "$name" = clean ]; then five="$TOP,$NEW"; three=$REST; else five=$TOP; three="$REST,$NEW"; fi
    $DFKD bench "${BENCH[@]}" --teacher "$teacher" --out "$OUT/$name" --methods "$five" \
        --seeds 0,1,2,3,4 || failed=1
    $DFKD bench "${BENCH[@]}" --teacher "$teacher" --out "$OUT/$name" \
        --methods "$three,scratch,kd_with_data" --seeds 0,1,2 || failed=1
    $DFKD bench "${BENCH[@]}" --teacher "$teacher" --out "$OUT/$name" --report-only \
        --methods "$TOP,$NEW,$REST,scratch,kd_with_data" --seeds 0,1,2,3,4
done
# The paper's claims (accuracy, convergence, stability, robustness), paired over the seeds:
# written to $OUT/claims.md once the three teachers' benches are there.
if [ -d "$OUT/clean" ] && [ -d "$OUT/noise20" ] && [ -d "$OUT/noise40" ]; then
    "$PYTHON" benchmarks/fmnist_claims.py --tables "$OUT"
fi
exit $failed
