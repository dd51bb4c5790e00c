"""examples/miniature.py: the report's statistics, and the whole graph at a toy scale (--smoke).

The smoke run trains every student for a few steps on a few records: it checks that every
`codeplan` command the miniature schedules accepts its arguments and that the report is written
from their outputs, and that a re-run resumes (runs no step again). Its numbers mean nothing.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))

import miniature  # noqa: E402


def test_sign_test_matches_the_binomial_tails():
    assert miniature.sign_test(0, 0) == 1.0
    assert miniature.sign_test(3, 3) == 1.0
    assert math.isclose(miniature.sign_test(0, 5), 2 / 32)
    assert math.isclose(miniature.sign_test(5, 0), miniature.sign_test(0, 5))
    # 1 of 10 discordant pairs: P(X <= 1) = 11/1024, two-sided.
    assert math.isclose(miniature.sign_test(1, 9), 22 / 1024)


def test_spread_shows_mean_and_range_over_seeds():
    assert miniature.spread([0.5, 0.7, 0.6]) == "60.0 (50.0–70.0)"
    assert miniature.spread([None, 0.25]) == "25.0"
    assert miniature.spread([None]) == "-"


def test_paired_pools_discordant_pairs_over_seeds():
    def rows(*correct):
        return {"nest-test": {f"q{i}": {"correct": c} for i, c in enumerate(correct)}}

    results = {
        ("plan", 0): rows(True, True, False),
        ("vanilla", 0): rows(False, True, True),
        ("plan", 1): rows(True, False, False),
        ("vanilla", 1): rows(False, False, False),
    }
    b, c, p = miniature.paired(results, "plan", "vanilla", "nest-test", [0, 1])
    assert (b, c) == (2, 1)
    assert math.isclose(p, 1.0)


@pytest.mark.slow
def test_smoke_run_writes_the_report_and_resumes(tmp_path):
    out = tmp_path / "mini"
    command = [
        sys.executable,
        str(ROOT / "examples" / "miniature.py"),
        "--smoke",
        "--seeds",
        "0",
        "--out",
        str(out),
    ]
    first = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stderr[-3000:]
    report = (out / "report.md").read_text()
    for heading in ("Positive control", "CodePlan-style plans", "Given plans at checkpoints", "Data size"):
        assert heading in report
    data = json.loads((out / "report.json").read_text())
    assert set(data["nest"]) == set(miniature.NEST_ARMS)
    assert set(data["positive_control"]["accuracy"]) == set(miniature.PC_ARMS)
    # Every arm has one accuracy per seed: a number where the toy student was scored, None where its
    # data was empty (at this scale the toy extractor's plans may all be filtered out) and the report
    # says the arm was not run.
    for arm, row in data["nest"].items():
        assert len(row["accuracy"]) == 1
        skipped = f"pack/{arm}" in data["skipped"]
        assert (row["accuracy"][0] is None) == skipped, arm
        assert (f"**Not run**: {arm} " in report) == skipped, arm
    assert all(v[0] is not None for v in data["positive_control"]["accuracy"].values())
    kinds = {(row["arm"], row["kind"]) for row in data["following"]}
    assert ("codeplan-gold", "changed operation") in kinds and ("values-plan", "changed value") in kinds
    steps = {row["step"] for row in data["following"] if row["arm"] == "codeplan-gold"}
    assert len(steps) == miniature.CHECKPOINTS
    for png in ("accuracy.png", "following.png", "losses.png"):
        assert (out / png).stat().st_size > 1000
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "0 of" in again.stderr and "steps to run" in again.stderr
