#!/usr/bin/env bash
# Merge the shards of extract-array.sbatch and filter them: check that every shard 0..N-1 finished,
# concatenate the shard files (zstd frames concatenate into one valid stream) into OUT/extract.jsonl.zst,
# sum their stats, then `codeplan filter` into OUT/kept.jsonl.zst (rejects and stats beside it).
#
#   OUT=runs/extract bash examples/slurm/merge-extract.sh
#   sbatch --dependency=afterok:<array job id> examples/slurm/merge-extract.sh   (what the array submits)
#
# Variables: OUT [runs/extract] (the array's OUT); FILTER_ARGS (more `codeplan filter` options, e.g.
# "--max-plan-words 200 --code-strict"); PYTHON [python] (the interpreter codeplan is installed in,
# used to sum the shard stats).
#
#SBATCH --job-name=codeplan-extract-merge
#SBATCH --output=codeplan-extract-merge-%j.out
set -euo pipefail

OUT=${OUT:-runs/extract}
if [[ ! -s $OUT/extract.shards ]]; then
    echo "merge-extract.sh: $OUT/extract.shards not found: no extract-array.sbatch task has run with OUT=$OUT" >&2
    exit 1
fi
count=$(cat "$OUT/extract.shards")

missing=()
for ((i = 0; i < count; i++)); do
    [[ -e $OUT/extract.$i.done && -e $OUT/extract.$i.jsonl.zst ]] || missing+=("$i")
done
if ((${#missing[@]})); then
    echo "merge-extract.sh: shard(s) ${missing[*]} of $count not finished; submit the array again (finished shards exit at once)" >&2
    exit 1
fi

shards=() rejects=() stats=()
for ((i = 0; i < count; i++)); do
    shards+=("$OUT/extract.$i.jsonl.zst")
    if [[ -e $OUT/rejects.$i.jsonl.zst ]]; then rejects+=("$OUT/rejects.$i.jsonl.zst"); fi
    if [[ -e $OUT/extract.$i.stats.json ]]; then stats+=("$OUT/extract.$i.stats.json"); fi
done
# Write beside the target and rename, so a merged file is never half written.
cat "${shards[@]}" >"$OUT/extract.jsonl.zst.tmp"
mv "$OUT/extract.jsonl.zst.tmp" "$OUT/extract.jsonl.zst"
if ((${#rejects[@]})); then
    cat "${rejects[@]}" >"$OUT/extract-rejects.jsonl.zst.tmp"
    mv "$OUT/extract-rejects.jsonl.zst.tmp" "$OUT/extract-rejects.jsonl.zst"
fi
if ((${#stats[@]})); then
    "${PYTHON:-python}" -c 'import sys; from codeplan_tools.core.stats import merge_files
merge_files(sys.argv[2:]).write_json(sys.argv[1])' "$OUT/extract-stats.json" "${stats[@]}"
fi
echo "merge-extract.sh: merged $count shards into $OUT/extract.jsonl.zst" >&2

rm -f "$OUT/kept.jsonl.zst.tmp"
read -ra more <<<"${FILTER_ARGS:-}"
codeplan filter --input "$OUT/extract.jsonl.zst" --output "$OUT/kept.jsonl.zst.tmp" --no-progress \
    --rejects "$OUT/filter-rejects.jsonl.zst" --stats "$OUT/filter-stats.json" "${more[@]}"
mv "$OUT/kept.jsonl.zst.tmp" "$OUT/kept.jsonl.zst"
echo "merge-extract.sh: kept plans in $OUT/kept.jsonl.zst (stats: $OUT/filter-stats.json)" >&2
