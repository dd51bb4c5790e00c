#!/usr/bin/env bash
# The quickstart: the CodePlan pipeline end to end on a CPU, on a tiny model built here.
# Run it with `make quickstart` (which creates .venv first). Output lands in $QUICKSTART_OUT.
set -euo pipefail

out=${QUICKSTART_OUT:-quickstart-out}
mkdir -p "$out"
say() { printf '\n== %s\n' "$*" >&2; }

say "synth: synthetic multi-step tasks with exact plans"
codeplan synth all --n 200 --k 2-4 --seed 0 > "$out/synth.jsonl.zst"

say "filter: the named rules over the plans"
codeplan filter -i "$out/synth.jsonl.zst" --rejects "$out/rejects.jsonl.zst" \
    --stats "$out/filter-stats.json" > "$out/kept.jsonl.zst"

say "done: outputs in $out/"
