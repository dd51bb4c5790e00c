"""Plan-quality measures (codeplan_tools.eval.plans): grounding, final value and consistency, fidelity,
plan-following, distributions. Plans are only parsed: the safety cases check that nothing runs."""

from __future__ import annotations

import time
from fractions import Fraction

import pytest

from codeplan_tools.eval.plans import (
    ShareHistogram,
    bin_label,
    consistent,
    follows_plan,
    grounded_share,
    grounding,
    plan_fidelity,
    plan_final_value,
    plan_literals,
    response_answer,
    share_histogram,
    without_comments,
)
from codeplan_tools.stages.synth import TASKS, make_record

# The two failure cases of issue 21, with the synth prompts and responses they were mined from.
LION_PROMPT = "Join the last letters of: lion chair"
LION_RESPONSE = "1. lion ends in n, so far n\n2. chair ends in r, so far nr\nThe answer is nr."
LION_GOLD = 'result = ""\nfor word in ["lion", "chair"]:\n    result += word[-1]\nprint(result)'
LION_MINED = 'result = ""\nfor word in ["planet", "planet"]:\n    result += word[-1]\nprint(result)'

ZOE_PROMPT = "Zoe has 6 stamps. She gets 3 more. She gives away 2. How many stamps does Zoe have now?"
ZOE_RESPONSE = "1. 6 + 3 = 9\n2. 9 - 2 = 7\nThe answer is 7."
ZOE_GOLD = "stamps = 6\nstamps += 3\nstamps -= 2\nprint(stamps)"
ZOE_MINED = "books = 10\nbooks += 8\nbooks -= 5\nprint(books)"

# A GSM8K-style word problem (GSM8K test 0) with a plan an instruct model would write.
GSM_PROMPT = (
    "Janet’s ducks lay 16 eggs per day. She eats three for breakfast every morning and bakes muffins "
    "for her friends every day with four. She sells the remainder at the farmers' market daily for $2 "
    "per fresh duck egg. How much in dollars does she make every day at the farmers' market?"
)
GSM_RESPONSE = (
    "Janet sells 16 - 3 - 4 = 9 duck eggs a day.\nShe makes 9 * 2 = $18 every day at the farmer’s "
    "market.\nThe answer is 18."
)
GSM_PLAN = """\
def daily_earnings():
    eggs_per_day = 16
    eaten = 3  # breakfast
    baked = 4  # muffins
    remaining_eggs = eggs_per_day - eaten - baked
    price_per_egg = 2
    return remaining_eggs * price_per_egg
"""


# ---------------------------------------------------------------------------------------- literals


def test_literals_from_the_tree():
    lits = plan_literals(
        '"""A docstring is not data."""\n'
        "total = 0  # 99 in a comment is ignored\n"
        'for word in ["lion", "chair"]:\n'
        '    total += word.count("e") * 2.5 + x[-1]\n'
        'print(f"{total} words", " ", len(items), True)\n'
    )
    assert lits.parsed
    assert lits.numbers == (0, Fraction(5, 2), -1)
    assert lits.strings == ("lion", "chair", "e")  # the separator " " and f-string text are left out
    assert lits.booleans == (True,)
    # Called functions/methods (count, print, len) and one-letter names are not entity names.
    assert lits.names == ("total", "word", "total", "word", "total", "items")


def test_literals_fall_back_to_a_tokenizer_when_the_plan_does_not_parse():
    plan = (
        "Step 1: zoe's stamps = 6   # start\n"
        "for each book in ['big', 'red #2'] do\n"
        "    total = total - 1.5 + -2\n"
    )
    lits = plan_literals(plan)
    assert not lits.parsed
    assert lits.numbers == (1, 6, Fraction(3, 2), -2)
    assert lits.strings == ("big", "red #2")  # a '#' inside a string is not a comment
    assert "stamps" in lits.names and "start" not in lits.names  # comments ignored here too


def test_code_fences_and_indentation_are_not_parse_failures():
    assert plan_literals("```python\n    x = 12\n    print(x)\n```").parsed


def test_numbers_as_numbers():
    lits = plan_literals("a = 6.0\nb = 1_000\nc = 0x10\nd = 0.1\ne = 1e3")
    assert lits.numbers == (6, 1000, 16, Fraction(1, 10), 1000)
    assert all(type(n) is int for n in lits.numbers if n != Fraction(1, 10))


# ---------------------------------------------------------------------------------------- grounding


def test_the_issue_failure_cases_are_ungrounded():
    assert grounded_share(LION_MINED, LION_PROMPT, LION_RESPONSE) == 0.0
    assert grounding(LION_MINED, LION_PROMPT, LION_RESPONSE).ungrounded == ("'planet'",)
    assert grounded_share(ZOE_MINED, ZOE_PROMPT, ZOE_RESPONSE) == 0.0
    assert grounding(ZOE_MINED, ZOE_PROMPT, ZOE_RESPONSE).ungrounded == ("5", "8", "10")


def test_a_single_wrong_start_value_lowers_the_share():
    plan = "books = 10\nbooks += 3\nbooks -= 2\nprint(books)"
    share = grounded_share(plan, ZOE_PROMPT, "The answer is 7.")
    assert share == pytest.approx(2 / 3)
    assert share < grounded_share(ZOE_GOLD, ZOE_PROMPT, "The answer is 7.") == 1.0


def test_gold_plans_are_grounded():
    assert grounded_share(LION_GOLD, LION_PROMPT, LION_RESPONSE) == 1.0
    assert grounded_share(ZOE_GOLD, ZOE_PROMPT, ZOE_RESPONSE) == 1.0
    assert grounded_share(GSM_PLAN, GSM_PROMPT, GSM_RESPONSE) == 1.0


@pytest.mark.parametrize("task", ["last_letter", "arithmetic", "coin_flip", "letter_count", "sort"])
def test_synth_gold_plans_are_grounded(task):
    for index in range(20):
        r = make_record(task, k=2 + index % 4, seed=3, index=index)
        assert grounded_share(r["plan"], r["prompt"], r["response"]) >= 0.75, r


def test_another_records_plan_is_not_grounded():
    """Right shape, wrong values: each plan against the next record of the same task. Word lists
    rarely overlap; arithmetic plans share small numbers (2 for doubles, 3 for triples) with many
    prompts, so grounding only lowers their share and ``consistent`` does the rest."""
    for task, most in (("last_letter", 0.1), ("letter_count", 0.2), ("arithmetic", 0.7)):
        records = [make_record(task, k=4, seed=5, index=i) for i in range(21)]
        shares = [
            grounded_share(a["plan"], b["prompt"], b["response"])
            for a, b in zip(records[:-1], records[1:], strict=True)
        ]
        assert sum(shares) / len(shares) <= most, (task, shares)


@pytest.mark.parametrize(
    ("plan", "text"),
    [
        ("x = 6", "She has 6.0 apples"),
        ("x = 6.0", "She has 6 apples"),
        ("x = 1000", "It costs $1,000."),
        ("x = 1.5", "It costs $1.50 each."),
        ("x = 0.2", "Prices rose by 20%."),
        ("x = 20 / 100", "Prices rose by 20 %."),
        ("x = 5", "She has five cats."),
        ("x = 25", "He is twenty-five."),
        ("x = 300", "three hundred pages"),
        ("x = 12", "a dozen eggs"),
        ("x = 2", "She doubles them."),
        ("x = 0.5", "She loses half of them."),
        ("x = 3", "Sort these: 3,5,7"),
        ("x = 5", "He owes -5 dollars"),
        ("x -= 3", "He gives away 3."),
        ("x = -3", "He gives away 3."),
    ],
)
def test_number_formats_ground(plan, text):
    assert grounded_share(plan, text) == 1.0


@pytest.mark.parametrize(
    ("plan", "text"),
    [("x = 7", "She has 17 apples"), ("x = 1.5", "It costs 15 dollars"), ("x = 60", "one hour")],
)
def test_numbers_that_are_not_there_do_not_ground(plan, text):
    assert grounded_share(plan, text) == 0.0


def test_strings_match_case_insensitively_as_whole_words():
    assert grounded_share('coin = "Heads"', "A coin is heads up.") == 1.0
    assert grounded_share('x = "head"', "A coin is heads up.") == 0.0
    assert grounded_share('x = "lion chair"', LION_PROMPT) == 1.0
    assert grounded_share('x = "chair lion"', LION_PROMPT) == 0.0


def test_neutral_literals_are_not_counted():
    # 0, 1, separators and yes/no labels say nothing about the prompt.
    assert grounded_share('total = 0\ntotal += 1\nprint(" ".join(["yes", "no"]))', "Anything.") is None
    assert grounded_share("", "Anything.") is None


def test_names_count_only_when_they_name_an_entity_of_the_prompt():
    # "stamps" names the prompt's entity (plural or singular, inside snake or camel case)...
    for name in ("stamps", "stamp", "zoe_stamps", "numStamps", "stamps_left"):
        assert grounding(f"{name} = 6", ZOE_PROMPT).counted == 2, name
    # ... generic and unknown names are left out rather than counted against the plan.
    for name in ("total", "result", "books", "num_left"):
        g = grounding(f"{name} = 6", ZOE_PROMPT)
        assert (g.grounded, g.counted) == (1, 1), name


# ---------------------------------------------------------------------------------------- final value


@pytest.mark.parametrize(
    ("plan", "value"),
    [
        ("print(18)", 18),
        ('print("yes")', "yes"),
        ("print(2 + 3 * 4)", 14),
        ("print((2 + 3) * 4)", 20),
        ("print(7 / 2)", Fraction(7, 2)),
        ("print(7 // 2)", 3),
        ("print(7 % 3)", 1),
        ("print(2 ** 10)", 1024),
        ("print(2 ** -1)", Fraction(1, 2)),
        ("print(-(3 - 5))", 2),
        ("print(0.1 + 0.2)", Fraction(3, 10)),
        (ZOE_GOLD, 7),
        (ZOE_MINED, 13),
        (GSM_PLAN, 18),
        ("a = b = 4\nc: int = a * b\nprint(c)", 16),
        ("# plan\nx = 5\n\nprint(x)  # show it\n", 5),
        ("def f():\n    return 6 * 7", 42),
    ],
)
def test_final_value(plan, value):
    assert plan_final_value(plan) == value


@pytest.mark.parametrize(
    "plan",
    [
        LION_GOLD,  # a loop: never unrolled
        "x = 5\nfor i in range(3):\n    x += 1\nprint(x)",  # assigned in a loop: unknown
        "x = 5\nif y:\n    x = 6\nprint(x)",
        "x = 5\ny = (x := 7) + 1\nprint(x)",  # rebound by a walrus
        "x = 5\nimport x\nprint(x)",
        "print(x)",
        "print(1, 2)",
        'print(f"{3}")',
        'print("a" * 3)',  # arithmetic on strings is refused
        "print(1 / 0)",
        "print(5 % 0)",
        "print(2 ** 0.5)",
        "print(True + 1)",
        "print(len([1, 2]))",
        "x = 5",
        "print(5",  # does not parse
        "",
    ],
)
def test_final_value_not_computable(plan):
    assert plan_final_value(plan) is None


def test_plans_are_never_run():
    for plan in (
        "print(__import__('os').system('touch /tmp/codeplan-plan-ran'))",
        "x = __import__('os').system('touch /tmp/codeplan-plan-ran')\nprint(x)",
        "import os\nos.system('touch /tmp/codeplan-plan-ran')\nprint(1)",
        'exec(\'open("/tmp/codeplan-plan-ran", "w")\')\nprint(2)',
    ):
        plan_literals(plan)
        grounded_share(plan, "prompt", "response")
        plan_fidelity(plan, plan)
        assert plan_final_value(plan) in (None, 1, 2)
    import os

    assert not os.path.exists("/tmp/codeplan-plan-ran")


@pytest.mark.parametrize(
    "plan",
    [
        "print(9**9**9)",
        "print(10**100000)",
        "x = 2\nx **= 100000\nprint(x)",
        "x = 10 ** 1000\nx *= x\nx *= x\nx *= x\nprint(x)",
        "print(" + "+".join(["1"] * 5000) + ")",
        "print(" + "-" * 300 + "1)",
    ],
)
def test_huge_arithmetic_returns_none_quickly(plan):
    start = time.perf_counter()
    assert plan_final_value(plan) is None
    plan_literals(plan)
    assert time.perf_counter() - start < 1.0


# ---------------------------------------------------------------------------------------- consistency


def test_response_answer_uses_the_scorers_extraction():
    assert response_answer(ZOE_RESPONSE) == "7."
    assert response_answer("#### 1,000") == "1,000"
    assert response_answer("12") == "12"
    assert response_answer("I am not sure about this one.") is None


@pytest.mark.parametrize(
    ("plan", "answer", "expected"),
    [
        (ZOE_GOLD, "7.", True),
        (ZOE_MINED, "7.", False),  # books = 10 ... prints 13, the response says 7
        (GSM_PLAN, "$18", True),
        ("print(1000)", "1,000", True),
        ("print(6)", "6.0", True),
        ("print(10 / 3)", "3.33", True),  # the answer's own rounding
        ("print(10 / 3)", "3.3", True),
        ("print(10 / 3)", "3.4", False),
        ("print(7 / 2)", "4", False),  # an integer answer gets no rounding
        ("print(0.1 + 0.2)", "0.3", True),
        ("print(18)", "18 dollars", True),
        ("print(18)", "3 * 6 = 18", True),
        ('print("12")', "12", True),
        ('print("yes")', "Yes.", True),
        ('print("yes")', "no", False),
        ("print(5)", "yes", False),
        (LION_GOLD, "nr", None),  # the plan's value is not computable
        (ZOE_GOLD, None, None),  # the response has no final answer
        (ZOE_GOLD, "  ", None),
    ],
)
def test_consistent(plan, answer, expected):
    assert consistent(plan, answer) is expected


def test_consistent_on_synth_arithmetic():
    for index in range(20):
        r = make_record("arithmetic", k=2 + index % 5, seed=1, index=index)
        assert consistent(r["plan"], response_answer(r["response"])) is True
        other = make_record("arithmetic", k=3, seed=2, index=index)
        if other["answer"] != r["answer"]:
            assert consistent(other["plan"], response_answer(r["response"])) is False


def test_follows_plan():
    assert follows_plan(ZOE_GOLD, "7") is True
    assert follows_plan(ZOE_GOLD, "8") is False
    assert follows_plan(LION_GOLD, "nr") is None


# ---------------------------------------------------------------------------------------- fidelity


def test_fidelity_of_the_gold_plan_itself():
    r = make_record("coin_flip", k=3, seed=0, index=0)
    assert plan_fidelity(r["plan"], r["plan"]) == {
        "exact": True,
        "exact_no_comments": True,
        "literal_precision": 1.0,
        "literal_recall": 1.0,
    }


def test_fidelity_of_the_issue_failure_cases():
    lion = plan_fidelity(LION_MINED, LION_GOLD)
    assert not lion["exact"] and not lion["exact_no_comments"]
    # Literals: planet, planet, -1 against lion, chair, -1.
    assert lion["literal_precision"] == pytest.approx(1 / 3)
    assert lion["literal_recall"] == pytest.approx(1 / 3)
    zoe = plan_fidelity(ZOE_MINED, ZOE_GOLD)
    assert zoe["literal_precision"] == zoe["literal_recall"] == 0.0


def test_fidelity_whitespace_and_comments():
    gold = "best = 3.7\nfor x in [4.8]:\n    if x > best:  # pad the decimals\n        best = x\nprint(best)"
    spaced = gold.replace("best = 3.7", "best  =  3.7").replace("\n", "\n\n", 1)
    assert plan_fidelity(spaced, gold)["exact"]
    bare = gold.replace("  # pad the decimals", "")
    f = plan_fidelity(bare, gold)
    assert not f["exact"] and f["exact_no_comments"]
    # A '#' inside a string is not a comment.
    assert without_comments('x = "#1"  # the first\n\n# note\ny = 2') == 'x = "#1"\ny = 2'


def test_fidelity_literal_multisets():
    f = plan_fidelity("x = [1, 1, 2]\ny = True", "x = [1, 2, 3]\ny = 1")
    # {1, 1, 2, True} against {1, 2, 3, 1}: True is not the number 1.
    assert f["literal_precision"] == pytest.approx(3 / 4)
    assert f["literal_recall"] == pytest.approx(3 / 4)
    assert plan_fidelity("x = y", "x = 1")["literal_precision"] is None
    assert plan_fidelity("x = 1", "x = y")["literal_recall"] is None


def test_every_synth_task_gold_plan_is_exact_against_itself():
    for task in TASKS:
        r = make_record(task, k=3, seed=0, index=1)
        f = plan_fidelity(r["plan"], r["plan"])
        assert f["exact"] and f["exact_no_comments"], task


# ---------------------------------------------------------------------------------------- distributions


def test_share_histogram():
    summary = share_histogram([0.0, 0.05, 0.1, 0.3, 0.7, 0.95, 1.0, None])
    assert summary["n"] == 7 and summary["none"] == 1
    assert summary["mean"] == pytest.approx(round((0.0 + 0.05 + 0.1 + 0.3 + 0.7 + 0.95 + 1.0) / 7, 4))
    bins = summary["bins"]
    assert list(bins) == [f"{i / 10:.1f}-{(i + 1) / 10:.1f}" for i in range(10)]
    assert bins["0.0-0.1"] == 2 and bins["0.1-0.2"] == 1 and bins["0.3-0.4"] == 1
    assert bins["0.7-0.8"] == 1 and bins["0.9-1.0"] == 2
    assert sum(bins.values()) == 7


def test_bin_edges_are_exact_for_ratios():
    # k / n shares land in their own bin despite float error (3/10 * 10 = 3.0000000000000004, 7/10 ...).
    for n in range(1, 30):
        for k in range(n + 1):
            label = bin_label(k / n)
            low = float(label.split("-")[0])
            assert low <= k / n + 1e-12 and (k / n < low + 0.1 or k == n), (k, n, label)


def test_share_histogram_is_streamable():
    histogram = ShareHistogram()
    for v in (0.5, None, 0.25):
        histogram.add(v)
    assert histogram.summary() == share_histogram([0.5, None, 0.25])
    assert share_histogram([])["mean"] is None


@pytest.mark.parametrize(
    "plan, value",
    [
        # A comprehension's variable does not leak (Python 3): x keeps its value.
        ("x = 5\nys = [x for x in range(3)]\nprint(x)", Fraction(5)),
        # A walrus anywhere binds its name: unknown from there on.
        ("x = 5\nys = (x := 6)\nprint(x)", None),
        ("x = 5\nif (x := 7):\n    pass\nprint(x)", None),
        # Names bound inside compound statements (loop targets, with, except bodies, imports, defs).
        ("x = 5\nfor x in [1]:\n    pass\nprint(x)", None),
        ("x = 5\nwith open('f') as x:\n    pass\nprint(x)", None),
        ("x = 5\ntry:\n    pass\nexcept ValueError:\n    x = 1\nprint(x)", None),
        ("x = 5\nif True:\n    import x\nprint(x)", None),
        ("x = 5\nwhile False:\n    def x():\n        pass\nprint(x)", None),
        ("x = 5\nfor i in [1]:\n    y = i\nprint(x)", Fraction(5)),
        # An expression over the node limit is not computed, however it starts.
        ("print(" + " + ".join(["1"] * 300) + ")", None),
        ("print(" + " + ".join(["1"] * 100) + ")", Fraction(100)),
    ],
    ids=[
        "comprehension",
        "walrus in an assignment",
        "walrus in a condition",
        "loop target",
        "with target",
        "except body",
        "import",
        "def",
        "untouched by a loop",
        "over the node limit",
        "under the node limit",
    ],
)
def test_final_value_tracks_every_way_a_name_is_bound(plan, value):
    assert plan_final_value(plan) == value
