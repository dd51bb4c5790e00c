"""Ctrl-C and SIGTERM: the output written so far is closed as complete frames, including the records
still in the writer's buffer, the exit status says which signal ended the run (130 / 143) and one
line on stderr says so."""

from __future__ import annotations

import signal
import subprocess
import time

import orjson
import pytest

from tests.cli.test_filter import good
from tests.helpers import CODEPLAN, wait_until_waiting_for_input, with_ctrl_c


def _record(i: int) -> bytes:
    return orjson.dumps(good(i, prompt=f"q{i}")) + b"\n"


@pytest.mark.parametrize(
    ("sig", "status", "word"), [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")]
)
def test_a_signal_closes_the_output_and_sets_the_exit_status(tmp_path, sig, status, word):
    out = tmp_path / "out.zst"
    proc = subprocess.Popen(
        [*CODEPLAN, "filter", "-o", str(out)],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=with_ctrl_c,
    )
    # Feed until a first frame is out, so the signal comes mid-stream.
    deadline = time.monotonic() + 60
    sent = 0
    while (not out.exists() or out.stat().st_size == 0) and time.monotonic() < deadline:
        proc.stdin.write(b"".join(_record(sent + k) for k in range(200)))
        proc.stdin.flush()
        sent += 200
        time.sleep(0.1)
    # One more record, handled but still in the writer's buffer when the signal comes.
    proc.stdin.write(orjson.dumps(good(10**9, prompt="last")) + b"\n")
    proc.stdin.flush()
    wait_until_waiting_for_input(proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    text = err.decode()
    assert proc.returncode == status, text
    assert f"codeplan filter: {word}" in text and "Traceback" not in text
    zstd = subprocess.run(["zstd", "-dc", str(out)], capture_output=True)
    assert zstd.returncode == 0, zstd.stderr  # every frame written is complete
    ids = [orjson.loads(line)["id"] for line in zstd.stdout.splitlines()]
    assert ids and len(ids) == len(set(ids)) and ids[-1] == f"r{10**9}"
