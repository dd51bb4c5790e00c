#!/usr/bin/env bash
# One prepared GPU check of codeplan's GPU paths, in <= 8 minutes on one H100/H200; prints one table.
#
#   bench/gpu_check.sh                         # on a machine with one GPU
#   bench/gpu_check.sh --cpu-smoke             # the same script on a tiny model on the CPU (CI)
#   bench/gpu_check.sh --json rows.json        # also write the table's rows as JSON
#
# What it measures and how (tokens/s, MFU, peak memory per attention path; packed-vs-separate logits;
# codeplan finetune with --attention auto, its export round trip, a LoRA step; generate --engine hf
# against bare model.generate): see the docstring of bench/gpu_check.py. It needs torch and
# transformers (no vLLM, no flash-attn) and codeplan's small pure-Python dependencies; the checkout
# need not be installed.
#
# Variables:
#   PYTHON     the interpreter [.venv/bin/python of the checkout if present, else python3]
#   WHEELS     a folder of wheels to install missing dependencies from, offline (pip --no-index), e.g.
#              made beforehand with: pip download -d wheels typer orjson zstandard
#   TIMEOUT_S  hard limit on the whole run in seconds [480]; the script itself starts no new section
#              after --budget-s (default 400) seconds
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
python=${PYTHON:-}
if [[ -z $python ]]; then
    if [[ -x $repo/.venv/bin/python ]]; then python=$repo/.venv/bin/python; else python=python3; fi
fi

# The modules the check imports besides the standard library, as pip names them.
required=(torch transformers safetensors tokenizers numpy tqdm orjson zstandard typer click)
missing() {
    "$python" -c 'import importlib.util, sys; print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))' "${required[@]}"
}
lacking=$(missing)
if [[ -n $lacking && -n ${WHEELS:-} ]]; then
    read -ra packages <<<"$lacking"
    "$python" -m pip install --quiet --no-index --find-links "$WHEELS" "${packages[@]}" >&2
    lacking=$(missing)
fi
if [[ -n $lacking ]]; then
    echo "gpu_check.sh: error: $python cannot import: $lacking (pip install them, or set WHEELS or PYTHON)" >&2
    exit 69
fi

export TOKENIZERS_PARALLELISM=false
cd "$repo"
exec timeout --kill-after=20 "${TIMEOUT_S:-480}" "$python" bench/gpu_check.py "$@"
