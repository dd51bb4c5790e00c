"""bench/gpu_check.sh: `--cpu-smoke` runs every section of the GPU check on the tiny model, so the script
cannot rot between the rare runs on a borrowed GPU; bash -n and shellcheck pass on the wrapper."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.cli.test_examples import shellcheck
from tests.helpers import REPO

SCRIPT = REPO / "bench" / "gpu_check.sh"


def test_wrapper_passes_bash_n_and_shellcheck():
    syntax = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    lint = subprocess.run(
        [shellcheck(), "--shell=bash", "--severity=style", str(SCRIPT)], capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_a_missing_dependency_is_one_line_and_exit_69(tmp_path):
    # An interpreter that cannot import torch: a stub that answers the import check like a bare python.
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\nexec {sys.executable} -S -I "$@"\n')
    fake.chmod(0o755)
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--cpu-smoke"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": str(fake)},
    )
    assert proc.returncode == 69, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot import: torch transformers" in lines[0], proc.stderr


@pytest.mark.slow  # trains, fine-tunes twice through the CLI and generates (~70 s on 2 shared cores)
def test_cpu_smoke_runs_every_section_and_prints_one_table(tmp_path):
    rows_file = tmp_path / "rows.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--cpu-smoke", "--json", str(rows_file), "--work", str(tmp_path / "work")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr[-4000:]
    rows = json.loads(rows_file.read_text())
    status = {(r["check"], r["path"]): r["status"] for r in rows}
    # The table on stdout holds every row (header, rule, rows) and nothing else.
    table = proc.stdout.strip().splitlines()
    assert table[0].split() == ["check", "path", "status", "result", "detail"]
    assert len(table) == 2 + len(rows)
    # GPU-only paths say why they did not run; the CPU path ran and passed.
    assert status["train", "flash_attention_2"] == "n/a" and status["train", "flex_attention"] == "n/a"
    assert status["train", "sdpa"] == "ok" and status["parity", "sdpa"] == "ok"
    assert status["cli finetune", "sdpa"] == "ok"  # --attention auto chose sdpa on the CPU
    assert status["export round trip", "-"] == "ok"
    assert status["generate", "hf"] == "ok"
    assert status.get(("lora step", "r=16"), status.get(("lora step", "-"))) in ("ok", "n/a")
    assert not [r for r in rows if r["status"] in ("FAIL", "skipped")], rows
    by_check = {(r["check"], r["path"]): r for r in rows}
    # The parity check can fail: plain causal attention over the pack is far off, the confined one is not.
    parity = by_check["parity", "sdpa"]
    leak = float(parity["detail"].rsplit(": ", 1)[1])
    assert leak > 1e-2, parity
    assert "tok/s" in by_check["train", "sdpa"]["result"]
    assert "equal the checkpoint (max gap 0)" in by_check["export round trip", "-"]["result"]
