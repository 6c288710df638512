#!/usr/bin/env bash
# The README's demo table: the three modes on the bundled pair, then `bare-engine eval`
# (diversity with MiniLM, the toy world's checker as the verifiable check).
#   bash scripts/demo_modes.sh [NUM]      (default 500 records per mode; needs the eval extra)
set -euo pipefail
num=${1:-500}
out=runs/demo
mkdir -p "$out"
for mode in base instruct bare; do
    bare-engine run --mode "$mode" --num "$num" --out "$out/$mode.jsonl" --no-progress
done
bare-engine eval "$out/base.jsonl" "$out/instruct.jsonl" "$out/bare.jsonl" \
    --check bare_engine.demo.world:check --plot "$out/similarity.png" --out "$out/eval.json"
