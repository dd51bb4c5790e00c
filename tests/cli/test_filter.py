import itertools
import json
import os
import pty
import signal
import subprocess
import sys
import time

import orjson
import pytest

from codeplan_tools.stages.filter import RULES
from tests.helpers import (
    CODEPLAN,
    decode_records,
    invoke,
    read_records,
    wait_until_waiting_for_input,
    write_jsonl,
)

PLAN = "def solve(items):\n    total = 0\n    for x in items:\n        total += x\n    return total"


def good(i, **kw):
    r = {
        "id": f"r{i}",
        "prompt": f"Add up list number {i}.",
        "plan": PLAN,
        "response": f"We add the numbers of list {i} one after another and the total is the answer.",
        "meta": {"extract": {"finish_reason": "stop"}},
    }
    r.update(kw)
    return r


def mixed_records():
    return [
        good(0),
        good(1),
        good(2, prompt="Add up list number 1."),  # dedup
        good(3, plan=""),  # nonempty
        good(4, meta={"extract": {"finish_reason": "length"}}),  # terminated
        good(5, plan="x = 1\n" * 120),  # length
        good(6, plan="We think.\nThen we answer.\nThat is all of it."),  # code
        good(
            7, plan='say("We add the numbers of list 7 one after another and the total is the answer.")'
        ),  # no-leak
    ]


def plan_quality_records():
    """One record each that only grounded and only consistent reject (both rules are off by default).
    A new rule adds here a record only it rejects, and names it in ``designated`` below."""
    return [
        good(8, plan="def solve():\n    total = 17 + 29\n    return total"),  # grounded
        good(
            9,
            prompt="Add 3 and 4 for list 9.",
            plan="total = 3 + 4\nprint(total)",
            response="We add 3 and 4 of list 9 one after another. The answer is 8.",
        ),  # consistent
    ]


def test_malformed_line_1042_exits_65_naming_the_line(tmp_path):
    lines = [orjson.dumps(good(i, prompt=f"p{i}")) for i in range(1041)] + [b'{"id": "broken"'] + [b"{}"]
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = invoke(["filter", "-i", str(path), "--plain"])
    assert result.exit_code == 65
    assert f"codeplan filter: error: {path}:1042: invalid JSON" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "flags, exit_code, message, kept",
    [
        ([], 65, ":2: missing required field 'plan'", 1),  # (the record before it is written)
        (["--on-bad-record", "skip"], 0, ":2: bad-record: missing required field 'plan' (skipped)", 1),
        (
            ["--skip-terminated", "--skip-nonempty", "--skip-length", "--skip-code", "--skip-no-leak"],
            0,
            "",
            2,
        ),
    ],
    ids=["fails", "skipped", "no rule reads the plan"],
)
def test_missing_plan_is_a_bad_record_unless_skipped(tmp_path, flags, exit_code, message, kept):
    path = write_jsonl(tmp_path / "in.jsonl", [good(0), {"id": "x", "prompt": "no plan"}])
    result = invoke(["filter", "-i", str(path), "--plain", *flags])
    assert result.exit_code == exit_code and message in result.stderr
    assert len(result.records()) == kept


# Every rule alone, every pair, every set with one or two left out, none and all: each pair of rules
# meets on and off (the whole power set grows 2x per rule and adds nothing a pair does not show).
SIZES = sorted({0, 1, 2, len(RULES) - 2, len(RULES) - 1, len(RULES)})


@pytest.mark.parametrize(
    "on",
    [c for n in SIZES for c in itertools.combinations(RULES, n)],
    ids=lambda c: "+".join(c) or "none",
)
def test_every_line_is_accounted_for_with_skip(tmp_path, on):
    records = mixed_records() + plan_quality_records()
    raw = b"".join(orjson.dumps(r) + b"\n" for r in records) + b"not json\n[1, 2]\n"
    path = tmp_path / "in.jsonl"
    path.write_bytes(raw)
    flags = [f"--{n}" if n in on else f"--skip-{n}" for n in RULES]
    out, rej, stats = tmp_path / "out.zst", tmp_path / "rej.zst", tmp_path / "stats.json"
    result = invoke(
        [
            "filter",
            "-i",
            str(path),
            "-o",
            str(out),
            "--rejects",
            str(rej),
            "--stats",
            str(stats),
            "--on-bad-record",
            "skip",
            *flags,
        ]
    )
    assert result.exit_code == 0, result.stderr
    counters = json.loads(stats.read_text())["counters"]
    written, rejected = read_records(out), read_records(rej)
    assert counters["read"] == len(records) + 2 == counters["written"] + counters["rejected"]
    assert (len(written), len(rejected)) == (counters["written"], counters["rejected"])
    reasons = {r["meta"]["filter"]["reason"].split(":")[0] for r in rejected}
    assert reasons <= set(on) | {"bad-record"} and "bad-record" in reasons
    kept = {r["id"] for r in written}
    assert {"r0", "r1"} <= kept
    designated = {
        "dedup": "r2",
        "nonempty": "r3",
        "terminated": "r4",
        "length": "r5",
        "code": "r6",
        "no-leak": "r7",
        "grounded": "r8",
        "consistent": "r9",
    }
    assert not {designated[n] for n in on} & kept
    assert sum(v for k, v in counters.items() if k.startswith("rejected.")) == counters["rejected"]


def test_rejects_carry_the_rule_and_annotate_keeps_all(tmp_path):
    path = write_jsonl(tmp_path / "in.jsonl", mixed_records())
    result = invoke(["filter", "-i", str(path), "--annotate"])
    out = result.records()
    assert len(out) == 8
    marks = {r["id"]: r["meta"]["filter"].get("reason", "").split(":")[0] for r in out}
    assert marks == {
        "r0": "",
        "r1": "",
        "r2": "dedup",
        "r3": "nonempty",
        "r4": "terminated",
        "r5": "length",
        "r6": "code",
        "r7": "no-leak",
    }


@pytest.mark.parametrize(
    ("flags", "rejected"),
    [
        ([], {}),  # grounded and consistent are off by default (their rules' default)
        (["--grounded", "--consistent"], {"r8": "grounded", "r9": "consistent"}),
        (["--grounded", "--grounded-min", "0"], {}),  # the setting reaches the rule
    ],
    ids=["defaults", "switched on", "grounded-min 0"],
)
def test_rule_switches_and_settings_follow_the_rules_registry(tmp_path, flags, rejected):
    from codeplan_cli.main import get_command

    switches = {p.opts[0]: p for p in get_command().commands["filter"].params if p.secondary_opts}
    for rule in RULES.values():
        switch = switches[f"--{rule.name}"]
        assert switch.secondary_opts == [f"--skip-{rule.name}"] and switch.default is rule.default
    records = [r for r in plan_quality_records() if r["id"] in ("r8", "r9")]  # (later rules add more)
    path = write_jsonl(tmp_path / "in.jsonl", records)
    rejects = tmp_path / "rejects.jsonl"
    result = invoke(["filter", "-i", str(path), "--plain", "--rejects", str(rejects), *flags])
    assert result.exit_code == 0, result.stderr
    reasons = {r["id"]: r["meta"]["filter"]["reason"].split(":")[0] for r in read_records(rejects)}
    assert reasons == rejected
    assert {r["id"] for r in result.records()} == {"r8", "r9"} - set(rejected)


@pytest.mark.parametrize(
    "flags, env, start",
    [([], None, b"\x28\xb5\x2f\xfd"), (["--plain"], None, b"{"), ([], {"CODEPLAN_PLAIN": "1"}, b"{")],
    ids=["zstd by default", "--plain", "CODEPLAN_PLAIN"],
)
def test_plain_output_by_flag_or_env_and_zstd_by_default(tmp_path, flags, env, start):
    path = write_jsonl(tmp_path / "in.jsonl", [good(0)])
    assert invoke(["filter", "-i", str(path), *flags], env=env).stdout.startswith(start)


def test_help_documents_every_option_and_bad_flags_get_one_line():
    result = invoke(["filter", "--help"])
    assert result.exit_code == 0
    from codeplan_cli.main import get_command

    command = get_command().commands["filter"]
    text = result.stdout.decode()
    for param in command.params:
        assert param.help, f"{param.name} has no help"
        assert param.opts[0] in text
    for rule in RULES.values():
        assert f"--{rule.name}" in text
    bad = invoke(["filter", "--no-such-flag"])
    assert bad.exit_code == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "--no-such-flag" in bad.stderr and "Traceback" not in bad.stderr


def _big_input(tmp_path, n=200_000):
    path = tmp_path / "big.jsonl"
    path.write_bytes(b"".join(orjson.dumps(good(i, prompt=f"question {i}")) + b"\n" for i in range(n)))
    return path


def test_head_closes_the_pipe_quietly(tmp_path):
    path = _big_input(tmp_path)
    cmd = f'{" ".join(CODEPLAN)} filter --plain -i {path} | head -1; echo "status=${{PIPESTATUS[0]}}" >&2'
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, timeout=120)
    assert proc.stdout.count(b"\n") == 1 and orjson.loads(proc.stdout)["id"] == "r0"
    assert b"Traceback" not in proc.stderr and b"status=0" in proc.stderr, proc.stderr.decode()


def test_sigterm_leaves_output_that_zstd_reads_to_the_end(tmp_path):
    out = tmp_path / "out.zst"
    proc = subprocess.Popen(
        [*CODEPLAN, "filter", "-o", str(out)], stdin=subprocess.PIPE, stderr=subprocess.PIPE
    )
    sent = 0
    deadline = time.monotonic() + 60
    while (not out.exists() or out.stat().st_size == 0) and time.monotonic() < deadline:
        proc.stdin.write(
            b"".join(orjson.dumps(good(sent + k, prompt=f"q{sent + k}")) + b"\n" for k in range(500))
        )
        proc.stdin.flush()
        sent += 500
        time.sleep(0.2)
    proc.stdin.write(orjson.dumps(good(10**9, prompt="last")) + b"\n")  # pending in the writer's buffer
    proc.stdin.flush()
    wait_until_waiting_for_input(proc)  # it has read the last line: the record is in the writer
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err.decode()
    assert b"Traceback" not in err
    zstd = subprocess.run(["zstd", "-dc", str(out)], capture_output=True)
    assert zstd.returncode == 0, zstd.stderr
    ids = [orjson.loads(line)["id"] for line in zstd.stdout.splitlines()]
    assert len(ids) == len(set(ids)) and ids[-1] == f"r{10**9}"


def test_a_terminal_with_nothing_piped_in_prints_usage():
    pid, fd = pty.fork()
    if pid == 0:  # child: stdin, stdout and stderr are the terminal
        os.execv(sys.executable, [sys.executable, "-m", "codeplan_cli", "filter"])
    output = b""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 2
    assert b"Usage: codeplan filter" in output and b"no input" in output


def test_rules_on_real_corpora(shared_data, tmp_path):
    alpaca = sorted((shared_data / "corpus_alpaca_eval_outputs").glob("*.jsonl.zst"))
    assert len(alpaca) == 3
    # The three files answer the same 805 instructions: dedup keeps exactly one of each.
    stats = tmp_path / "s.json"
    args = ["filter", "--stats", str(stats), *[a for p in alpaca for a in ("-i", str(p))]]
    only_dedup = ["--skip-terminated", "--skip-nonempty", "--skip-length", "--skip-code", "--skip-no-leak"]
    result = invoke([*args, "--prompt-field", "question", *only_dedup], input=None)
    counters = json.loads(stats.read_text())["counters"]
    assert result.exit_code == 0 and counters["written"] == 805 and counters["rejected.dedup"] == 1610
    # GSM8K worked solutions used as plans: prose, so `code` rejects; a plan equal to the response leaks.
    rows = decode_records(
        subprocess.run(
            ["zstd", "-dc", str(shared_data / "gsm8k/train.jsonl.zst")], capture_output=True, check=True
        ).stdout
    )[:200]
    path = write_jsonl(
        tmp_path / "g.jsonl", [{**r, "plan": r["solution"], "response": r["solution"]} for r in rows]
    )
    result = invoke(["filter", "-i", str(path), "--skip-code", "--min-plan-words", "1"])
    assert result.exit_code == 0 and result.records() == []
    result = invoke(["filter", "-i", str(path), "--skip-no-leak", "--stats", str(stats)])
    counters = json.loads(stats.read_text())["counters"]
    assert counters.get("rejected.code", 0) >= 190


def _many_mixed_lines(n=2600, bad_at=(), noise=True):
    """More lines than one batch, so that --workers N really starts workers; some rejects, some dups."""
    lines = []
    for i in range(n):
        if i + 1 in bad_at:
            lines.append(b'{"id": "broken"')
            continue
        kind = mixed_records()[i % 8]
        record = {**kind, "id": f"{kind['id']}-{i}", "prompt": f"{kind['prompt']} ({i % 1000})"}
        lines.append(orjson.dumps(record))
        if noise and i % 400 == 7:
            lines.append(b"not json")
    return b"\n".join(lines) + b"\n"


@pytest.mark.parametrize("extra", [[], ["--annotate"]], ids=["reject", "annotate"])
def test_workers_give_the_same_output_and_counters(tmp_path, extra):
    path = tmp_path / "in.jsonl"
    path.write_bytes(_many_mixed_lines())
    got = {}
    for workers in ("1", "2"):
        rej, stats = tmp_path / f"rej{workers}.jsonl", tmp_path / f"stats{workers}.json"
        result = invoke(
            [
                "filter",
                "-i",
                str(path),
                "--plain",
                "--rejects",
                str(rej),
                "--stats",
                str(stats),
                "--on-bad-record",
                "skip",
                "--workers",
                workers,
                *extra,
            ]
        )
        assert result.exit_code == 0, result.stderr
        report = json.loads(stats.read_text())
        report["counters"].pop("wall_seconds")
        got[workers] = (result.stdout, rej.read_bytes(), report)
    assert got["2"] == got["1"]
    counters = got["1"][2]["counters"]
    assert counters["read"] == counters["written"] + counters["rejected"] and counters["bad_records"] == 7
    assert counters.get("rejected.dedup", 0) + counters.get("failed.dedup", 0) > 0


def test_workers_stop_at_a_bad_line_with_the_same_message(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(_many_mixed_lines(bad_at=(2042,), noise=False))
    results = [invoke(["filter", "-i", str(path), "--plain", "--workers", w]) for w in ("1", "2")]
    assert [r.exit_code for r in results] == [65, 65]
    assert results[0].stderr == results[1].stderr
    assert f"codeplan filter: error: {path}:2042: invalid JSON" in results[0].stderr
    assert results[0].stdout == results[1].stdout


@pytest.mark.parametrize("workers", ["1", "2"])
def test_profile_only_with_stats_and_the_same_records_either_way(tmp_path, workers):
    """Without --stats the length/structure profile is not computed; kept records are the same."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(_many_mixed_lines(noise=False))
    base = ["filter", "-i", str(path), "--plain", "--workers", workers]
    stats = tmp_path / "stats.json"
    with_stats, without = invoke([*base, "--stats", str(stats)]), invoke(base)
    assert with_stats.exit_code == 0 and without.exit_code == 0, with_stats.stderr + without.stderr
    assert with_stats.stdout == without.stdout and with_stats.stdout
    passed = json.loads(stats.read_text())["derived"]["passed"]
    assert passed["plan_words"]["n"] == len(with_stats.records())
