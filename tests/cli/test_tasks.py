"""``codeplan tasks list`` and ``codeplan tasks prepare``."""

import json

import pytest

from tests.helpers import invoke


def test_list_shows_benchmarks_and_groups():
    result = invoke(["tasks", "list"])
    assert result.exit_code == 0
    text = result.stdout.decode()
    for name in ("gsm8k", "math500", "bbh/navigate", "ifeval", "musique", "2wikimultihopqa", "bamboogle"):
        assert name in text
    rows = [
        json.loads(line) for line in invoke(["tasks", "list", "--group", "bbh", "--json"]).stdout.splitlines()
    ]
    assert len(rows) == 27 and {r["group"] for r in rows} == {"bbh"}
    assert {r["scorer"] for r in rows} == {"choice", "yesno", "exact", "numeric"}


def test_prepare_from_data_dir_env_and_default(shared_data, tmp_path, monkeypatch):
    result = invoke(
        ["tasks", "prepare", "gsm8k,coin_flip", "--limit", "5", "--data-dir", str(shared_data), "--plain"]
    )
    assert result.exit_code == 0, result.stderr
    recs = result.records()
    assert [r["task"] for r in recs] == ["gsm8k"] * 5 + ["coin_flip"] * 5
    assert recs[0]["id"] == "gsm8k-test-00000" and recs[0]["prompt"].endswith("where N is the final number.")
    assert "10 records from 2 task(s)" in result.stderr
    # $CODEPLAN_DATA, then ../shared/data relative to the current directory.
    env = invoke(
        ["tasks", "prepare", "aqua", "--limit", "2", "--plain"], env={"CODEPLAN_DATA": str(shared_data)}
    )
    assert env.exit_code == 0 and len(env.records()) == 2
    (tmp_path / "work").mkdir()
    (tmp_path / "shared").symlink_to(shared_data.parent)
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.delenv("CODEPLAN_DATA", raising=False)
    default = invoke(["tasks", "prepare", "bamboogle", "--limit", "3", "--no-instruction", "--plain"])
    assert default.exit_code == 0, default.stderr
    assert all(r["prompt"] == r["question"] for r in default.records())


def _public_gsm8k(tmp_path):
    public = tmp_path / "test.jsonl"
    public.write_text(
        json.dumps({"question": "Two plus two?", "answer": "2 + 2 = <<2+2=4>>4\n#### 4"})
        + "\n"
        + json.dumps({"question": "Big?", "answer": "#### 1,234"})
        + "\n"
    )
    return public


def test_prepare_public_file(tmp_path):
    public = _public_gsm8k(tmp_path)
    result = invoke(["tasks", "prepare", "gsm8k", "-i", str(public), "--gold-response", "--plain"])
    assert result.exit_code == 0, result.stderr
    recs = result.records()
    assert [(r["id"], r["answer"]) for r in recs] == [("gsm8k-test-00000", "4"), ("gsm8k-test-00001", "1234")]
    scored = invoke(["score", "--plain", "-q"], input=result.stdout)
    assert all(r["meta"]["score"]["correct"] for r in scored.records())


@pytest.mark.parametrize(
    "args, message",
    [
        (["nope"], "unknown task 'nope'"),
        (["gsm8k", "--data-dir", "{tmp}/none"], "--data-dir"),
        (["gsm8k,aqua", "-i", "{public}"], "-i FILE reads one task's public file: name exactly one task"),
    ],
)
def test_prepare_errors_exit_2_with_one_line(tmp_path, args, message):
    public = _public_gsm8k(tmp_path)
    args = [a.format(tmp=tmp_path, public=public) for a in args]
    result = invoke(["tasks", "prepare", *args])
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
