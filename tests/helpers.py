"""Running the real command line from tests: in-process (fast) or as a subprocess (signals, pipes)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
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
