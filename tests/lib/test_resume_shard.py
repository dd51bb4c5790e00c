import orjson
import pytest
import zstandard

from codeplan_tools.core.errors import SettingsMismatch, UsageError
from codeplan_tools.core.resume import completed_ids, repair_and_read, run_key
from codeplan_tools.core.shard import in_shard, parse_shard
from codeplan_tools.core.streams import RecordWriter


def _stamped(i, key):
    return {"id": str(i), "meta": {"extract": {"run_key": key, "settings": {"t": 0}}}}


def test_torn_zstd_tail_is_cut_and_complete_frames_kept(tmp_path):
    key = run_key({"t": 0})
    path = tmp_path / "out.zst"
    with RecordWriter(path, flush_bytes=1) as w:
        for i in range(5):
            w.write(_stamped(i, key))
    torn = zstandard.ZstdCompressor().compress(orjson.dumps(_stamped(9, key)) + b"\n")[:-3]
    with open(path, "ab") as fh:
        fh.write(torn)
    assert [r["id"] for r in repair_and_read(path)] == ["0", "1", "2", "3", "4"]
    assert completed_ids([str(path)], "extract", key, {"t": 0}) == {"0", "1", "2", "3", "4"}


def test_torn_plain_tail_is_cut(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"id":"a"}\n{"id":"b"}\n{"id":"c"')
    assert [r["id"] for r in repair_and_read(path)] == ["a", "b"]
    assert path.read_bytes() == b'{"id":"a"}\n{"id":"b"}\n'


def test_other_settings_are_refused_with_the_difference(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(orjson.dumps(_stamped(1, run_key({"t": 0}))) + b"\n")
    with pytest.raises(SettingsMismatch, match=r"t: 0 -> 1"):
        completed_ids([str(path)], "extract", run_key({"t": 1}), {"t": 1})


def test_shards_partition_the_ids():
    ids = [f"id-{i}" for i in range(300)]
    parts = [{i for i in ids if in_shard(i, (k, 3))} for k in range(3)]
    assert set().union(*parts) == set(ids) and sum(map(len, parts)) == len(ids)
    assert all(parts)


def test_shard_auto_reads_slurm_array_variables():
    env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_COUNT": "3"}
    assert parse_shard("auto", env) == (1, 3)
    assert parse_shard("2/4") == (2, 4) and parse_shard(None) is None


@pytest.mark.parametrize(
    ("spec", "env", "message"),
    [
        ("4/4", {}, "--shard 4/4: need 0 <= I < N"),
        ("x", {}, "--shard must be I/N (e.g. 0/4) or auto, not 'x'"),
        ("1/0", {}, "--shard 1/0: need 0 <= I < N"),
        ("auto", {}, "--shard auto needs SLURM_ARRAY_TASK_ID"),
        (
            "auto",
            {"SLURM_ARRAY_TASK_ID": "3x"},
            "--shard auto: SLURM_ARRAY_TASK_ID='3x' is not a whole number",
        ),
        (
            "auto",
            {"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "3"},
            "--shard 7/3 (from SLURM_ARRAY_TASK_ID/MIN/COUNT): need 0 <= I < N",
        ),
    ],
)
def test_a_bad_shard_is_a_usage_error_naming_it(spec, env, message):
    with pytest.raises(UsageError) as error:
        parse_shard(spec, env)
    assert str(error.value).startswith(message)
