"""`codeplan synth` end to end through the real app."""

from __future__ import annotations

import orjson
import pytest

from codeplan_tools.stages.synth import TASKS
from tests.helpers import invoke, read_records, write_jsonl
from tests.lib.test_synth import check


def test_all_tasks_plain_records_are_exact():
    result = invoke(["synth", "all", "--n", "4", "--k", "2-3", "--seed", "1", "--plain"])
    assert result.exit_code == 0, result.stderr
    records = result.records()
    assert len(records) == 4 * len(TASKS)
    assert {r["task"] for r in records} == {f"synth/{t}" for t in TASKS}
    assert {r["difficulty"] for r in records} == {2, 3}
    for r in records:
        check(r)
    assert f"written={4 * len(TASKS)}" in result.stderr


def test_default_output_is_zstd_and_seed_is_deterministic():
    args = ["synth", "last_letter,sort", "-n", "5", "-k", "2,4", "--seed", "9"]
    packed = invoke(args)
    assert packed.exit_code == 0 and packed.stdout.startswith(b"\x28\xb5\x2f\xfd")
    plain = invoke([*args, "--plain"])
    assert packed.records() == plain.records()
    assert invoke([*args, "--plain"]).stdout == plain.stdout
    other = invoke(["synth", "last_letter,sort", "-n", "5", "-k", "2,4", "--seed", "10", "--plain"])
    assert [r["prompt"] for r in other.records()] != [r["prompt"] for r in plain.records()]


def test_output_file_stats_and_exclude(tmp_path):
    train, stats = tmp_path / "train.jsonl.zst", tmp_path / "stats.json"
    result = invoke(
        ["synth", "coin_flip", "--n", "40", "--k", "1", "-o", str(train), "--stats", str(stats), "-q"]
    )
    assert result.exit_code == 0 and result.stderr == ""
    counters = orjson.loads(stats.read_bytes())["counters"]
    assert counters == {"written": 40, "written.coin_flip": 40}
    prompts = {r["prompt"] for r in read_records(train)}
    held = invoke(["synth", "coin_flip", "--n", "10", "--k", "1", "--exclude", str(train), "--plain", "-q"])
    assert held.exit_code == 0
    assert not {r["prompt"] for r in held.records()} & prompts
    # --exclude reads any input shape: a question/answer file works too.
    qa = write_jsonl(tmp_path / "qa.jsonl", [{"question": p, "answer": "yes"} for p in prompts])
    held2 = invoke(["synth", "coin_flip", "--n", "10", "--k", "1", "--exclude", str(qa), "--plain", "-q"])
    assert held2.stdout == held.stdout


def test_list_and_help_name_every_task():
    listed = invoke(["synth", "--list"])
    assert listed.exit_code == 0
    names = [line.split("\t")[0] for line in listed.stdout.decode().splitlines()]
    assert names == [f"synth/{t}" for t in TASKS]
    assert {"synth/add", "synth/parity", "synth/nest"} <= set(names)
    helped = invoke(["synth", "--help"])
    assert helped.exit_code == 0
    text = helped.stdout.decode()
    assert all(t in text for t in TASKS) and "--seed" in text


@pytest.mark.parametrize(
    "args, message",
    [
        (["synth", "nope"], "unknown synth task nope"),
        (["synth", "sort", "--k", "0"], "difficulty 0 out of range"),
        (["synth", "sort", "--k", "a-b"], "bad difficulty"),
        (["synth"], "name the tasks"),
        (
            ["synth", "add,last_letter", "--plan-variant", "nl"],
            "--plan-variant nl is not available for synth/last_letter; it has gold, other-problem, filler",
        ),
        (["synth", "last_letter", "--split", "novel"], "synth/last_letter has no held-out compositions"),
        (["synth", "nest", "--split", "novel", "--k", "1-3"], "--split novel needs every k >= 2"),
        (["synth", "nest", "--plan-variant", "bogus"], "Invalid value for '--plan-variant'"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, message):
    result = invoke(args)
    assert result.exit_code == 2, args
    assert result.stderr.startswith("codeplan synth: error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_synth_pipes_into_filter_and_keeps_everything():
    made = invoke(["synth", "all", "--n", "3", "--seed", "2"])
    kept = invoke(["filter", "--code-strict", "--plain", "-q"], input=made.stdout)
    assert kept.exit_code == 0, kept.stderr
    assert [r["id"] for r in kept.records()] == [r["id"] for r in made.records()]


def test_plan_variant_and_split_reach_the_records(tmp_path):
    out = tmp_path / "novel.jsonl"
    args = ["synth", "nest", "--n", "6", "--k", "3", "--split", "novel", "--plan-variant", "counterfactual"]
    result = invoke([*args, "--keep-gold-plan", "-o", str(out), "--plain", "-q"])
    assert result.exit_code == 0, result.stderr
    records = read_records(out)
    assert len(records) == 6
    for r in records:
        assert r["meta"]["synth"]["novel"] is True and r["meta"]["synth"]["plan_variant"] == "counterfactual"
        assert r["plan"] != r["gold_plan"] and r["plan_answer"] != r["answer"]
    # A task without held-out compositions refuses --split train before anything is written.
    refused = invoke(["synth", "nest,sort", "--split", "train", "-o", str(out), "-q"])
    assert refused.exit_code == 2 and read_records(out) == records
