"""Running the real command line from tests: in-process (fast) or as a subprocess (signals, pipes)."""

from __future__ import annotations

import fcntl
import io
import os
import signal
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import zstandard

from codeplan_cli.main import main

REPO = Path(__file__).resolve().parents[1]
CODEPLAN = [sys.executable, "-m", "codeplan_cli"]


@dataclass
class Invocation:
    exit_code: int
    stdout: bytes
    stderr: str

    def records(self) -> list[dict]:
        return decode_records(self.stdout)


def invoke(args: list[str], input: bytes | None = b"", env: dict | None = None) -> Invocation:
    """Run ``codeplan ARGS`` in this process with stdin/stdout/stderr captured as bytes."""
    from click.testing import CliRunner

    runner = CliRunner()
    with runner.isolation(input=input, env=env) as streams:
        code = main(list(args))
        sys.stdout.flush()
        sys.stderr.flush()
        out, err = streams[0].getvalue(), streams[1].getvalue()
    return Invocation(code, out, err.decode("utf-8", "replace"))


def run_codeplan(args: list[str], input: bytes | None = None, env: dict | None = None, **kw):
    """Run ``codeplan ARGS`` as a subprocess (``python -m codeplan_cli``)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*CODEPLAN, *args], input=input, capture_output=True, env=full_env, **kw)


def decode_records(data: bytes) -> list[dict]:
    """Records from plain JSONL or (multi-frame) zstd bytes."""
    if data.startswith(b"\x28\xb5\x2f\xfd"):
        data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True).read()
    return [orjson.loads(line) for line in data.splitlines() if line.strip()]


def read_records(path: str | Path) -> list[dict]:
    return decode_records(Path(path).read_bytes())


def write_jsonl(path: str | Path, records: list[dict], compress: str = "plain") -> Path:
    data = b"".join(orjson.dumps(r) + b"\n" for r in records)
    if compress == "zstd":
        data = zstandard.ZstdCompressor().compress(data)
    elif compress == "gzip":
        import gzip

        data = gzip.compress(data)
    Path(path).write_bytes(data)
    return Path(path)


# read(2)'s number per machine, for /proc/PID/syscall.
_READ_SYSCALL = {"x86_64": 0, "aarch64": 63, "riscv64": 63, "i686": 3, "armv7l": 3}


def wait_until_waiting_for_input(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Return once the child has taken every byte written to its stdin pipe and is blocked in
    read(2) on fd 0 for more: a record-at-a-time stage has then handled every line sent so far.
    (Linux: the pipe's FIONREAD and /proc/PID/syscall.)"""
    read_call = _READ_SYSCALL[os.uname().machine]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the child exited with {proc.returncode} while it was fed")
        unread = struct.unpack("i", fcntl.ioctl(proc.stdin.fileno(), termios.FIONREAD, b"\0" * 4))[0]
        if unread == 0:
            # "running" while it works; "NR FD ..." while it is blocked in a system call.
            call = Path(f"/proc/{proc.pid}/syscall").read_text().split()
            if call[:2] == [str(read_call), "0x0"]:
                return
        time.sleep(0.01)
    raise AssertionError(f"the child did not wait for more input within {timeout} s")


def with_ctrl_c() -> None:
    """``preexec_fn`` for a child a test interrupts with SIGINT: a shell starts background jobs with
    SIGINT ignored, and Python keeps an inherited SIG_IGN (no KeyboardInterrupt), so a suite started with
    ``make test &`` would see Ctrl-C ignored. Restoring the default lets the child install its handler."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
