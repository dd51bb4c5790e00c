"""Scorer cases from realistic model outputs: hedges, qualified answers, marked answers that are not
valid, prompt echoes, number words, tool outputs, deterministic IFEval, and parity with the reference
scorers (if-verifiable's IFEval checks, math-verify's own ``verify``) on the same samples."""

import importlib.util
import random
import re
from pathlib import Path

import orjson
import pytest

from codeplan_tools.eval.scorers import get_scorer
from codeplan_tools.eval.tasks import get_task, prepare_records
from tests.helpers import invoke, write_jsonl

FIVE = {
    "question": "How many sides does a heptagon have? Answer Choices: (A) 5 (B) 7 (C) 6 (D) 8 (E) None of these",
    "answer": "B",
}
SHAPES = {
    "answer": "(B)",
    "question": "This SVG path element draws a\nOptions:\n(A) circle\n(B) heptagon\n(C) hexagon",
}
TWO = {"answer": "(A)", "question": "Is the following sentence plausible?\nOptions:\n(A) Yes\n(B) No"}


def verdict(family, text, record, **options):
    return get_scorer(family).score(text, record, options)


# ---------------------------------------------------------------------------------------------
# 1. Hedged answers earn nothing, strict or lenient, and are counted as hedged.


@pytest.mark.parametrize(
    "text",
    [
        "Let's compare the two. So the answer is (A) or (B).",
        "The answer is A or B.",
        "The answer is (A) Yes or (B) No.",
        "The answer is either Yes or No.",
        "Answer: A, B",
        "(A) or (B)",
    ],
)
def test_choice_hedge_is_wrong_even_when_the_gold_comes_first(text):
    v = verdict("choice", text, TWO)
    assert not v.correct and not v.correct_strict
    assert v.hedged and v.extracted is None


def test_choice_unmarked_hedge_is_a_lenient_hedge():
    v = verdict("choice", "Both look possible.\nIt is either (A) or (B).", TWO)
    assert not v.correct and v.hedged and not v.hedged_strict and v.extracted_strict is None


@pytest.mark.parametrize(
    "text",
    [
        "The answer is (B), not (A).",
        "The answer is (B) rather than (A).",
        "The answer is (B) because (A) has only five sides.",
        "The answer is heptagon (B).",
        "The answer is B: heptagon",
    ],
)
def test_choice_one_option_with_others_mentioned_is_no_hedge(text):
    v = verdict("choice", text, SHAPES)
    assert v.correct and v.correct_strict and not v.hedged


@pytest.mark.parametrize(
    "family,text,record,options",
    [
        ("yesno", "The answer is yes or no.", {"answer": "yes"}, {}),
        ("yesno", "So the answer is Yes/No.", {"answer": "yes"}, {}),
        ("exact", "The answer is True or False.", {"answer": "True"}, {"labels": ["True", "False"]}),
        (
            "exact",
            "The argument is valid or invalid, the answer is valid or invalid.",
            {"answer": "valid"},
            {"labels": ["valid", "invalid"]},
        ),
        ("numeric", "So the answer is 12 or 14.", {"answer": "12"}, {}),
        ("numeric", "The answer is $12 (or $14 with tax).", {"answer": "12"}, {}),
        ("numeric", "#### 12 apples or 14 apples", {"answer": "12"}, {}),
    ],
)
def test_label_and_number_hedges_are_wrong(family, text, record, options):
    v = verdict(family, text, record, **options)
    assert not v.correct and not v.correct_strict and v.hedged and v.hedged_strict


def test_yes_no_answer_with_a_later_no_word_is_no_hedge():
    v = verdict("yesno", "So the answer is yes, there is no contradiction here.", {"answer": "yes"})
    assert v.correct and v.correct_strict and not v.hedged
    v = verdict("numeric", "The answer is 12 or 12.0.", {"answer": "12"})  # the same number twice
    assert v.correct and not v.hedged


# ---------------------------------------------------------------------------------------------
# 2. Qualified answers are answers (strict).


@pytest.mark.parametrize(
    "text",
    [
        "The answer is most likely B.",
        "The answer is probably (B).",
        "Probably (B).",
        "Most likely B",
        "I think the answer is B.",
        "I think (B).",
        "I'd say (B).",
        "Answer: option B",
        "The answer would be (B).",
        "The answer should be B.",
        "The answer is therefore (B).",
        "The answer is likely to be (B).",
        "The correct option is (B).",
        "The best choice is B.",
        "The correct answer is choice B.",
        "My best guess is (B).",
        "Final Answer: The answer is clearly (B).",
    ],
)
def test_choice_qualified_answers_are_strict_answers(text):
    v = verdict("choice", text, SHAPES)
    assert v.correct_strict and v.correct and v.extracted_strict == "B"


@pytest.mark.parametrize(
    "family,text,record",
    [
        ("yesno", "Probably yes.", {"answer": "yes"}),
        ("yesno", "The answer is most likely no.", {"answer": "no"}),
        ("numeric", "Probably 18.", {"answer": "18"}),
        ("numeric", "The answer would be 18 dollars.", {"answer": "18"}),
        ("qa", "The answer is most likely Paris.", {"answer": "Paris"}),
    ],
)
def test_qualified_labels_numbers_and_strings(family, text, record):
    v = verdict(family, text, record)
    assert v.correct_strict and v.correct


# ---------------------------------------------------------------------------------------------
# 3. Lenient does not overrule a marked answer; only the sample's own words are searched.


def test_marked_letter_that_is_no_option_is_invalid_not_a_guess():
    text = "Option (B) 7 looks right since a heptagon has seven sides.\nThe answer is (F)."
    v = verdict("choice", text, FIVE)
    assert not v.correct and not v.correct_strict and v.invalid and v.extracted is None


@pytest.mark.parametrize(
    "family,text,record",
    [
        (
            "yesno",
            "The coin was flipped twice, so yes it is heads up.\nThe answer is: heads up.",
            {"answer": "yes"},
        ),
        ("exact", "True and not False is True.\nThe answer is unknowable.", {"answer": "True"}),
        ("numeric", "She makes 9 * 2 = 18 dollars.\nThe answer is unknown.", {"answer": "18"}),
        ("numeric", r"We get 18 in the end. $\boxed{}$", {"answer": "18"}),
    ],
)
def test_marked_answers_that_are_not_valid_are_invalid(family, text, record):
    options = {"labels": ["True", "False"]} if family == "exact" else {}
    v = verdict(family, text, record, **options)
    assert not v.correct and v.invalid and not v.hedged


def test_reasoning_about_an_earlier_answer_is_no_marked_answer():
    assert verdict(
        "choice", "My first answer was (A), which was wrong.\nLooking again, it is (B).", SHAPES
    ).correct
    v = verdict("exact", "not True and False is False", {"answer": "False"}, labels=["True", "False"])
    assert v.correct and not v.hedged  # "True and False" is the expression, not a hedge


def test_unmarked_guessing_still_works():
    assert verdict("choice", "A heptagon has seven sides, so (B)", SHAPES).correct
    assert verdict("yesno", "Flipped twice, so it is still heads up: yes", {"answer": "yes"}).correct
    assert verdict("numeric", "9 * 2 = 18 dollars a day", {"answer": "18"}).correct


def _prepared(shared_data, task, limit=3):
    return list(prepare_records(get_task(task), shared_data, limit=limit))


def test_echoed_answer_choices_give_no_credit(shared_data):
    for record in _prepared(shared_data, "aqua", 20):
        last = re.findall(r"\(([A-E])\)", record["question"])[-1]
        if record["answer"] != last:
            continue
        # A base model repeating the question with its choices, then stopping.
        for echo in (record["question"], "Answer Choices:" + record["question"].split("Answer Choices:")[1]):
            v = verdict("choice", f"Q: {echo}\nA: Let's think step by step.", record)
            assert not v.correct and not v.correct_strict, echo
        return
    pytest.fail("no AQuA row whose gold is its last option in the first 20")


@pytest.mark.parametrize(
    "text", ["Q: How many sides does a heptagon have?\nA:", "A: Let's think step by step.", "Q: ?\nA: Hmm"]
)
def test_dialogue_answer_turn_is_not_option_a(text):
    record = {**FIVE, "answer": "A"}
    v = verdict("choice", text, record)
    assert not v.correct and v.extracted is None
    assert verdict("choice", "A: 5", record).correct_strict  # "A:" with option A's own text is an answer


@pytest.mark.parametrize("task", ["coin_flip", "strategyqa", "bbh/navigate", "bbh/web_of_lies"])
def test_echoed_yes_no_prompt_gives_no_credit(shared_data, task):
    for record in _prepared(shared_data, task, 4):
        prompt = record["prompt"]
        question = record["question"]
        echoes = [
            prompt,  # the whole prompt with its 'finish with "The answer is yes." or "The answer is no."'
            prompt.split("\n\n")[-1],  # only the answer-format instruction
            question + " (Yes or No)",
        ]
        for echo in echoes:
            v = get_scorer(get_task(task).scorer).score(f"Q: {echo}\nA:", record, {})
            assert not v.correct and not v.correct_strict, (task, echo)
        # The model's own answer after an echo still counts.
        assert get_scorer("yesno").score(f"{question}\nThe answer is {record['answer']}.", record, {}).correct


def test_echoed_math_instruction_is_not_an_answer():
    record = {"answer": "7", "prompt": "Compute 3 + 4.\n\nPut the final answer in \\boxed{7} form."}
    v = get_scorer("numeric").score("Put the final answer in \\boxed{7} form.\nLet me see.", record, {})
    assert not v.correct


# ---------------------------------------------------------------------------------------------
# 5. Number words and tool outputs.


@pytest.mark.parametrize(
    "text,answer",
    [
        ("The total is 40 + 12.62 = 52.62 minus 3 dollars.\nThe answer is fifty-two point six two.", "52.62"),
        ("Each box has 3 rows of 4.\nThe answer is twelve.", "12"),
        ("So 100 + 5 pages.\nThe answer is one hundred and five.", "105"),
        ("From 2000 we add 24.\nThe answer is two thousand and twenty-four.", "2024"),
        ("The answer is minus seven.", "-7"),
        ("Twelve.", "12"),
    ],
)
def test_marked_answers_in_words(text, answer):
    v = verdict("numeric", text, {"answer": answer})
    assert v.correct and v.correct_strict


def test_number_words_do_not_run_together():
    v = verdict("numeric", "The answer is one two three.", {"answer": "6"})
    assert not v.correct and v.extracted == "1"


TORA = """Let's compute the total with Python.
```python
def total():
    return 1600 * 3.5
print(total())
```
```output
5600.0
```
"""


@pytest.mark.parametrize(
    "text,ok",
    [
        (TORA, True),
        (TORA + "So she pays $5,600 in total. The answer is $\\boxed{5600}$.", True),
        ("The answer is 12.\n" + TORA, True),  # the program's output comes after the earlier guess
        (TORA + "Hmm, that is wrong; the answer is 12.", False),  # a marked answer after the output wins
        (TORA.rsplit("```", 1)[0], True),  # output block cut off at the end of generation
    ],
)
def test_tool_integrated_output_block_is_the_answer(text, ok):
    v = verdict("numeric", text, {"answer": "5600"})
    assert v.correct == ok and v.correct_strict == ok


# ---------------------------------------------------------------------------------------------
# 6. Realistic outputs per family.


@pytest.mark.parametrize(
    "family,text,record,ok",
    [
        ("numeric", "She pays $14.00 in total.\nThe answer is $14.00.", {"answer": "14"}, True),
        ("numeric", "The house is worth $40,000.\n#### $40,000", {"answer": "40000"}, True),
        ("numeric", "The answer is 40,000", {"answer": "40000"}, True),
        ("numeric", "The cost is 1600*3.5 = $5600", {"answer": "5600"}, True),
        ("numeric", "The answer is 1600*3.5 = $5600.", {"answer": "5600"}, True),
        ("numeric", "First she buys 16 eggs. Then she eats 3 of", {"answer": "13"}, False),  # truncated
        ("choice", "The answer is (B) 7.", FIVE, True),
        ("choice", "Let's think. A heptagon has", FIVE, False),  # truncated, no answer
        ("choice", "The answer is (E) None of these.", FIVE, False),
        ("yesno", "The coin started heads up and was flipped once", {"answer": "no"}, False),
        ("yesno", "**Answer:** No, the coin is tails up.", {"answer": "no"}, True),
        ("exact", "The letters are y, a, j, o. The answer is yajo.", {"answer": "yajo"}, True),
        (
            "qa",
            "Thought: I found it.\nAction: finish[Miquette Giraudy]",
            {"answer": "Miquette Giraudy"},
            True,
        ),
    ],
)
def test_realistic_outputs(family, text, record, ok):
    options = {"normalize": "compact"} if family == "exact" else {}
    v = verdict(family, text, record, **options)
    assert v.correct == ok


def test_truncated_outputs_are_unextracted_not_invalid():
    v = verdict("choice", "Let's think step by step. The heptagon has", FIVE)
    assert v.extracted is None and not v.invalid and not v.hedged


# ---------------------------------------------------------------------------------------------
# 7. Counts in meta.score and the report.


def test_meta_score_counts_hedged_and_invalid_apart_from_unextracted(tmp_path):
    record = {"id": "r", "task": "bbh/sports_understanding", "answer": "yes"}
    texts = ["The answer is yes or no.", "The answer is perhaps.", "Let me think", "The answer is yes."]
    path = write_jsonl(tmp_path / "in.jsonl", [{**record, "samples": [{"response": t} for t in texts]}])
    report = tmp_path / "r.md"
    result = invoke(["score", "-i", str(path), "--plain", "--report", str(report)])
    assert result.exit_code == 0, result.stderr
    score = result.records()[0]["meta"]["score"]
    assert (score["hedged"], score["invalid"], score["unextracted"], score["n_correct"]) == (1, 1, 1, 1)
    assert [s["hedged"] for s in score["samples"]] == [True, False, False, False]
    assert [s["invalid"] for s in score["samples"]] == [False, True, False, False]
    assert score["maj@k"]["4"] is True  # hedges and invalid answers do not vote
    assert re.search(r"hedged\s+invalid", result.stderr)
    assert "| hedged | invalid |" in report.read_text()


# ---------------------------------------------------------------------------------------------
# 4. IFEval is deterministic: Python's random is seeded per record and restored.


def _ifeval_records(n=30):
    # letter "#" is no letter, so the checker draws one at random: half of a..z appear in the response.
    return [
        {
            "id": f"if-{i}",
            "task": "ifeval",
            "prompt": "Write letters.",
            "instruction_id_list": ["keywords:letter_frequency"],
            "kwargs": [{"letter": "#", "let_frequency": 1, "let_relation": "at least"}],
            "samples": [{"response": "abcdefghijklm"}],
        }
        for i in range(n)
    ]


def test_ifeval_scores_a_file_identically_twice_and_leaves_random_alone(tmp_path):
    path = write_jsonl(tmp_path / "ifeval.jsonl", _ifeval_records())
    random.seed(12345)
    before = random.getstate()
    runs = []
    for _ in range(2):
        random.random()  # a different global state for each run
        result = invoke(["score", "-i", str(path), "--plain"])
        assert result.exit_code == 0, result.stderr
        runs.append([orjson.dumps(r["meta"]["score"]) for r in result.records()])
    assert runs[0] == runs[1]
    verdicts = {orjson.loads(x)["correct"] for x in runs[0]}
    assert verdicts == {True, False}  # the seed is per record, not one draw for the whole file
    random.seed(12345)
    random.random()
    state = random.getstate()
    get_scorer("ifeval").score("abc", _ifeval_records(1)[0], {})
    assert random.getstate() == state and state != before


# ---------------------------------------------------------------------------------------------
# 6. Parity with the reference implementations on the same samples.


@pytest.fixture(scope="module")
def parity():
    """``bench/scorer_parity.py``: the samples and the reference scorers the bench compares with."""
    path = Path(__file__).resolve().parents[2] / "bench" / "scorer_parity.py"
    spec = importlib.util.spec_from_file_location("scorer_parity", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_ifeval_parity_with_if_verifiable_on_real_prompts(shared_data, parity):
    samples = parity.ifeval_parity_samples(shared_data, limit=60)
    scorer = get_scorer("ifeval")
    disagree = []
    for record, response in samples:
        ours = scorer.score(response, record, {})
        ref_strict, ref_loose = parity.ifeval_reference(record, response)
        if (ours.correct_strict, ours.correct) != (ref_strict, ref_loose):
            disagree.append(record["id"])
    assert len(samples) >= 100 and disagree == []


def test_math_parity_with_math_verify(shared_data, parity):
    samples = parity.math_parity_samples(shared_data, limit=40)
    scorer = get_scorer("math", workers=2, timeout=10)
    try:
        ours = scorer.score_many([(response, record, {}) for record, response in samples])
    finally:
        scorer.close()
    ref = [parity.math_reference(record["answer"], response) for record, response in samples]
    agree = sum(v.correct == r for v, r in zip(ours, ref, strict=True))
    assert len(samples) >= 100 and agree / len(samples) >= 0.97


def test_math_words_tool_output_subscripts_and_invalid_spans():
    scorer = get_scorer("math", workers=1, timeout=10)
    items = [
        ("We multiply 3 by 4.\nThe answer is twelve.", {"answer": "12"}),
        ("```python\nprint(sympy.Rational(1, 2))\n```\n```output\n1/2\n```", {"answer": r"\frac{1}{2}"}),
        ("Thus $555 = 4210_5$.\n\nThe answer is $4210_{5}$.", {"answer": "4210_{5}"}),
        (r"We get 7. So $\boxed{}$", {"answer": "7"}),
    ]
    try:
        got = scorer.score_many([(text, record, {}) for text, record in items])
    finally:
        scorer.close()
    assert [v.correct_strict for v in got] == [True, True, True, False]
    assert [v.invalid for v in got] == [False, False, False, True] and not got[3].correct
