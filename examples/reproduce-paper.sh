#!/usr/bin/env bash
# The CodePlan paper's pipeline at full scale, on one node with 8 GPUs:
#   1. extract: Llama-3-8B-Instruct (vLLM) writes the plan behind every prompt/response pair of a corpus
#      such as WebInstruct, with the paper's instruction (--template paper); one shard per GPU
#   2. filter: drop plans that did not terminate, are empty, too long, not code-like or copy the response
#   3. pack: tokenize for the base model (Mistral-7B) in the `vanilla` and `codeplan` formats
#   4. finetune: one model per format from the same base, `--nproc GPUS` (FSDP2)
#   5. generate + score: both models on the benchmark tasks (`codeplan tasks prepare`), one shard per GPU
#   6. compare: accuracy per task, relative improvement of codeplan over vanilla, a plot
#
#   CORPUS=data/WebInstructSub.jsonl.zst RESPONSE_FIELD=answer bash examples/reproduce-paper.sh
#   DRY_RUN=1 bash examples/reproduce-paper.sh     # print the commands, run nothing
#
# Every step writes under WORK and is skipped when its output is complete, and the long steps resume
# (extract/generate continue their shard files, finetune its checkpoint): after a crash or a kill, run
# the same command again. On a SLURM cluster, examples/slurm/ has the same steps as batch jobs (array
# extraction over many nodes, multi-node fine-tuning with requeue on preemption). Everything is set by
# the variables below, so the same script runs a miniature on a CPU, e.g. with a model from
# `codeplan init-model`: EXTRACTOR=tiny BASE=tiny GPUS=0 ENGINE=hf EVAL_INPUT=held-out.jsonl.zst ...
#
# Variables (defaults in brackets):
#   CORPUS [data/WebInstructSub.jsonl.zst]         prompt/response records (zstd, gzip or plain JSONL)
#   PROMPT_FIELD RESPONSE_FIELD                    their fields when not prompt/question/... and
#                                                  response/output/solution (WebInstructSub: answer)
#   WORK [runs/paper]                              everything this script writes
#   EXTRACTOR [meta-llama/Meta-Llama-3-8B-Instruct] TEMPLATE [paper] EXTRACT_MAX_TOKENS [512]
#   BASE [mistralai/Mistral-7B-v0.1]               the model fine-tuned (and whose tokenizer packs)
#   FORMATS ["vanilla codeplan"]                   formats trained and compared; the first is the baseline
#   GPUS [8]                                       GPUs of the node; 0 runs on the CPU (one process)
#   ENGINE [vllm]                                  extract/generate engine: vllm, hf, or auto
#   MAX_LEN [4096] LR [2e-5] EPOCHS [1] MAX_STEPS [0] MICRO_BATCH [1] GRAD_ACCUM [16] SAVE_EVERY [200]
#       a usual full fine-tuning recipe for a 7B model on 8 GPUs (about 0.5 M tokens per step), not
#       necessarily the paper's schedule: set these to match the run you reproduce
#   TASKS [gsm8k,math500,svamp,aqua,last_letters,coin_flip,date_understanding,shuffled_objects,ifeval,hotpotqa,musique,2wikimultihopqa,bamboogle]
#   LIMIT (records per task) DATA_DIR (task files) EVAL_INPUT (question records instead of TASKS)
#   GEN_MAX_TOKENS [1024]
#   EXTRACT_ARGS FILTER_ARGS PACK_ARGS FINETUNE_ARGS GENERATE_ARGS SCORE_ARGS   more options per step
#   DRY_RUN [0]                                    1: print the commands only
set -euo pipefail

CORPUS=${CORPUS:-data/WebInstructSub.jsonl.zst}
WORK=${WORK:-runs/paper}
EXTRACTOR=${EXTRACTOR:-meta-llama/Meta-Llama-3-8B-Instruct}
TEMPLATE=${TEMPLATE:-paper}
EXTRACT_MAX_TOKENS=${EXTRACT_MAX_TOKENS:-512}
BASE=${BASE:-mistralai/Mistral-7B-v0.1}
FORMATS=${FORMATS:-vanilla codeplan}
GPUS=${GPUS:-8}
ENGINE=${ENGINE:-vllm}
MAX_LEN=${MAX_LEN:-4096}
TASKS=${TASKS:-gsm8k,math500,svamp,aqua,last_letters,coin_flip,date_understanding,shuffled_objects,ifeval,hotpotqa,musique,2wikimultihopqa,bamboogle}
GEN_MAX_TOKENS=${GEN_MAX_TOKENS:-1024}
DRY_RUN=${DRY_RUN:-0}

read -ra formats <<<"$FORMATS"
shards=$((GPUS > 0 ? GPUS : 1))

say() { printf '\n== %s\n' "$*" >&2; }
die() {
    echo "reproduce-paper.sh: $*" >&2
    exit 1
}
# show ARGS...: print a command as it could be pasted into a shell (quoting only where needed).
show() {
    local a line="+" plain='^[][A-Za-z0-9_./:=,@+%{}<>-]+$'
    for a in "$@"; do
        if [[ $a =~ $plain ]]; then line+=" $a"; else line+=" $(printf '%q' "$a")"; fi
    done
    echo "$line" >&2
}
# run CMD...: show it, then run it unless DRY_RUN=1. run_to FILE CMD...: the same, stdout appended to FILE.
run() {
    show "$@"
    if [[ $DRY_RUN != 1 ]]; then "$@"; fi
}
run_to() {
    local out=$1
    shift
    show "$@" ">>" "$out"
    if [[ $DRY_RUN != 1 ]]; then "$@" >>"$out"; fi
}
mkdirs() { if [[ $DRY_RUN != 1 ]]; then mkdir -p "$@"; fi; }
# done_already FILE: true (and says so) when a step's output is complete.
done_already() {
    if [[ $DRY_RUN != 1 && -e $1 ]]; then
        echo "skip: $1 exists" >&2
        return 0
    fi
    return 1
}
# concat OUT FILE...: cat the shard files into OUT (zstd frames concatenate), never half-written.
concat() {
    local out=$1
    shift
    show cat "$@" ">" "$out"
    if [[ $DRY_RUN != 1 ]]; then
        cat "$@" >"$out.tmp"
        mv "$out.tmp" "$out"
    fi
}
# sharded ARGS...: `codeplan ARGS --shard i/N` once per GPU in parallel, each on its own GPU;
# "{i}" in ARGS becomes the shard number. Shard outputs resume when the script is run again.
sharded() {
    local i pids=() failed=0
    for ((i = 0; i < shards; i++)); do
        local args=("${@//\{i\}/$i}")
        if ((GPUS > 0)); then
            run env "CUDA_VISIBLE_DEVICES=$i" codeplan "${args[@]}" --shard "$i/$shards" &
        else
            run codeplan "${args[@]}" --shard "$i/$shards" &
        fi
        pids+=("$!")
    done
    for i in "${pids[@]}"; do wait "$i" || failed=1; done
    ((failed == 0)) || die "a shard failed (its log is above); run the script again to resume"
}
# opt NAME VALUE: the option pair when VALUE is set (for optional fields).
opt() { if [[ -n $2 ]]; then printf '%s\n%s\n' "$1" "$2"; fi; }

if [[ $DRY_RUN != 1 ]]; then
    command -v codeplan >/dev/null || die "codeplan not found on PATH (install it, or activate its virtualenv)"
fi
mkdirs "$WORK"

# -- 1. extract -------------------------------------------------------------------------------------
mined=$WORK/mined.jsonl.zst
say "1. extract plans with $EXTRACTOR ($shards shard(s))"
if ! done_already "$mined"; then
    [[ $DRY_RUN == 1 || -e $CORPUS ]] || die "CORPUS=$CORPUS not found: point it at prompt/response records"
    mkdirs "$WORK/extract"
    mapfile -t fields < <(opt --prompt-field "${PROMPT_FIELD:-}"; opt --response-field "${RESPONSE_FIELD:-}")
    read -ra more <<<"${EXTRACT_ARGS:-}"
    sharded extract --model "$EXTRACTOR" --template "$TEMPLATE" --engine "$ENGINE" \
        --max-tokens "$EXTRACT_MAX_TOKENS" --input "$CORPUS" "${fields[@]}" --no-progress \
        --output "$WORK/extract/shard-{i}.jsonl.zst" --rejects "$WORK/extract/rejects-{i}.jsonl.zst" \
        --stats "$WORK/extract/stats-{i}.json" "${more[@]}"
    parts=()
    for ((i = 0; i < shards; i++)); do parts+=("$WORK/extract/shard-$i.jsonl.zst"); done
    concat "$mined" "${parts[@]}"
fi

# -- 2. filter --------------------------------------------------------------------------------------
kept=$WORK/kept.jsonl.zst
say "2. filter the plans"
if ! done_already "$kept"; then
    read -ra more <<<"${FILTER_ARGS:-}"
    run codeplan filter --input "$mined" --output "$kept.tmp" --rejects "$WORK/filter-rejects.jsonl.zst" \
        --stats "$WORK/filter-stats.json" --no-progress "${more[@]}"
    [[ $DRY_RUN == 1 ]] || mv "$kept.tmp" "$kept"
fi

# -- 3. pack and 4. finetune, per format ------------------------------------------------------------
for fmt in "${formats[@]}"; do
    packs=$WORK/packs-$fmt.jsonl.zst
    say "3. pack for $BASE, format $fmt"
    if ! done_already "$packs"; then
        read -ra more <<<"${PACK_ARGS:-}"
        run codeplan pack --model "$BASE" --format "$fmt" --max-len "$MAX_LEN" --input "$kept" \
            --output "$packs.tmp" --stats "$WORK/pack-$fmt-stats.json" --no-progress "${more[@]}"
        [[ $DRY_RUN == 1 ]] || mv "$packs.tmp" "$packs"
    fi

    ckpt=$WORK/model-$fmt
    say "4. finetune $BASE on the $fmt packs ($shards process(es))"
    if ! done_already "$ckpt/codeplan.json"; then
        read -ra more <<<"${FINETUNE_ARGS:-}"
        mkdirs "$ckpt"
        # Metrics (JSON lines) are appended to metrics.jsonl; a re-run resumes from the checkpoint.
        run_to "$ckpt/metrics.jsonl" codeplan finetune --model "$BASE" --data "$packs" --out "$ckpt" \
            --nproc "$shards" --lr "${LR:-2e-5}" --epochs "${EPOCHS:-1}" --max-steps "${MAX_STEPS:-0}" \
            --micro-batch "${MICRO_BATCH:-1}" --grad-accum "${GRAD_ACCUM:-16}" \
            --save-every "${SAVE_EVERY:-200}" "${more[@]}"
    fi
done

# -- 5. generate and score, per format --------------------------------------------------------------
if [[ -n ${EVAL_INPUT:-} ]]; then
    eval_file=$EVAL_INPUT
else
    eval_file=$WORK/eval.jsonl.zst
    say "5. benchmark questions: $TASKS"
    if ! done_already "$eval_file"; then
        mapfile -t prep < <(opt --limit "${LIMIT:-}"; opt --data-dir "${DATA_DIR:-}")
        run codeplan tasks prepare "$TASKS" "${prep[@]}" --output "$eval_file.tmp"
        [[ $DRY_RUN == 1 ]] || mv "$eval_file.tmp" "$eval_file"
    fi
fi
scored_runs=()
for fmt in "${formats[@]}"; do
    samples=$WORK/eval-$fmt/samples.jsonl.zst
    scored=$WORK/eval-$fmt/scored.jsonl.zst
    scored_runs+=("$fmt=$scored")
    say "5. generate and score with the $fmt model"
    if ! done_already "$samples"; then
        mkdirs "$WORK/eval-$fmt"
        read -ra more <<<"${GENERATE_ARGS:-}"
        sharded generate --model "$WORK/model-$fmt" --format "$fmt" --engine "$ENGINE" \
            --max-tokens "$GEN_MAX_TOKENS" --input "$eval_file" --no-progress \
            --output "$WORK/eval-$fmt/shard-{i}.jsonl.zst" --rejects "$WORK/eval-$fmt/rejects-{i}.jsonl.zst" \
            "${more[@]}"
        parts=()
        for ((i = 0; i < shards; i++)); do parts+=("$WORK/eval-$fmt/shard-$i.jsonl.zst"); done
        concat "$samples" "${parts[@]}"
    fi
    if ! done_already "$scored"; then
        read -ra more <<<"${SCORE_ARGS:-}"
        run codeplan score --input "$samples" --output "$scored.tmp" --no-progress \
            --report "$WORK/eval-$fmt/report.md" --report "$WORK/eval-$fmt/report.json" "${more[@]}"
        [[ $DRY_RUN == 1 ]] || mv "$scored.tmp" "$scored"
    fi
done

# -- 6. compare -------------------------------------------------------------------------------------
if ((${#formats[@]} > 1)); then
    say "6. compare ${formats[*]} (baseline: ${formats[0]})"
    run codeplan score --compare "${scored_runs[@]}" --report "$WORK/compare.md" \
        --report "$WORK/compare.json" --plot "$WORK/compare.png"
    say "done: $WORK/compare.md, $WORK/compare.png"
else
    say "done: $WORK/eval-${formats[0]}/report.md"
fi
