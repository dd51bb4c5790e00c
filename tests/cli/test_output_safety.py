"""Outputs that cannot eat their inputs, one writer per output, resume that never damages a file,
and the exit codes of path errors (issue #11 items 1-4), through the real command line."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import orjson
import pytest
import zstandard

from codeplan_tools.core.errors import (
    EX_CANTCREAT,
    EX_CONFIG,
    EX_IOERR,
    EX_NOINPUT,
    EX_TEMPFAIL,
    EX_USAGE,
)
from codeplan_tools.core.outputs import lock_path
from tests.helpers import invoke, read_records, write_jsonl

ZSTD = b"\x28\xb5\x2f\xfd"


def _pairs(n: int, start: int = 0) -> list[dict]:
    return [
        {"id": f"r{i}", "prompt": f"p {i}", "plan": "x = 1\nif x:\n    y = 2", "response": f"resp {i}"}
        for i in range(start, start + n)
    ]


def _gsm(n: int, start: int = 0) -> list[dict]:
    return [
        {"id": f"g{i}", "task": "gsm8k", "answer": str(i), "response": f"The answer is {i}."}
        for i in range(start, start + n)
    ]


# -- item 1: -o / --rejects naming an input ---------------------------------------------------------
@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize(
    ("flag", "target", "message"),
    [
        ("-o", "a.jsonl", "-o {tmp}/a.jsonl is the same file as input {tmp}/a.jsonl"),
        ("-o", "link.jsonl", "-o {tmp}/link.jsonl is the same file as input {tmp}/a.jsonl"),
        ("--rejects", "a.jsonl", "--rejects {tmp}/a.jsonl is the same file as input {tmp}/a.jsonl"),
    ],
)
def test_filter_refuses_an_output_that_is_its_input_and_leaves_it_intact(
    tmp_path, workers, flag, target, message
):
    data = write_jsonl(tmp_path / "a.jsonl", _pairs(1500))  # two batches: the parallel path with 2
    before = data.read_bytes()
    (tmp_path / "link.jsonl").symlink_to(data)
    result = invoke(["filter", "--workers", workers, "-i", str(data), flag, str(tmp_path / target)])
    assert result.exit_code == EX_USAGE, result.stderr
    assert message.format(tmp=tmp_path) in result.stderr and len(result.stderr.splitlines()) == 1
    assert data.read_bytes() == before


def test_pack_refuses_an_output_that_is_its_input(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "a.jsonl", _pairs(3))
    before = data.read_bytes()
    result = invoke(["pack", "-m", str(tiny_model), "-i", str(data), "-o", str(data)])
    assert result.exit_code == EX_USAGE and "is the same file as input" in result.stderr
    assert data.read_bytes() == before


@pytest.mark.parametrize("command", [["filter", "--workers", "1"], ["score"]], ids=["filter", "score"])
def test_rejects_and_output_cannot_be_one_file(tmp_path, command):
    data = write_jsonl(tmp_path / "a.jsonl", _gsm(3))
    out = tmp_path / "out.zst"
    result = invoke([*command, "-i", str(data), "-o", str(out), "--rejects", str(out)])
    assert result.exit_code == EX_USAGE, result.stderr
    assert f"--rejects {out} is the same output as -o {out}" in result.stderr
    assert not out.exists()


def test_rejects_on_stdout_beside_the_records_is_refused(tmp_path):
    data = write_jsonl(tmp_path / "a.jsonl", _gsm(3))
    result = invoke(["score", "-i", str(data), "--rejects", "-"])
    assert result.exit_code == EX_USAGE, result.stderr
    assert "--rejects - (stdout) is the same output as stdout" in result.stderr


def test_stdout_appended_to_the_input_is_refused(tmp_path):
    """``codeplan filter -i a.jsonl >> a.jsonl`` would read its own output (a real file descriptor)."""
    data = write_jsonl(tmp_path / "a.jsonl", _pairs(3))
    before = data.read_bytes()
    with open(data, "ab") as stdout:
        proc = subprocess.run(
            [sys.executable, "-m", "codeplan_cli", "filter", "-i", str(data)],
            stdout=stdout,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            timeout=120,
        )
    assert proc.returncode == EX_USAGE and b"stdout is the same file as input" in proc.stderr
    assert data.read_bytes() == before


# -- item 2: an existing file that no codeplan run wrote ----------------------------------------------
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"line one\nline two without a newline", "notes.txt:1: not a JSON record"),
        (
            b"".join(orjson.dumps(r) + b"\n" for r in _gsm(2)) + b'{"id": "torn',
            "notes.txt:1: the record has no meta.score.run_key",
        ),
    ],
    ids=["text", "records-of-no-run"],
)
def test_score_refuses_a_foreign_output_without_touching_it(tmp_path, content, message):
    data = write_jsonl(tmp_path / "in.jsonl", _gsm(3))
    target = tmp_path / "notes.txt"
    target.write_bytes(content)
    result = invoke(["score", "-i", str(data), "-o", str(target)])
    assert result.exit_code == EX_CONFIG, result.stderr
    assert message in result.stderr and "nothing was changed" in result.stderr
    assert target.read_bytes() == content


@pytest.mark.parametrize(
    "command", [["extract"], ["generate", "--format", "vanilla"]], ids=["extract", "generate"]
)
def test_extract_and_generate_refuse_a_model_file_as_output(tiny_model, tmp_path, command):
    data = write_jsonl(tmp_path / "in.jsonl", _pairs(2))
    weights = next(tiny_model.glob("*.safetensors"))
    target = shutil.copy(weights, tmp_path / "model.safetensors")
    before = open(target, "rb").read()
    args = [*command, "-m", str(tiny_model), "--engine", "hf", "-i", str(data), "-o", str(target)]
    result = invoke(args)
    assert result.exit_code == EX_CONFIG, result.stderr
    assert "model.safetensors" in result.stderr and "nothing was changed" in result.stderr
    assert open(target, "rb").read() == before


# -- item 3: one writer per output ----------------------------------------------------------------
@pytest.mark.parametrize("command", [["score"], ["filter", "--workers", "1"]], ids=["score", "filter"])
def test_a_second_run_on_a_held_output_stops_with_75_naming_the_pid(tmp_path, command):
    data = write_jsonl(tmp_path / "in.jsonl", _gsm(3))
    out = tmp_path / "out.zst"
    code = (
        "import sys; from codeplan_tools.core.outputs import OutputLock\n"
        f"OutputLock({str(out)!r}).acquire(); print('held', flush=True); sys.stdin.read()\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        result = invoke([*command, "-i", str(data), "-o", str(out)])
        assert result.exit_code == EX_TEMPFAIL, result.stderr
        assert f"out.zst is being written by pid {holder.pid}" in result.stderr
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    assert invoke(["score", "-i", str(data), "-o", str(out), "-q"]).exit_code == 0
    assert not lock_path(out).exists() and sorted(os.listdir(tmp_path)) == ["in.jsonl", "out.zst"]


# -- item 4: a resumed output keeps its encoding --------------------------------------------------
@pytest.mark.parametrize("how", ["flag", "env"])
def test_resuming_a_zstd_output_asked_for_plain_stays_zstd(tmp_path, how):
    first = write_jsonl(tmp_path / "first.jsonl", _gsm(4))
    more = write_jsonl(tmp_path / "more.jsonl", _gsm(3, start=4))
    out = tmp_path / "scored.zst"
    assert invoke(["score", "-i", str(first), "-o", str(out), "-q"]).exit_code == 0
    plain = (["--plain"], None) if how == "flag" else ([], {"CODEPLAN_PLAIN": "1"})
    result = invoke(
        ["score", "-i", str(first), "-i", str(more), "-o", str(out), "-q", *plain[0]], env=plain[1]
    )
    assert result.exit_code == 0, result.stderr
    assert "is zstd-compressed JSONL; resuming in that encoding" in result.stderr
    data = out.read_bytes()
    reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
    ids = [orjson.loads(line)["id"] for line in reader.read().splitlines()]
    assert data.startswith(ZSTD) and sorted(ids) == sorted(f"g{i}" for i in range(7))


def test_resuming_a_plain_output_stays_plain(tmp_path):
    first = write_jsonl(tmp_path / "first.jsonl", _gsm(2))
    more = write_jsonl(tmp_path / "more.jsonl", _gsm(2, start=2))
    out = tmp_path / "scored.out"  # no .jsonl: zstd unless --plain
    assert invoke(["score", "-i", str(first), "-o", str(out), "-q", "--plain"]).exit_code == 0
    result = invoke(["score", "-i", str(first), "-i", str(more), "-o", str(out), "-q"])
    assert result.exit_code == 0 and "is plain JSONL; resuming in that encoding" in result.stderr
    assert [orjson.loads(line)["id"] for line in out.read_bytes().splitlines()] == ["g0", "g1", "g2", "g3"]


# -- exit codes of path errors ----------------------------------------------------------------------
@pytest.mark.parametrize("command", [["filter", "--workers", "1"], ["score"]], ids=["filter", "score"])
@pytest.mark.parametrize(("bad", "says"), [("missing.jsonl", "no such file"), (".", "is a folder")])
def test_missing_or_folder_inputs_are_66_before_any_output(tmp_path, command, bad, says):
    data = write_jsonl(tmp_path / "a.jsonl", _gsm(2))
    out = tmp_path / "out.zst"
    bad_path = tmp_path if bad == "." else tmp_path / bad
    result = invoke([*command, "-i", str(data), "-i", str(bad_path), "-o", str(out)])
    assert result.exit_code == EX_NOINPUT, result.stderr
    assert f"-i {bad_path}: {says}" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["-o", "{tmp}/file.txt/out.zst"], "file.txt is not a folder"),
        (["-o", "{tmp}/out.zst", "--stats", "{tmp}/file.txt/s.json"], "file.txt is not a folder"),
        (["-o", "{tmp}"], "is a folder"),
    ],
    ids=["output-under-a-file", "stats-under-a-file", "output-is-a-folder"],
)
def test_unwritable_outputs_are_73_before_the_run(tmp_path, flags, message):
    data = write_jsonl(tmp_path / "a.jsonl", _gsm(2))
    (tmp_path / "file.txt").write_text("x")
    result = invoke(["score", "-i", str(data), *(f.format(tmp=tmp_path) for f in flags)])
    assert result.exit_code == EX_CANTCREAT, result.stderr
    assert message in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "out.zst").exists()


@pytest.mark.parametrize(
    "flags", [["-o", "/dev/full"], ["-o", "{tmp}/out.zst", "--stats", "/dev/full"]], ids=["output", "stats"]
)
def test_a_full_disk_is_74_in_one_line(tmp_path, flags):
    data = write_jsonl(tmp_path / "a.jsonl", _gsm(2))
    result = invoke(["score", "-i", str(data), "-q", *(f.format(tmp=tmp_path) for f in flags)])
    assert result.exit_code == EX_IOERR, result.stderr
    assert "/dev/full" in result.stderr and len(result.stderr.splitlines()) == 1


def test_bad_slurm_task_id_is_a_usage_error(tmp_path):
    data = write_jsonl(tmp_path / "a.jsonl", _gsm(2))
    result = invoke(["score", "-i", str(data), "--shard", "auto"], env={"SLURM_ARRAY_TASK_ID": "3x"})
    assert result.exit_code == EX_USAGE and "SLURM_ARRAY_TASK_ID='3x'" in result.stderr


# -- rejects without a rejects file are named -------------------------------------------------------
def test_score_skip_names_each_unscorable_record_on_stderr_capped(tmp_path):
    recs = [{"id": f"u{i}", "answer": "1", "response": "1"} for i in range(25)]
    data = write_jsonl(tmp_path / "a.jsonl", recs)
    result = invoke(["score", "-i", str(data), "--on-bad-record", "skip", "-q"])
    assert result.exit_code == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 21 and "use --rejects FILE" in warnings[-1]
    # Each names its record: by file:line where the reader passes it on, else by id.
    assert all(re.search(r"(record 'u\d+'|:\d+): unknown-task", w) for w in warnings[:20]), warnings
    # With a rejects file they go there instead, silently.
    rejects = tmp_path / "rej.jsonl"
    result = invoke(["score", "-i", str(data), "--on-bad-record", "skip", "-q", "--rejects", str(rejects)])
    assert result.exit_code == 0 and "warning" not in result.stderr and len(read_records(rejects)) == 25
