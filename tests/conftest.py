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
