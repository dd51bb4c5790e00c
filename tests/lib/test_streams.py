import gzip
import io

import orjson
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from codeplan_tools.core.errors import BadRecord
from codeplan_tools.core.streams import RecordWriter, count_newlines, iter_lines, read_records
from tests.helpers import decode_records, write_jsonl

RECORDS = [{"id": str(i), "prompt": f"p{i}", "text": "é ✓ 数学"} for i in range(50)]


@pytest.mark.parametrize("compress", ["plain", "gzip", "zstd"])
def test_each_input_compression_is_detected(tmp_path, compress):
    path = write_jsonl(tmp_path / "in.data", RECORDS, compress)
    assert list(read_records([str(path)])) == RECORDS


def test_concatenated_zstd_shards_are_read_whole(tmp_path):
    parts = [
        zstandard.ZstdCompressor().compress(b"".join(orjson.dumps(r) + b"\n" for r in RECORDS[i::3]))
        for i in range(3)
    ]
    path = tmp_path / "all.zst"
    path.write_bytes(b"".join(parts))  # like `cat shard-*.zst`
    got = list(read_records([str(path)]))
    assert len(got) == len(RECORDS)
    assert sorted(r["id"] for r in got) == sorted(r["id"] for r in RECORDS)


def test_concatenated_gzip_members_are_read_whole(tmp_path):
    path = tmp_path / "all.gz"
    path.write_bytes(gzip.compress(b'{"a":1}\n') + gzip.compress(b'{"a":2}\n'))
    assert [r["a"] for r in read_records([str(path)])] == [1, 2]


def test_line_numbers_count_blank_lines(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'{"a":1}\n\n{"a":2}\n')
    assert [(n, ln) for _, n, ln in iter_lines([str(path)])] == [(1, b'{"a":1}'), (3, b'{"a":2}')]


def test_truncated_zstd_input_is_a_bad_record_error(tmp_path):
    data = zstandard.ZstdCompressor().compress(b"".join(orjson.dumps(r) + b"\n" for r in RECORDS))
    path = tmp_path / "cut.zst"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadRecord, match="truncated zstd"):
        list(read_records([str(path)]))


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.dictionaries(st.text(min_size=1, max_size=8), st.text(max_size=40), max_size=4), max_size=8),
    st.booleans(),
)
def test_unicode_records_round_trip(tmp_path_factory, records, plain):
    path = tmp_path_factory.mktemp("rt") / "out.data"
    with RecordWriter(path, plain=plain, flush_bytes=64) as writer:
        for r in records:
            writer.write(r)
    assert decode_records(path.read_bytes()) == records


def test_writer_emits_complete_frames_that_a_reader_can_follow(tmp_path):
    path = tmp_path / "frames.zst"
    writer = RecordWriter(path, flush_bytes=1000, flush_seconds=3600)
    for r in RECORDS:
        writer.write(r)
    # Before close: what is on disk decodes (complete frames only) to a prefix of the records.
    prefix = decode_records(path.read_bytes())
    assert 0 < len(prefix) < len(RECORDS) and prefix == RECORDS[: len(prefix)]
    writer.close()
    reader = zstandard.ZstdDecompressor().stream_reader(
        io.BytesIO(path.read_bytes()), read_across_frames=True
    )
    assert reader.read().count(b"\n") == len(RECORDS)


@given(st.binary(max_size=2000), st.integers(0, 40))
def test_count_newlines_counts_as_bytes_count(data, lines):
    """The memchr-based count (used on every decoded block) equals ``bytes.count``."""
    data = data + b"\n" * lines + data
    assert count_newlines(data) == data.count(b"\n")
