"""Output safety (codeplan_tools.core.outputs), resume that never damages a file, shard and stats errors."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest
import zstandard

from codeplan_tools.core.errors import (
    CannotCreate,
    InputMissing,
    OutputBusy,
    OutputIOError,
    SettingsMismatch,
    UsageError,
)
from codeplan_tools.core.outputs import (
    OutputLock,
    OutputWriter,
    check_distinct,
    check_inputs,
    check_writable,
    lock_path,
)
from codeplan_tools.core.resume import completed_ids, run_key
from codeplan_tools.core.shard import parse_shard
from codeplan_tools.core.stats import Stats

SETTINGS = {"t": 0}
KEY = run_key(SETTINGS)


def _line(i, key=KEY) -> bytes:
    return orjson.dumps({"id": str(i), "meta": {"score": {"run_key": key, "settings": SETTINGS}}}) + b"\n"


# -- same file ------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag", ["-o", "--rejects", "--stats"])
@pytest.mark.parametrize("out", ["a.jsonl", "link.jsonl", "hard.jsonl"], ids=["name", "symlink", "hard link"])
def test_an_output_that_is_an_input_by_name_symlink_or_hard_link_is_refused(tmp_path, out, flag):
    data = tmp_path / "a.jsonl"
    data.write_bytes(b'{"id": "1"}\n')
    (tmp_path / "link.jsonl").symlink_to(data)
    os.link(data, tmp_path / "hard.jsonl")
    with pytest.raises(UsageError, match=f"{flag} .*{out} is the same file as input .*a.jsonl"):
        check_distinct([str(data)], [(flag, str(tmp_path / out))])
    check_distinct([str(data)], [("-o", str(tmp_path / "new.zst")), ("--rejects", str(tmp_path / "r.zst"))])


@pytest.mark.parametrize(
    "outputs, message",
    [
        ([("-o", "out.zst"), ("--rejects", "sub/../out.zst")], "--rejects .* is the same output as -o"),
        ([("-o", "-"), ("--rejects", "-")], r"--rejects - \(stdout\) is the same output as stdout"),
    ],
    ids=["same path before it exists", "both stdout"],
)
def test_outputs_must_differ_from_each_other_also_before_they_exist(tmp_path, outputs, message):
    outputs = [(flag, path if path == "-" else str(tmp_path / path)) for flag, path in outputs]
    with pytest.raises(UsageError, match=message):
        check_distinct([], outputs)


def test_stdin_and_stdout_redirected_from_and_to_an_input_are_refused(tmp_path):
    data = tmp_path / "a.jsonl"
    data.write_bytes(b'{"id": "1"}\n')
    with open(data, "rb") as stdin, open(data, "ab") as stdout, open(os.devnull, "wb") as null:
        with pytest.raises(UsageError, match="-o .* is the same file as stdin"):
            check_distinct(["-"], [("-o", str(data))], stdin=stdin, stdout=null)
        with pytest.raises(UsageError, match="stdout is the same file as input"):
            check_distinct([str(data)], [("-o", "-")], stdin=null, stdout=stdout)
        # /dev/null on both sides is not "the same file": only regular files are compared.
        check_distinct(["-"], [("-o", "-")], stdin=open(os.devnull, "rb"), stdout=null)


# -- inputs and writability -----------------------------------------------------------------------
@pytest.mark.parametrize(
    "inputs, message",
    [(["a.jsonl", "-", "missing.jsonl"], "missing.jsonl: no such file"), ([""], "is a folder")],
    ids=["missing", "folder"],
)
def test_inputs_must_be_existing_files(tmp_path, inputs, message):
    good = tmp_path / "a.jsonl"
    good.write_bytes(b"")
    with pytest.raises(InputMissing, match=message):
        check_inputs([path if path == "-" else str(tmp_path / path) for path in inputs])
    check_inputs([str(good), "-"])


@pytest.mark.parametrize(
    "path, flag, message",
    [("a.txt/deeper/s.json", "--stats", "--stats .*a.txt is not a folder"), ("", "-o", "-o .* is a folder")],
    ids=["under a file", "a folder"],
)
def test_unwritable_output_paths_are_refused_before_the_run(tmp_path, path, flag, message):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(CannotCreate, match=message):
        check_writable(str(tmp_path / path), flag)


@pytest.mark.parametrize(
    "path", ["new/folders/out.zst", "a.txt", "-"], ids=["new folders", "a file", "stdout"]
)
def test_writable_output_paths_pass(tmp_path, path):
    (tmp_path / "a.txt").write_text("x")
    check_writable(path if path == "-" else str(tmp_path / path), "-o")  # folders are made by the writer


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through file permissions")
def test_a_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(CannotCreate, match="is not writable"):
            check_writable(str(folder / "out.zst"), "--report")
    finally:
        folder.chmod(0o700)


# -- locks ----------------------------------------------------------------------------------------
def test_a_second_lock_on_one_output_names_the_holder_and_the_lock_file_goes_away(tmp_path):
    out = tmp_path / "out.zst"
    with OutputLock(out):
        assert lock_path(out) == tmp_path / ".out.zst.codeplan-lock"
        assert lock_path(out).read_text().strip() == str(os.getpid())
        with pytest.raises(OutputBusy, match=f"out.zst is being written by pid {os.getpid()}"):
            OutputLock(out).acquire()
        (tmp_path / "alias.zst").symlink_to(out)
        with pytest.raises(OutputBusy):
            OutputLock(tmp_path / "alias.zst").acquire()
    assert not lock_path(out).exists()
    with OutputLock(out):  # free again
        pass


def test_a_folder_output_is_locked_beside_it_and_a_stale_lock_file_is_taken_over(tmp_path):
    ckpt = tmp_path / "ckpt"
    lock_path(ckpt).write_text("999999\n")  # left by a run killed with -9: no process holds it
    with OutputLock(str(ckpt) + "/"):
        assert lock_path(ckpt) == tmp_path / ".ckpt.codeplan-lock"
        assert not ckpt.exists()  # the folder is not made by the lock
        with pytest.raises(OutputBusy):
            OutputLock(ckpt).acquire()


def test_the_lock_holds_across_processes_and_dies_with_its_process(tmp_path):
    out = tmp_path / "out.zst"
    code = (
        "import sys, time; from codeplan_tools.core.outputs import OutputLock\n"
        f"lock = OutputLock({str(out)!r}).acquire(); print('held', flush=True); sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=os.getcwd()
    )
    try:
        assert child.stdout.readline() == b"held\n"
        with pytest.raises(OutputBusy, match=f"being written by pid {child.pid}"):
            OutputLock(out).acquire()
    finally:
        child.kill()
        child.wait()
    with OutputLock(out):  # the kernel released the dead process's lock
        pass


# -- writing --------------------------------------------------------------------------------------
def test_a_write_failing_part_way_is_one_line_output_io_error():
    writer = OutputWriter("/dev/full", plain=True)
    writer.write({"id": "1"})
    with pytest.raises(OutputIOError, match="/dev/full: writing failed part-way .*No space left"):
        writer.close()


def test_stats_file_folders_are_created_and_a_failed_write_is_one_line(tmp_path):
    stats = Stats("filter", {"read": 2})
    stats.write_json(tmp_path / "new" / "s.json")
    assert Stats.from_json(tmp_path / "new" / "s.json")["read"] == 2
    with pytest.raises(OutputIOError, match="--stats /dev/full"):
        stats.write_json("/dev/full")


def test_the_writer_keeps_a_forced_encoding_whatever_the_name_or_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CODEPLAN_PLAIN", "1")
    path = tmp_path / "out.jsonl"  # the name and the environment both ask for plain
    with OutputWriter(path, plain=True, compressed=True) as writer:
        writer.write({"id": "1"})
    assert zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes()) == b'{"id":"1"}\n'
    monkeypatch.delenv("CODEPLAN_PLAIN")
    with OutputWriter(tmp_path / "out.zst", compressed=False) as writer:
        writer.write({"id": "1"})
    assert (tmp_path / "out.zst").read_bytes() == b'{"id":"1"}\n'


# -- resume never damages a file it did not write -------------------------------------------------
@pytest.mark.parametrize(
    "content",
    [
        b"my notes, no newline at the end",  # would have been cut to 0 bytes
        b'\x10\x00\x00\x00\x00\x00\x00\x00{"__metadata__":{}}\x00\x01\n\x02\x03',  # a .safetensors
        b'{"id": "q1", "question": "?"}\n{"id": "q2", "quest',  # a benchmark file, torn
        _line(1, key="other") + _line(2)[:20],  # another run's records
    ],
)
def test_a_foreign_file_is_refused_before_anything_is_cut(tmp_path, content):
    path = tmp_path / "out.jsonl"
    path.write_bytes(content)
    with pytest.raises(SettingsMismatch, match="nothing was changed|other settings"):
        completed_ids([str(path)], "score", KEY, SETTINGS)
    assert path.read_bytes() == content


def test_our_torn_tail_is_cut_even_without_a_complete_record(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_bytes(_line(1)[:-5])  # killed while writing the first line, after its run key
    assert completed_ids([str(path)], "score", KEY, SETTINGS) == set()
    assert path.read_bytes() == b""
    path.write_bytes(_line(1) + _line(2) + _line(3)[:12])
    assert completed_ids([str(path)], "score", KEY, SETTINGS) == {"1", "2"}
    assert path.read_bytes() == _line(1) + _line(2)


# -- shard ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "env, message",
    [
        ({"SLURM_ARRAY_TASK_ID": "x"}, "SLURM_ARRAY_TASK_ID='x' is not a whole number"),
        ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": ""}, "SLURM_ARRAY_TASK_COUNT=''"),
        ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_MAX": "1.5"}, "SLURM_ARRAY_TASK_MAX='1.5'"),
        ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "2"}, r"3/2 \(from SLURM"),
    ],
)
def test_bad_slurm_array_variables_are_usage_errors(env, message):
    with pytest.raises(UsageError, match=message):
        parse_shard("auto", env)


# -- rejects without a rejects file ---------------------------------------------------------------
def test_every_reject_without_a_rejects_file_is_named_by_line_or_id(tmp_path, capsys):
    from codeplan_tools.core.stage import StageIO, StreamContext

    ctx = StreamContext(StageIO("generate", output=str(tmp_path / "out.zst")), Stats("generate"))
    ctx.reject({"id": "q7"}, "engine-error: timeout")
    ctx.reject({"id": "q8"}, "no-gold", detail="no answer field")
    ctx.reject({"line": "{"}, "bad-record: invalid JSON", file="in.jsonl", line=3)
    ctx.close()
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "codeplan generate: warning: record 'q7': engine-error: timeout (skipped)",
        "codeplan generate: warning: record 'q8': no-gold (no answer field) (skipped)",
        "codeplan generate: warning: in.jsonl:3: bad-record: invalid JSON (skipped)",
    ]
    # filter's rule rejects are its selection: counted per rule, not listed.
    ctx = StreamContext(StageIO("filter", output=str(tmp_path / "kept.zst")), Stats("filter"))
    ctx.reject({"id": "q9"}, "length")
    ctx.close()
    assert capsys.readouterr().err == "" and ctx.stats["rejected.length"] == 1
