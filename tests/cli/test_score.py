"""``codeplan score`` end to end: gold feeding, reports, comparison, plot, resume, errors."""

import json

import orjson
import pytest

from tests.helpers import decode_records, invoke, read_records, write_jsonl


def _prepare(shared_data, names, limit, gold=True) -> bytes:
    args = ["tasks", "prepare", names, "--limit", str(limit), "--data-dir", str(shared_data), "--plain"]
    result = invoke(args + (["--gold-response"] if gold else []))
    assert result.exit_code == 0, result.stderr
    return result.stdout


def test_gold_responses_score_100_percent_with_reports_and_plot(shared_data, tmp_path):
    data = _prepare(shared_data, "gsm8k,math500,aqua,bbh/navigate,bbh/word_sorting,musique", 15)
    report_json, report_md, png = tmp_path / "r.json", tmp_path / "r.md", tmp_path / "r.png"
    result = invoke(
        [
            "score",
            "--plain",
            "--workers",
            "2",
            "--report",
            str(report_json),
            "--report",
            str(report_md),
            "--plot",
            str(png),
        ],
        input=data,
    )
    assert result.exit_code == 0, result.stderr
    records = result.records()
    assert len(records) == 90 and all(r["meta"]["score"]["correct"] for r in records)
    assert {r["meta"]["score"]["source"] for r in records} == {"response"}
    report = json.loads(report_json.read_text())["runs"][0]
    assert (
        report["tasks"]["math500"]["accuracy"] == 1.0 and report["tasks"]["gsm8k"]["accuracy_strict"] == 1.0
    )
    assert report["groups"]["bbh"]["n"] == 30
    assert "musique" in report_md.read_text() and "95% CI" in report_md.read_text()
    assert "math500" in result.stderr and "records_scored=90" in result.stderr
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 0


def test_samples_known_wrong_answers_and_forced_task(tmp_path):
    recs = [
        {"id": "a", "answer": "1000", "samples": [{"text": "x", "response": "The answer is 1,000 dollars."}]},
        {"id": "b", "answer": "12", "samples": [{"text": "So **13**.", "response": None}]},
        {
            "id": "c",
            "answer": "5",
            "samples": [{"response": "5"}, {"response": "5"}, {"response": "6"}, {"response": "6"}],
        },
    ]
    path = write_jsonl(tmp_path / "in.jsonl", recs)
    result = invoke(["score", "-i", str(path), "--task", "gsm8k", "--plain"])
    assert result.exit_code == 0, result.stderr
    out = {r["id"]: r["meta"]["score"] for r in result.records()}
    assert out["a"]["correct"] is True and out["a"]["samples"][0]["extracted"] == "1000"
    assert out["b"]["correct"] is False and out["b"]["samples"][0]["extracted"] == "13"  # text used
    assert out["c"]["accuracy"] == 0.5 and out["c"]["maj@k"]["4"] is False and out["c"]["pass@k"]["2"] > 0.8
    only_c = invoke(["score", "--task", "gsm8k", "--plain"], input=orjson.dumps(recs[2]) + b"\n")
    assert "pass@2" in only_c.stderr and "maj@4" in only_c.stderr


@pytest.mark.parametrize(
    "flags, exit_code, message",
    [
        ([], 65, "{path}:1: record has no 'task' field; name the task with --task NAME"),
        (["--on-bad-record", "skip", "--rejects", "{rejects}"], 0, ""),
        (
            ["--on-bad-record", "skip"],
            0,
            "{path}:1: unknown-task (record has no 'task' field; name the task with --task NAME) (skipped)",
        ),  # no --rejects
    ],
    ids=["fails", "to --rejects", "named on stderr"],
)
def test_unscorable_records_stop_the_run_unless_skipped(tmp_path, flags, exit_code, message):
    path = write_jsonl(tmp_path / "in.jsonl", [{"id": "x", "answer": "1", "response": "1"}])
    rejects = tmp_path / "rej.jsonl"
    flags = [flag.format(rejects=rejects) for flag in flags]
    result = invoke(["score", "-i", str(path), "--plain", *flags])
    assert result.exit_code == exit_code and message.format(path=path) in result.stderr, result.stderr
    assert result.records() == []
    if "--rejects" in flags:
        assert read_records(rejects)[0]["meta"]["score"]["reason"] == "unknown-task"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--report", "r.txt"], "--report r.txt: use a name ending in .json or .md"),
        (["--compare", "a.jsonl"], "--compare needs at least two runs"),
        (
            ["--compare", "-i", "a.jsonl", "a.jsonl", "a.jsonl"],
            "--compare takes the runs as arguments (RUN...), not -i",
        ),
        (
            ["a.jsonl"],
            "unexpected argument 'a.jsonl': give input files with -i, or compare runs with --compare",
        ),
        (["--compare", "a.jsonl", "missing.jsonl"], "run file not found: missing.jsonl"),
    ],
    ids=["report name", "one run", "-i with --compare", "runs without --compare", "missing run"],
)
def test_usage_errors_are_one_line_exit_2(tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "a.jsonl", [{"id": "x", "task": "gsm8k", "answer": "1", "response": "1"}])
    result = invoke(["score", *args])
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def _run_file(tmp_path, name, correct_ids, n=20):
    recs = []
    for i in range(n):
        right = i in correct_ids
        recs.append(
            {
                "id": f"q{i}",
                "task": "gsm8k" if i < n // 2 else "bbh/object_counting",
                "answer": "7",
                "samples": [{"response": "The answer is 7." if right else "The answer is 8."}],
            }
        )
    return write_jsonl(tmp_path / f"{name}.jsonl", recs)


def test_compare_two_runs_table_average_and_test(tmp_path):
    vanilla = _run_file(tmp_path, "vanilla", set(range(0, 4)) | set(range(10, 15)))
    codeplan = _run_file(tmp_path, "codeplan", set(range(0, 6)) | set(range(10, 15)))
    # One run scored beforehand, the other not: both work.
    scored = tmp_path / "codeplan.scored.jsonl"
    assert invoke(["score", "-i", str(codeplan), "-o", str(scored), "-q"]).exit_code == 0
    out_json, png = tmp_path / "cmp.json", tmp_path / "cmp.png"
    result = invoke(
        [
            "score",
            "--compare",
            f"vanilla={vanilla}",
            f"codeplan={scored}",
            "--report",
            str(out_json),
            "--plot",
            str(png),
        ]
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == b""
    cmp = json.loads(out_json.read_text())["comparison"]
    rows = {r["task"]: r for r in cmp["rows"]}
    assert rows["gsm8k"]["accuracy"] == {"vanilla": 0.4, "codeplan": 0.6}
    assert rows["gsm8k"]["rel"]["codeplan"] == pytest.approx(0.5) and rows["bbh"]["rel"]["codeplan"] == 0.0
    assert cmp["averages"]["codeplan"]["average_relative_improvement"] == pytest.approx(0.25)
    assert rows["gsm8k"]["test"]["codeplan"] == {
        "method": "mcnemar",
        "n_paired": 10,
        "b": 0,
        "c": 2,
        "p": 0.5,
    }
    assert (
        "average relative improvement of codeplan over vanilla: +25.0% across 2 benchmarks" in result.stderr
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_scores_each_record_once_and_refuses_other_settings(tmp_path):
    recs = [
        {"id": f"r{i}", "task": "gsm8k", "answer": str(i), "response": f"The answer is {i}."}
        for i in range(10)
    ]
    path = write_jsonl(tmp_path / "in.jsonl", recs)
    out = tmp_path / "scored.jsonl"
    assert invoke(["score", "-i", str(path), "-o", str(out), "-q"]).exit_code == 0
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:4]) + lines[4][:10])  # a killed run: 4 records and a torn line
    report = tmp_path / "r.json"
    result = invoke(["score", "-i", str(path), "-o", str(out), "--report", str(report)])
    assert result.exit_code == 0, result.stderr
    ids = [r["id"] for r in read_records(out)]
    assert sorted(ids) == sorted(r["id"] for r in recs) and len(ids) == 10
    assert json.loads(report.read_text())["runs"][0]["tasks"]["gsm8k"]["n"] == 10
    other = invoke(["score", "-i", str(path), "-o", str(out), "--timeout", "9"])
    assert other.exit_code == 78 and "timeout" in other.stderr


def test_zstd_output_by_default(tmp_path):
    path = write_jsonl(
        tmp_path / "in.jsonl", [{"id": "a", "task": "coin_flip", "answer": "yes", "response": "Yes."}]
    )
    result = invoke(["score", "-i", str(path), "-q"])
    assert result.exit_code == 0 and result.stdout.startswith(b"\x28\xb5\x2f\xfd")
    assert decode_records(result.stdout)[0]["meta"]["score"]["correct"] is True
    assert orjson.loads(orjson.dumps(decode_records(result.stdout)[0]))["task"] == "coin_flip"


@pytest.mark.parametrize(("flags", "compared"), [([], False), (["--gold-plan-field", "reference"], True)])
def test_gold_plan_field_names_the_reference_plan(tmp_path, flags, compared):
    plan = "total = 3 + 4\nprint(total)"
    record = {"id": "a", "answer": "7", "plan": plan, "reference": plan, "response": "The answer is 7."}
    path = write_jsonl(tmp_path / "in.jsonl", [record])
    result = invoke(["score", "-i", str(path), "--task", "gsm8k", "--plain", *flags])
    assert result.exit_code == 0, result.stderr
    score = result.records()[0]["meta"]["score"]
    assert score["plan"]["samples"][0]["follows"] is True  # measured with or without a reference
    assert score["plan"].get("record", {}).get("exact") is (True if compared else None)


# ------------------------------------------------------------------------------------- given plans


def _given_plan_inputs(tmp_path):
    from tests.lib.test_given_plan_score import counterfactual_records, plain_records

    cases = counterfactual_records()
    plain = plain_records()
    mixed = [x for pair in zip(plain, [r for r, _v in cases], strict=False) for x in pair]
    mixed += [r for r, _v in cases[len(plain) :]]
    verdicts = [v for _r, vs in cases for v in vs]
    return (
        write_jsonl(tmp_path / "plain.jsonl", plain),
        write_jsonl(tmp_path / "mixed.jsonl", mixed),
        verdicts,
    )


def test_given_plan_counters_report_and_field_name(tmp_path):
    _plain, mixed, verdicts = _given_plan_inputs(tmp_path)
    stats, report = tmp_path / "stats.json", tmp_path / "r.json"
    result = invoke(["score", "-i", str(mixed), "--plain", "--stats", str(stats), "--report", str(report)])
    assert result.exit_code == 0, result.stderr
    counters = json.loads(stats.read_text())["counters"]
    assert counters["given_plan_followed_plan"] == verdicts.count("plan")
    assert counters["given_plan_followed_prompt"] == verdicts.count("prompt")
    assert counters["given_plan_neither"] == verdicts.count("neither")
    assert counters["given_plan_same"] == verdicts.count("same")
    given = json.loads(report.read_text())["runs"][0]["given_plan"]
    assert given["n"] == len(verdicts) - verdicts.count("same")
    assert given["plan"] == verdicts.count("plan") / given["n"]
    assert "given plans" in result.stderr and "plan%" in result.stderr
    scored = [r for r in result.records() if "plan_answer" in r]
    assert scored and all("given_plan" in r["meta"]["score"] for r in scored)
    # --plan-answer-field: another field; records without it get no given_plan.
    other = invoke(["score", "-i", str(mixed), "--plain", "-q", "--plan-answer-field", "cf_answer"])
    assert other.exit_code == 0 and all("given_plan" not in r["meta"]["score"] for r in other.records())


def test_records_without_plan_answer_keep_their_bytes_and_report(tmp_path):
    plain, mixed, _verdicts = _given_plan_inputs(tmp_path)
    stats, report = tmp_path / "stats.json", tmp_path / "r.md"
    alone = invoke(["score", "-i", str(plain), "--plain", "--stats", str(stats), "--report", str(report)])
    assert alone.exit_code == 0, alone.stderr
    assert "given" not in alone.stderr and "given" not in report.read_text()
    assert not any(k.startswith("given_plan") for k in json.loads(stats.read_text())["counters"])
    beside = invoke(["score", "-i", str(mixed), "--plain", "-q"])
    plain_ids = {r["id"] for r in read_records(plain)}
    kept = [line for line in beside.stdout.splitlines() if orjson.loads(line)["id"] in plain_ids]
    assert kept == alone.stdout.splitlines()


def test_resume_with_counterfactual_records(tmp_path):
    _plain, mixed, verdicts = _given_plan_inputs(tmp_path)
    out = tmp_path / "scored.jsonl"
    assert invoke(["score", "-i", str(mixed), "-o", str(out), "-q"]).exit_code == 0
    whole = out.read_bytes()
    lines = whole.splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:3]) + lines[3][:12])  # a killed run
    report = tmp_path / "r.json"
    result = invoke(["score", "-i", str(mixed), "-o", str(out), "-q", "--report", str(report)])
    assert result.exit_code == 0, result.stderr
    assert sorted(out.read_bytes().splitlines()) == sorted(whole.splitlines())
    given = json.loads(report.read_text())["runs"][0]["given_plan"]
    assert given["n"] == len(verdicts) - verdicts.count("same")  # the whole file, not this part
    other = invoke(["score", "-i", str(mixed), "-o", str(out), "--plan-answer-field", "cf_answer"])
    assert other.exit_code == 78 and "plan_answer_field" in other.stderr


def test_compare_shows_the_given_plans_of_each_run(tmp_path):
    plain, mixed, verdicts = _given_plan_inputs(tmp_path)
    report = tmp_path / "c.json"
    result = invoke(["score", "--compare", f"base={plain}", f"cf={mixed}", "--report", str(report)])
    assert result.exit_code == 0, result.stderr
    lines = result.stderr[result.stderr.index("given plans") :].splitlines()
    assert lines[1].split()[:2] == ["cf", str(len(verdicts) - verdicts.count("same"))]
    assert not any(line.split()[:1] == ["base"] for line in lines)
    runs = json.loads(report.read_text())["runs"]
    assert "given_plan" not in runs[0] and runs[1]["given_plan"]["n"] == int(lines[1].split()[1])
