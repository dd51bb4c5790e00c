"""Readers never lose a good record (issue #25, and the input items of #11): one test per class of damage.

The contract (codeplan_tools.core.streams): every complete line of an intact frame/member/file reaches the
output or the rejects in skip mode; in fail mode everything read before the damage is written, then
exit 65 names the file and the first line that could not be read (never an earlier one); no input
gives exit 70 (under pytest an unexpected exception is raised, so these tests would see it).
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import shutil
import subprocess
import sys
import threading
import time

import orjson
import pytest
import zstandard
from hypothesis import example, given, settings
from hypothesis import strategies as st

from codeplan_tools.core import columnar, pool, streams
from codeplan_tools.core.errors import BadRecord
from codeplan_tools.core.records import MAX_DEPTH, InvalidRecord, derive_id, dumps, parse_record
from codeplan_tools.core.streams import RecordWriter, iter_lines, open_input, read_records
from tests.helpers import decode_records, invoke
from tests.helpers import read_records as read_file

PLAN = "def solve(items):\n    total = 0\n    for x in items:\n        total += x\n    return total"


def rec(i: int) -> dict:
    """A record that every filter rule keeps."""
    return {
        "id": f"r{i}",
        "prompt": f"Add up list number {i}.",
        "plan": PLAN,
        "response": f"We add the numbers of list {i} one after another and the total is the answer.",
    }


def text(records) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def zstd_frames(records, per_frame: int) -> list[bytes]:
    """One zstd frame (with checksum, as codeplan writes them) per ``per_frame`` records."""
    cctx = zstandard.ZstdCompressor(write_checksum=True)
    return [cctx.compress(text(records[i : i + per_frame])) for i in range(0, len(records), per_frame)]


def gzip_members(records, per_member: int) -> list[bytes]:
    return [gzip.compress(text(records[i : i + per_member])) for i in range(0, len(records), per_member)]


def flip(data: bytes, at: int) -> bytes:
    out = bytearray(data)
    out[at] ^= 0xFF
    return bytes(out)


def ids(records) -> list[str]:
    return [r["id"] for r in records]


def lines_read(path, on_damage=None) -> list[int]:
    return [lineno for _, lineno, _ in iter_lines([str(path)], on_damage)]


# --- 1. decompression errors are bad input (65), never a crash (70) -----------------------------


def _score_records(n):
    return [{"id": f"q{i}", "task": "gsm8k", "answer": "7", "samples": [{"response": "7"}]} for i in range(n)]


@pytest.mark.parametrize("command", ["filter", "score", "pack"])
@pytest.mark.parametrize("damage", ["gzip header on zstd", "damaged deflate block"])
def test_a_decompression_error_is_exit_65_in_every_command(command, damage, tmp_path, request):
    records = _score_records(50) if command == "score" else [rec(i) for i in range(50)]
    if damage == "gzip header on zstd":
        data = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03" + zstd_frames(records, 50)[0]
    else:
        member = gzip.compress(text(records))
        data = flip(member, len(member) // 2)
    path = tmp_path / "in.gz"
    path.write_bytes(data)
    extra = ["--model", str(request.getfixturevalue("tiny_model"))] if command == "pack" else []
    result = invoke([command, "-i", str(path), "--plain", *extra])
    assert result.exit_code == 65, result.stderr
    assert f"{path}:1: damaged gzip input" in result.stderr and "at byte" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# --- 2. deep nesting is rejected at read -------------------------------------------------------


def _nested(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


def test_nesting_limit_is_exact():
    at_limit = orjson.dumps(_nested(MAX_DEPTH))
    assert parse_record(at_limit) == _nested(MAX_DEPTH)
    lists = b'{"a":' + b"[" * MAX_DEPTH + b"]" * MAX_DEPTH + b"}"  # one level more, in lists
    with pytest.raises(InvalidRecord, match="too deeply nested"):
        parse_record(lists)
    with pytest.raises(InvalidRecord, match="too deeply nested"):
        parse_record(b"[" * 2000 + b"]" * 2000)  # past orjson's own limit too
    # Brackets inside strings do not count.
    assert parse_record(orjson.dumps({"code": "[" * 500}))["code"] == "[" * 500


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_deep_record_is_rejected_and_the_records_around_it_are_kept(workers, tmp_path, monkeypatch):
    monkeypatch.setattr(pool, "BATCH_LINES", 40)  # several batches: --workers 2 starts workers
    records = [rec(i) for i in range(100)]
    deep = {**rec(999), "x": _nested(300)}
    path = tmp_path / "in.jsonl"
    path.write_bytes(text(records[:50]) + json.dumps(deep).encode() + b"\n" + text(records[50:]))
    rej = tmp_path / "rej.jsonl"
    base = ["filter", "-i", str(path), "--plain", "--workers", workers]
    result = invoke([*base, "--on-bad-record", "skip", "--rejects", str(rej)])
    assert result.exit_code == 0, result.stderr
    assert ids(result.records()) == ids(records)
    [rejected] = read_file(rej)
    assert (
        "too deeply nested" in rejected["meta"]["filter"]["reason"]
        and rejected["meta"]["filter"]["line"] == 51
    )
    result = invoke(base)
    assert result.exit_code == 65 and f"{path}:51: too deeply nested" in result.stderr
    assert ids(result.records()) == ids(records[:50])


# --- 4. junk after a complete stream -------------------------------------------------------------


@pytest.mark.parametrize(
    "data, junk",
    [
        (lambda r: b"".join(zstd_frames(r, 6000)), b"\x00" * 64),  # NUL padding after a zstd stream
        (lambda r: gzip.compress(text(r)), b"\n\n"),  # two newlines after a gzip stream
    ],
    ids=["zstd+NUL", "gzip+newlines"],
)
def test_junk_after_a_complete_stream_keeps_every_record(data, junk, tmp_path):
    records = [rec(i) for i in range(6000)]
    path = tmp_path / "big.data"
    path.write_bytes(data(records) + junk)
    result = invoke(["filter", "-i", str(path), "--plain"])
    assert result.exit_code == 65
    assert (
        f"{path}:6001: junk after the end of the" in result.stderr
        and "6000 lines read before it" in result.stderr
    )
    assert ids(result.records()) == ids(records)
    stats = tmp_path / "stats.json"
    result = invoke(["filter", "-i", str(path), "--plain", "--on-bad-record", "skip", "--stats", str(stats)])
    assert result.exit_code == 0 and ids(result.records()) == ids(records)
    counters = json.loads(stats.read_text())["counters"]
    assert counters["input_damage"] == 1 and counters["input_damage_bytes_skipped"] == len(junk)
    assert "junk after the end" in result.stderr


def test_nul_padding_after_gzip_is_accepted_as_gzip_accepts_it(tmp_path):
    path = tmp_path / "pad.gz"
    path.write_bytes(gzip.compress(text([rec(0), rec(1)])) + b"\x00" * 8)
    assert lines_read(path) == [1, 2]


def test_the_error_names_the_first_line_not_read_in_a_large_file(tmp_path):
    records = [rec(i) for i in range(6000)]
    frames = zstd_frames(records, 100)  # line 5901 starts frame 59
    frames[59] = flip(frames[59], len(frames[59]) // 2)
    path = tmp_path / "big.zst"
    path.write_bytes(b"".join(frames))
    result = invoke(["filter", "-i", str(path), "--plain"])
    assert result.exit_code == 65
    line = int(result.stderr.split(f"{path}:")[1].split(":")[0])
    assert line >= 5901  # never a line before the damage
    assert ids(result.records()) == ids(records[: line - 1])  # and everything before it is written


# --- 5. a corrupt frame or member in the middle ---------------------------------------------------


@pytest.mark.parametrize("container", ["zstd", "gzip"])
def test_a_corrupt_middle_frame_loses_only_its_own_records(container, tmp_path):
    records = [rec(i) for i in range(500)]
    units = zstd_frames(records, 100) if container == "zstd" else gzip_members(records, 100)
    units[2] = flip(units[2], len(units[2]) // 2)
    path = tmp_path / "in.data"
    path.write_bytes(b"".join(units))
    damages = []
    got = [orjson.loads(line)["id"] for _, _, line in iter_lines([str(path)], damages.append)]
    assert got[:200] == ids(records[:200]) and got[-200:] == ids(records[300:])
    [damage] = damages
    assert damage.offset == len(units[0]) + len(units[1]) and damage.resumed
    assert damage.skipped_bytes == len(units[2]) and damage.line == len(got) - 200 + 1
    with pytest.raises(BadRecord) as err:
        list(iter_lines([str(path)]))
    assert err.value.line >= 201 and f"at byte {damage.offset}" in err.value.reason


def test_damage_that_runs_into_the_next_frame_still_finds_it(tmp_path):
    """A damaged frame whose decoder swallows the start of the next one: the search for the next
    frame starts inside the damaged frame's own bytes, so the next frame is still read."""
    records = [rec(i) for i in range(300)]
    frames = zstd_frames(records, 100)
    path = tmp_path / "in.zst"
    path.write_bytes(frames[0] + frames[1][: len(frames[1]) // 2] + frames[2])  # frame 2 cut short
    damages = []
    got = [orjson.loads(line)["id"] for _, _, line in iter_lines([str(path)], damages.append)]
    assert got[:100] == ids(records[:100]) and got[-100:] == ids(records[200:])
    assert len(damages) == 1 and damages[0].offset == len(frames[0])


# --- 6. the runner's worker pool writes its batches before the error ----------------------------


@pytest.mark.parametrize("command", ["filter", "score"])
@pytest.mark.parametrize("good_lines", [100, 10], ids=["workers started", "one batch"])
def test_worker_pool_writes_what_it_read_before_a_damaged_file(command, good_lines, tmp_path, monkeypatch):
    monkeypatch.setattr(pool, "BATCH_LINES", 40)
    make = _score_records if command == "score" else lambda n: [rec(i) for i in range(n)]
    records = make(good_lines + 200)
    good = tmp_path / "good.jsonl"
    good.write_bytes(text(records[:good_lines]))
    frames = zstd_frames(records[good_lines:], 100)
    truncated = tmp_path / "truncated.zst"
    truncated.write_bytes(frames[0] + frames[1][:-30])
    base = [command, "-i", str(good), "-i", str(truncated), "--plain", "--workers", "2"]
    result = invoke(base)
    assert result.exit_code == 65 and f"{truncated}:101: truncated zstd input" in result.stderr
    assert ids(result.records()) == ids(records[: good_lines + 100])
    result = invoke([*base, "--on-bad-record", "skip"])
    assert result.exit_code == 0 and ids(result.records()) == ids(records[: good_lines + 100])
    assert f"{truncated}:101: truncated zstd input" in result.stderr


# --- 7. format detection waits for 4 bytes ---------------------------------------------------------


def test_compressed_stdin_whose_first_write_is_short_is_still_decompressed(monkeypatch):
    records = [rec(i) for i in range(20)]
    data = zstd_frames(records, 20)[0]
    read_fd, write_fd = os.pipe()

    def writer():
        with os.fdopen(write_fd, "wb", buffering=0) as w:
            w.write(data[:2])
            time.sleep(0.2)  # the reader sees 2 bytes first
            w.write(data[2:])

    thread = threading.Thread(target=writer)
    thread.start()
    with os.fdopen(read_fd, "rb") as r:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(r))
        got = [orjson.loads(line) for _, _, line in iter_lines(["-"])]
    thread.join()
    assert got == records


@pytest.mark.parametrize("at", [0, 1, 2, 3])
def test_a_damaged_zstd_magic_is_damage_not_plain_text(at, tmp_path):
    records = [rec(i) for i in range(200)]
    frames = zstd_frames(records, 100)
    path = tmp_path / "in.zst"
    path.write_bytes(flip(frames[0], at) + frames[1])
    result = invoke(["filter", "-i", str(path), "--plain"])
    assert result.exit_code == 65 and f"{path}:1: damaged zstd input: its magic number" in result.stderr
    result = invoke(["filter", "-i", str(path), "--plain", "--on-bad-record", "skip"])
    assert result.exit_code == 0 and ids(result.records()) == ids(records[100:])  # the next frame


# --- 9. integers beyond 64 bits ---------------------------------------------------------------------

BIG = {"id": "big", "answer": 2**70, "low": -(2**63) - 1, "top": 2**64 - 1, "f": 0.1, "s": "1" * 25}


def test_integers_beyond_64_bits_are_read_and_written_exactly(tmp_path):
    line = json.dumps(BIG).encode()
    assert parse_record(line) == BIG
    assert json.loads(dumps(parse_record(line))) == BIG
    assert derive_id({**BIG, "id": None}) == derive_id({**BIG, "id": None})  # no crash, stable
    path = tmp_path / "in.jsonl"
    path.write_bytes(json.dumps({**rec(0), **BIG}).encode() + b"\n")
    result = invoke(["filter", "-i", str(path), "--plain"])
    assert result.exit_code == 0, result.stderr
    [out] = [json.loads(x) for x in result.stdout.splitlines()]  # json, not orjson: exact integers
    assert {k: out[k] for k in BIG} == BIG
    with RecordWriter(tmp_path / "out.zst") as writer:
        writer.write(BIG)
    data = zstandard.ZstdDecompressor().stream_reader(io.BytesIO((tmp_path / "out.zst").read_bytes())).read()
    assert json.loads(data) == BIG


def test_numbers_beyond_a_double_are_exact_or_a_bad_record():
    huge = 7 * 10**400  # orjson refuses it ("infinity"); it is valid JSON
    assert parse_record(b'{"n": ' + str(huge).encode() + b"}") == {"n": huge}
    with pytest.raises(InvalidRecord, match="cannot be read exactly"):
        parse_record(b'{"n": ' + b"7" * 5000 + b"}")  # beyond Python's 4300 digits
    with pytest.raises(InvalidRecord, match="cannot be read exactly"):
        parse_record(b'{"n": 1e400}')  # not silently infinity


# --- issue #11: input errors name the real line and the format -------------------------------------


def test_invalid_utf8_is_a_bad_record_naming_the_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(text([rec(0)]) + b'{"id": "x", "prompt": "caf\xe9"}\n' + text([rec(2)]))
    result = invoke(["filter", "-i", str(path), "--plain"])
    assert result.exit_code == 65 and f"{path}:2: not UTF-8: byte 0xe9" in result.stderr
    assert ids(result.records()) == ["r0"]
    rej = tmp_path / "rej.jsonl"
    result = invoke(["filter", "-i", str(path), "--plain", "--on-bad-record", "skip", "--rejects", str(rej)])
    assert result.exit_code == 0 and ids(result.records()) == ["r0", "r2"]
    assert "not UTF-8" in read_file(rej)[0]["meta"]["filter"]["reason"]


@pytest.mark.parametrize("compress", [lzma.compress, bz2.compress], ids=["xz", "bzip2"])
def test_xz_and_bzip2_inputs_are_read(compress, tmp_path):
    records = [rec(i) for i in range(30)]
    path = tmp_path / "in.data"
    path.write_bytes(compress(text(records[:10])) + compress(text(records[10:])))  # two streams
    result = invoke(["filter", "-i", str(path), "--plain"])
    assert result.exit_code == 0, result.stderr
    assert ids(result.records()) == ids(records)


def test_zstd_starting_with_a_skippable_frame_is_read(tmp_path):
    skippable = b"\x5a\x2a\x4d\x18" + (5).to_bytes(4, "little") + b"hello"
    path = tmp_path / "in.zst"
    path.write_bytes(
        skippable + zstd_frames([rec(0), rec(1)], 1)[0] + skippable + zstd_frames([rec(1)], 1)[0]
    )
    assert [orjson.loads(line)["id"] for _, _, line in iter_lines([str(path)])] == ["r0", "r1"]


def test_a_second_corrupt_zstd_frame_names_line_11_after_writing_10(tmp_path):
    records = [rec(i) for i in range(20)]
    frames = zstd_frames(records, 10)
    path = tmp_path / "in.zst"
    path.write_bytes(frames[0] + flip(frames[1], 20))
    result = invoke(["filter", "-i", str(path), "--plain"])
    assert result.exit_code == 65 and f"{path}:11: damaged zstd input" in result.stderr
    assert ids(result.records()) == ids(records[:10])


def test_an_empty_run_writes_a_valid_empty_zstd_file(tmp_path):
    out = tmp_path / "out.zst"
    result = invoke(["filter", "-o", str(out)], input=b"")
    assert result.exit_code == 0, result.stderr
    data = out.read_bytes()
    assert data.startswith(streams.ZSTD_MAGIC)
    assert zstandard.ZstdDecompressor().decompressobj().decompress(data) == b""
    if shutil.which("zstd"):
        assert subprocess.run(["zstd", "-dc", str(out)], capture_output=True).returncode == 0


# --- the reader's pieces ----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    lines=st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=30),
    tail=st.booleans(),
    container=st.sampled_from(["plain", "zstd", "gzip"]),
    read_size=st.integers(1, 64),
)
@example(lines=[b"PAR1"], tail=False, container="plain", read_size=1)  # a Parquet magic: columnar input
def test_lines_come_out_whole_whatever_the_chunk_boundaries(lines, tail, container, read_size):
    data = b"\n".join(lines) + (b"" if tail else b"\n")
    stored = {"plain": lambda d: d, "zstd": zstandard.ZstdCompressor().compress, "gzip": gzip.compress}[
        container
    ](data)
    if container == "plain" and (
        streams._detect(stored[:4])[0] is not None
        or streams._leading_junk(streams._Compressed(io.BytesIO(stored))) >= 0
        or columnar.kind_of(stored[:6]) is not None
    ):
        return  # random bytes that are (or hold near their start) a magic number (Parquet's "PAR1" too)
    expected = [(i, line.rstrip(b"\r\n")) for i, line in enumerate(io.BytesIO(data), 1) if not line.isspace()]
    fh = io.BytesIO(stored)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(streams, "READ_BUFFER", read_size)
        mp.setattr(streams, "DECODE_PIECE", max(1, read_size // 3))
        chunks = list(streams._decoded(fh))
    assert b"".join(chunks) == data
    path_lines = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(streams, "READ_BUFFER", read_size)
        mp.setattr(streams, "_Opened", lambda path: _Given(stored))
        path_lines = [(n, line) for _, n, line in iter_lines(["x"])]
    assert path_lines == expected


class _Given:
    def __init__(self, data: bytes):
        self.fh = io.BytesIO(data)

    def __enter__(self):
        return self.fh

    def __exit__(self, *exc):
        return None


def test_open_input_and_read_records_report_damage_as_bad_records(tmp_path):
    records = [rec(i) for i in range(20)]
    frames = zstd_frames(records, 10)
    path = tmp_path / "in.zst"
    path.write_bytes(frames[0] + frames[1][:-5])
    with open_input(path) as fh, pytest.raises(BadRecord, match=r":11: truncated zstd input"):
        fh.read()
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(text(records[:2]) + b"{oops\n")
    with pytest.raises(BadRecord, match=r"bad.jsonl:3: invalid JSON"):
        list(read_records([str(bad)]))


def test_skip_mode_counts_damage_in_stats(tmp_path):
    records = [rec(i) for i in range(300)]
    frames = zstd_frames(records, 100)
    path = tmp_path / "in.zst"
    path.write_bytes(frames[0] + flip(frames[1], len(frames[1]) - 2) + frames[2])  # the checksum
    stats = tmp_path / "stats.json"
    result = invoke(["filter", "-i", str(path), "--plain", "--on-bad-record", "skip", "--stats", str(stats)])
    assert result.exit_code == 0
    counters = json.loads(stats.read_text())["counters"]
    assert counters["input_damage"] == 1 and counters["input_damage_bytes_skipped"] == len(frames[1])
    kept = ids(result.records())
    assert kept[:100] == ids(records[:100]) and kept[-100:] == ids(records[200:])
    assert counters["read"] == len(kept) == counters["written"]
    assert "warning:" in result.stderr and "damaged zstd input" in result.stderr


def test_decode_records_helper_agrees_with_the_reader(tmp_path):
    """The test helper and the reader read codeplan's own output the same way."""
    out = tmp_path / "o.zst"
    with RecordWriter(out, flush_bytes=100) as writer:
        for r in [rec(i) for i in range(20)]:
            writer.write(r)
    assert decode_records(out.read_bytes()) == list(read_records([str(out)]))


# The last: random bytes holding a '{' (not UTF-8, so no JSON text), found by the property test.
@pytest.mark.parametrize("junk", [b"\n\n", b"\x00" * 7, b"\x93garbage", b"A\x9f{*\xa0N\x06 Q"])
def test_junk_before_the_compressed_data_is_skipped_not_read_as_text(junk, tmp_path):
    records = [rec(i) for i in range(100)]
    path = tmp_path / "in.zst"
    path.write_bytes(junk + b"".join(zstd_frames(records, 50)))
    result = invoke(["filter", "-i", str(path), "--plain"])
    assert result.exit_code == 65 and f"{path}:1: junk before the zstd data" in result.stderr
    result = invoke(["filter", "-i", str(path), "--plain", "--on-bad-record", "skip"])
    assert result.exit_code == 0 and ids(result.records()) == ids(records)
    # Plain JSON Lines after blank lines stay plain.
    plain = tmp_path / "in.jsonl"
    plain.write_bytes(b"\n" * 3000 + text(records))
    assert len(lines_read(plain)) == 100
