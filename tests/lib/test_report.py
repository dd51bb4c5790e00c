"""Report statistics against hand-computed values; comparisons, writers and the plot."""

import json
import math

import pytest

from codeplan_tools.eval.report import (
    PairedTest,
    build_report,
    compare,
    default_ks,
    format_comparison,
    format_table,
    maj_at_k,
    mcnemar_exact,
    paired_bootstrap,
    pass_at_k,
    plot_runs,
    wilson,
    write_json,
    write_markdown,
)
from codeplan_tools.stages.score import ScoreConfig, score_records


def test_wilson_interval_known_values():
    lo, hi = wilson(5, 10)
    assert lo == pytest.approx(0.2366, abs=1e-4) and hi == pytest.approx(0.7634, abs=1e-4)
    lo, hi = wilson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(0.2775, abs=1e-4)
    assert wilson(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize(
    "n,c,k,expected",
    [
        (5, 2, 1, 2 / 5),
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2)
        (5, 2, 3, 1 - 1 / 10),  # 1 - C(3,3)/C(5,3)
        (5, 2, 4, 1.0),  # fewer than k wrong samples: always a hit
        (5, 0, 3, 0.0),
        (10, 3, 5, 1 - math.comb(7, 5) / math.comb(10, 5)),
    ],
)
def test_pass_at_k_matches_the_unbiased_estimator(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_rejects_k_above_n():
    with pytest.raises(ValueError):
        pass_at_k(2, 1, 3)


def test_maj_at_k_ties_are_not_majorities():
    assert maj_at_k(["5", "5", "6"], [True, True, False]) == ("5", True)
    assert maj_at_k(["5", "6"], [True, False]) == (None, False)  # 1-1 tie
    assert maj_at_k(["5", "5", "6", "6", "7"], [True, True, False, False, False]) == (None, False)
    assert maj_at_k([None, None, "6"], [False, False, True]) == ("6", True)  # unextracted do not vote
    assert maj_at_k([None, None], [False, False]) == (None, False)
    assert maj_at_k(["6", "6", "5"], [False, False, True]) == ("6", False)


def test_default_ks():
    assert default_ks(1) == [1] and default_ks(4) == [1, 2, 4] and default_ks(6) == [1, 2, 4, 6]


def test_mcnemar_exact_hand_computed():
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_exact(1, 5) == pytest.approx(2 * 7 / 64)
    assert mcnemar_exact(3, 3) == 1.0 and mcnemar_exact(0, 0) == 1.0


def test_paired_bootstrap_is_deterministic_and_sensible():
    a = [0.0] * 50 + [1.0] * 50
    assert paired_bootstrap(a, a) == 1.0
    better = [1.0] * 100
    p = paired_bootstrap(a, better)
    assert p == paired_bootstrap(a, better) and p < 0.01


def _rec(task, rid, acc, n=1, group=None, subtasks=None, difficulty=None):
    s = {"task": task, "n": n, "accuracy": acc, "accuracy_strict": acc, "unextracted": 0, "timed_out": 0}
    if group:
        s["group"] = group
    if subtasks:
        s["subtasks"] = subtasks
    if difficulty:
        s["difficulty"] = difficulty
    return {"id": rid, "meta": {"score": s}}


def _run(name, accs):
    """accs: task -> list of 0/1 per record (ids r0, r1, ...)."""
    recs = []
    for task, values in accs.items():
        group = "bbh" if task.startswith("bbh/") else None
        for i, v in enumerate(values):
            sub = {"level": str(1 + i % 2)} if task == "math" else None
            recs.append(
                _rec(task, f"r{i}", v, group=group, subtasks=sub, difficulty="level" if sub else None)
            )
    return build_report(recs, name)


def test_compare_table_relative_improvement_and_test():
    a = _run(
        "vanilla", {"gsm8k": [1] * 5 + [0] * 5, "math": [1] * 4 + [0] * 6, "bbh/x": [1, 0], "bbh/y": [0, 0]}
    )
    b = _run(
        "codeplan", {"gsm8k": [1] * 6 + [0] * 4, "math": [1] * 3 + [0] * 7, "bbh/x": [1, 1], "bbh/y": [0, 0]}
    )
    cmp = compare([a, b])
    assert cmp.baseline == "vanilla" and cmp.names == ["vanilla", "codeplan"]
    rows = {r.task: r for r in cmp.rows}
    assert list(rows) == ["bbh", "gsm8k", "math"]  # the BBH tasks count once, as their group
    assert rows["gsm8k"].absolute["codeplan"] == pytest.approx(10.0)
    assert rows["gsm8k"].relative["codeplan"] == pytest.approx(0.2)
    assert rows["math"].relative["codeplan"] == pytest.approx(-0.25)
    assert rows["bbh"].relative["codeplan"] == pytest.approx(1.0)  # 1/4 -> 2/4
    avg = cmp.averages["codeplan"]
    assert avg.relative == pytest.approx((0.2 - 0.25 + 1.0) / 3)
    test = rows["gsm8k"].test["codeplan"]
    assert test == PairedTest("mcnemar", n_paired=10, p=1.0, b=0, c=1)
    assert test.to_dict() == {"method": "mcnemar", "n_paired": 10, "b": 0, "c": 1, "p": 1.0}
    by_task = compare([a, b], average_over="tasks")
    assert [r.task for r in by_task.rows] == ["bbh/x", "bbh/y", "gsm8k", "math"]
    text = format_comparison(cmp)
    assert "average relative improvement of codeplan over vanilla: +31.7% across 3 benchmarks" in text
    assert "mcnemar" in text


def test_synth_tasks_count_one_by_one_in_the_average():
    def run(name, acc):
        recs = [_rec(t, f"{t}-{i}", acc[t][i], group="synth") for t in acc for i in range(2)]
        return build_report(recs, name)

    a = run("a", {"synth/x": [1, 0], "synth/y": [1, 1]})
    b = run("b", {"synth/x": [1, 1], "synth/y": [1, 0]})
    cmp = compare([a, b])
    assert [r.task for r in cmp.rows] == ["synth/x", "synth/y"]
    assert cmp.averages["b"].relative == pytest.approx((1.0 - 0.5) / 2)
    assert "synth (all)" in format_table(a)


def test_compare_with_several_samples_uses_bootstrap_and_pairs_by_id():
    a = build_report([_rec("gsm8k", f"r{i}", 0.25, n=4) for i in range(20)], "a")
    b = build_report([_rec("gsm8k", f"r{i}", 0.75, n=4) for i in range(10, 30)], "b")
    test = compare([a, b]).rows[0].test["b"]
    assert test.method == "bootstrap" and test.n_paired == 10 and test.p < 0.05
    assert list(test.to_dict()) == ["method", "n_paired", "p"]


def test_report_rows_subtasks_groups_and_writers(tmp_path):
    a = _run("vanilla", {"gsm8k": [1, 0, 1, 1], "math": [1, 0, 0, 1], "bbh/x": [1, 1], "bbh/y": [0, 1]})
    b = _run("codeplan", {"gsm8k": [1, 1, 1, 1], "math": [1, 1, 0, 1], "bbh/x": [1, 1], "bbh/y": [1, 1]})
    d = a.to_dict()
    assert d["tasks"]["math"]["subtasks"]["level"]["1"]["n"] == 2
    assert d["tasks"]["math"]["subtasks"]["level"]["2"]["accuracy"] == 0.5
    assert d["groups"]["bbh"]["accuracy"] == 0.75
    table = format_table(a)
    assert "bbh (all)" in table and "level=1" in table
    cmp = compare([a, b])
    write_json(tmp_path / "r.json", [a, b], cmp)
    loaded = json.loads((tmp_path / "r.json").read_text())
    assert loaded["comparison"] == json.loads(json.dumps(cmp.to_dict()))
    assert list(loaded["comparison"]) == ["baseline", "runs", "average_over", "rows", "averages"]
    assert list(loaded["comparison"]["rows"][0]) == ["task", "n", "accuracy", "ci95", "abs", "rel", "test"]
    assert loaded["comparison"]["averages"]["codeplan"] == {
        "average_relative_improvement": cmp.averages["codeplan"].relative,
        "average_absolute_improvement": cmp.averages["codeplan"].absolute,
        "over": ["bbh", "gsm8k", "math"],
    }
    assert [r["name"] for r in loaded["runs"]] == ["vanilla", "codeplan"]
    write_markdown(tmp_path / "r.md", [a, b], cmp)
    md = (tmp_path / "r.md").read_text()
    assert "| gsm8k | 4 | 75.0 | 100.0 | +25.0 | +33.3% |" in md and "## vanilla" in md
    plot_runs([a, b], tmp_path / "r.png")
    png = (tmp_path / "r.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def test_meta_score_with_several_samples_has_pass_and_maj():
    def sample(text):
        return {"text": text, "plan": "", "response": text}

    records = [
        # 4 samples, 2 right: pass@1 = .5, pass@2 = 1 - C(2,2)/C(4,2) = 5/6, pass@4 = 1; vote 2-2 tie -> wrong
        {"id": "tie", "task": "gsm8k", "answer": "7", "samples": [sample(x) for x in ("7", "7", "8", "8")]},
        {"id": "maj", "task": "gsm8k", "answer": "7", "samples": [sample(x) for x in ("7", "7", "8", "9")]},
        {"id": "none", "task": "gsm8k", "answer": "7", "samples": []},
    ]
    out = {r["id"]: r["meta"]["score"] for r in score_records(records, ScoreConfig())}
    tie = out["tie"]
    assert tie["n"] == 4 and tie["n_correct"] == 2 and tie["accuracy"] == 0.5
    assert tie["pass@k"] == {"1": 0.5, "2": pytest.approx(5 / 6, abs=1e-6), "4": 1.0}
    assert tie["maj@k"] == {"1": True, "2": True, "4": False} and tie["correct"] is False
    assert tie["majority"] is None
    assert (
        out["maj"]["maj@k"]["4"] is True and out["maj"]["majority"] == "7" and out["maj"]["correct"] is True
    )
    assert out["none"]["n"] == 1 and out["none"]["correct"] is False and out["none"]["unextracted"] == 1
    report = build_report([{"id": k, "meta": {"score": v}} for k, v in out.items() if k != "none"], "r")
    s = report.to_dict()["tasks"]["gsm8k"]
    assert s["pass@k"]["2"] == pytest.approx((5 / 6 + 5 / 6) / 2, abs=1e-6)
    assert s["maj@k"]["4"] == 0.5


def test_hedged_and_invalid_columns_beside_unextracted_and_timed_out(tmp_path):
    from codeplan_tools.eval.report import score_type_error

    def rec(rid, task, hedged, invalid, unextracted):
        s = {"task": task, "group": "bbh", "n": 2, "accuracy": 0.0, "accuracy_strict": 0.0}
        s.update(unextracted=unextracted, timed_out=0, hedged=hedged, invalid=invalid)
        return {"id": rid, "meta": {"score": s}}

    run = build_report(
        [rec("a", "bbh/x", 2, 0, 0), rec("b", "bbh/x", 1, 1, 0), rec("c", "bbh/y", 0, 1, 1)], "r"
    )
    d = run.to_dict()
    assert (d["tasks"]["bbh/x"]["hedged"], d["tasks"]["bbh/x"]["invalid"]) == (3, 1)
    assert (d["groups"]["bbh"]["hedged"], d["groups"]["bbh"]["invalid"]) == (3, 2)  # summed into the group
    assert d["groups"]["bbh"]["unextracted"] == 1
    lines = format_table(run).splitlines()
    head = lines[1].split()
    assert head[head.index("unextr") + 1 : head.index("unextr") + 4] == ["hedged", "invalid", "timeout"]
    row = next(line for line in lines if line.strip().startswith("bbh/x")).split()
    assert row[-4:] == ["0", "3", "1", "0"]  # unextracted, hedged, invalid, timed out
    write_markdown(tmp_path / "r.md", [run])
    md = (tmp_path / "r.md").read_text()
    assert "| unextracted | hedged | invalid | timed out |" in md and "| 0 | 3 | 1 | 0 |" in md
    assert score_type_error({"task": "t", "hedged": "2"}) == "meta.score.hedged is a string, not an integer"
    assert score_type_error({"task": "t", "invalid": 1.5}) == "meta.score.invalid is a number, not an integer"


# ------------------------------------------------------------------------------------- plan measures


def _planned_run(name: str, wrong_every: int) -> list[dict]:
    """Scored synth arithmetic records at two difficulties carrying their gold plan; every
    ``wrong_every``-th sample's plan has a wrong start value (and its answer follows that plan)."""
    from codeplan_tools.eval.plans import plan_final_value
    from codeplan_tools.eval.scorers.numeric import number_key
    from codeplan_tools.stages.synth import make_record

    records = []
    for i in range(8):
        r = make_record("arithmetic", 2 + i % 2, seed=1, index=i)
        r["gold_plan"] = r["plan"]
        wrong = i % wrong_every == 0
        plan = r["plan"].replace("= ", "= 1000 + ", 1) if wrong else r["plan"]
        answer = number_key(plan_final_value(plan))
        r["samples"] = [{"plan": plan, "response": f"The answer is {answer}."}]
        records.append(r)
    return list(score_records(records, ScoreConfig(workers=1)))


def test_plan_table_per_task_and_difficulty_and_following_per_run(tmp_path):
    scored = _planned_run("mined", wrong_every=4)
    run = build_report(scored, "mined")
    task = run.to_dict()["tasks"]["synth/arithmetic"]
    assert task["plan"]["compared"] == 8 and task["plan"]["exact"] == 0.75
    assert task["plan"]["following"] == 1.0 and task["plan"]["following_n"] == 8
    # The wrong plans add a literal (1000) and keep the gold ones.
    assert task["plan"]["literal_recall"] == 1.0 and task["plan"]["literal_precision"] < 1.0
    by_k = task["subtasks"]["difficulty"]
    assert {k: v["plan"]["compared"] for k, v in by_k.items()} == {"2": 4, "3": 4}
    assert by_k["2"]["plan"]["exact"] == 0.5 and by_k["3"]["plan"]["exact"] == 1.0  # wrong at i = 0, 4
    assert run.to_dict()["plan"]["following"] == 1.0
    table = format_table(run)
    assert "exact%" in table and "plan-following of mined: 100.0% of 8 samples" in table
    plan_rows = table[table.index("exact%") :].splitlines()
    assert any(line.split()[:3] == ["synth/arithmetic", "8", "75.0"] for line in plan_rows)
    assert any(line.split()[:3] == ["difficulty=2", "4", "50.0"] for line in plan_rows)
    write_markdown(tmp_path / "r.md", [run])
    md = (tmp_path / "r.md").read_text()
    indent = "&nbsp;&nbsp;"  # (synth tasks are a group: rows are indented under "synth (all)")
    assert "### Plans: mined" in md and "| synth (all) | 8 | 75.0 | 75.0 |" in md
    assert (
        f"| {indent}synth/arithmetic | 8 | 75.0 |" in md and f"| {indent * 2}difficulty=3 | 4 | 100.0 |" in md
    )


def test_comparison_shows_each_runs_plan_following(tmp_path):
    gold = build_report(_planned_run("gold", wrong_every=100), "gold")
    mined = build_report(_planned_run("mined", wrong_every=2), "mined")
    # A sample whose answer does not follow its plan.
    broken = _planned_run("broken", wrong_every=100)
    broken[0]["meta"]["score"]["plan"]["samples"][0]["follows"] = False
    cmp = compare([gold, mined, build_report(broken, "broken")])
    text = format_comparison(cmp)
    assert "plan-following of gold: 100.0% of 8" in text and "plan-following of broken: 87.5% of 8" in text
    write_markdown(tmp_path / "c.md", cmp.runs, cmp)
    md = (tmp_path / "c.md").read_text()
    assert "Plan-following (the answer equals" in md and "**broken** 87.5% of 8" in md
    assert md.count("### Plans:") == 3


def test_no_plan_data_leaves_the_report_as_it_was(tmp_path):
    records = [
        {"id": str(i), "task": "gsm8k", "answer": "7", "samples": [{"plan": "", "response": "7"}]}
        for i in range(3)
    ]
    scored = list(score_records(records, ScoreConfig(workers=1)))
    assert all("plan" not in r["meta"]["score"] for r in scored)
    a, b = build_report(scored, "a"), build_report(scored, "b")
    assert '"plan"' not in json.dumps(a.to_dict())
    cmp = compare([a, b])
    for text in (format_table(a), format_comparison(cmp)):
        assert "plan-following" not in text and "exact%" not in text
    write_markdown(tmp_path / "r.md", [a, b], cmp)
    md = (tmp_path / "r.md").read_text()
    assert "Plan" not in md and "plan" not in md


@pytest.mark.parametrize(
    "plan, message",
    [
        ([], "meta.score.plan is a list, not an object"),
        ({"samples": {}}, "meta.score.plan.samples is an object, not a list"),
        ({"samples": [None, 3]}, "meta.score.plan.samples[1] is a number, not an object"),
        ({"samples": [{"follows": "yes"}]}, "meta.score.plan.samples[0].follows is a string, not a boolean"),
        (
            {"samples": [{"literal_recall": True}]},
            "meta.score.plan.samples[0].literal_recall is true/false, not a number",
        ),
    ],
)
def test_plan_fields_of_the_wrong_type_are_named(plan, message):
    from codeplan_tools.eval.report import score_type_error

    reason = score_type_error({"task": "t", "plan": plan})
    assert reason is not None and reason.startswith(message)


# ------------------------------------------------------------------------------------- given plans


def _given_plan_run(name: str) -> tuple:
    """A run of counterfactual records (tests/lib/test_given_plan_score.py) beside plain ones, and the
    expected verdicts per task and per (task, difficulty)."""
    from tests.lib.test_given_plan_score import counterfactual_records, plain_records

    cases = counterfactual_records()
    scored = list(score_records([r for r, _v in cases] + plain_records(), ScoreConfig(workers=1)))
    by_task: dict[str, list[str]] = {}
    by_k: dict[tuple[str, str], list[str]] = {}
    for record, verdicts in cases:
        by_task.setdefault(record["task"], []).extend(verdicts)
        by_k.setdefault((record["task"], str(record["difficulty"])), []).extend(verdicts)
    return build_report(scored, name), by_task, by_k


def _rates(verdicts: list[str]) -> dict:
    counted = [v for v in verdicts if v != "same"]
    n = len(counted)
    return {"n": n, **{k: counted.count(k) / n if n else None for k in ("plan", "prompt", "neither")}}


def test_given_plan_rates_per_run_task_and_difficulty(tmp_path):
    run, by_task, by_k = _given_plan_run("cf")
    d = run.to_dict()
    assert d["given_plan"] == _rates([v for vs in by_task.values() for v in vs])
    for task, verdicts in by_task.items():
        assert d["tasks"][task]["given_plan"] == _rates(verdicts)
    assert d["groups"]["synth"]["given_plan"] == d["given_plan"]  # every counterfactual is a synth task
    assert "given_plan" not in d["tasks"]["gsm8k"]  # no record of it had a plan_answer
    for (task, k), verdicts in by_k.items():
        assert d["tasks"][task]["subtasks"]["difficulty"][k]["given_plan"] == _rates(verdicts)
    write_json(tmp_path / "r.json", [run])
    assert json.loads((tmp_path / "r.json").read_text())["runs"][0]["given_plan"] == d["given_plan"]

    def row(lines, label):
        return next(line.split() for line in lines if line.split()[:1] == [label])

    text = format_table(run)
    lines = text[text.index("given plans") :].splitlines()
    assert lines[0].split() == ["given", "plans", "n", "plan%", "prompt%", "neither%", "same"]
    total = d["given_plan"]
    assert row(lines, "cf")[1:5] == [
        str(total["n"]),
        *(f"{100 * total[k]:.1f}" for k in ("plan", "prompt", "neither")),
    ]
    arithmetic = d["tasks"]["synth/arithmetic"]["given_plan"]
    assert row(lines, "synth/arithmetic")[1:3] == [str(arithmetic["n"]), f"{100 * arithmetic['plan']:.1f}"]
    assert row(lines, "synth/arithmetic")[5] == str(by_task["synth/arithmetic"].count("same"))
    assert "gsm8k" not in "\n".join(lines)
    write_markdown(tmp_path / "r.md", [run])
    md = (tmp_path / "r.md").read_text()
    assert (
        "### Given plans: cf" in md and "| run / task | counterfactual samples | follows the plan % |" in md
    )
    letters = d["tasks"]["synth/last_letter"]["given_plan"]
    assert (
        f"synth/last_letter | {letters['n']} | {100 * letters['plan']:.1f} | {100 * letters['prompt']:.1f} |"
        in md
    )


def test_comparison_shows_given_plans_of_each_run(tmp_path):
    cf = _given_plan_run("cf")[0]
    plain = build_report(_planned_run("x", 100), "plain")
    cmp = compare([plain, cf])
    text = format_comparison(cmp)
    lines = text[text.index("given plans") :].splitlines()
    labels = [line.split()[0] for line in lines[1:-1]]
    assert labels[0] == "cf" and "synth/arithmetic" in labels and "plain" not in labels
    write_markdown(tmp_path / "c.md", cmp.runs, cmp)
    md = (tmp_path / "c.md").read_text()
    comparison_part = md[: md.index("## plain")]
    assert "### Given plans\n" in comparison_part and f"| cf | {cf.to_dict()['given_plan']['n']} |" in md
    assert md.count("### Given plans: ") == 1  # the per-run section of cf only
    write_json(tmp_path / "c.json", cmp.runs, cmp)
    runs = json.loads((tmp_path / "c.json").read_text())["runs"]
    assert "given_plan" not in runs[0] and runs[1]["given_plan"] == cf.to_dict()["given_plan"]


@pytest.mark.parametrize(
    "given, message",
    [
        ([], "meta.score.given_plan is a list, not an object"),
        ({"samples": "plan"}, "meta.score.given_plan.samples is a string, not a list"),
        (
            {"samples": ["plan", "maybe"]},
            "meta.score.given_plan.samples[1] is 'maybe', not one of plan, prompt",
        ),
    ],
)
def test_given_plan_fields_of_the_wrong_type_are_named(given, message):
    from codeplan_tools.eval.report import score_type_error

    reason = score_type_error({"task": "t", "given_plan": given})
    assert reason is not None and reason.startswith(message)
