"""Output kind (plain, gzip, zstd) follows the output's name, also on a shell redirect (issue #16 item 2)."""

import gzip
import os
import subprocess
import sys

import orjson
import pytest

from codeplan_tools.core.outputs import OutputWriter, existing_encoding
from codeplan_tools.core.streams import ZSTD_MAGIC, RecordWriter, read_records
from tests.helpers import REPO, invoke, write_jsonl

PLAN = "def solve(items):\n    total = 0\n    for x in items:\n        total += x\n    return total"


def _records(n=3):
    return [
        {
            "id": f"r{i}",
            "prompt": f"Add up list number {i}.",
            "plan": PLAN,
            "response": f"We add the numbers of list {i} one after another and the total is the answer.",
            "meta": {"extract": {"finish_reason": "stop"}},
        }
        for i in range(n)
    ]


def _bash(script: str, cwd) -> subprocess.CompletedProcess:
    # `codeplan` as a user types it: the console script of this interpreter's environment.
    env = {
        **os.environ,
        "PATH": f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
    }
    env.pop("CODEPLAN_PLAIN", None)
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True, text=True)


def test_design_card_pipeline_redirect_names_the_kind(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", _records())
    script = (
        "set -e -o pipefail\n"
        "cat data.jsonl | codeplan filter -q > out.jsonl\n"
        "cat data.jsonl | codeplan filter -q > out.jsonl.zst\n"
        "cat data.jsonl | codeplan filter -q > out.jsonl.gz\n"
        "cat data.jsonl | codeplan filter -q | cat > x\n"
    )
    done = _bash(script, tmp_path)
    assert done.returncode == 0, done.stderr
    plain = (tmp_path / "out.jsonl").read_bytes()
    assert [orjson.loads(line)["id"] for line in plain.splitlines()] == ["r0", "r1", "r2"]
    assert (tmp_path / "out.jsonl.zst").read_bytes()[:4] == ZSTD_MAGIC
    assert gzip.decompress((tmp_path / "out.jsonl.gz").read_bytes()) == plain
    assert (tmp_path / "x").read_bytes()[:4] == ZSTD_MAGIC  # a pipe keeps the default
    for name in ("out.jsonl.zst", "out.jsonl.gz", "x"):
        assert [r["id"] for r in read_records([str(tmp_path / name)])] == ["r0", "r1", "r2"]


def test_plain_and_zstd_force_the_kind_on_a_redirect(tmp_path):
    write_jsonl(tmp_path / "data.jsonl", _records())
    script = (
        "set -e\n"
        "codeplan filter -q -i data.jsonl --zstd > forced.jsonl\n"
        "codeplan filter -q -i data.jsonl --plain > forced.zst\n"
    )
    done = _bash(script, tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "forced.jsonl").read_bytes()[:4] == ZSTD_MAGIC
    assert (tmp_path / "forced.zst").read_bytes().startswith(b'{"id":"r0"')


@pytest.mark.parametrize(
    ("name", "flags", "kind"),
    [("out.gz", [], "gzip"), ("z.jsonl", ["--zstd"], "zstd"), ("p.gz", ["--plain"], "plain")],
)
def test_dash_o_kind_follows_the_name_unless_a_flag_says(tmp_path, name, flags, kind):
    src = str(write_jsonl(tmp_path / "data.jsonl", _records()))
    result = invoke(["filter", "-q", "-i", src, "-o", str(tmp_path / name), *flags])
    assert result.exit_code == 0, result.stderr
    assert existing_encoding(str(tmp_path / name)) == kind
    assert [r["id"] for r in read_records([str(tmp_path / name)])] == ["r0", "r1", "r2"]


def test_plain_and_zstd_together_are_a_usage_error(tmp_path):
    src = str(write_jsonl(tmp_path / "data.jsonl", _records()))
    both = invoke(["filter", "-i", src, "-o", str(tmp_path / "b.jsonl"), "--plain", "--zstd"])
    assert both.exit_code == 2
    assert both.stderr == (
        "codeplan filter: error: --plain (or CODEPLAN_PLAIN=1) and --zstd ask for different outputs; "
        "give one of them\n"
    )


def test_gzip_output_is_complete_members_per_flush(tmp_path):
    path = tmp_path / "out.jsonl.gz"
    writer = RecordWriter(path, flush_bytes=1, flush_seconds=3600)
    for record in _records():
        writer.write(record)
    # Before close (a killed process): every flushed record reads back, one gzip member each.
    data = path.read_bytes()
    assert data.count(b"\x1f\x8b\x08") == 3
    assert [orjson.loads(line)["id"] for line in gzip.decompress(data).splitlines()] == ["r0", "r1", "r2"]
    writer.close()
    empty = tmp_path / "empty.gz"
    RecordWriter(empty).close()
    assert empty.stat().st_size > 0 and gzip.decompress(empty.read_bytes()) == b""


def test_resumed_gzip_file_is_appended_in_gzip(tmp_path):
    path = tmp_path / "out.jsonl.gz"
    with RecordWriter(path) as writer:
        writer.write(_records(1)[0])
    assert existing_encoding(str(path)) == "gzip"
    # --plain (or a plain name) asked for, but the file is gzip: it stays gzip.
    with OutputWriter(path, plain=True, append=True, compressed=False) as writer:
        writer.write(_records(2)[1])
    assert [r["id"] for r in read_records([str(path)])] == ["r0", "r1"]
    assert gzip.decompress(path.read_bytes()).count(b"\n") == 2


def test_score_resumes_its_own_gzip_output_after_a_torn_member(tmp_path):
    rows = [
        {"id": f"r{i}", "task": "gsm8k", "answer": str(i), "response": f"The answer is {i}."}
        for i in range(8)
    ]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows[:5]))
    out = tmp_path / "scored.jsonl.gz"
    assert invoke(["score", "-i", str(src), "-o", str(out)]).exit_code == 0
    whole = out.read_bytes()
    out.write_bytes(whole + gzip.compress(b'{"id": "torn"}\n')[:-9])  # a member cut short by a kill
    src.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    again = invoke(["score", "-i", str(src), "-o", str(out)])
    assert again.exit_code == 0, again.stderr
    ids = [r["id"] for r in read_records([str(out)])]
    assert sorted(ids) == [f"r{i}" for i in range(8)]  # each once, the torn member cut off
    assert out.read_bytes().startswith(whole) and gzip.decompress(out.read_bytes()).count(b"\n") == 8
