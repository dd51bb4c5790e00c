"""synth and tasks write through the same output checks as the stages: an output that is an input is
refused, an unwritable one is 73 before anything runs, and a second writer on one file stops with 75."""

from __future__ import annotations

from codeplan_tools.core.outputs import OutputLock
from tests.helpers import invoke


def test_tasks_refuses_an_output_that_is_its_input(tmp_path):
    src = tmp_path / "test.jsonl"
    src.write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    before = src.read_bytes()
    result = invoke(["tasks", "prepare", "gsm8k", "-i", str(src), "-o", str(src)])
    assert result.exit_code == 2, result.stderr
    assert "same file" in result.stderr and src.read_bytes() == before


def test_synth_output_checks_run_before_anything_is_written(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = invoke(["synth", "last_letter", "-n", "2", "-o", str(blocker / "out.zst")])
    assert result.exit_code == 73, result.stderr
    out = tmp_path / "out.zst"
    with OutputLock(out):
        busy = invoke(["synth", "last_letter", "-n", "2", "-o", str(out)])
    assert busy.exit_code == 75 and "is being written by pid" in busy.stderr
    assert not out.exists()
