"""``codeplan show``: plain when piped, --where, --sample, --fields, and a record with every field."""

import re
import shlex
import subprocess

import pytest

from tests.helpers import CODEPLAN, invoke, write_jsonl

FULL = {
    "id": "full-1",
    "task": "gsm8k",
    "prompt": "What is [bold]2+2[/bold]?",  # brackets are text, not markup
    "plan": "def solve():\n    total = 2 + 2\n    return total",
    "response": "Two and two make four.",
    "answer": "4",
    "difficulty": 3,
    "samples": [
        {
            "text": "t",
            "plan": "x = 4",
            "response": "The answer is 4.",
            "finish_reason": "stop",
            "tokens_out": 7,
        },
        {"text": "The answer is 5.", "finish_reason": "length"},
    ],
    "meta": {
        "generate": {"model": "secret-model-name"},
        "score": {"samples": [{"correct": True, "extracted": "4"}, {"correct": False, "extracted": "5"}]},
    },
}


def _titles(out: str) -> list[str]:
    """The record ids of the rules between records."""
    return re.findall(r"^─+ (\S+)(?: · \S+)? ─+$", out, flags=re.M)


def _many(n=40):
    return [
        {
            "id": f"r{i}",
            "prompt": f"question {i}",
            "meta": {
                "filter": {"reason": "code" if i % 3 == 0 else "length"},
                "score": {"correct": i % 2 == 0},
            },
        }
        for i in range(n)
    ]


def test_record_with_every_field_piped_is_plain_text(tmp_path):
    src = write_jsonl(tmp_path / "full.jsonl.zst", [FULL], compress="zstd")
    result = invoke(["show", "-i", str(src)])
    assert result.exit_code == 0, result.stderr
    out = result.stdout.decode()
    assert "\x1b" not in out  # piped: no escape codes
    assert _titles(out) == ["full-1"] and "full-1 · gsm8k" in out
    for text in (
        "What is [bold]2+2[/bold]?",
        "def solve():\n    total = 2 + 2\n    return total",  # the plan, unwrapped and unindented
        "Two and two make four.",
        "answer:\n4",
        "sample 1/2  correct  (extracted: 4)",
        "x = 4",
        "The answer is 4.",
        "sample 2/2  wrong  (extracted: 5)",
        "The answer is 5.",
        "difficulty:\n3",
        "meta: generate, score (folded",
    ):
        assert text in out, text
    assert "secret-model-name" not in out  # meta is folded
    order = [out.index(x) for x in ("prompt:", "plan:", "response:", "answer:", "sample 1/2", "meta:")]
    assert order == sorted(order)


def test_fields_limit_and_order_and_unfold_meta(tmp_path):
    src = write_jsonl(tmp_path / "full.jsonl", [FULL])
    result = invoke(["show", "-i", str(src), "--fields", "answer,meta.generate,prompt"])
    assert result.exit_code == 0, result.stderr
    out = result.stdout.decode()
    assert "Two and two" not in out and "sample 1/2" not in out
    assert out.index("answer:") < out.index("meta.generate:") < out.index("prompt:")
    assert "secret-model-name" in out


@pytest.mark.parametrize(
    ("wheres", "expected"),
    [
        (["meta.filter.reason=code"], range(0, 40, 3)),
        (["meta.filter.reason=code", "meta.score.correct=false"], range(3, 40, 6)),  # a JSON value
        (["meta.nothing.here=x"], range(0)),
    ],
    ids=["dotted-path", "all-of-two", "absent-path"],
)
def test_where_dotted_paths_and_json_values(tmp_path, wheres, expected):
    src = write_jsonl(tmp_path / "many.jsonl.gz", _many(), compress="gzip")
    result = invoke(["show", "-i", str(src), *(arg for where in wheres for arg in ("--where", where))])
    assert result.exit_code == 0, result.stderr
    assert _titles(result.stdout.decode()) == [f"r{i}" for i in expected]


def test_a_where_without_equals_sign_is_a_usage_error(tmp_path):
    src = write_jsonl(tmp_path / "many.jsonl", _many())
    bad = invoke(["show", "-i", str(src), "--where", "no-equals-sign"])
    assert bad.exit_code == 2
    assert (
        bad.stderr
        == "codeplan show: error: --where 'no-equals-sign': give FIELD=VALUE, e.g. meta.filter.reason=code\n"
    )


def test_sample_is_seeded_and_in_input_order(tmp_path):
    src = str(write_jsonl(tmp_path / "many.jsonl", _many()))
    picks = {}
    for seed in range(4):
        out = invoke(["show", "-i", src, "--sample", "5", "--seed", str(seed)]).stdout.decode()
        ids = _titles(out)
        assert len(ids) == 5 and len(set(ids)) == 5
        assert ids == sorted(ids, key=lambda x: int(x[1:]))  # shown in input order
        assert ids == _titles(
            invoke(["show", "-i", src, "--sample", "5", "--seed", str(seed)]).stdout.decode()
        )
        picks[seed] = tuple(ids)
    assert len(set(picks.values())) > 1  # the seed changes the pick
    matching = _titles(
        invoke(["show", "-i", src, "--sample", "3", "--where", "meta.filter.reason=code"]).stdout.decode()
    )
    assert len(matching) == 3 and all(int(x[1:]) % 3 == 0 for x in matching)
    more = invoke(["show", "-i", src, "--sample", "100"])
    assert len(_titles(more.stdout.decode())) == 40


_NOT_JSON = "invalid JSON: invalid literal, expected 'null': line 1 column 1 (char 0)"


@pytest.mark.parametrize(
    ("flags", "status", "shown", "message"),
    [
        ([], 65, ["a"], "codeplan show: error: {src}:2: " + _NOT_JSON),
        (
            ["--on-bad-record", "skip"],
            0,
            ["a", "b"],
            "codeplan show: warning: {src}:2: bad-record: " + _NOT_JSON,
        ),
    ],
    ids=["fail", "skip"],
)
def test_bad_lines_follow_on_bad_record(tmp_path, flags, status, shown, message):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"id": "a", "prompt": "p"}\nnot json\n{"id": "b", "prompt": "q"}\n')
    result = invoke(["show", "-i", str(src), *flags])
    assert result.exit_code == status
    assert result.stderr.startswith(message.format(src=src)) and len(result.stderr.splitlines()) == 1
    assert _titles(result.stdout.decode()) == shown  # the records before the bad line are shown


def test_a_missing_input_is_66(tmp_path):
    missing = invoke(["show", "-i", str(tmp_path / "nope.jsonl")])
    assert (
        missing.exit_code == 66
        and missing.stderr == f"codeplan show: error: -i {tmp_path}/nope.jsonl: no such file\n"
    )


def test_stdin_and_prompt_field(tmp_path):
    data = b'{"id": "x", "orig_question": "the original", "question": "refined"}\n'
    out = invoke(["show", "--prompt-field", "orig_question", "--fields", "prompt"], input=data)
    assert out.exit_code == 0, out.stderr
    assert "prompt:\nthe original" in out.stdout.decode()


def test_reader_going_away_ends_quietly(tmp_path):
    """``codeplan show ... | head``: exit 0 and nothing on stderr (rich alone would exit 1)."""
    src = write_jsonl(tmp_path / "many.jsonl", [{"id": f"r{i}", "prompt": "p " * 50} for i in range(3000)])
    done = subprocess.run(
        ["bash", "-c", f"set -o pipefail; {shlex.join([*CODEPLAN, 'show', '-i', str(src)])} | head -2"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1] == "prompt:" and done.stderr == ""
