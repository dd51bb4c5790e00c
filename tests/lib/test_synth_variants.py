"""Plan variants and splits of ``synth`` (issue 22), and the records made before them kept byte for byte.

Plans are run here, in the test only (the library never runs a plan): ``print`` is replaced by a
collector and nest's functions are defined in the namespace, so a plan's printed value can be compared
with the record's ``answer`` or ``plan_answer``.
"""

from __future__ import annotations

import ast
import bisect
import hashlib
import re
from decimal import Decimal

import orjson
import pytest

import codeplan_tools.stages.synth as synth
from codeplan_tools.core.errors import UsageError
from codeplan_tools.stages.synth import TASKS, SynthConfig, make_record, synth_records
from tests.lib.test_synth import NEST, check, nest_functions

NEW = ("add", "parity", "nest")
OLD = ("last_letter", "coin_flip", "arithmetic", "letter_count", "decimal_compare", "even_sum", "sort")
HELD_OUT = ("dbl(sqr(", "inc(neg(")  # as the prompt writes them, outermost first
INDICES = range(30)


def run_plan(plan: str) -> str:
    """What the plan prints (its only print), run in a namespace with nest's functions and insort."""
    printed: list = []
    exec(plan, {"print": printed.append, "insort": bisect.insort, **NEST})  # in the test only
    (value,) = printed
    return str(value)


def same_answer(printed: str, answer: str) -> bool:
    if re.fullmatch(r"-?\d+(\.\d+)?", answer):  # decimal_compare prints a float: 9.9 for "9.9"
        return Decimal(printed) == Decimal(answer)
    return printed == answer


def records(task, variant, ks=(1, 2, 3, 5, 8), split="all", **kwargs):
    return [
        make_record(task, k, 4, i, plan_variant=variant, split=split, **kwargs) for k in ks for i in INDICES
    ]


def sha256(config: SynthConfig) -> str:
    return hashlib.sha256(b"".join(orjson.dumps(r) + b"\n" for r in synth_records(config))).hexdigest()


# ------------------------------------------------------------------------------- existing records


@pytest.mark.parametrize(
    "config, digest",
    [
        # `codeplan synth all --n 20 --k 2-4 --plain` before issue 22 (all = these seven tasks then).
        (
            SynthConfig(tasks=OLD, n=20, k=(2, 3, 4)),
            "4a3f3a39e6c7b8f61a0de72ed00450e63236e7afdfae80742aa662bfb04d8e7f",
        ),
        (
            SynthConfig(tasks=OLD, n=30, k=tuple(range(1, 9)), seed=7, keep_gold_plan=True),
            "79ec84b8610c54ad068c3cd7e502db5f77b5f9dec15c6a34f82d24d12d7da3aa",
        ),
        (
            SynthConfig(
                tasks=("coin_flip", "sort"),
                n=20,
                k=(1,),
                exclude_prompts=frozenset(make_record("coin_flip", 1, 0, i)["prompt"] for i in range(10)),
            ),
            "91c4b49cd788ca544bae08f7d22e230ec53694c885719a375c3784e0431ee091",
        ),
    ],
)
def test_existing_tasks_make_the_same_bytes_as_before(config, digest):
    """Pinned from the code before the new tasks and variants: a record made for (task, k, seed,
    index) earlier is made again, byte for byte (gold plan, split all)."""
    assert sha256(config) == digest


# ------------------------------------------------------------------------------------ gold plans


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_gold_plan_run_prints_the_answer(task):
    for r in records(task, "gold"):
        assert same_answer(run_plan(r["plan"]), r["answer"]), r


def test_nest_response_lists_the_value_after_each_function_in_plan_order():
    for r in records("nest", "gold"):
        start, functions = nest_functions(r["prompt"])
        steps = [line.split(". ", 1)[1] for line in r["response"].split("\n")[:-1]]
        values, x = [], start
        for f in functions:
            x = NEST[f](x)
            values.append(str(x))
        assert steps == values and r["answer"] == values[-1]
        # The plan's order is the reverse of the prompt's (outermost first).
        assert re.findall(r"x = (\w+)\(x\)", r["plan"]) == functions
        assert re.findall(r"(\w+)\(", r["prompt"]) == functions[::-1]


def test_new_tasks_list_their_variants_and_make_each():
    """A task has exactly the variants its examples fill in; --list and the help read them from here."""
    assert TASKS["add"].variants == TASKS["parity"].variants == ("random-values", "nl", "counterfactual")
    assert TASKS["nest"].variants == ("nl", "counterfactual")
    assert all(not TASKS[t].variants and not TASKS[t].held_out for t in OLD)
    fields = {"random-values": "random_plan", "nl": "nl_plan", "counterfactual": "counterfactual"}
    for name, task in TASKS.items():
        ex = task.make(synth._rng(name, 3, 0, 0, 0), 3)
        assert {v for v, f in fields.items() if getattr(ex, f) is not None} == set(task.variants), name


# ---------------------------------------------------------------------------------------- variants


@pytest.mark.parametrize(
    "task, variant", [(t, v) for t in sorted(TASKS) for v in TASKS[t].plan_variants if v != "gold"]
)
def test_a_variant_changes_only_the_plan(task, variant):
    golds = records(task, "gold", ks=(2, 4), keep_gold_plan=True)
    for gold, r in zip(golds, records(task, variant, ks=(2, 4), keep_gold_plan=True), strict=True):
        assert r.pop("gold_plan") == gold.pop("gold_plan") == gold["plan"]
        assert r["meta"]["synth"].pop("plan_variant") == variant
        assert (r.pop("plan_answer", None) is not None) == (variant in ("counterfactual", "other-problem"))
        assert {**r, "plan": gold["plan"]} == gold


@pytest.mark.parametrize("task", NEW)
def test_counterfactual_plans_print_plan_answer_not_the_answer(task):
    for r in records(task, "counterfactual"):
        ast.parse(r["plan"])
        printed = run_plan(r["plan"])
        # nest has no no-change case: replacing its last function by inc or by dec always changes
        # the result (they differ on every digit), so every record has a changed answer.
        assert printed == r["plan_answer"] != r["answer"], r


def test_add_counterfactual_changes_the_units_sum_and_keeps_every_carry():
    for r, gold in zip(records("add", "counterfactual"), records("add", "gold"), strict=True):
        changed, same = r["plan"].split("\n"), gold["plan"].split("\n")
        assert changed[1:-1] == same[1:-1]  # s1.. unchanged: same carries in
        (ops, total), (gold_ops, gold_total) = (line.split("  # ") for line in (changed[0], same[0]))
        assert ops == gold_ops and int(total) // 10 == int(gold_total) // 10 and total != gold_total
        assert r["plan_answer"][:-1] == r["answer"][:-1] and r["plan_answer"][-1] == total[-1]


def test_parity_counterfactual_flips_the_last_state_only():
    for r, gold in zip(records("parity", "counterfactual"), records("parity", "gold"), strict=True):
        states = ast.literal_eval(ast.parse(r["plan"]).body[0].value)
        gold_states = ast.literal_eval(ast.parse(gold["plan"]).body[0].value)
        assert states[:-1] == gold_states[:-1] and states[-1] != gold_states[-1]
        assert r["plan_answer"] == ("heads" if states[-1] == "H" else "tails")


def test_nest_counterfactual_changes_one_function():
    positions = set()
    for r, gold in zip(records("nest", "counterfactual"), records("nest", "gold"), strict=True):
        diff = [
            i
            for i, (a, b) in enumerate(zip(r["plan"].split("\n"), gold["plan"].split("\n"), strict=True))
            if a != b
        ]
        assert len(diff) == 1 and re.fullmatch(r"x = \w{3}\(x\)", r["plan"].split("\n")[diff[0]])
        positions.add(diff[0] == len(gold["plan"].split("\n")) - 2)
    assert positions == {True, False}  # not always the last function


@pytest.mark.parametrize("task", ["add", "parity"])
def test_random_values_keep_the_layout_and_change_the_values(task):
    blank = (
        (lambda p: re.sub(r"\d", "0", p))
        if task == "add"
        else (lambda p: re.sub(r"[HT]|heads|tails", "X", p))
    )
    made = records(task, "random-values")
    golds = records(task, "gold")
    for r, gold in zip(made, golds, strict=True):
        ast.parse(r["plan"])
        assert len(r["plan"]) == len(gold["plan"]) and blank(r["plan"]) == blank(gold["plan"])
        if task == "add":  # s0, s1, ... keep their indices
            assert re.findall(r"^s\d+", r["plan"], re.M) == re.findall(r"^s\d+", gold["plan"], re.M)
    # All but chance: parity at k=1 draws its own plan back a quarter of the time.
    assert sum(r["plan"] != g["plan"] for r, g in zip(made, golds, strict=True)) > 0.75 * len(made)
    assert made == records(task, "random-values")  # drawn from the record's own stream


def test_nl_plans_carry_the_same_content_in_words():
    for r in records("add", "nl"):
        sums = re.findall(
            r"s\d+ = (\d)\+(\d)\+(\d)  # (\d+)",
            make_record("add", r["difficulty"], 4, r["meta"]["synth"]["index"])["plan"],
        )
        said = [f"{a}+{b} is {t}" if i == 0 else f"{a}+{b}+{c} is {t}" for i, (a, b, c, t) in enumerate(sums)]
        assert (
            r["plan"]
            == f"Add the digits from the right with the carry: {', '.join(said)}. Say {r['answer']}."
        )
    for r in records("parity", "nl"):
        states = re.fullmatch(r"The coin is ([HT ]+) after each flip\. Say (heads|tails)\.", r["plan"]).group(
            1
        )
        assert len(states.split()) == r["difficulty"] and states[-1] == r["answer"][0].upper()
    for r in records("nest", "nl"):
        start, functions = nest_functions(r["prompt"])
        assert r["plan"] == f"Start from {start}. Apply {', then '.join(functions)}. Say the result."


@pytest.mark.parametrize("task", sorted(TASKS))
def test_filler_keeps_length_and_lines_and_nothing_else(task):
    for r, gold in zip(records(task, "filler"), records(task, "gold"), strict=True):
        assert len(r["plan"]) == len(gold["plan"]) and set(r["plan"]) <= {".", "\n"}
        assert [m.start() for m in re.finditer("\n", r["plan"])] == [
            m.start() for m in re.finditer("\n", gold["plan"])
        ]
        assert "plan_answer" not in r


@pytest.mark.parametrize("task", sorted(TASKS))
def test_other_problem_is_another_problems_gold_plan_and_answer(task):
    made, golds = records(task, "other-problem"), records(task, "gold")
    for r in made:
        assert same_answer(run_plan(r["plan"]), r["plan_answer"]), r
    # Another problem: its plan differs from the record's own gold plan for most records.
    differ = sum(r["plan"] != g["plan"] for r, g in zip(made, golds, strict=True))
    assert differ > 0.75 * len(made)


# ------------------------------------------------------------------------------------------ splits


def test_train_split_never_composes_a_held_out_pair_and_novel_always_does():
    ks = (2, 3, 5, 8, 16)
    train, novel = records("nest", "gold", ks, "train"), records("nest", "gold", ks, "novel")
    assert not any(pair in r["prompt"] for r in train for pair in HELD_OUT)
    assert all(any(pair in r["prompt"] for pair in HELD_OUT) for r in novel)
    assert {r["meta"]["synth"]["novel"] for r in train} == {False}
    assert {r["meta"]["synth"]["novel"] for r in novel} == {True}
    for r in train + novel:
        check(r)
    # all: both kinds; train redraws only a record that all makes novel, and novel the others.
    every = records("nest", "gold", ks)
    assert {r["meta"]["synth"]["novel"] for r in every} == {True, False}
    for r, t, n in zip(every, train, novel, strict=True):
        assert (r == t) != r["meta"]["synth"]["novel"] and (r == n) == r["meta"]["synth"]["novel"]


def test_train_split_at_the_largest_k_finds_a_record():
    """At k=64 under 1% of draws avoid both pairs: the split has its own, larger redraw budget."""
    for i in range(3):
        r = make_record("nest", 64, 0, i, split="train")
        assert not any(pair in r["prompt"] for pair in HELD_OUT)


def test_other_problem_plans_of_the_train_split_stay_in_it():
    for r in records("nest", "other-problem", (3, 8), "train"):
        functions = re.findall(r"x = (\w+)\(x\)", r["plan"])
        assert not set(zip(functions, functions[1:], strict=False)) & {("sqr", "dbl"), ("neg", "inc")}


def test_a_split_that_cannot_be_met_is_a_usage_error(monkeypatch):
    monkeypatch.setattr(synth, "MAX_SPLIT_ATTEMPTS", 200)
    novel = frozenset(make_record("nest", 2, 0, i, split="novel")["prompt"] for i in range(400))
    assert len(novel) == 20  # 2 pairs x 10 start digits
    with pytest.raises(UsageError, match="no prompt in --split novel outside the excluded set"):
        make_record("nest", 2, 0, 0, novel, split="novel")


# ----------------------------------------------------------------------------- config and identity


@pytest.mark.parametrize("variant", ["gold", "other-problem", "filler", "counterfactual", "nl"])
@pytest.mark.parametrize("split", ["all", "train", "novel"])
def test_same_arguments_same_bytes(variant, split):
    config = SynthConfig(tasks=("nest",), n=12, k=(2, 5), seed=3, plan_variant=variant, split=split)
    assert sha256(config) == sha256(config)
    other_seed = SynthConfig(tasks=("nest",), n=12, k=(2, 5), seed=4, plan_variant=variant, split=split)
    assert sha256(other_seed) != sha256(config)


def test_new_task_records_do_not_depend_on_the_others_asked_for():
    config = SynthConfig(tasks=NEW, n=6, plan_variant="counterfactual")
    together = list(synth_records(config))
    alone = [
        r for t in NEW for r in synth_records(SynthConfig(tasks=(t,), n=6, plan_variant="counterfactual"))
    ]
    assert sorted(together, key=lambda r: r["id"]) == sorted(alone, key=lambda r: r["id"])


@pytest.mark.parametrize(
    "settings, message",
    [
        (
            {"tasks": ("add", "last_letter"), "plan_variant": "nl"},
            "--plan-variant nl is not available for synth/last_letter; it has gold, other-problem, filler",
        ),
        (
            {"tasks": ("nest",), "plan_variant": "random-values"},
            "--plan-variant random-values is not available for synth/nest; it has gold, other-problem, "
            "filler, nl, counterfactual",
        ),
        ({"tasks": ("nest", "sort"), "split": "train"}, "synth/sort has no held-out compositions"),
        ({"tasks": ("nest",), "split": "novel", "k": (1, 2)}, "--split novel needs every k >= 2"),
        ({"tasks": ("nest",), "plan_variant": "nope"}, "unknown plan variant 'nope'"),
        ({"tasks": ("nest",), "split": "nope"}, "unknown split 'nope'"),
    ],
)
def test_config_refuses_what_a_task_lacks(settings, message):
    with pytest.raises(UsageError) as caught:
        SynthConfig(**settings)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
