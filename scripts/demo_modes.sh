#!/usr/bin/env bash
# The README's demo table: the three modes on the bundled pair, then `bare-engine eval`
# (diversity with MiniLM, the toy world's checker as the verifiable check).
#   bash scripts/demo_modes.sh [NUM [SEED [OUT [RUN FLAGS...]]]]
# (default 500 records per mode, seed 0, runs/demo; needs the eval extra). Extra flags go to
# every `bare-engine run`, e.g. --base DIR --instruct DIR --seeds FILE for another pair.
set -euo pipefail
num=${1:-500}
seed=${2:-0}
out=${3:-runs/demo}
shift $(( $# < 3 ? $# : 3 ))
mkdir -p "$out"
for mode in base instruct bare; do
    start=$(date +%s)
    bare-engine run --mode "$mode" --num "$num" --seed "$seed" --out "$out/$mode.jsonl" --no-progress "$@"
    echo "$mode: $(( $(date +%s) - start ))s" >&2
done
bare-engine eval "$out/base.jsonl" "$out/instruct.jsonl" "$out/bare.jsonl" \
    --check bare_engine.demo.world:check --plot "$out/similarity.png" --out "$out/eval.json"
