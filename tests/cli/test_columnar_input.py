"""Parquet / Arrow / datasets-folder input through the commands (-i FILE, -i DIR, stdin)."""

import subprocess

import orjson
import pytest

from tests.helpers import CODEPLAN, decode_records, invoke, read_records

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

PLAN = "def solve(x):\n    y = x + 1\n    return y"
# filter with every rule off: a pass-through that still parses, normalises and writes every record.
PASS = ["filter", "--plain", "-q"] + [
    f"--skip-{r}" for r in ("terminated", "nonempty", "length", "code", "no-leak", "dedup")
]


def webinstruct_table(n, start=0):
    return pa.Table.from_pylist(
        [
            {
                "orig_question": f"oq {i}",
                "orig_answer": f"oa {i}",
                "question": f"q {i}",
                "answer": f"a {i}",
                "source": "socratic",
                "index": i,
                "plan": PLAN,
            }
            for i in range(start, start + n)
        ]
    )


def test_filter_reads_a_webinstructsub_parquet_file_without_flags(tmp_path):
    pq.write_table(webinstruct_table(4), tmp_path / "train.parquet", row_group_size=2)
    result = invoke([*PASS, "-i", str(tmp_path / "train.parquet")])
    assert result.exit_code == 0, result.stderr
    records = decode_records(result.stdout)
    assert [(r["prompt"], r["response"], r["source"]) for r in records] == [
        (f"q {i}", f"a {i}", "socratic") for i in range(4)
    ]
    result = invoke([*PASS, "--prompt-field", "orig_question", "-i", str(tmp_path / "train.parquet")])
    assert [r["prompt"] for r in decode_records(result.stdout)] == [f"oq {i}" for i in range(4)]


def test_parquet_folder_of_shards_as_dash_i_dir(tmp_path):
    shards = tmp_path / "webinstruct" / "data"
    shards.mkdir(parents=True)
    pq.write_table(webinstruct_table(3), shards / "train-00000-of-00002.parquet")
    pq.write_table(webinstruct_table(2, start=3), shards / "train-00001-of-00002.parquet")
    out = tmp_path / "out.jsonl"
    result = invoke([*PASS, "-i", str(tmp_path / "webinstruct"), "-o", str(out)])
    assert result.exit_code == 0, result.stderr
    assert [r["index"] for r in read_records(out)] == [0, 1, 2, 3, 4]


def test_a_plain_folder_is_still_refused_with_66(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    result = invoke([*PASS, "-i", str(tmp_path)])
    assert result.exit_code == 66
    assert "no .parquet or .arrow files" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("kind", ["parquet", "arrow-stream", "arrow-file"])
def test_columnar_input_through_a_real_pipe_on_stdin(tmp_path, kind):
    table = webinstruct_table(5)
    path = tmp_path / "data"
    if kind == "parquet":
        pq.write_table(table, path, row_group_size=2)
    else:
        new = pa.ipc.new_stream if kind == "arrow-stream" else pa.ipc.new_file
        with new(path, table.schema) as writer:
            for batch in table.to_batches(max_chunksize=2):
                writer.write_batch(batch)
    # `cat FILE |`: a pipe, not seekable (the Parquet and Arrow file footers are at the end).
    cat = subprocess.Popen(["cat", str(path)], stdout=subprocess.PIPE)
    done = subprocess.run([*CODEPLAN, *PASS], stdin=cat.stdout, capture_output=True, timeout=120)
    cat.wait()
    assert done.returncode == 0, done.stderr
    assert [r["prompt"] for r in decode_records(done.stdout)] == [f"q {i}" for i in range(5)]


def test_datasets_folder_as_dash_i_dir(tmp_path):
    datasets = pytest.importorskip("datasets", reason="datasets is needed to write a save_to_disk folder")
    datasets.Dataset(webinstruct_table(3)).save_to_disk(str(tmp_path / "ds"))
    result = invoke([*PASS, "-i", str(tmp_path / "ds")])
    assert result.exit_code == 0, result.stderr
    assert [r["response"] for r in decode_records(result.stdout)] == ["a 0", "a 1", "a 2"]


def bad_row_parquet(path):
    offsets = pa.py_buffer(bytes([0, 0, 0, 0, 5, 0, 0, 0, 6, 0, 0, 0, 11, 0, 0, 0]))
    prompt = pa.Array.from_buffers(pa.string(), 3, [None, offsets, pa.py_buffer(b"hello\xffworld")])
    pq.write_table(pa.table({"prompt": prompt, "response": ["r1", "r2", "r3"], "plan": [PLAN] * 3}), path)
    return str(path)


def test_parquet_bad_row_under_fail_and_skip(tmp_path):
    path = bad_row_parquet(tmp_path / "bad.parquet")
    result = invoke([*PASS, "-i", path])
    assert result.exit_code == 65
    assert f"codeplan filter: error: {path}:row 2: column 'prompt' cannot be read" in result.stderr
    assert [r["response"] for r in decode_records(result.stdout)] == ["r1"]  # written before it
    stats = tmp_path / "stats.json"
    result = invoke([*PASS, "-i", path, "--on-bad-record", "skip", "--stats", str(stats)])
    assert result.exit_code == 0, result.stderr
    assert [r["response"] for r in decode_records(result.stdout)] == ["r1", "r3"]
    assert f"{path}:row 2: column 'prompt'" in result.stderr
    counters = orjson.loads(stats.read_bytes())
    counters = counters.get("counters", counters)
    assert counters["input_damage"] == 1 and counters["input_damage_lines_lost"] == 1


def test_a_row_missing_a_field_is_a_bad_record_rejected_with_its_row(tmp_path):
    rows = [{"prompt": f"p{i}", "response": "r", "plan": None if i == 1 else PLAN} for i in range(3)]
    path = tmp_path / "t.arrow"
    table = pa.Table.from_pylist(rows)
    with pa.ipc.new_file(path, table.schema) as writer:
        writer.write_table(table)
    needs_plan = [a for a in PASS if a != "--skip-nonempty"]
    result = invoke([*needs_plan, "-i", str(path)])
    assert result.exit_code == 65 and f"{path}:row 2: missing required field 'plan'" in result.stderr
    rejects = tmp_path / "rejects.jsonl"
    result = invoke([*needs_plan, "-i", str(path), "--on-bad-record", "skip", "--rejects", str(rejects)])
    assert result.exit_code == 0, result.stderr
    assert [r["prompt"] for r in decode_records(result.stdout)] == ["p0", "p2"]
    [rejected] = read_records(rejects)
    assert rejected["meta"]["filter"]["line"] == 2 and rejected["meta"]["filter"]["file"] == str(path)


def test_tasks_prepare_webinstructsub_from_shards_and_a_datasets_folder(tmp_path):
    shards = tmp_path / "WebInstructSub" / "data"
    shards.mkdir(parents=True)
    pq.write_table(webinstruct_table(2), shards / "train-00000-of-00002.parquet")
    pq.write_table(webinstruct_table(2, start=2), shards / "train-00001-of-00002.parquet")
    result = invoke(["tasks", "prepare", "webinstructsub", "-i", str(tmp_path / "WebInstructSub"), "--plain"])
    assert result.exit_code == 0, result.stderr
    records = decode_records(result.stdout)
    assert records[3] == {
        "id": "webinstructsub-3",
        "prompt": "q 3",
        "response": "a 3",
        "source": "socratic",
        "index": 3,
    }
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    # Without -i: the folder named like the task under --data-dir.
    (tmp_path / "data").mkdir()
    shards.rename(tmp_path / "data" / "webinstructsub")
    result = invoke(["tasks", "prepare", "webinstructsub", "--data-dir", str(tmp_path / "data"), "--plain"])
    assert result.exit_code == 0 and decode_records(result.stdout) == records
    datasets = pytest.importorskip("datasets", reason="datasets is needed to write a save_to_disk folder")
    datasets.DatasetDict({"train": datasets.Dataset(webinstruct_table(4))}).save_to_disk(str(tmp_path / "dd"))
    result = invoke(["tasks", "prepare", "webinstructsub", "-i", str(tmp_path / "dd"), "--plain"])
    assert result.exit_code == 0, result.stderr
    assert decode_records(result.stdout) == records


def test_tasks_prepare_webinstructsub_names_a_row_of_another_shape(tmp_path):
    pq.write_table(pa.table({"text": ["x"]}), tmp_path / "other.parquet")
    result = invoke(["tasks", "prepare", "webinstructsub", "-i", str(tmp_path / "other.parquet")])
    assert result.exit_code == 65
    assert f"{tmp_path / 'other.parquet'}:row 1: not a WebInstructSub row" in result.stderr
