import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codeplan_tools.core.stage import StageContext
from codeplan_tools.stages import filter as F
from codeplan_tools.stages.filter import RULES, FilterConfig, filter_records

GOOD_PLAN = "def solve(n):\n    total = 0\n    for x in range(n):\n        if x % 2:\n            total += x\n    return total"
RESPONSE = "We add up the odd numbers below n one by one and report the total we get at the very end of it."


def rec(**kw):
    base = {"id": "1", "prompt": "Sum the odd numbers below n.", "plan": GOOD_PLAN, "response": RESPONSE}
    base.update(kw)
    return base


CASES = {
    # rule: (record that passes, record that fails, expected reason prefix)
    "terminated": (
        rec(meta={"extract": {"finish_reason": "stop"}}),
        rec(meta={"extract": {"finish_reason": "length"}}),
    ),
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


LENGTH = FilterConfig(min_plan_words=3, max_plan_words=5, max_plan_tokens=10)


@pytest.mark.parametrize(
    "record, config, reason",
    [
        (rec(plan="a b"), LENGTH, "length: 2 words < 3"),
        (rec(plan="a b c d e f"), LENGTH, "length: 6 words > 5"),
        (rec(plan="a b c", meta={"extract": {"tokens_out": 11}}), LENGTH, "length: 11 tokens > 10"),
        (rec(plan="a b c", meta={"extract": {"tokens_out": 10}}), LENGTH, None),
        (rec(plan="a b c d e"), LENGTH, None),
        (
            rec(plan="x = (1,\ny = 2"),
            FilterConfig(code_strict=True),
            "code: not valid Python (SyntaxError line 1)",
        ),
        # A plan that would have side effects if executed only gets parsed.
        (rec(plan="import os\nos.remove('/definitely/not/here')"), FilterConfig(code_strict=True), None),
    ],
    ids=[
        "too few words",
        "too many words",
        "too many tokens",
        "tokens at the limit",
        "words at the limit",
        "strict: not Python",
        "strict: parsed, never run",
    ],
)
def test_length_bounds_tokens_and_strict_code(record, config, reason):
    rule = reason.split(":")[0] if reason else ("code" if config.code_strict else "length")
    assert RULES[rule].check(record, config) == reason


def test_dedup_normalises_case_space_and_unicode():
    config = FilterConfig(enabled=("dedup",))
    records = [
        rec(id="a", prompt="What is  2+2?"),
        rec(id="b", prompt="what is 2+2?"),
        rec(id="c", prompt="ｗhat is 2+2?"),
        rec(id="d", prompt="What is 2+3?"),
    ]
    ctx = StageContext("filter")
    kept = list(filter_records(records, config, ctx))
    assert [r["id"] for r in kept] == ["a", "d"]
    assert [(r["id"], r["meta"]["filter"]) for r in ctx.rejected] == [
        ("b", {"reason": "dedup: duplicate prompt"}),
        ("c", {"reason": "dedup: duplicate prompt"}),
    ]
    assert dict(ctx.stats.counters) == {"rejected": 2, "rejected.dedup": 2, "kept": 2}


@pytest.mark.parametrize("annotate", [False, True])
def test_dedup_of_a_record_kept_by_the_other_rules_and_one_that_failed_them(annotate):
    """dedup runs after the other rules (in order, in the main process) as if it were the last rule:
    a duplicate the other rules kept is unmarked before it is rejected (its own meta.filter as read)."""
    earlier = {"kept": True, "by": "an earlier run"}
    records = [
        rec(id="a", prompt="Same question?"),
        rec(id="b", prompt="same question?", meta={"filter": earlier}),
        rec(id="c", prompt="Same  question?", plan="no"),
    ]
    ctx = StageContext("filter")
    out = list(filter_records(records, FilterConfig(annotate=annotate), ctx))
    if annotate:
        assert [r["meta"]["filter"] for r in out] == [
            {"kept": True},
            {"kept": False, "reason": "dedup: duplicate prompt", "reasons": ["dedup: duplicate prompt"]},
            {
                "kept": False,
                "reason": "length: 1 words < 3",
                "reasons": [
                    "length: 1 words < 3",
                    "code: 0.00 of lines look like code < 0.5",
                    "dedup: duplicate prompt",
                ],
            },
        ]
        assert dict(ctx.stats.counters) == {
            "kept": 1,
            "marked": 2,
            "failed.dedup": 2,
            "failed.length": 1,
            "failed.code": 1,
        }
    else:
        assert [r["id"] for r in out] == ["a"]
        assert [r["meta"]["filter"] for r in ctx.rejected] == [
            {**earlier, "reason": "dedup: duplicate prompt"},
            {"reason": "length: 1 words < 3"},
        ]
        assert dict(ctx.stats.counters) == {
            "kept": 1,
            "rejected": 2,
            "rejected.dedup": 1,
            "rejected.length": 1,
        }


def test_annotate_keeps_everything_and_lists_all_reasons():
    config = FilterConfig(annotate=True)
    bad = rec(id="b", prompt="another", plan="Just words here and nothing more " * 40)
    out = list(filter_records([rec(id="g"), bad], config))
    assert [r["meta"]["filter"]["kept"] for r in out] == [True, False]
    reasons = [x.split(":")[0] for x in out[1]["meta"]["filter"]["reasons"]]
    assert reasons == ["length", "code"]


def test_stats_describe_what_passed():
    ctx = StageContext("filter")
    plans = [GOOD_PLAN, "def f():\n    return 1", "x = 1\nprint(x)"]
    list(
        filter_records(
            [rec(id=str(i), prompt=f"q {i}", plan=p) for i, p in enumerate(plans)], FilterConfig(), ctx
        )
    )
    passed = ctx.stats.derived["passed"]
    assert passed["plan_share"] == {
        "functions": round(2 / 3, 4),
        "conditions": round(1 / 3, 4),
        "loops": round(1 / 3, 4),
    }
    assert passed["prompt_words"]["mean"] == 2.0 and passed["plan_words"]["n"] == 3


def test_profile_off_keeps_the_same_records_and_measures_nothing():
    records = [rec(id=str(i), prompt=f"q {i}", plan=GOOD_PLAN) for i in range(3)]
    on, off = StageContext("filter"), StageContext("filter")
    kept_on = list(filter_records([dict(r) for r in records], FilterConfig(), on))
    kept_off = list(filter_records([dict(r) for r in records], FilterConfig(profile=False), off))
    assert kept_on == kept_off and len(kept_on) == 3
    assert "passed" in on.stats.derived and "passed" not in off.stats.derived


# The rules' fast paths (str methods, token counts without token lists) against their definitions.
_PIECES = [
    "def",
    "if",
    "elif",
    "for",
    "while",
    "x",
    "total",
    "=",
    "+=",
    "(",
    ")",
    ":",
    "#",
    "```",
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    "\x0b",
    "\x1c",
    "\x85",
    "\u2028",
    "\u00a0",
    "é",
    "İ",
    "ﬁ",
    "ｗ",
    "return",
    "print(",
    "a,b",
    "-",
    ".",
    "class ",
    "x = 1",
    "foo(bar)",
    "else:",
    "A",
    "ß",
    "\u3000",
    "'",
    "_",
    "1",
    "==",
    "\x00",
    "\x1f",
    "try:",
    "except",
    "except(",
    "return(",
    "with ",
    "import ",
    "x[0]",
    "-=",
    "*=",
    "/=",
    "\n    ",
]
_TEXT = st.lists(st.sampled_from(_PIECES), max_size=40).map("".join)


def test_code_prefixes_decide_nothing_the_pattern_would_not():
    """A line the prefix shortcut counts as code is one _CODE_LINE matches, whatever follows the prefix."""
    for prefix in F._CODE_PREFIXES:
        for rest in ("", "x", " y = 1", "(", ")", ":", " # c", "==", "\u00e9", " \\"):
            assert F._CODE_LINE.match(prefix + rest), prefix + rest


def _reference_code(plan, config):
    lines = [ln for ln in F._plan_lines(plan) if not F._COMMENT.match(ln)]
    if not lines:
        return "code: no code lines"
    ratio = sum(1 for ln in lines if F._CODE_LINE.match(ln)) / len(lines)
    return (
        None
        if ratio >= config.code_min_ratio
        else f"code: {ratio:.2f} of lines look like code < {config.code_min_ratio}"
    )


def _reference_no_leak(plan, response, config):
    n, plan_words, response_words = config.leak_ngram, F._tokens(plan), F._tokens(response)
    positions = len(response_words) - n + 1
    if not response or positions <= 0 or len(plan_words) - n + 1 < config.leak_max_overlap * positions:
        return None
    overlap = len(F._ngram_set(response_words, n) & F._ngram_set(plan_words, n)) / positions
    return (
        f"no-leak: {overlap:.2f} of the response's {n}-grams are in the plan"
        if overlap >= config.leak_max_overlap
        else None
    )


@settings(max_examples=300, deadline=None)
@given(
    plan=_TEXT,
    response=_TEXT,
    ascii_only=st.booleans(),
    ngram=st.integers(1, 4),
    overlap=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_fast_paths_match_the_definitions(plan, response, ascii_only, ngram, overlap):
    if ascii_only:
        plan, response = (t.encode("ascii", "ignore").decode() for t in (plan, response))
    config = FilterConfig(leak_ngram=ngram, leak_max_overlap=overlap, code_min_ratio=overlap)
    record = rec(plan=plan, response=response, prompt=response)
    assert RULES["code"].check(record, config) == _reference_code(plan, config)
    assert RULES["no-leak"].check(record, config) == _reference_no_leak(plan, response, config)
    empty = all(not ln.strip() or ln.strip().startswith(("#", "```")) for ln in plan.splitlines())
    assert (RULES["nonempty"].check(record, config) is None) == (not empty)
    assert F.words(response) == len(response.split()) and F.words(plan) == len(plan.split())
    assert F.normalize_prompt(response) == " ".join(
        unicodedata.normalize("NFKC", response).casefold().split()
    )
    prompt_words, plan_words, response_words, bits = F.measure(record)
    features = {F._FEATURE[k] for k in F._KEYWORDS.findall(plan)}
    assert bits == sum(
        1 << i for i, name in enumerate(("functions", "conditions", "loops")) if name in features
    )
    assert (prompt_words, plan_words, response_words) == (
        len(response.split()),
        len(plan.split()),
        len(response.split()),
    )


_LINE = st.lists(st.sampled_from([p for p in _PIECES if p.isascii()]), max_size=8).map("".join)


@settings(max_examples=1000, deadline=None)
@given(lines=st.lists(_LINE, max_size=12), ratio=st.sampled_from([0.0, 0.5, 0.75, 1.0]))
def test_code_rule_on_multi_line_plans_matches_the_definition(lines, ratio):
    """`code` (str-method shortcuts) on plans of many ASCII lines against the regex definition."""
    plan = "\n".join(lines)
    config = FilterConfig(code_min_ratio=ratio)
    assert RULES["code"].check(rec(plan=plan), config) == _reference_code(plan, config)
