"""Parquet and Arrow input (codeplan_tools.core.columnar through streams.iter_lines / open_input)."""

import datetime
import decimal
import subprocess
import sys
import textwrap

import orjson
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

from codeplan_tools.core.errors import BadRecord, InputMissing  # noqa: E402
from codeplan_tools.core.outputs import check_inputs  # noqa: E402
from codeplan_tools.core.records import normalize, parse_record  # noqa: E402
from codeplan_tools.core.streams import iter_lines, open_input, read_records  # noqa: E402


def webinstruct_rows(n, start=0):
    return [
        {
            "orig_question": f"original question {i}",
            "orig_answer": f"original answer {i}",
            "question": f"refined question {i}",
            "answer": f"refined answer {i}",
            "source": "socratic" if i % 2 else "mathstackexchange",
            "index": i,
        }
        for i in range(start, start + n)
    ]


def write_parquet(path, rows, row_group_size=None):
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size)
    return path


def test_parquet_file_is_read_by_magic_as_webinstructsub_records(tmp_path):
    # No .parquet suffix: the first bytes (PAR1) tell it; several row groups keep row order.
    path = write_parquet(tmp_path / "shard", webinstruct_rows(7), row_group_size=3)
    lines = list(iter_lines([str(path)]))
    assert [int(n) for _, n, _ in lines] == list(range(1, 8))
    assert str(lines[4][1]) == "row 5"  # messages say file:row N
    records = [normalize(parse_record(line)) for _, _, line in lines]
    assert [r["prompt"] for r in records] == [f"refined question {i}" for i in range(7)]
    assert [r["response"] for r in records] == [f"refined answer {i}" for i in range(7)]
    assert records[1]["source"] == "socratic" and records[1]["orig_question"] == "original question 1"


def test_prompt_field_orig_question_still_picks_the_original():
    row = webinstruct_rows(1)[0]
    record = normalize(dict(row), prompt_field="orig_question", response_field="orig_answer")
    assert record["prompt"] == "original question 0" and record["response"] == "original answer 0"
    # A benchmark row (question/answer, no orig_answer) keeps answer as the gold only.
    assert "response" not in normalize({"question": "1+1?", "answer": "2"})


def test_nested_and_non_json_types_become_json_values(tmp_path):
    table = pa.table(
        {
            "struct": pa.array([{"a": 1, "b": [1, 2]}]),
            "list": pa.array([[{"x": "y"}]]),
            "map": pa.array([[("k", 1)]], pa.map_(pa.string(), pa.int64())),
            "ts": pa.array([datetime.datetime(2024, 1, 2, 3, 4, 5)], pa.timestamp("ns")),
            "date": pa.array([datetime.date(2024, 1, 2)]),
            "dec": pa.array([decimal.Decimal("12345678901234567890.125")], pa.decimal128(38, 3)),
            "text_bytes": pa.array([b"plain text"]),
            "raw_bytes": pa.array([b"\xff\x00"]),
            "nan": pa.array([float("nan")]),
            "dur": pa.array([datetime.timedelta(seconds=90)], pa.duration("s")),
        }
    )
    pq.write_table(table, tmp_path / "t.parquet")
    [(_, _, line)] = list(iter_lines([str(tmp_path / "t.parquet")]))
    record = parse_record(line)
    assert record["struct"] == {"a": 1, "b": [1, 2]} and record["list"] == [{"x": "y"}]
    assert record["map"] == {"k": 1}
    assert record["ts"] == "2024-01-02T03:04:05" and record["date"] == "2024-01-02"
    assert b'"dec":12345678901234567890.125' in line  # exact, not a float
    assert record["text_bytes"] == "plain text" and record["raw_bytes"] == "/wA="
    assert record["nan"] is None and record["dur"] == 90.0


def test_folder_of_parquet_shards_reads_every_shard_in_name_order(tmp_path):
    data = tmp_path / "WebInstructSub" / "data"
    data.mkdir(parents=True)
    write_parquet(data / "train-00001-of-00002.parquet", webinstruct_rows(3, start=3))
    write_parquet(data / "train-00000-of-00002.parquet", webinstruct_rows(3))
    (tmp_path / "WebInstructSub" / "README.md").write_text("# card\n")
    (data / ".cache").mkdir()
    write_parquet(data / ".cache" / "stale.parquet", webinstruct_rows(1, start=99))
    folder = str(tmp_path / "WebInstructSub")
    check_inputs([folder])  # a folder of shards is an input
    records = list(read_records([folder]))
    assert [r["index"] for r in records] == list(range(6))
    names = {name for name, _, _ in iter_lines([folder])}
    assert names == {str(data / "train-00000-of-00002.parquet"), str(data / "train-00001-of-00002.parquet")}


def test_a_folder_without_columnar_files_is_refused_naming_what_to_give(tmp_path):
    (tmp_path / "a.jsonl").write_text("{}\n")
    with pytest.raises(InputMissing, match="no .parquet or .arrow files"):
        check_inputs([str(tmp_path)])


@pytest.mark.parametrize("kind", ["stream", "file"])
def test_arrow_stream_and_file_are_read_by_magic(tmp_path, kind):
    table = pa.Table.from_pylist(webinstruct_rows(5))
    path = tmp_path / ("s.arrow" if kind == "stream" else "f.feather")
    if kind == "stream":
        with pa.ipc.new_stream(path, table.schema) as writer:
            for batch in table.to_batches(max_chunksize=2):
                writer.write_batch(batch)
    else:
        with pa.ipc.new_file(path, table.schema) as writer:
            writer.write_table(table)
    assert [r["index"] for r in read_records([str(path)])] == list(range(5))


def test_open_input_gives_the_rows_as_json_lines(tmp_path):
    path = write_parquet(tmp_path / "w.parquet", webinstruct_rows(3))
    with open_input(path) as fh:
        lines = fh.read().splitlines()
    assert [orjson.loads(line)["index"] for line in lines] == [0, 1, 2]


@pytest.mark.parametrize("saved", ["dataset", "one-split-dict"])
def test_datasets_folder_saved_with_save_to_disk(tmp_path, saved):
    datasets = pytest.importorskip("datasets", reason="datasets is needed to write a save_to_disk folder")
    ds = datasets.Dataset.from_list(webinstruct_rows(4))
    if saved == "dataset":
        ds.save_to_disk(str(tmp_path / "ds"), num_shards=2)
    else:
        datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "ds"))
    check_inputs([str(tmp_path / "ds")])
    records = [normalize(r) for r in read_records([str(tmp_path / "ds")])]
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    assert records[2]["prompt"] == "refined question 2" and records[2]["response"] == "refined answer 2"


def test_a_datasets_folder_of_two_splits_asks_for_one(tmp_path):
    datasets = pytest.importorskip("datasets", reason="datasets is needed to write a save_to_disk folder")
    ds = datasets.Dataset.from_list(webinstruct_rows(4))
    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "two"))
    with pytest.raises(InputMissing, match=r"splits train, test; give one: -i .*two/train"):
        check_inputs([str(tmp_path / "two")])


def write_bad_utf8_parquet(path):
    """Three rows; row 2's prompt holds bytes that are not UTF-8 (a writer that did not check)."""
    offsets = pa.py_buffer(bytes([0, 0, 0, 0, 5, 0, 0, 0, 6, 0, 0, 0, 11, 0, 0, 0]))
    prompt = pa.Array.from_buffers(pa.string(), 3, [None, offsets, pa.py_buffer(b"hello\xffworld")])
    pq.write_table(pa.table({"prompt": prompt, "response": ["r1", "r2", "r3"]}), path)
    return path


def test_a_bad_row_fails_naming_file_and_row_or_is_skipped(tmp_path):
    path = str(write_bad_utf8_parquet(tmp_path / "bad.parquet"))
    read = []
    with pytest.raises(BadRecord) as err:
        for item in iter_lines([path]):
            read.append(item)
    assert str(err.value).startswith(f"{path}:row 2: column 'prompt' cannot be read")
    assert len(read) == 1  # the row before it was handed out first
    damages = []
    rows = [parse_record(line)["response"] for _, _, line in iter_lines([path], damages.append)]
    assert rows == ["r1", "r3"]
    [damage] = damages
    assert damage.lost_lines == 1 and damage.message().startswith(f"{path}:row 2: column 'prompt'")


def test_a_damaged_parquet_file_is_damage_not_a_crash(tmp_path):
    path = tmp_path / "cut.parquet"
    data = (write_parquet(tmp_path / "w.parquet", webinstruct_rows(50))).read_bytes()
    path.write_bytes(data[: len(data) // 2])  # footer gone
    with pytest.raises(BadRecord, match=r"cut.parquet:row 1: damaged Parquet file"):
        list(iter_lines([str(path)]))
    damages = []
    assert list(iter_lines([str(path)], damages.append)) == []
    assert len(damages) == 1 and not damages[0].resumed


MEMORY_PROBE = textwrap.dedent(
    """
    import resource, sys
    from codeplan_tools.core.streams import iter_lines
    import pyarrow.parquet  # imported before the baseline: only the reading is measured
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows = 0
    for _ in iter_lines([sys.argv[1]]):
        rows += 1
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(rows, (after - before) // 1024)
    """
)


def test_a_million_row_parquet_file_is_read_with_flat_memory(tmp_path):
    # 1,000,000 rows of ~120 bytes of JSON each (~120 MB as JSON Lines), in row groups of 64k rows.
    # Read as a whole (pyarrow.parquet.read_table(...).to_pylist()) it grows the process by ~650 MiB;
    # streamed, by one row group and batch (~60 MiB measured). The bound: 150 MiB.
    import pyarrow.compute as pc

    n = 1_000_000
    ids = pa.array(range(n), pa.int64())
    text = pc.binary_join_element_wise("question number ", pc.cast(ids, pa.string()), " " + "x" * 60, "")
    table = pa.table({"index": ids, "question": text, "source": pa.array(["socratic"] * n)})
    path = tmp_path / "big.parquet"
    pq.write_table(table, path, row_group_size=65536)
    del table, text, ids
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(path)], capture_output=True, text=True, check=True
    ).stdout.split()
    rows, grown_mib = int(out[0]), int(out[1])
    assert rows == n
    assert grown_mib < 150, f"reading grew peak RSS by {grown_mib} MiB"


def test_row_count_reads_footers_only_for_progress(tmp_path):
    from codeplan_tools.core.columnar import row_count

    write_parquet(tmp_path / "a.parquet", webinstruct_rows(7), row_group_size=3)
    table = pa.Table.from_pylist(webinstruct_rows(4))
    with pa.ipc.new_stream(tmp_path / "b.arrow", table.schema) as writer:
        writer.write_table(table)
    assert row_count(str(tmp_path / "a.parquet")) == 7
    assert row_count(str(tmp_path)) == 11  # the folder: both shards
    (tmp_path / "c.jsonl").write_text("{}\n")
    assert row_count(str(tmp_path / "c.jsonl")) is None


def test_a_slow_json_lines_pipe_is_not_waited_on_to_sniff_it():
    # The first byte of JSON ("{") cannot begin a columnar magic: the reader does not wait for more.
    import os
    import threading

    from codeplan_tools.core.streams import _sniff

    read_end, write_end = os.pipe()
    os.write(write_end, b"{")
    got = {}
    with os.fdopen(read_end, "rb", buffering=0) as fh:
        worker = threading.Thread(target=lambda: got.setdefault("head", _sniff(fh)[0]))
        worker.start()
        worker.join(5)
        os.close(write_end)
    assert got.get("head") == b"{"


def test_a_damaged_row_group_loses_its_rows_and_later_rows_keep_their_numbers(tmp_path):
    rows = [{"prompt": f"p{i}", "response": "r" * 50} for i in range(9)]
    path = write_parquet(tmp_path / "rg.parquet", rows, row_group_size=3)
    start = pq.ParquetFile(path).metadata.row_group(1).column(0).data_page_offset
    data = bytearray(path.read_bytes())
    data[start : start + 8] = b"\xff" * 8  # the second row group's first page header
    path.write_bytes(bytes(data))
    damages = []
    got = [(int(n), parse_record(line)["prompt"]) for _, n, line in iter_lines([str(path)], damages.append)]
    assert got == [(1, "p0"), (2, "p1"), (3, "p2"), (7, "p6"), (8, "p7"), (9, "p8")]
    [damage] = damages
    assert damage.lost_lines == 3 and damage.resumed and str(damage.line) == "row 4"
    assert damage.message().isprintable() and "3 rows skipped; reading goes on" in damage.message()
    with pytest.raises(BadRecord, match=r"rg.parquet:row 4: damaged Parquet row group 1 \(rows 4-6\)"):
        list(iter_lines([str(path)]))
