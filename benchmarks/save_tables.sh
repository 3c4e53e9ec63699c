#!/usr/bin/env bash
# Commit the finished runs of benchmarks/fmnist_tables.sh, so the next session goes on from
# them: a session's machine and its runs/ do not outlive it, but the repository does. Stages
# the teachers, each finished run's summary.json (result.json for the references),
# metrics.jsonl and config.yaml, and the benches' own tables; never a run still in flight
# (the next session's bench starts those again) nor checkpoints, weights or sample grids.
# .gitignore ignores the run folders, so the run files are staged with -f, by name.
# Run from the repository root:  bash benchmarks/save_tables.sh [OUT]
set -euo pipefail
OUT=${1:-results/tables}
[ -d "$OUT" ] || { echo "no tables in $OUT yet" >&2; exit 2; }
files=()
while IFS= read -r -d '' f; do files+=("$f"); done < <(
    find "$OUT" -maxdepth 1 -type f ! -name '.*' -print0
    find "$OUT" -mindepth 2 -maxdepth 2 -type f ! -name '.*' -print0
    find "$OUT" -mindepth 4 -maxdepth 4 \( -name summary.json -o -name result.json \) \
        -printf '%h\0' | while IFS= read -r -d '' run; do
            find "$run" -maxdepth 1 -type f \( -name '*.json' -o -name metrics.jsonl \
                -o -name config.yaml \) -print0
        done)
[ ${#files[@]} -gt 0 ] && git add -f -- "${files[@]}"
if git diff --cached --quiet -- "$OUT"; then
    echo "nothing new in $OUT"
else
    done_runs=$(find "$OUT" -mindepth 4 -maxdepth 4 \( -name summary.json -o -name result.json \) | wc -l)
    git commit -q -m "tables: $done_runs finished runs in $OUT" -- "$OUT"
    git log --oneline -1
fi
