"""``meta.score.given_plan``: did each sample follow the (changed) plan it was given, or the prompt?

The fixture is what ``synth --plan-variant counterfactual`` then ``generate --given-plan`` write: a
record with ``plan`` (a changed plan), ``plan_answer`` (what following it gives) and ``answer`` (the
prompt's true answer), and ``samples`` as generate writes them. Each sample's text carries the verdict
it should get, so the tests check the scorer's reading, not a stored result.
"""

from __future__ import annotations

import copy

import orjson
import pytest

from codeplan_tools.core.errors import BadRecord
from codeplan_tools.core.stage import StageContext
from codeplan_tools.stages.score import GIVEN_PLAN_COUNTERS, ScoreConfig, score_records

# The prompt and plans of synth arithmetic / last_letter; the plans are changed as a counterfactual is.
_CARDS = "Leo has 16 cards. He gets 12 more. He doubles them. How many cards does Leo have now?"
_CARDS_PLAN = "cards = 16\ncards += 10\ncards *= 2\nprint(cards)"  # 12 -> 10: the plan gives 52, not 56
_LETTERS = "Join the last letters of: wheel moon"
_LETTERS_PLAN = 'result = ""\nfor word in ["wheel", "mom"]:\n    result += word[-1]\nprint(result)'


def _sample(response: str, seed: int) -> dict:
    """A sample as ``generate --given-plan`` writes it (the plan is the given one, echoed)."""
    return {
        "text": response,
        "plan": None,
        "response": response,
        "finish_reason": "stop",
        "tokens_out": 9,
        "seed": seed,
    }


def counterfactual_records() -> list[tuple[dict, list[str]]]:
    """(record, the verdict each sample should get): numeric and exact tasks, counterfactual records and
    records whose changed plan still gives the true answer ("same")."""
    cases: list[tuple[str, str, str, str, str, int, list[tuple[str, str]]]] = [
        # (id, task, prompt, plan, answer, plan_answer, difficulty, [(response, verdict)])
        (
            "cards",
            "synth/arithmetic",
            _CARDS,
            _CARDS_PLAN,
            "56",
            "52",
            2,
            [
                ("1. 16 + 10 = 26\n2. 26 * 2 = 52\nThe answer is 52.", "plan"),
                ("1. 16 + 12 = 28\n2. 28 * 2 = 56\nThe answer is 56.", "prompt"),
                ("The answer is 52.00 cards.", "plan"),  # the numeric scorer's reading, for both answers
                ("The answer is 7.", "neither"),
                ("I cannot tell.", "neither"),  # no answer at all
            ],
        ),
        (
            "pens",
            "synth/arithmetic",
            "Ann has 3 pens. She gets 4 more. How many pens does Ann have now?",
            "pens = 3\npens += 4\nprint(pens)",
            "7",
            "7.0",  # the same number: the changed plan still gives the true answer
            3,
            [("The answer is 7.", "same"), ("The answer is 8.", "same")],
        ),
        (
            "letters",
            "synth/last_letter",
            _LETTERS,
            _LETTERS_PLAN,
            "ln",
            "lm",
            2,
            [
                ("1. wheel ends in l\n2. mom ends in m\nThe answer is lm.", "plan"),
                ("The answer is **LN**.", "prompt"),  # case and markdown ignored, as for the answer
                ("The answer is xy.", "neither"),
            ],
        ),
        (
            "letters-same",
            "synth/last_letter",
            _LETTERS,
            _LETTERS_PLAN,
            "ln",
            "LN.",
            2,
            [("The answer is ln.", "same")],
        ),
    ]
    out = []
    for rid, task, prompt, plan, answer, plan_answer, k, samples in cases:
        record = {"id": rid, "task": task, "prompt": prompt, "plan": plan, "answer": answer}
        record.update(plan_answer=plan_answer, difficulty=k)
        record["samples"] = [_sample(text, seed) for seed, (text, _v) in enumerate(samples)]
        out.append((record, [v for _t, v in samples]))
    # Gold feeding (no samples): the record's own response, here the prompt's answer.
    gold = {"id": "gold", "task": "synth/arithmetic", "prompt": _CARDS, "plan": _CARDS_PLAN, "answer": "56"}
    gold.update(plan_answer="52", difficulty=3, response="The answer is 56.")
    out.append((gold, ["prompt"]))
    return out


def plain_records() -> list[dict]:
    """Records without plan_answer (numeric and exact, several samples and one scored on its response)."""
    return [
        {"id": "p1", "task": "gsm8k", "answer": "12", "samples": [_sample("The answer is 12.", 0)]},
        {
            "id": "p2",
            "task": "synth/last_letter",
            "prompt": _LETTERS,
            "answer": "ln",
            "difficulty": 2,
            "samples": [_sample("The answer is ln.", 0), _sample("The answer is lm.", 1)],
        },
        {"id": "p3", "task": "coin_flip", "answer": "yes", "response": "Yes."},
    ]


def _score(records: list[dict], ctx: StageContext | None = None, **config) -> list[dict]:
    return list(score_records(copy.deepcopy(records), ScoreConfig(workers=1, **config), ctx))


def test_each_sample_follows_the_plan_the_prompt_or_neither():
    cases = counterfactual_records()
    scored = _score([record for record, _v in cases])
    for (record, verdicts), out in zip(cases, scored, strict=True):
        given = out["meta"]["score"]["given_plan"]
        assert given["plan_answer"] == record["plan_answer"]
        assert given["samples"] == verdicts, record["id"]
        if "same" in verdicts:
            assert given["plan_rate"] is None and given["prompt_rate"] is None
        else:
            assert given["plan_rate"] == verdicts.count("plan") / len(verdicts)
            assert given["prompt_rate"] == verdicts.count("prompt") / len(verdicts)


def test_a_sample_that_follows_the_prompt_is_correct_and_one_that_follows_the_plan_is_not():
    """The verdicts against the answer are what they were: given_plan is only added beside them."""
    cases = counterfactual_records()
    with_plan_answer = _score([record for record, _v in cases])
    without = _score([{k: v for k, v in record.items() if k != "plan_answer"} for record, _v in cases])
    for out, bare in zip(with_plan_answer, without, strict=True):
        score = dict(out["meta"]["score"])
        given = score.pop("given_plan")
        assert score == bare["meta"]["score"]
        for verdict, sample in zip(given["samples"], score["samples"], strict=True):
            if verdict != "same":
                assert sample["correct"] is (verdict == "prompt")


def test_counters_count_samples_by_verdict():
    cases = counterfactual_records()
    ctx = StageContext("score")
    _score([record for record, _v in cases] + plain_records(), ctx)
    verdicts = [v for _record, vs in cases for v in vs]
    for verdict, counter in GIVEN_PLAN_COUNTERS.items():
        assert ctx.stats[counter] == verdicts.count(verdict), counter
    assert set(GIVEN_PLAN_COUNTERS.values()) <= set(ctx.stats.counters)


def test_records_without_plan_answer_are_scored_byte_for_byte_as_before():
    plain = plain_records()
    ctx = StageContext("score")
    alone = [orjson.dumps(r) for r in _score(plain, ctx)]
    assert not any(k.startswith("given_plan") for k in ctx.stats.counters)
    # Beside counterfactual records, and with the field renamed away from theirs: the same bytes.
    cases = [record for record, _v in counterfactual_records()]
    mixed = _score([x for pair in zip(plain, cases, strict=False) for x in pair])
    assert [orjson.dumps(r) for r in mixed[0::2]] == alone
    renamed = _score(cases, plan_answer_field="cf_answer")
    dropped = _score([{k: v for k, v in r.items() if k != "plan_answer"} for r in cases])
    for out, bare in zip(renamed, dropped, strict=True):
        out.pop("plan_answer")
        assert orjson.dumps(out) == orjson.dumps(bare)


def test_plan_answer_field_names_the_field():
    record, verdicts = counterfactual_records()[0]
    record["cf_answer"] = record.pop("plan_answer")
    default, named = _score([record]), _score([record], plan_answer_field="cf_answer")
    assert "given_plan" not in default[0]["meta"]["score"]
    assert named[0]["meta"]["score"]["given_plan"]["samples"] == verdicts


def test_aliases_of_the_true_answer_are_not_the_plans_answer():
    record = {
        "id": "q",
        "task": "hotpotqa",
        "prompt": "Who wrote the letter?",
        "answer": "Bob",
        "answer_aliases": ["Robert"],
        "plan_answer": "Alice",
        "samples": [_sample("The answer is Robert.", 0), _sample("The answer is Alice.", 1)],
    }
    out = _score([record, {**record, "id": "q-same", "plan_answer": "Robert"}])
    assert out[0]["meta"]["score"]["given_plan"]["samples"] == ["prompt", "plan"]
    assert out[1]["meta"]["score"]["given_plan"]["samples"] == ["same", "same"]  # an alias is the answer


def test_a_plan_answer_of_the_wrong_type_is_a_bad_record():
    record = {"id": "a", "task": "gsm8k", "answer": "5", "plan_answer": 5, "response": "5"}
    with pytest.raises(BadRecord, match=r"<records>:1: plan_answer is a number, not a string"):
        _score([record])


@pytest.mark.parametrize(
    "plan_answer, detail",
    [
        ("  ", "'plan_answer' is blank"),
        ("many", "'plan_answer' is no answer for gsm8k: gold answer 'many' is not a number"),
    ],
)
def test_an_unreadable_plan_answer_is_no_gold(plan_answer, detail):
    record = {"id": "a", "task": "gsm8k", "answer": "5", "plan_answer": plan_answer, "response": "5"}
    ctx = StageContext("score", on_bad_record="skip")
    assert _score([record, plain_records()[0]], ctx)[0]["id"] == "p1"
    (rejected,) = ctx.rejected
    assert rejected["meta"]["score"]["reason"] == "no-gold"
    assert rejected["meta"]["score"]["detail"].startswith(detail)
