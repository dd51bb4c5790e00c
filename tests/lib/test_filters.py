import pytest

from codeplan_tools.filters import RULES, FilterConfig, filter_records
from codeplan_tools.stats import Stats

GOOD_PLAN = "def solve(n):\n    total = 0\n    for x in range(n):\n        if x % 2:\n            total += x\n    return total"
RESPONSE = "We add up the odd numbers below n one by one and report the total we get at the very end of it."


def rec(**kw):
    base = {"id": "1", "prompt": "Sum the odd numbers below n.", "plan": GOOD_PLAN, "response": RESPONSE}
    base.update(kw)
    return base


CASES = {
    # rule: (record that passes, record that fails, expected reason prefix)
    "terminated": (rec(meta={"extract": {"finish_reason": "stop"}}), rec(meta={"extract": {"finish_reason": "length"}})),
    "nonempty": (rec(), rec(plan="```python\n# nothing here\n```\n")),
    "length": (rec(), rec(plan="x = 1\n" * 120)),
    "code": (rec(), rec(plan="First we think about it.\nThen we write the answer down.\nDone.")),
    "no-leak": (rec(), rec(plan=f"answer = '''{RESPONSE}'''")),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_rule_passes_good_and_rejects_bad_with_its_name(name):
    good, bad = CASES[name]
    config = FilterConfig()
    assert RULES[name].check(good, config) is None
    reason = RULES[name].check(bad, config)
    assert reason is not None and reason.split(":")[0] == name


def test_length_bounds_and_tokens():
    config = FilterConfig(min_plan_words=3, max_plan_words=5, max_plan_tokens=10)
    assert RULES["length"].check(rec(plan="a b"), config).startswith("length: 2 words < 3")
    assert RULES["length"].check(rec(plan="a b c d e f"), config).startswith("length: 6 words > 5")
    assert RULES["length"].check(rec(plan="a b c", meta={"extract": {"tokens_out": 11}}), config) == (
        "length: 11 tokens > 10"
    )


def test_code_strict_parses_but_never_runs():
    config = FilterConfig(code_strict=True)
    assert RULES["code"].check(rec(plan="x = (1,\ny = 2"), config).startswith("code: not valid Python")
    # A plan that would have side effects if executed only gets parsed.
    assert RULES["code"].check(rec(plan="import os\nos.remove('/definitely/not/here')"), config) is None


def test_dedup_normalises_case_space_and_unicode():
    config = FilterConfig(enabled=("dedup",))
    records = [rec(id="a", prompt="What is  2+2?"), rec(id="b", prompt="what is 2+2?"),
               rec(id="c", prompt="ｗhat is 2+2?"), rec(id="d", prompt="What is 2+3?")]
    rejected = []
    kept = list(filter_records(records, config, Stats("filter"), lambda r, why: rejected.append((r["id"], why))))
    assert [r["id"] for r in kept] == ["a", "d"]
    assert rejected == [("b", "dedup: duplicate prompt"), ("c", "dedup: duplicate prompt")]


def test_annotate_keeps_everything_and_lists_all_reasons():
    config = FilterConfig(annotate=True)
    bad = rec(id="b", prompt="another", plan="Just words here and nothing more " * 40)
    out = list(filter_records([rec(id="g"), bad], config, Stats("filter"), lambda r, why: None))
    assert [r["meta"]["filter"]["kept"] for r in out] == [True, False]
    reasons = [x.split(":")[0] for x in out[1]["meta"]["filter"]["reasons"]]
    assert reasons == ["length", "code"]


def test_stats_describe_what_passed():
    stats = Stats("filter")
    plans = [GOOD_PLAN, "def f():\n    return 1", "x = 1\nprint(x)"]
    list(filter_records([rec(id=str(i), prompt=f"q {i}", plan=p) for i, p in enumerate(plans)],
                        FilterConfig(), stats, lambda r, why: None))
    passed = stats.derived["passed"]
    assert passed["plan_share"] == {"functions": round(2 / 3, 4), "conditions": round(1 / 3, 4), "loops": round(1 / 3, 4)}
    assert passed["prompt_words"]["mean"] == 2.0 and passed["plan_words"]["n"] == 3
