#!/usr/bin/env bash
# The quickstart: the whole CodePlan pipeline, for real, on a 2-core CPU in about 15 minutes (install
# included on a fresh clone: under 20).
#
#   make quickstart            (creates .venv, then runs this; outputs in quickstart-out/)
#
# a. init-model: a tiny Llama and a byte-level BPE (4,096 tokens: a word is one token in prose and in
#    a plan's quotes) trained here; fine-tune it into a tiny plan *extractor* on 6,000 synthetic
#    <prompt, response> -> gold plan pairs;
# b. extract plans with that extractor over 1,200 fresh pairs (their gold plans kept aside as
#    `gold_plan`), print how many equal the gold plan, then filter with the plan-quality rules
#    (grounded, consistent);
# c. pack + finetune three students from the same base, the same optimizer steps each: `vanilla`
#    (no plans), `codeplan` on the mined plans, `codeplan-gold` on the gold plans (the oracle);
# d. generate + score all three on held-out questions at several difficulties (k = 5 is longer than
#    any training example), with plan fidelity and plan-following;
# e. print the comparison table, write its PNG and a PNG of the students' training loss curves.
#
# Tiny models trained for minutes need not reproduce the paper's numbers (that is a separate
# experiment's job): the point is that every step runs on real engines and real data flows, and that each number
# the paper's method depends on (plan fidelity, plan-following) is measured. Knobs: QUICKSTART_OUT,
# QUICKSTART_STEPS (student optimizer steps), QUICKSTART_EXTRACTOR_STEPS, QUICKSTART_TASKS.
set -euo pipefail

out=${QUICKSTART_OUT:-quickstart-out}
tasks=${QUICKSTART_TASKS:-last_letter,coin_flip,arithmetic}
extractor_steps=${QUICKSTART_EXTRACTOR_STEPS:-1500}
student_steps=${QUICKSTART_STEPS:-600}
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$out"
cd "$out"
step() { printf '\n== [%s] %s\n' "$(date +%T)" "$*" >&2; }
started=$(date +%s)

step "synth: gold pairs for the extractor, fresh pairs to mine (gold plans kept aside), held-out questions"
codeplan synth "$tasks" --n 2000 --k 2-4 --seed 1 -q > gold.jsonl.zst
codeplan synth "$tasks" --n 400 --k 2-4 --seed 2 --exclude gold.jsonl.zst --keep-gold-plan -q > pairs.jsonl.zst
codeplan synth "$tasks" --n 60 --k 2-5 --seed 3 --exclude gold.jsonl.zst --exclude pairs.jsonl.zst \
    --keep-gold-plan -q > test.jsonl.zst

step "a. init-model, then fine-tune the base into a plan extractor ($extractor_steps steps)"
python "$OLDPWD/examples/extractor_pairs.py" < gold.jsonl.zst > extractor-pairs.jsonl.zst
codeplan init-model base --corpus gold.jsonl.zst --corpus extractor-pairs.jsonl.zst \
    --hidden-size 64 --layers 2 --heads 2 --kv-heads 1 --head-dim 32 --vocab-size 4096 --seed 0
codeplan pack -m base --format vanilla --max-len 512 -q < extractor-pairs.jsonl.zst > extractor-packs.jsonl.zst
codeplan finetune -m base -i extractor-packs.jsonl.zst -o extractor --max-steps "$extractor_steps" \
    --lr 3e-3 --micro-batch 8 --log-every 100 --save-every 500 > extractor-metrics.jsonl

step "b. extract plans with the extractor, measure them against the gold plans, then filter"
codeplan extract -m extractor --engine hf --max-tokens 128 --batch-size 64 -o mined-raw.jsonl.zst \
    --rejects extract-rejects.jsonl.zst -i pairs.jsonl.zst
# Each mined record carries its gold plan: score reports the extraction's plan fidelity per task.
codeplan score -i mined-raw.jsonl.zst --report extraction.md --report extraction.json -q > /dev/null
codeplan filter -i mined-raw.jsonl.zst --grounded --consistent --rejects filter-rejects.jsonl.zst \
    --stats filter-stats.json > mined.jsonl.zst

step "c. pack and fine-tune three students from the same base: vanilla, codeplan (mined), codeplan-gold"
codeplan pack -m base --format vanilla --max-len 512 -q < pairs.jsonl.zst > packs-vanilla.jsonl.zst
codeplan pack -m base --format codeplan --max-len 512 -q < mined.jsonl.zst > packs-codeplan.jsonl.zst
codeplan pack -m base --format codeplan --max-len 512 -q < pairs.jsonl.zst > packs-codeplan-gold.jsonl.zst
for run in vanilla codeplan codeplan-gold; do
    codeplan finetune -m base -i "packs-$run.jsonl.zst" -o "student-$run" --max-steps "$student_steps" \
        --lr 3e-3 --micro-batch 8 --log-every 50 --save-every 200 > "student-$run-metrics.jsonl" &
done
wait

step "d. generate and score on held-out questions, k = 2..5"
for run in vanilla codeplan codeplan-gold; do
    fmt=${run%-gold}
    codeplan generate -m "student-$run" --format "$fmt" --engine hf --max-tokens 160 --batch-size 64 \
        -i test.jsonl.zst | codeplan score -q > "scored-$run.jsonl.zst"
done

step "e. compare: accuracy per task and difficulty, plan fidelity and plan-following, loss curves"
codeplan score --compare vanilla=scored-vanilla.jsonl.zst codeplan=scored-codeplan.jsonl.zst \
    codeplan-gold=scored-codeplan-gold.jsonl.zst --report compare.md --report compare.json --plot compare.png
python "$OLDPWD/examples/plot_losses.py" --out losses.png --title "students' training loss" \
    vanilla=student-vanilla-metrics.jsonl codeplan=student-codeplan-metrics.jsonl \
    codeplan-gold=student-codeplan-gold-metrics.jsonl
python "$OLDPWD/examples/quickstart_summary.py" extraction.json filter-stats.json compare.json
step "done in $(( $(date +%s) - started )) s: tables above (compare.md, extraction.md), plots compare.png and losses.png in $out/"
