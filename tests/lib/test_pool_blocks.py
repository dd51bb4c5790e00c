"""The worker pool's bulk reading (``streams.iter_blocks`` cut into batches by ``pool._batches``, split
by ``streams.block_lines`` in the worker) gives exactly the lines, line numbers and damage reports of
``streams.iter_lines``; and the background writer of a stage's output reports a failed write."""

from __future__ import annotations

import os

import orjson
import pytest
import zstandard

from codeplan_tools.core import pool
from codeplan_tools.core.errors import BadRecord, OutputIOError
from codeplan_tools.core.outputs import OutputWriter
from codeplan_tools.core.streams import InputDamage, block_lines, iter_blocks, iter_lines

LINES = [orjson.dumps({"id": f"r{i}", "prompt": "p" * (i % 50)}) for i in range(300)]


def _text(lines: list[bytes]) -> bytes:
    """Lines with CRLF ends, blank and whitespace-only lines among them, and no newline at the end."""
    out = []
    for i, line in enumerate(lines):
        out.append(line + (b"\r\n" if i % 7 == 0 else b"\n"))
        if i % 11 == 0:
            out.append(b"\n" if i % 2 else b"  \t\r\n")
    return b"".join(out).rstrip(b"\n")


def _inputs(tmp_path) -> dict[str, list[str]]:
    plain = tmp_path / "a.jsonl"
    plain.write_bytes(_text(LINES[:120]))
    frames = tmp_path / "b.jsonl.zst"  # many small frames: blocks end inside and between lines
    data = _text(LINES[120:]) + b"\n"
    cctx = zstandard.ZstdCompressor()
    frames.write_bytes(b"".join(cctx.compress(data[i : i + 997]) for i in range(0, len(data), 997)))
    damaged = tmp_path / "c.jsonl.zst"
    good = cctx.compress(b"\n".join(LINES[:40]) + b"\n")
    broken = bytearray(cctx.compress(b"\n".join(LINES[40:80]) + b"\n"))
    broken[len(broken) // 2] ^= 0xFF
    damaged.write_bytes(good + bytes(broken) + cctx.compress(b"\n".join(LINES[80:90])))
    return {
        "plain": [str(plain)],
        "two files": [str(plain), str(frames), str(plain)],
        "damaged": [str(damaged)],
    }


@pytest.mark.parametrize("name", ["plain", "two files", "damaged"])
@pytest.mark.parametrize("batch_lines", [3, 1000])
def test_batches_give_the_lines_and_damage_of_iter_lines(name, batch_lines, tmp_path, monkeypatch):
    paths = _inputs(tmp_path)[name]
    expected_damage: list[InputDamage] = []
    expected = list(iter_lines(paths, expected_damage.append))
    blocks = [line for block in iter_blocks(paths, lambda d: None) for line in block_lines(block)]
    assert blocks == expected
    monkeypatch.setattr(pool, "BATCH_LINES", batch_lines)
    got, damage = [], []
    for item in pool._batches(paths, skip_damage=True):
        if isinstance(item, InputDamage):
            damage.append(item)
        else:
            assert item.lines <= batch_lines
            got += list(item.items())
    assert got == expected
    assert damage == expected_damage
    assert bool(damage) == (name == "damaged")


def test_damage_in_fail_mode_stops_after_the_lines_before_it(tmp_path):
    paths = _inputs(tmp_path)["damaged"]
    with pytest.raises(BadRecord) as expected:
        list(iter_lines(paths))
    lines = []
    with pytest.raises(BadRecord) as got:
        for block in iter_blocks(paths):
            lines += list(block_lines(block))
    assert str(got.value) == str(expected.value)
    assert [line for _, _, line in lines] == LINES[:40]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_background_writer_reports_a_failed_write_as_exit_74():
    writer = OutputWriter("/dev/full", plain="zstd", background=True)
    with pytest.raises(OutputIOError, match="writing failed part-way"):
        try:  # several frames: the failure comes back from the writer thread, by a write or the close
            for i in range(20_000):
                writer.write_line(orjson.dumps({"id": i, "text": os.urandom(64).hex()}))
        finally:
            writer.close()  # (as run_stage's cleanup does)
    assert writer._thread is None and writer.closed
