"""Plan quality wired into the stages: filter's opt-in rules ``grounded`` and ``consistent`` (reasons,
``--stats`` distributions, the same with worker processes) and score's ``meta.score.plan``
(fidelity to a reference plan, plan-following) with its counters."""

from __future__ import annotations

import orjson
import pytest

from codeplan_tools.core import pool
from codeplan_tools.core.errors import BadRecord
from codeplan_tools.core.stage import StageContext, StageIO, run_stage
from codeplan_tools.eval.plans import grounded_share
from codeplan_tools.stages.filter import RULES, FilterConfig, FilterStage, filter_records, required_fields
from codeplan_tools.stages.score import ScoreConfig, score_records
from codeplan_tools.stages.synth import make_record
from tests.lib.test_plan_quality import (
    LION_GOLD,
    LION_MINED,
    LION_PROMPT,
    LION_RESPONSE,
    ZOE_GOLD,
    ZOE_MINED,
    ZOE_PROMPT,
    ZOE_RESPONSE,
)

QUALITY = FilterConfig(enabled=("grounded", "consistent"))


def rec(plan: str, prompt: str = ZOE_PROMPT, response: str | None = ZOE_RESPONSE, **kw) -> dict:
    return {"id": kw.pop("id", "r"), "prompt": prompt, "plan": plan, "response": response, **kw}


# ------------------------------------------------------------------------------------------ filter


def test_the_rules_are_registered_but_off_by_default():
    assert {"grounded", "consistent"} <= set(RULES)
    assert not {"grounded", "consistent"} & set(FilterConfig().enabled)
    assert not RULES["grounded"].default and not RULES["consistent"].default
    for name in ("grounded", "consistent"):
        assert "Off by default" in RULES[name].help


@pytest.mark.parametrize(
    "record",
    [rec(LION_GOLD, LION_PROMPT, LION_RESPONSE), rec(ZOE_GOLD)],
    ids=["lion gold", "zoe gold"],
)
def test_gold_plans_pass_both_rules(record):
    assert RULES["grounded"].check(record, QUALITY) is None
    assert RULES["consistent"].check(record, QUALITY) is None


def test_grounded_rejects_the_issue_failure_cases_naming_what_was_not_found():
    lion = RULES["grounded"].check(rec(LION_MINED, LION_PROMPT, LION_RESPONSE), QUALITY)
    assert lion is not None and lion.startswith("grounded: 0.00 of the plan's literals")
    assert "(< 0.5; not found: 'planet')" in lion
    zoe = RULES["grounded"].check(rec(ZOE_MINED), QUALITY)
    assert zoe is not None and zoe.startswith("grounded: 0.00") and "not found: 5, 8, 10" in zoe


def test_grounded_threshold_and_plans_without_literals():
    plan = "books = 10\nbooks += 3\nbooks -= 2\nprint(books)"  # 2 of 3 numbers in the prompt
    share = grounded_share(plan, ZOE_PROMPT, ZOE_RESPONSE)
    assert share is not None and 0.5 < share < 1
    assert RULES["grounded"].check(rec(plan), QUALITY) is None
    strict = FilterConfig(grounded_min=0.9)
    reason = RULES["grounded"].check(rec(plan), strict)
    assert reason is not None and f"{share:.2f}" in reason and "(< 0.9; not found: 10)" in reason
    # No literal left to count (a share of None) passes whatever the threshold.
    assert RULES["grounded"].check(rec("result = x\nprint(result)"), FilterConfig(grounded_min=1.0)) is None


def test_grounded_names_at_most_five_literals():
    plan = "\n".join(f"v{i} = {100 + i}" for i in range(8)) + "\nprint(v0)"
    reason = RULES["grounded"].check(rec(plan), QUALITY)
    assert reason is not None and reason.endswith("and 3 more)")


def test_consistent_rejects_a_plan_whose_printed_value_disagrees():
    reason = RULES["consistent"].check(rec(ZOE_MINED), QUALITY)
    assert reason == "consistent: the plan prints '13' but the response's answer is '7'"
    assert RULES["consistent"].check(rec(ZOE_GOLD), QUALITY) is None


@pytest.mark.parametrize(
    "record",
    [
        rec(LION_MINED, LION_PROMPT, LION_RESPONSE),  # a loop: the value is not computed
        rec(ZOE_MINED, response="We count the stamps."),  # no final answer
        rec(ZOE_MINED, response=None),
        rec("It starts with ten books.", response="The answer is 7."),  # not Python
    ],
    ids=["loop", "no answer", "no response", "not python"],
)
def test_consistent_passes_what_it_cannot_decide(record):
    assert RULES["consistent"].check(record, QUALITY) is None


def test_wrong_typed_response_is_a_bad_record_not_a_rule_failure():
    ctx = StageContext("filter")
    with pytest.raises(BadRecord, match="response is a number, not a string"):
        list(filter_records([rec(ZOE_GOLD, response=7)], QUALITY, ctx))


def test_rejects_name_the_rule_and_stats_count_every_record_checked():
    records = [
        rec(ZOE_GOLD, id="gold"),
        rec(ZOE_MINED, id="mined"),
        rec(LION_MINED, LION_PROMPT, LION_RESPONSE, id="lion"),
        rec("stamps = 6\nprint(stamps + 1)", id="half"),  # grounded (6 in the prompt), prints 7
        rec("result = x\nprint(result)", id="none"),  # no literals
    ]
    ctx = StageContext("filter")
    kept = [r["id"] for r in filter_records(records, QUALITY, ctx)]
    assert kept == ["gold", "half", "none"]
    assert [(r["id"], r["meta"]["filter"]["reason"].split(":")[0]) for r in ctx.rejected] == [
        ("mined", "grounded"),
        ("lion", "grounded"),
    ]
    grounded = ctx.stats.derived["grounded"]
    # Every record is checked by grounded; consistent only sees those grounded passed (the first
    # failing rule rejects).
    assert grounded["n"] == 4 and grounded["none"] == 1
    assert grounded["bins"]["0.0-0.1"] == 2 and grounded["bins"]["0.9-1.0"] == 2
    assert grounded["mean"] == pytest.approx(0.5)
    assert ctx.stats.derived["consistent"] == {"agree": 2, "disagree": 0, "unknown": 1}
    # --annotate runs every rule on every record.
    annotated = StageContext("filter")
    list(filter_records([dict(r) for r in records], FilterConfig(QUALITY.enabled, annotate=True), annotated))
    assert annotated.stats.derived["consistent"] == {"agree": 2, "disagree": 1, "unknown": 2}


def test_default_rules_measure_nothing_new():
    ctx = StageContext("filter")
    list(filter_records([rec(ZOE_GOLD)], FilterConfig(), ctx))
    assert "grounded" not in ctx.stats.derived and "consistent" not in ctx.stats.derived
    assert not any(k.startswith(("grounded.", "consistent.")) for k in ctx.stats.counters)


def _quality_lines() -> list[bytes]:
    """Synth records, half with the plan of another record (wrong values), and a few unreadable."""
    lines = []
    for i in range(80):
        r = make_record(("arithmetic", "last_letter", "coin_flip")[i % 3], 2 + i % 3, seed=5, index=i)
        if i % 2:
            other = make_record("arithmetic" if i % 3 else "last_letter", 3, seed=6, index=i)
            r["plan"] = other["plan"]
        lines.append(orjson.dumps(r))
        if i % 17 == 3:
            lines.append(b'{"id": "broken"')
    return lines


def _run_filter(tmp_path, workers: int, config: FilterConfig):
    folder = tmp_path / f"w{workers}"
    folder.mkdir()
    source = tmp_path / "in.jsonl"  # (the same file for both runs: rejects name it)
    source.write_bytes(b"\n".join(_quality_lines()) + b"\n")
    io = StageIO(
        stage="filter",
        inputs=[str(source)],
        output=str(folder / "out.jsonl"),
        plain=True,
        rejects=str(folder / "rej.jsonl"),
        on_bad_record="skip",
        require=required_fields(config),
        progress=False,
    )
    stats = run_stage(io, FilterStage(config), workers=workers)
    stats.counters.pop("wall_seconds")
    return (folder / "out.jsonl").read_bytes(), (folder / "rej.jsonl").read_bytes(), stats


@pytest.mark.parametrize("annotate", [False, True], ids=["reject", "annotate"])
def test_worker_processes_give_the_same_records_counters_and_distributions(tmp_path, monkeypatch, annotate):
    monkeypatch.setattr(pool, "BATCH_LINES", 7)  # many batches over 2 workers
    started = []

    class Pool(pool._Pool):
        def __init__(self, n, job):
            started.append(n)
            super().__init__(n, job)

    monkeypatch.setattr(pool, "_Pool", Pool)
    config = FilterConfig(enabled=(*FilterConfig().enabled, "grounded", "consistent"), annotate=annotate)
    one, two = _run_filter(tmp_path, 1, config), _run_filter(tmp_path, 2, config)
    assert started == [2]
    assert two[:2] == one[:2]
    assert dict(two[2].counters) == dict(one[2].counters)
    assert two[2].derived == one[2].derived
    derived = one[2].derived
    assert derived["grounded"]["n"] + derived["grounded"]["none"] > 20
    assert derived["grounded"]["bins"]["0.9-1.0"] > 0 and derived["grounded"]["bins"]["0.0-0.1"] > 0
    assert derived["consistent"]["agree"] > 0
    if not annotate:
        assert one[2]["rejected.grounded"] > 0


# ------------------------------------------------------------------------------------------- score


def _scored(record: dict, config: ScoreConfig | None = None) -> dict:
    ctx = StageContext("score")
    (out,) = score_records([record], config or ScoreConfig(workers=1), ctx)
    out["_stats"] = dict(ctx.stats.counters)
    return out


def _question(**kw) -> dict:
    return {"id": "q", "task": "gsm8k", "prompt": ZOE_PROMPT, "answer": "7", **kw}


def test_plan_following_per_sample_and_per_record():
    samples = [
        {"plan": ZOE_GOLD, "response": "The answer is 7."},  # prints 7, answers 7
        {"plan": ZOE_MINED, "response": "The answer is 7."},  # prints 13, answers 7
        {"plan": "for s in [6, 3]:\n    pass\nprint(s)", "response": "The answer is 7."},  # not computable
        {"plan": ZOE_GOLD, "response": "I do not know."},  # no answer: not computable
        {"response": "The answer is 7."},  # no plan
    ]
    out = _scored(_question(samples=samples))
    plan = out["meta"]["score"]["plan"]
    assert [s and s["follows"] for s in plan["samples"]] == [True, False, None, None, None]
    assert plan["following_rate"] == 0.5
    assert "record" not in plan and "exact_rate" not in plan  # no reference plan
    stats = out["_stats"]
    assert (stats["samples_plan_followed"], stats["samples_plan_not_followed"]) == (1, 1)
    assert stats["samples_plan_unknown"] == 2 and "plans_compared" not in stats


def test_fidelity_to_the_reference_plan_for_the_record_and_each_sample():
    commented = "# count the stamps\n" + ZOE_GOLD.replace("+= 3", "+= 3  # gets 3")
    record = _question(
        plan=ZOE_MINED,  # e.g. a mined plan
        gold_plan=ZOE_GOLD,
        samples=[
            {"plan": ZOE_GOLD, "response": "The answer is 7."},
            {"plan": commented, "response": "The answer is 7."},
            {"plan": ZOE_MINED, "response": "The answer is 13."},
        ],
    )
    plan = _scored(record)["meta"]["score"]["plan"]
    assert plan["record"] == {
        "exact": False,
        "exact_no_comments": False,
        "literal_precision": 0.0,
        "literal_recall": 0.0,
    }
    exact = [(s["exact"], s["exact_no_comments"]) for s in plan["samples"]]
    assert exact == [(True, True), (False, True), (False, False)]
    assert plan["exact_rate"] == pytest.approx(1 / 3) and plan["exact_no_comments_rate"] == pytest.approx(
        2 / 3
    )
    assert [s["follows"] for s in plan["samples"]] == [True, True, True]  # the third prints 13, says 13


def test_gold_plan_field_and_records_scored_on_their_response():
    # A mined record without samples: its response is scored, its plan is that sample's plan.
    record = _question(plan=ZOE_MINED, response=ZOE_RESPONSE, reference=ZOE_GOLD)
    assert "plan" in _scored(dict(record))["meta"]["score"]  # plan-following of its own plan
    default = _scored(dict(record))["meta"]["score"]["plan"]
    assert "record" not in default  # 'reference' is not the default field
    plan = _scored(dict(record), ScoreConfig(workers=1, gold_plan_field="reference"))["meta"]["score"]["plan"]
    assert plan["samples"][0]["follows"] is False and plan["samples"][0]["exact"] is False
    assert plan["record"] == {k: v for k, v in plan["samples"][0].items() if k != "follows"}


def test_records_without_plans_are_scored_as_before():
    out = _scored(_question(samples=[{"response": "The answer is 7."}, "7"]))
    assert "plan" not in out["meta"]["score"]
    assert not any(k.startswith(("samples_plan", "plans_")) for k in out["_stats"])


@pytest.mark.parametrize(
    "record, message",
    [
        (_question(gold_plan=5, samples=["7"]), "gold_plan is a number, not a string"),
        (_question(samples=[{"plan": ["x"], "response": "7"}]), "samples[0].plan is a list, not a string"),
    ],
    ids=["reference", "sample plan"],
)
def test_a_plan_of_the_wrong_type_is_a_bad_record(record, message):
    with pytest.raises(BadRecord) as caught:
        _scored(record)
    assert message in str(caught.value)
