"""Shared fixtures. Fixture modules per area live in tests/fixtures/ and are loaded here."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Tell the app it runs under tests: unexpected errors keep their traceback (codeplan_cli.main).
sys._called_from_test = True  # type: ignore[attr-defined]
# Small machines: one thread per torch process keeps the suite fast and predictable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

# Property tests (hypothesis) draw the same examples on every run, so the suite gives one verdict for
# one commit; HYPOTHESIS_PROFILE=explore draws new ones (what to run when hunting for cases).
from hypothesis import settings  # noqa: E402

settings.register_profile("reproducible", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "reproducible"))

pytest_plugins = [
    "tests.fixtures.models",
    "tests.fixtures.slurm",
]

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CODEPLAN_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """`../shared/data` beside the checkout (or $CODEPLAN_SHARED_DATA); skips when absent."""
    if not (SHARED_DATA / "MANIFEST.md").exists():
        pytest.skip(f"shared data not found at {SHARED_DATA} (it exists in CI beside the checkout)")
    return SHARED_DATA


# Markers that `make test-fast` leaves out (-m "not slurm and not vllm and not slow"), applied here
# by the fixtures a test uses or by its name, so that test files need no marker of their own.
FIXTURE_MARKERS = {
    "slurm_cluster": ("slurm",),
    "vllm_engine": ("vllm",),
    "vllm_llm": ("vllm",),
    "vllm_server": ("vllm", "slow"),  # starts `vllm serve` (~40 s)
}
# Test ids (without parameters) -> why they carry the marker.
VLLM_TESTS = {
    "tests/cli/test_generate.py::test_vllm_cpu_generate_matches_hf_greedy": "builds a vLLM engine",
    "tests/cli/test_generate.py::test_vllm_that_cannot_start_says_why_in_one_line": "starts vLLM (fails)",
}
SLOW_TESTS = {
    "tests/cli/test_generate.py::test_vllm_cpu_generate_matches_hf_greedy": "builds a vLLM engine (~14 s)",
    "tests/cli/test_generate.py::test_vllm_that_cannot_start_says_why_in_one_line": (
        "starts vLLM twice, in this process and in its own (~20 s)"
    ),
    "tests/cli/test_finetune.py::test_two_processes_train_and_resume_exactly_after_kill_and_sigterm": (
        "trains in two processes, three times (~55 s)"
    ),
    "tests/cli/test_finetune.py::test_a_second_finetune_on_the_same_out_stops_with_75_while_the_first_runs": (
        "trains a model (~7 s)"
    ),
    "tests/cli/test_extract.py::test_sigkill_then_rerun_gives_every_id_once_and_other_settings_are_refused": (
        "generates with hf in three processes (~15 s)"
    ),
    "tests/lib/test_scorer_cases.py::test_math_parity_with_math_verify": "math-verify on every case (~15 s)",
    "tests/cli/test_finetune_lora.py::test_two_ranks_learn_with_lora_and_a_sigkilled_run_resumes_exactly": (
        "trains with LoRA in two processes, three times (~50 s)"
    ),
}


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Add ``slurm``/``vllm``/``slow`` before ``-m`` deselects by them."""
    by_name = {"vllm": VLLM_TESTS, "slow": SLOW_TESTS}
    for item in items:
        name = item.nodeid.split("[")[0]
        for fixture in getattr(item, "fixturenames", ()):
            for marker in FIXTURE_MARKERS.get(fixture, ()):
                item.add_marker(marker)
        for marker, names in by_name.items():
            if name in names:
                item.add_marker(marker)
