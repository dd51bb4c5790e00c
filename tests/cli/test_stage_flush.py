"""Stages that work in batches (score's chunks, pack's window) write what they read before an error, and
name a bad record by its file and line; ``score --compare`` does the same for its run files."""

from __future__ import annotations

import orjson
import pytest
import zstandard

from tests.helpers import invoke, read_records, write_jsonl


def _scorable(n: int, prefix: str = "q") -> list[dict]:
    return [
        {
            "id": f"{prefix}{i}",
            "task": "gsm8k",
            "answer": str(i),
            "samples": [{"response": f"The answer is {i}."}],
        }
        for i in range(n)
    ]


def _truncated_zstd(path, records: list[dict]) -> None:
    """A zstd file cut in the middle of its frame (a copy that did not finish)."""
    data = zstandard.ZstdCompressor().compress(b"".join(orjson.dumps(r) + b"\n" for r in records))
    path.write_bytes(data[: len(data) // 2])


def test_score_writes_the_chunk_read_before_a_bad_line(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", _scorable(100))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "task": "gsm8k"\n')
    out = tmp_path / "out.jsonl"
    result = invoke(["score", "-i", str(good), "-i", str(bad), "-o", str(out), "-q"])
    assert result.exit_code == 65 and f"{bad}:1: invalid JSON" in result.stderr
    scored = read_records(out)
    assert [r["id"] for r in scored] == [f"q{i}" for i in range(100)]
    assert all(r["meta"]["score"]["correct"] for r in scored)


@pytest.mark.parametrize(
    ("mode", "status", "message"),
    [
        ("fail", 65, "codeplan score: error: {src}:1: truncated zstd input: the frame that starts at byte 0"),
        (
            "skip",
            0,
            "codeplan score: warning: {src}:1: truncated zstd input: the frame that starts at byte 0",
        ),
    ],
)
def test_score_keeps_the_intact_file_before_a_truncated_one(tmp_path, mode, status, message):
    good = write_jsonl(tmp_path / "good.jsonl", _scorable(100))
    truncated = tmp_path / "truncated.zst"
    _truncated_zstd(truncated, _scorable(500, "t"))
    out = tmp_path / "out.jsonl"
    args = ["score", "-i", str(good), "-i", str(truncated), "-o", str(out), "--on-bad-record", mode, "-q"]
    result = invoke(args)
    assert result.exit_code == status, result.stderr
    assert result.stderr.startswith(message.format(src=truncated)), result.stderr
    assert [r["id"] for r in read_records(out)][:100] == [f"q{i}" for i in range(100)]


def test_score_unscorable_record_exits_65_at_its_line_after_the_records_before_it(tmp_path):
    records = _scorable(10)
    records[6] = {"id": "q6", "task": ["gsm8k"], "answer": "6", "samples": ["6"]}
    records[8] = {"id": "q8", "answer": "8", "samples": {"response": "8"}}
    path = write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "out.jsonl"
    result = invoke(["score", "-i", str(path), "-o", str(out), "-q"])
    assert result.exit_code == 65
    assert result.stderr.strip() == f"codeplan score: error: {path}:7: task is a list, not a string"
    assert [r["id"] for r in read_records(out)] == [f"q{i}" for i in range(6)]
    # skip: each is named on stderr with its file and line (no --rejects), the others are scored.
    skipped = invoke(["score", "-i", str(path), "--plain", "--on-bad-record", "skip"])
    assert skipped.exit_code == 0, skipped.stderr
    assert [r["id"] for r in skipped.records()] == [f"q{i}" for i in range(10) if i not in (6, 8)]
    assert f"{path}:7: bad-record: task is a list, not a string" in skipped.stderr
    assert f"{path}:9: bad-record: samples is an object, not a list" in skipped.stderr
    assert "bad_records=2" in skipped.stderr


def test_pack_writes_the_window_read_before_a_bad_line(tiny_model, tmp_path):
    good = write_jsonl(
        tmp_path / "good.jsonl",
        [
            {"id": f"r{i}", "prompt": f"Question {i}?", "plan": "x = 1", "response": f"Answer {i}."}
            for i in range(20)
        ],
    )
    bad = tmp_path / "bad.jsonl"
    bad.write_text("not json\n")
    out = tmp_path / "packs.jsonl"
    result = invoke(["pack", "-m", str(tiny_model), "-i", str(good), "-i", str(bad), "-o", str(out), "-q"])
    assert result.exit_code == 65 and f"{bad}:1:" in result.stderr
    packed = sorted(e for pack in read_records(out) for e in pack["example_ids"])
    assert packed == sorted(f"r{i}" for i in range(20))


def test_compare_names_a_bad_line_and_the_records_it_leaves_out(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", _scorable(6))
    b = write_jsonl(tmp_path / "b.jsonl", _scorable(6))
    with b.open("a") as f:
        f.write('{"id": "broken"\n')
    result = invoke(["score", "--compare", str(a), str(b)])
    assert result.exit_code == 65 and f"{b}:7: invalid JSON" in result.stderr
    with b.open("a") as f:
        f.write('{"id": "x", "answer": "1", "samples": ["1"]}\n')  # no task: cannot be scored
        f.write(
            '{"id": "y", "task": "gsm8k", "answer": "1", "meta": {"score": {"task": "gsm8k", "n": "one"}}}\n'
        )
    skipped = invoke(["score", "--compare", str(a), str(b), "--on-bad-record", "skip"])
    assert skipped.exit_code == 0, skipped.stderr
    assert f"{b}:7: bad-record: invalid JSON" in skipped.stderr
    assert f"{b}:8: unknown-task: record has no 'task' field" in skipped.stderr
    assert f"{b}:9: bad-record: meta.score.n is a string, not an integer" in skipped.stderr


def test_compare_skip_reads_past_a_damaged_run_file(tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", _scorable(6))
    b = tmp_path / "b.zst"
    _truncated_zstd(b, _scorable(400))
    assert invoke(["score", "--compare", str(a), str(b)]).exit_code == 65
    result = invoke(["score", "--compare", str(a), str(b), "--on-bad-record", "skip"])
    assert result.exit_code == 0, result.stderr
    assert f"warning: b: {b}:" in result.stderr and "skipped bytes" in result.stderr
