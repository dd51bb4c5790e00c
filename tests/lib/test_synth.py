"""Synth tasks are exact: each response follows its plan step by step and reaches the answer, at every k.

Each task has an independent checker here: it reads the instance's data back from the prompt with a
regex, recomputes every step of the response and the answer, and checks that the plan (parsed with
``ast``, never run) iterates over the same data or applies the same operations (the positive controls
add and parity: carries the same values). Plans are only parsed here; literals are read with
``ast.literal_eval`` (tests/lib/test_synth_variants.py runs them).
"""

from __future__ import annotations

import ast
import re
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codeplan_tools.core.errors import UsageError
from codeplan_tools.stages.filter import RULES, FilterConfig, check_record
from codeplan_tools.stages.synth import (
    TASKS,
    SynthConfig,
    final_line,
    make_record,
    parse_k,
    parse_tasks,
    synth_records,
)

STEP = re.compile(r"^(\d+)\. (.+)$")


def _steps(record: dict) -> list[str]:
    """The numbered step lines (checked to be 1..k) of the response, before its final line."""
    lines = record["response"].split("\n")
    assert lines[-1] == final_line(record["answer"]) == f"The answer is {record['answer']}."
    steps = []
    for i, line in enumerate(lines[:-1], 1):
        m = STEP.match(line)
        assert m and int(m.group(1)) == i, line
        steps.append(m.group(2))
    assert len(steps) == record["difficulty"] == record["meta"]["synth"]["k"]
    return steps


def _lists(plan: str) -> list:
    """Every list literal in the plan, in source order, read with literal_eval."""
    tree = ast.parse(plan)
    nodes = sorted(
        (n for n in ast.walk(tree) if isinstance(n, ast.List)), key=lambda n: (n.lineno, n.col_offset)
    )
    return [ast.literal_eval(n) for n in nodes]


def check_last_letter(r):
    words = re.fullmatch(r"Join the last letters of: ([a-z ]+)", r["prompt"]).group(1).split()
    assert _lists(r["plan"]) == [words]
    so_far = ""
    for word, step in zip(words, _steps(r), strict=True):
        so_far += word[-1]
        assert step == f"{word} ends in {word[-1]}, so far {so_far}"
    assert r["answer"] == "".join(w[-1] for w in words)


def check_coin_flip(r):
    body = re.fullmatch(r"A coin is heads up\. (.+) Is the coin still heads up\?", r["prompt"]).group(1)
    acts = re.findall(r"(\w+) (flips|does not flip) the coin\.", body)
    assert " ".join(f"{p} {a} the coin." for p, a in acts) == body
    flips = [a == "flips" for _, a in acts]
    assert _lists(r["plan"]) == [flips]
    heads = True
    for (person, act), step in zip(acts, _steps(r), strict=True):
        heads ^= act == "flips"
        assert step == f"{person} {act}, {'heads' if heads else 'tails'}"
    assert r["answer"] == ("yes" if sum(flips) % 2 == 0 else "no")


ARITH = {
    r"gets (\d+) more": ("+", ast.Add),
    r"gives away (\d+)": ("-", ast.Sub),
    r"doubles them": ("*", ast.Mult),
    r"triples them": ("*", ast.Mult),
    r"loses half of them": ("/", ast.FloorDiv),
}


def check_arithmetic(r):
    m = re.fullmatch(r"(\w+) has (\d+) (\w+)\. (.+) How many (\w+) does (\w+) have now\?", r["prompt"])
    name, value, item, body, item2, name2 = m.groups()
    assert (item, name) == (item2, name2)
    value = int(value)
    sentences = re.findall(r"(?:He|She) ([^.]+)\.", body)
    tree = ast.parse(r["plan"])
    augs = [n for n in ast.walk(tree) if isinstance(n, ast.AugAssign)]
    assert len(sentences) == len(augs) == r["difficulty"]
    for sentence, aug, step in zip(sentences, augs, _steps(r), strict=True):
        (pattern, (symbol, op_type)) = next((p, v) for p, v in ARITH.items() if re.fullmatch(p, sentence))
        n = {"doubles them": 2, "triples them": 3, "loses half of them": 2}.get(sentence)
        n = n or int(re.fullmatch(pattern, sentence).group(1))
        # The plan applies the same operation with the same operand to the item variable.
        assert isinstance(aug.op, op_type) and aug.target.id == item and ast.literal_eval(aug.value) == n
        new = {"+": value + n, "-": value - n, "*": value * n, "/": value // n}[symbol]
        assert step == f"{value} {symbol} {n} = {new}"
        assert new > 0 and (symbol != "/" or value % 2 == 0)  # exact and positive every step
        value = new
    assert r["answer"] == str(value)


def check_letter_count(r):
    letter, words = re.fullmatch(r'Count the letter "([a-z])" in: ([a-z ]+)', r["prompt"]).groups()
    words = words.split()
    assert _lists(r["plan"]) == [words] and f'word.count("{letter}")' in r["plan"]
    total = 0
    for word, step in zip(words, _steps(r), strict=True):
        total += word.count(letter)
        assert step == f"{word} has {word.count(letter)} {letter}, total {total}"
    assert r["answer"] == str(total) and total >= 1


def check_decimal_compare(r):
    numbers = re.fullmatch(r"Which number is the largest: ([\d., ]+)\?", r["prompt"]).group(1).split(", ")
    assert len(numbers) == r["difficulty"] + 1 and len({Decimal(x) for x in numbers}) == len(numbers)
    assert [float(x) for x in _lists(r["plan"])[0]] == [float(x) for x in numbers[1:]]
    assert f"best = {numbers[0]}\n" in r["plan"]
    best = numbers[0]
    for x, step in zip(numbers[1:], _steps(r), strict=True):
        a, b, larger = re.fullmatch(r"([\d.]+) vs ([\d.]+), larger is ([\d.]+)", step).groups()
        # Padded to the same number of decimals, same values as the numbers compared.
        assert len(a.split(".")[1]) == len(b.split(".")[1])
        assert (Decimal(a), Decimal(b)) == (Decimal(best), Decimal(x))
        best = max(best, x, key=Decimal)
        assert larger == best
    assert r["answer"] == max(numbers, key=Decimal)


def check_even_sum(r):
    numbers = [
        int(x) for x in re.fullmatch(r"Add up the even numbers: ([\d ]+)", r["prompt"]).group(1).split()
    ]
    assert _lists(r["plan"]) == [numbers] and "if x % 2 == 0:" in r["plan"]
    total = 0
    for x, step in zip(numbers, _steps(r), strict=True):
        total += x if x % 2 == 0 else 0
        assert step == f"{x} is {'even' if x % 2 == 0 else 'odd'}, total {total}"
    assert r["answer"] == str(sum(x for x in numbers if x % 2 == 0))


def check_sort(r):
    numbers = [
        int(x) for x in re.fullmatch(r"Sort from smallest to largest: ([\d ]+)", r["prompt"]).group(1).split()
    ]
    assert _lists(r["plan"]) == [[numbers[0]], numbers[1:]]
    for i, step in enumerate(_steps(r), 1):
        assert step == f"insert {numbers[i]}: {' '.join(map(str, sorted(numbers[: i + 1])))}"
    assert r["answer"] == " ".join(map(str, sorted(numbers)))


def check_add(r):
    a, b = re.fullmatch(r"Add: (\d+)\+(\d+)", r["prompt"]).groups()
    assert len(a) == len(b) == r["difficulty"] and a[0] != "0" != b[0]
    assert r["answer"] == str(int(a) + int(b)) and r["response"] == final_line(r["answer"])
    *lines, last = r["plan"].split("\n")
    assert last == f"print({r['answer']})" and len(lines) == len(a)
    carry = 0
    for i, (x, y, line) in enumerate(zip(reversed(a), reversed(b), lines, strict=True)):
        total = int(x) + int(y) + carry
        assert line == f"s{i} = {x}+{y}+{carry}  # {total}"
        carry = total // 10


def check_parity(r):
    bits = re.fullmatch(r"Flips: ([01]+)", r["prompt"]).group(1)
    assert len(bits) == r["difficulty"]
    heads, states = True, ""
    for bit in bits:
        heads ^= bit == "1"
        states += "H" if heads else "T"
    assert r["answer"] == ("heads" if bits.count("1") % 2 == 0 else "tails")
    assert r["response"] == final_line(r["answer"])
    assign, call = ast.parse(r["plan"]).body
    assert assign.targets[0].id == "coin" and ast.literal_eval(assign.value) == states
    assert ast.literal_eval(call.value.args[0]) == r["answer"]


NEST = {
    "inc": lambda x: (x + 1) % 10,
    "dec": lambda x: (x - 1) % 10,
    "dbl": lambda x: 2 * x % 10,
    "sqr": lambda x: x * x % 10,
    "neg": lambda x: -x % 10,
}


def nest_functions(prompt: str) -> tuple[int, list[str]]:
    """The start digit and the functions in execution order (innermost first) of a nest prompt."""
    calls, start, closing = re.fullmatch(r"Eval: ((?:[a-z]{3}\()+)(\d)(\)+)", prompt).groups()
    functions = calls[:-1].split("(")[::-1]
    assert len(closing) == len(functions) and set(functions) <= set(NEST)
    return int(start), functions


def check_nest(r):
    start, functions = nest_functions(r["prompt"])
    assert len(functions) == r["difficulty"]
    body = ast.parse(r["plan"]).body
    assert ast.unparse(body[0]) == f"x = {start}" and ast.unparse(body[-1]) == "print(x)"
    # The plan applies the functions in execution order, no values.
    assert [ast.unparse(s) for s in body[1:-1]] == [f"x = {f}(x)" for f in functions]
    x = start
    for f, step in zip(functions, _steps(r), strict=True):
        x = NEST[f](x)
        assert step == str(x)
    assert r["answer"] == str(x)
    pairs = set(zip(functions, functions[1:], strict=False))
    assert r["meta"]["synth"]["novel"] == bool(pairs & {("sqr", "dbl"), ("neg", "inc")})


CHECKS = {
    "last_letter": check_last_letter,
    "coin_flip": check_coin_flip,
    "arithmetic": check_arithmetic,
    "letter_count": check_letter_count,
    "decimal_compare": check_decimal_compare,
    "even_sum": check_even_sum,
    "sort": check_sort,
    "add": check_add,
    "parity": check_parity,
    "nest": check_nest,
}


def check(record: dict) -> None:
    task = record["task"].removeprefix("synth/")
    ast.parse(record["plan"])  # valid Python; never run
    assert "```" not in record["plan"] and "\n\n" not in record["plan"]
    CHECKS[task](record)


def test_every_task_has_a_checker_and_a_scorer_family():
    assert set(CHECKS) == set(TASKS)
    assert {t.scorer for t in TASKS.values()} <= {"numeric", "exact", "yesno"}


@pytest.mark.parametrize("task", sorted(TASKS))
@pytest.mark.parametrize("k", [1, 2, 3, 4, 5, 6, 7, 8, 12, 20])
def test_response_follows_plan_and_reaches_answer(task, k):
    for index in range(25):
        check(make_record(task, k, seed=7, index=index))


@settings(max_examples=300, deadline=None)
@given(
    task=st.sampled_from(sorted(TASKS)),
    k=st.integers(1, 64),
    seed=st.integers(0, 2**31),
    index=st.integers(0, 10**6),
)
def test_exact_for_any_seed_and_difficulty(task, k, seed, index):
    check(make_record(task, k, seed=seed, index=index))


# The positive controls' plans carry values computed from the prompt (digit sums, coin states), which
# the prompt does not spell out: ``grounded`` would reject them, by design of both.
POSITIVE_CONTROLS = ("add", "parity")


def test_gold_plans_pass_the_mining_filter():
    """What `filter` keeps from mined plans, the gold plans satisfy too (strict ast parse, no leak)."""
    config = FilterConfig(code_strict=True)
    checks = [rule.check for name, rule in RULES.items() if name != "dedup"]
    controls = [rule.check for name, rule in RULES.items() if name not in ("dedup", "grounded")]
    for record in synth_records(SynthConfig(tasks=tuple(TASKS), n=30, k=(1, 3, 6), seed=3)):
        control = record["task"].removeprefix("synth/") in POSITIVE_CONTROLS
        assert check_record(record, config, controls if control else checks) is None, record


def test_deterministic_with_seed_and_ids_stable():
    config = SynthConfig(tasks=tuple(TASKS), n=12, k=(2, 3, 4), seed=5)
    first, second = list(synth_records(config)), list(synth_records(config))
    assert first == second
    assert len({r["id"] for r in first}) == len(first) == 12 * len(TASKS)
    assert first[0]["id"] == f"synth/{next(iter(TASKS))}/k2/s5/0"
    # Tasks interleave and k cycles through the range.
    assert [r["task"] for r in first[: len(TASKS)]] == [f"synth/{t}" for t in TASKS]
    assert [r["difficulty"] for r in first[:: len(TASKS)]] == [2, 3, 4] * 4
    # A record does not depend on which other tasks or how many records were asked for.
    alone = list(synth_records(SynthConfig(tasks=("sort",), n=4, k=(2, 3, 4), seed=5)))
    assert alone == [r for r in first if r["task"] == "synth/sort"][:4]


def test_distinct_seeds_differ():
    a = list(synth_records(SynthConfig(tasks=tuple(TASKS), n=20, seed=1)))
    b = list(synth_records(SynthConfig(tasks=tuple(TASKS), n=20, seed=2)))
    for task in TASKS:
        pa = [r["prompt"] for r in a if r["task"] == f"synth/{task}"]
        pb = [r["prompt"] for r in b if r["task"] == f"synth/{task}"]
        assert pa != pb
        if task != "parity":  # parity at k <= 4 has at most 16 prompts
            assert len(set(pa) & set(pb)) < 5  # coin_flip at k=2 may repeat by chance, not wholesale


def test_exclude_never_produces_an_excluded_prompt():
    train = list(synth_records(SynthConfig(tasks=("coin_flip", "last_letter"), n=200, k=(1,), seed=0)))
    excluded = frozenset(r["prompt"] for r in train)
    held = list(
        synth_records(
            SynthConfig(tasks=("coin_flip", "last_letter"), n=200, k=(1,), seed=0, exclude_prompts=excluded)
        )
    )
    assert not {r["prompt"] for r in held} & excluded
    for r in held:
        check(r)


def test_exclude_gives_up_with_a_clear_error():
    # coin_flip at k=1 has 2 x 30 prompts; exclude them all.
    every = frozenset(make_record("coin_flip", 1, 0, i)["prompt"] for i in range(3000))
    assert len(every) == 60
    with pytest.raises(UsageError, match="no prompt outside the excluded set"):
        make_record("coin_flip", 1, 0, 0, every)


@pytest.mark.parametrize(
    "spec,expected",
    [("3", (3,)), ("2-4", (2, 3, 4)), ("2,5,7", (2, 5, 7)), ("2-3,6", (2, 3, 6)), ("4,4", (4,))],
)
def test_parse_k(spec, expected):
    assert parse_k(spec) == expected


@pytest.mark.parametrize("spec", ["0", "4-2", "x", "2-", "65", ""])
def test_parse_k_rejects(spec):
    with pytest.raises(UsageError):
        parse_k(spec)


def test_parse_tasks():
    assert parse_tasks("all") == tuple(TASKS)
    assert parse_tasks("sort, synth/coin_flip,sort") == ("sort", "coin_flip")


@pytest.mark.parametrize(
    "spec, message",
    [
        ("sort,nope", "unknown synth task nope; known: last_letter"),
        ("", "unknown synth task ''; known: last_letter"),
    ],
)
def test_parse_tasks_rejects(spec, message):
    with pytest.raises(UsageError) as caught:
        parse_tasks(spec)
    assert str(caught.value).startswith(message)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"tasks": ("nope",)}, "unknown synth task 'nope'; known: last_letter"),
        ({"n": -1}, "--n must be >= 0"),
        ({"k": ()}, "no difficulty given"),
    ],
)
def test_config_refuses(settings, message):
    with pytest.raises(UsageError) as caught:
        SynthConfig(**{"tasks": ("sort",), **settings})
    assert str(caught.value).startswith(message)


def test_stage_counts_per_task_and_reads_exclude_files(tmp_path):
    from codeplan_tools.core.stage import StageContext
    from tests.helpers import write_jsonl

    train = list(synth_records(SynthConfig(tasks=("coin_flip",), n=40, k=(1,))))
    path = write_jsonl(tmp_path / "train.jsonl", [{"question": r["prompt"], "answer": "x"} for r in train])
    ctx = StageContext("synth")
    held = list(
        synth_records(SynthConfig(tasks=("coin_flip", "sort"), n=5, k=(1,), exclude=(str(path),)), ctx)
    )
    assert not {r["prompt"] for r in held} & {r["prompt"] for r in train}
    assert ctx.stats.counters == {"written.coin_flip": 5, "written.sort": 5}


def _wrong(answer: str) -> str:
    """A different answer of the same kind."""
    if answer in ("yes", "no"):
        return "no" if answer == "yes" else "yes"
    if re.fullmatch(r"[\d.]+", answer):
        return str(Decimal(answer) + 1)
    if " " in answer:
        return " ".join(reversed(answer.split()))
    return answer[::-1] + "x"


@pytest.mark.parametrize("task", sorted(TASKS))
def test_registered_scorer_accepts_gold_and_rejects_a_wrong_answer(task):
    """Each synth task is in the task registry with a scorer family that grades the gold exactly."""
    from codeplan_tools.eval.scorers import get_scorer
    from codeplan_tools.eval.tasks import resolve_task

    records = list(synth_records(SynthConfig(tasks=(task,), n=12, k=(1, 2, 5), seed=4)))
    spec = resolve_task(records[0])
    assert spec.name == f"synth/{task}" and spec.scorer == TASKS[task].scorer
    assert spec.subtask_values(records[2]) == {"difficulty": "5"} and spec.difficulty == "difficulty"
    scorer = get_scorer(spec.scorer)
    for r in records:
        v = scorer.score(r["response"], r, spec.scorer_options)
        assert v.correct and v.correct_strict, (r["response"], v)
        wrong = r["response"].rsplit("\n", 1)[0] + "\n" + final_line(_wrong(r["answer"]))
        v = scorer.score(wrong, r, spec.scorer_options)
        assert not v.correct and not v.correct_strict, (wrong, v)


def test_keep_gold_plan_adds_a_copy_of_the_plan_and_changes_nothing_else():
    from codeplan_tools.stages.synth import SynthConfig, synth_records

    plain = list(synth_records(SynthConfig(tasks=("arithmetic", "sort"), n=3)))
    kept = list(synth_records(SynthConfig(tasks=("arithmetic", "sort"), n=3, keep_gold_plan=True)))
    assert all("gold_plan" not in r for r in plain)
    for before, after in zip(plain, kept, strict=True):
        assert after.pop("gold_plan") == after["plan"]
        assert after == before
