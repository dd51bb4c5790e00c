#!/usr/bin/env bash
# The quickstart: the whole CodePlan pipeline, for real, on a 2-core CPU in about 5 minutes (8 with the install).
#
#   make quickstart            (creates .venv, then runs this; outputs in quickstart-out/)
#
# a. init-model: a tiny Llama and a byte-level BPE trained here; fine-tune it into a tiny plan
#    *extractor* on synthetic ⟨prompt, response⟩ → plan pairs;
# b. extract plans with that extractor over fresh synthetic pairs (their gold plans are discarded),
#    then filter them;
# c. pack + finetune two students from the same base: `codeplan` format on the mined plans, `vanilla`
#    on the same pairs without plans;
# d. generate + score both on held-out questions at several difficulties (k = 5 is longer than any
#    training example);
# e. print the comparison table and write a PNG plot.
#
# Tiny models trained for minutes need not reproduce the paper's numbers: the point is that every
# step runs on real engines and real data flows. Knobs: QUICKSTART_OUT, QUICKSTART_STEPS (student
# optimizer steps), QUICKSTART_TASKS.
set -euo pipefail

out=${QUICKSTART_OUT:-quickstart-out}
tasks=${QUICKSTART_TASKS:-last_letter,coin_flip,arithmetic}
extractor_steps=${QUICKSTART_EXTRACTOR_STEPS:-300}
student_steps=${QUICKSTART_STEPS:-600}
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$out"
cd "$out"
step() { printf '\n== [%s] %s\n' "$(date +%T)" "$*" >&2; }
started=$(date +%s)

step "synth: gold pairs for the extractor, fresh pairs to mine, held-out questions"
codeplan synth "$tasks" --n 400 --k 2-4 --seed 1 -q > gold.jsonl.zst
codeplan synth "$tasks" --n 400 --k 2-4 --seed 2 --exclude gold.jsonl.zst -q > pairs.jsonl.zst
codeplan synth "$tasks" --n 60 --k 2-5 --seed 3 --exclude gold.jsonl.zst --exclude pairs.jsonl.zst -q \
    > test.jsonl.zst

step "a. init-model, then fine-tune the base into a plan extractor"
python "$OLDPWD/examples/extractor_pairs.py" < gold.jsonl.zst > extractor-pairs.jsonl.zst
codeplan init-model base --corpus gold.jsonl.zst --corpus extractor-pairs.jsonl.zst \
    --hidden-size 64 --layers 2 --heads 2 --kv-heads 1 --head-dim 32 --vocab-size 1024 --seed 0
codeplan pack -m base --format vanilla --max-len 512 -q < extractor-pairs.jsonl.zst > extractor-packs.jsonl.zst
codeplan finetune -m base -i extractor-packs.jsonl.zst -o extractor --max-steps "$extractor_steps" \
    --lr 3e-3 --micro-batch 8 --log-every 50 --save-every 100 > extractor-metrics.jsonl

step "b. extract plans with the extractor (gold plans discarded), then filter"
codeplan extract -m extractor --engine hf --max-tokens 96 --batch-size 64 -o mined-raw.jsonl.zst \
    --rejects extract-rejects.jsonl.zst -i pairs.jsonl.zst
codeplan filter -i mined-raw.jsonl.zst --rejects filter-rejects.jsonl.zst --stats filter-stats.json \
    > mined.jsonl.zst

step "c. pack and fine-tune two students from the same base: codeplan (mined plans) and vanilla"
for fmt in codeplan vanilla; do
    codeplan pack -m base --format "$fmt" --max-len 512 -q < mined.jsonl.zst > "packs-$fmt.jsonl.zst"
done
for fmt in codeplan vanilla; do
    codeplan finetune -m base -i "packs-$fmt.jsonl.zst" -o "student-$fmt" --max-steps "$student_steps" \
        --lr 3e-3 --micro-batch 8 --log-every 100 --save-every 200 > "student-$fmt-metrics.jsonl" &
done
wait

step "d. generate and score on held-out questions, k = 2..5"
for fmt in codeplan vanilla; do
    codeplan generate -m "student-$fmt" --format "$fmt" --engine hf --max-tokens 160 --batch-size 64 \
        -i test.jsonl.zst | codeplan score -q > "scored-$fmt.jsonl.zst"
done

step "e. compare: accuracy per task and difficulty, relative improvement"
codeplan score --compare vanilla=scored-vanilla.jsonl.zst codeplan=scored-codeplan.jsonl.zst \
    --report compare.md --report compare.json --plot compare.png
step "per task and difficulty (compare.md)"
cat compare.md
step "done in $(( $(date +%s) - started )) s: table above, plot in $out/compare.png"
