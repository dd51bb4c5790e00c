"""Synthetic multi-step reasoning tasks with exact ⟨prompt, plan, response, answer⟩ and a difficulty knob.

Every task makes one example from a random generator and a difficulty ``k`` (what one unit of k is
depends on the task; ``TASKS[name].k_means`` says). The plan is a short Python-style code-form plan in
the CodePlan style. It is valid Python (``ast.parse`` accepts it) but it is never run. The response
ends with ``The answer is X.``; ``answer`` is X. Two kinds of task:

- The CodePlan tasks (last_letter ... sort, and ``nest``): the plan is the loop, condition or
  operations behind the response, over the instance's data, without the intermediate results; the
  response follows it one numbered line per step (k steps).
- The positive controls ``add`` and ``parity``: the plan carries every intermediate value and the
  answer, and the response is the answer alone. A student that reads its plan can only gain from it,
  which bounds what a value-free plan can give.

``nest`` is the structure family: the prompt writes the functions outermost first (``dbl(inc(3))``)
while its plan lists them in execution order, innermost first, with no values. Two compositions are
held out (``NEST_HELD_OUT``: dbl applied to sqr's output, inc to neg's), so a model trained on the
``train`` split can be tested on ``novel`` compositions of functions it has seen.

Plan variants (``plan_variant``; ``response`` and ``answer`` never change, only ``plan``):
``gold`` (the task's plan); ``other-problem`` (the gold plan of another problem of the same task and
k, drawn from a separate stream of the record's identity, in the same split, never with the record's
own prompt; every task has it); ``filler`` (the gold plan with each character but newlines replaced
by ``.``: the same length and lines, no content); and per task (``TASKS[name].variants``)
``random-values`` (the plan's layout with random values: add, parity), ``nl`` (the same plan in
words: add, parity, nest) and ``counterfactual`` (a plan changed to print another answer: add's units
sum with the same carry, parity's last state, one of nest's functions). ``counterfactual`` and
``other-problem`` records carry ``plan_answer``, the answer their plan leads to. Asking a task for a
variant it lacks, or ``--split train|novel`` of a task without held-out compositions, is a usage
error before any record is made.

Prompts and responses use a few constant phrases on purpose: the quickstart trains a tiny model from
scratch on them (see ENV-NOTES, "How fast a tiny from-scratch model learns").

Records (:class:`SynthStage`, :func:`synth_records`) carry ``id``
(``synth/<task>/k<k>/s<seed>/<index>``, stable), ``task`` (``synth/<task>``), ``prompt``, ``plan``,
``response``, ``answer``, ``plan_answer`` (the two variants above), ``difficulty`` (= k) and
``meta.synth`` = ``{"k", "seed", "index"}``, plus ``novel`` (nest: a held-out composition occurs) and
``plan_variant`` (when not gold). The same (task, k, seed, index) always gives the same record,
whatever other tasks or counts are asked for in the same run; a gold record of the ``all`` split is the
one earlier versions made. With ``keep_gold_plan`` (``--keep-gold-plan``) a record also carries
``gold_plan``, the gold plan, which ``extract`` leaves alone (it sets ``plan`` only), so ``score`` can
measure a mined plan against it (``meta.score.plan``).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from itertools import chain
from typing import TYPE_CHECKING, Literal, get_args

from codeplan_tools.core.errors import UsageError

if TYPE_CHECKING:
    from codeplan_tools.core.stage import StageContext

PlanVariant = Literal["gold", "random-values", "nl", "other-problem", "filler", "counterfactual"]
Split = Literal["all", "train", "novel"]
PLAN_VARIANTS, SPLITS = get_args(PlanVariant), get_args(Split)
# Every task has these; the others only where its Example fills them in (SynthTask.variants).
COMMON_VARIANTS = ("gold", "other-problem", "filler")


@dataclass(frozen=True)
class Example:
    prompt: str
    plan: str
    response: str
    answer: str
    # The task's plan variants (None where it has none; see the module docstring).
    random_plan: str | None = None
    nl_plan: str | None = None
    counterfactual: tuple[str, str] | None = None  # (plan, the answer that plan prints)
    # Tasks with held-out compositions: whether one occurs in this example.
    novel: bool | None = None


@dataclass(frozen=True)
class SynthTask:
    name: str
    make: Callable[[random.Random, int], Example]
    # The score family that judges it (see codeplan_tools.eval.scorers): numeric, exact or yesno.
    scorer: str
    # What one unit of difficulty k is for this task.
    k_means: str
    description: str
    # The plan variants it has beyond COMMON_VARIANTS: random-values, nl, counterfactual.
    variants: tuple[str, ...] = ()
    # (inner, outer) function pairs the train split never composes (--split).
    held_out: frozenset[tuple[str, str]] = frozenset()

    @property
    def plan_variants(self) -> tuple[str, ...]:
        return (*COMMON_VARIANTS, *self.variants)


TASKS: dict[str, SynthTask] = {}
MAX_K = 64
# Redraws allowed per record when its prompt is excluded.
MAX_ATTEMPTS = 1000
# ... and when a split must hold too: nest at k=64 avoids both held-out pairs in ~0.3% of draws.
MAX_SPLIT_ATTEMPTS = 100_000


def _task(
    name: str,
    scorer: str,
    k_means: str,
    variants: tuple[str, ...] = (),
    held_out: frozenset[tuple[str, str]] = frozenset(),
):
    def register(make: Callable[[random.Random, int], Example]):
        doc = (make.__doc__ or "").strip().splitlines()[0]
        TASKS[name] = SynthTask(name, make, scorer, k_means, doc, variants, held_out)
        return make

    return register


def final_line(answer: str) -> str:
    return f"The answer is {answer}."


def _worked(steps: Iterable[str], answer: str) -> str:
    lines = [f"{i}. {s}" for i, s in enumerate(steps, 1)]
    return "\n".join([*lines, final_line(answer)])


# Short common words (3-8 letters) for the word tasks; a fixed list so outputs never depend on the system.
_WORD_LIST = (
    "apple banana cherry grape lemon mango melon peach pear plum berry olive onion pepper potato "
    "carrot bread butter cheese honey sugar salt water juice coffee milk table chair window door house "
    "garden river mountain forest ocean island desert valley cloud storm rain snow wind summer winter "
    "autumn spring morning evening night moon star planet rocket engine wheel bottle basket pocket "
    "letter paper pencil marker eraser book story poem music guitar piano drum violin singer dancer "
    "doctor farmer pilot sailor baker tiger lion zebra horse camel rabbit turtle monkey parrot eagle "
    "falcon salmon shark whale dolphin spider beetle candle lantern mirror pillow blanket jacket shoe "
    "hat glove scarf button ribbon silver golden purple orange yellow green black white brown planet "
    "castle bridge tunnel tower market street circle square number puzzle riddle secret wonder travel"
).split()
WORDS = tuple(dict.fromkeys(_WORD_LIST))  # drop repeats, keep order

NAMES = (
    ("Tom", "He"), ("Ann", "She"), ("Bob", "He"), ("Eve", "She"), ("Sam", "He"), ("Mia", "She"),
    ("Leo", "He"), ("Zoe", "She"), ("Max", "He"), ("Amy", "She"), ("Ben", "He"), ("Ivy", "She"),
    ("Dan", "He"), ("Kim", "She"), ("Jack", "He"), ("Lily", "She"), ("Noah", "He"), ("Emma", "She"),
    ("Liam", "He"), ("Ella", "She"), ("Owen", "He"), ("Ruby", "She"), ("Finn", "He"), ("Nora", "She"),
    ("Hugo", "He"), ("Rosa", "She"), ("Ivan", "He"), ("Lena", "She"), ("Omar", "He"), ("Sara", "She"),
)  # fmt: skip
ITEMS = ("apples", "pens", "books", "coins", "cards", "stamps", "eggs", "cookies", "marbles", "shells")


def _words(rng: random.Random, k: int) -> list[str]:
    return rng.sample(WORDS, k) if k <= len(WORDS) else [rng.choice(WORDS) for _ in range(k)]


def _list_literal(items: Iterable) -> str:
    return "[" + ", ".join(f'"{x}"' if isinstance(x, str) else str(x) for x in items) + "]"


@_task("last_letter", "exact", "words")
def last_letter(rng: random.Random, k: int) -> Example:
    """Concatenate the last letters of k words (the Last Letter Concatenation benchmark)."""
    words = _words(rng, k)
    steps, so_far = [], ""
    for w in words:
        so_far += w[-1]
        steps.append(f"{w} ends in {w[-1]}, so far {so_far}")
    plan = f'result = ""\nfor word in {_list_literal(words)}:\n    result += word[-1]\nprint(result)'
    return Example(f"Join the last letters of: {' '.join(words)}", plan, _worked(steps, so_far), so_far)


@_task("coin_flip", "yesno", "people who flip or do not flip")
def coin_flip(rng: random.Random, k: int) -> Example:
    """A coin starts heads up; k people flip it or not; is it still heads up? (the Coin Flip benchmark)."""
    people = [name for name, _ in (rng.sample(NAMES, k) if k <= len(NAMES) else rng.choices(NAMES, k=k))]
    flips = [rng.random() < 0.5 for _ in range(k)]
    sentences, steps, heads = ["A coin is heads up."], [], True
    for person, flip in zip(people, flips, strict=True):
        heads ^= flip
        side = "heads" if heads else "tails"
        sentences.append(f"{person} flips the coin." if flip else f"{person} does not flip the coin.")
        steps.append(f"{person} flips, {side}" if flip else f"{person} does not flip, {side}")
    sentences.append("Is the coin still heads up?")
    answer = "yes" if heads else "no"
    plan = (
        'coin = "heads"\n'
        f"for flips in {_list_literal(flips)}:  # {', '.join(people)}\n"
        "    if flips:\n"
        '        coin = "tails" if coin == "heads" else "heads"\n'
        'print("yes" if coin == "heads" else "no")'
    )
    return Example(" ".join(sentences), plan, _worked(steps, answer), answer)


@_task("arithmetic", "numeric", "operations")
def arithmetic(rng: random.Random, k: int) -> Example:
    """A word problem: someone has some items and k operations (+, -, double/triple, half) change the count."""
    (name, pronoun), item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(2, 20)
    sentences, plan, steps = [f"{name} has {value} {item}."], [f"{item} = {value}"], []
    for _ in range(k):
        # Only operations that keep the count a small positive whole number.
        ops = ["add"] + ["sub"] * (value >= 2) + ["mul"] * (value <= 50) + ["half"] * (value % 2 == 0)
        op = rng.choice(ops)
        if op == "add":
            n = rng.randint(1, 20)
            sentence, code, step, new = f"gets {n} more.", f"+= {n}", f"{value} + {n}", value + n
        elif op == "sub":
            n = rng.randint(1, min(value - 1, 20))
            sentence, code, step, new = f"gives away {n}.", f"-= {n}", f"{value} - {n}", value - n
        elif op == "mul":
            n = rng.choice((2, 3))
            verb = "doubles" if n == 2 else "triples"
            sentence, code, step, new = f"{verb} them.", f"*= {n}", f"{value} * {n}", value * n
        else:
            sentence, code, step, new = "loses half of them.", "//= 2", f"{value} / 2", value // 2
        sentences.append(f"{pronoun} {sentence}")
        plan.append(f"{item} {code}")
        steps.append(f"{step} = {new}")
        value = new
    sentences.append(f"How many {item} does {name} have now?")
    plan.append(f"print({item})")
    return Example(" ".join(sentences), "\n".join(plan), _worked(steps, str(value)), str(value))


@_task("letter_count", "numeric", "words")
def letter_count(rng: random.Random, k: int) -> Example:
    """Count how often a letter occurs in k words, word by word with a running total."""
    words = _words(rng, k)
    letter = rng.choice(rng.choice(words))
    steps, total = [], 0
    for w in words:
        total += w.count(letter)
        steps.append(f"{w} has {w.count(letter)} {letter}, total {total}")
    plan = (
        f'total = 0\nfor word in {_list_literal(words)}:\n    total += word.count("{letter}")\nprint(total)'
    )
    return Example(
        f'Count the letter "{letter}" in: {" ".join(words)}', plan, _worked(steps, str(total)), str(total)
    )


def _decimal(rng: random.Random, whole: int) -> str:
    digits = rng.choice((1, 2))
    frac = rng.randint(0, 10**digits - 1)
    if frac % 10 == 0:  # no trailing zero: 9.10 is written 9.1
        frac += rng.randint(1, 9)
    return f"{whole}.{frac:0{digits}d}"


def _pad(a: str, b: str) -> tuple[str, str]:
    width = max(len(a.split(".")[1]), len(b.split(".")[1]))
    a_whole, a_frac = a.split(".")
    b_whole, b_frac = b.split(".")
    return f"{a_whole}.{a_frac.ljust(width, '0')}", f"{b_whole}.{b_frac.ljust(width, '0')}"


@_task("decimal_compare", "numeric", "comparisons (k + 1 numbers)")
def decimal_compare(rng: random.Random, k: int) -> Example:
    """Find the largest of k + 1 decimals such as 9.11 and 9.9, comparing after padding the decimals."""
    base = rng.randint(0, 9)
    numbers: list[str] = []
    while len(numbers) < k + 1:
        whole = base if rng.random() < 0.7 else max(0, base + rng.choice((-1, 1)))
        x = _decimal(rng, whole)
        if all(Decimal(x) != Decimal(y) for y in numbers):
            numbers.append(x)
    best, steps = numbers[0], []
    for x in numbers[1:]:
        a, b = _pad(best, x)
        if Decimal(x) > Decimal(best):
            best = x
        steps.append(f"{a} vs {b}, larger is {best}")
    plan = (
        f"best = {numbers[0]}\nfor x in [{', '.join(numbers[1:])}]:\n"
        "    if x > best:  # pad the decimals to the same length, then compare\n"
        "        best = x\nprint(best)"
    )
    prompt = f"Which number is the largest: {', '.join(numbers)}?"
    return Example(prompt, plan, _worked(steps, best), best)


@_task("even_sum", "numeric", "numbers")
def even_sum(rng: random.Random, k: int) -> Example:
    """Add up the even numbers of a list of k numbers (a loop with a condition)."""
    numbers = [rng.randint(1, 50) for _ in range(k)]
    steps, total = [], 0
    for x in numbers:
        if x % 2 == 0:
            total += x
        steps.append(f"{x} is {'even' if x % 2 == 0 else 'odd'}, total {total}")
    plan = (
        f"total = 0\nfor x in {_list_literal(numbers)}:\n    if x % 2 == 0:\n        total += x\nprint(total)"
    )
    prompt = f"Add up the even numbers: {' '.join(map(str, numbers))}"
    return Example(prompt, plan, _worked(steps, str(total)), str(total))


@_task("sort", "exact", "insertions (k + 1 numbers)")
def sort(rng: random.Random, k: int) -> Example:
    """Sort k + 1 distinct numbers by insertion, one number inserted per step."""
    numbers = rng.sample(range(1, 100), k + 1)
    done, steps = [numbers[0]], []
    for x in numbers[1:]:
        done = sorted([*done, x])
        steps.append(f"insert {x}: {' '.join(map(str, done))}")
    answer = " ".join(map(str, done))
    plan = (
        f"done = [{numbers[0]}]\nfor x in {_list_literal(numbers[1:])}:\n"
        "    insort(done, x)  # before the first larger number\n"
        'print(" ".join(map(str, done)))'
    )
    prompt = f"Sort from smallest to largest: {' '.join(map(str, numbers))}"
    return Example(prompt, plan, _worked(steps, answer), answer)


def _digit(rng: random.Random) -> str:
    return str(rng.randint(0, 9))


def _add_plan(rows: Iterable[tuple[str, str, str, str]], printed: str) -> str:
    """One line per digit from the units up, ``s{i} = a+b+carry  # sum``, then ``print(answer)``."""
    lines = [f"s{i} = {a}+{b}+{carry}  # {total}" for i, (a, b, carry, total) in enumerate(rows)]
    return "\n".join([*lines, f"print({printed})"])


@_task("add", "numeric", "digits per operand", ("random-values", "nl", "counterfactual"))
def add(rng: random.Random, k: int) -> Example:
    """Add two k-digit numbers (a positive control: the plan carries every digit sum and the answer)."""
    a, b = ([rng.randint(1, 9)] + [rng.randint(0, 9) for _ in range(k - 1)] for _ in range(2))
    answer = str(int("".join(map(str, a))) + int("".join(map(str, b))))
    rows, carry = [], 0
    for x, y in zip(reversed(a), reversed(b), strict=True):  # from the units up
        rows.append((str(x), str(y), str(carry), str(x + y + carry)))
        carry = (x + y + carry) // 10
    prompt = f"Add: {''.join(map(str, a))}+{''.join(map(str, b))}"
    # random-values: every digit redrawn, same layout; a printed number keeps a nonzero lead (012 is
    # not Python).
    random_rows = [(_digit(rng), _digit(rng), _digit(rng), "".join(_digit(rng) for _ in t)) for *_, t in rows]
    lead = str(rng.randint(1, 9) if len(answer) > 1 else rng.randint(0, 9))
    random_plan = _add_plan(random_rows, lead + "".join(_digit(rng) for _ in answer[1:]))
    # counterfactual: another units digit for s0 with the same tens digit, so every carry stays.
    s0 = int(rows[0][3])
    units = rng.choice([d for d in range(10) if d != s0 % 10])
    changed = answer[:-1] + str(units)
    counter_plan = _add_plan([(*rows[0][:3], str(s0 // 10 * 10 + units)), *rows[1:]], changed)
    said = [f"{x}+{y} is {t}" if i == 0 else f"{x}+{y}+{c} is {t}" for i, (x, y, c, t) in enumerate(rows)]
    nl_plan = f"Add the digits from the right with the carry: {', '.join(said)}. Say {answer}."
    plan = _add_plan(rows, answer)
    return Example(
        prompt, plan, final_line(answer), answer, random_plan, nl_plan, counterfactual=(counter_plan, changed)
    )


def _parity_plan(states: str, side: str) -> str:
    return f'coin = "{states}"  # the side after each flip\nprint("{side}")'


def _side(states: str) -> str:
    return "heads" if states[-1] == "H" else "tails"


@_task("parity", "exact", "flips", ("random-values", "nl", "counterfactual"))
def parity(rng: random.Random, k: int) -> Example:
    """A coin starts heads and each 1 of a k-bit string flips it: which side is up? (a positive control: the plan carries every state)."""
    bits = "".join(rng.choice("01") for _ in range(k))
    states, heads = [], True
    for bit in bits:
        heads ^= bit == "1"
        states.append("H" if heads else "T")
    gold = "".join(states)
    answer = _side(gold)
    random_states = "".join(rng.choice("HT") for _ in gold)
    random_plan = _parity_plan(random_states, rng.choice(("heads", "tails")))
    # counterfactual: the last state flipped, so the plan prints the other side.
    changed = gold[:-1] + ("T" if gold[-1] == "H" else "H")
    counter = (_parity_plan(changed, _side(changed)), _side(changed))
    nl_plan = f"The coin is {' '.join(gold)} after each flip. Say {answer}."
    plan = _parity_plan(gold, answer)
    return Example(
        f"Flips: {bits}", plan, final_line(answer), answer, random_plan, nl_plan, counterfactual=counter
    )


# nest's functions on one digit, all mod 10.
NEST_FUNCTIONS: dict[str, Callable[[int], int]] = {
    "inc": lambda x: (x + 1) % 10,
    "dec": lambda x: (x - 1) % 10,
    "dbl": lambda x: 2 * x % 10,
    "sqr": lambda x: x * x % 10,
    "neg": lambda x: -x % 10,
}
NEST_NAMES = tuple(NEST_FUNCTIONS)
# (inner, outer): dbl applied directly to sqr's output, inc to neg's (dbl(sqr(, inc(neg().
NEST_HELD_OUT = frozenset({("sqr", "dbl"), ("neg", "inc")})


def _nest_values(start: int, functions: Iterable[str]) -> list[int]:
    values, x = [], start
    for name in functions:
        x = NEST_FUNCTIONS[name](x)
        values.append(x)
    return values


def _nest_plan(start: int, functions: Iterable[str]) -> str:
    return "\n".join([f"x = {start}", *(f"x = {f}(x)" for f in functions), "print(x)"])


@_task("nest", "numeric", "function applications", ("nl", "counterfactual"), NEST_HELD_OUT)
def nest(rng: random.Random, k: int) -> Example:
    """Evaluate k nested one-digit functions (inc, dec, dbl, sqr, neg, mod 10), written outermost first.

    The counterfactual changes one function (positions and replacements tried in a shuffled order) so
    that the plan's result differs from the answer. Such a change always exists (the last function
    replaced by inc or by dec: they differ on every digit); if none did, the first change would be kept
    with plan_answer equal to the answer.
    """
    start = rng.randint(0, 9)
    functions = [rng.choice(NEST_NAMES) for _ in range(k)]  # execution order, innermost first
    values = _nest_values(start, functions)
    answer = str(values[-1])
    prompt = "Eval: " + "".join(f"{f}(" for f in reversed(functions)) + f"{start}" + ")" * k
    changes = [(i, g) for i in range(k) for g in NEST_FUNCTIONS if g != functions[i]]
    rng.shuffle(changes)
    plans = ([*functions[:i], g, *functions[i + 1 :]] for i, g in changes)
    first = next(plans)
    changed = next((p for p in chain([first], plans) if _nest_values(start, p)[-1] != values[-1]), first)
    counter = (_nest_plan(start, changed), str(_nest_values(start, changed)[-1]))
    nl_plan = f"Start from {start}. Apply {', then '.join(functions)}. Say the result."
    novel = any(pair in NEST_HELD_OUT for pair in zip(functions, functions[1:], strict=False))
    response = _worked(map(str, values), answer)
    plan = _nest_plan(start, functions)
    return Example(prompt, plan, response, answer, nl_plan=nl_plan, counterfactual=counter, novel=novel)


# ---------------------------------------------------------------------------------------------- records


@dataclass(kw_only=True)
class SynthConfig:
    """What ``synth`` makes: ``n`` records per task, k cycling through ``k``."""

    tasks: tuple[str, ...]
    """Task names (see ``TASKS``; :func:`parse_tasks` reads 'all' or a comma-separated list)."""
    n: int = 100
    """Records per task."""
    k: tuple[int, ...] = (2, 3, 4)
    """Difficulties (steps per response); records cycle through them (:func:`parse_k` reads a number,
    a range or a list)."""
    seed: int = 0
    """Random seed; the same seed gives the same records."""
    exclude: tuple[str, ...] = ()
    """Never produce a prompt found in FILE's records (e.g. the training set, when making a held-out
    set). Read when the stage runs, as its inputs."""
    exclude_prompts: frozenset[str] = frozenset()
    """Prompts not to produce, given directly (library use)."""
    keep_gold_plan: bool = False
    """Also write the gold plan as 'gold_plan': extract replaces 'plan' with a mined one and keeps other
    fields, so 'codeplan score' can then measure the mined plans' fidelity (meta.score.plan)."""
    plan_variant: PlanVariant = "gold"
    """The plan written as 'plan' (response and answer stay): gold; other-problem (the gold plan of
    another problem of the task and k); filler (each character of the gold plan but newlines replaced by
    '.'); random-values (the plan's layout with random values: add, parity); nl (the plan in words: add,
    parity, nest); counterfactual (a plan changed to print another answer: add, parity, nest).
    counterfactual and other-problem records carry 'plan_answer', the answer their plan leads to."""
    split: Split = "all"
    """Tasks with held-out compositions (nest): all; train (no held-out composition occurs); novel (at
    least one occurs). meta.synth.novel says which a record is."""

    def __post_init__(self) -> None:
        for task in self.tasks:
            if task not in TASKS:
                raise UsageError(f"unknown synth task {task!r}; known: {', '.join(TASKS)}")
        if self.n < 0:
            raise UsageError("--n must be >= 0")
        if not self.k:
            raise UsageError("no difficulty given")
        for task in self.tasks:
            check_options(task, self.plan_variant, self.split)
        if self.split == "novel" and min(self.k) < 2:
            raise UsageError("--split novel needs every k >= 2: a composition takes two functions")


def check_options(task: str, plan_variant: str, split: str) -> None:
    """A UsageError unless ``task`` has ``plan_variant`` and ``split``."""
    spec = TASKS[task]
    if plan_variant not in PLAN_VARIANTS:
        raise UsageError(f"unknown plan variant {plan_variant!r}; known: {', '.join(PLAN_VARIANTS)}")
    if plan_variant not in spec.plan_variants:
        raise UsageError(
            f"--plan-variant {plan_variant} is not available for synth/{task}; "
            f"it has {', '.join(spec.plan_variants)}"
        )
    if split not in SPLITS:
        raise UsageError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    if split != "all" and not spec.held_out:
        with_held_out = [name for name, t in TASKS.items() if t.held_out]
        raise UsageError(
            f"synth/{task} has no held-out compositions, which --split {split} needs; "
            f"use --split all or a task that has them ({', '.join(with_held_out)})"
        )


def parse_tasks(spec: str) -> tuple[str, ...]:
    """``all`` or a comma-separated list of task names (``synth/`` prefix allowed)."""
    if spec.strip() == "all":
        return tuple(TASKS)
    names = [s.strip().removeprefix("synth/") for s in spec.split(",") if s.strip()]
    unknown = [n for n in names if n not in TASKS]
    if unknown or not names:
        raise UsageError(
            f"unknown synth task {', '.join(unknown) or repr(spec)}; known: {', '.join(TASKS)} or all"
        )
    return tuple(dict.fromkeys(names))


def parse_k(spec: str) -> tuple[int, ...]:
    """Difficulties: ``3``, ``2-4``, ``2,5,7`` or a mix such as ``2-4,6``."""
    ks: list[int] = []
    for part in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not m:
            raise UsageError(
                f"bad difficulty {part!r}: use a number, a range such as 2-4, or a list such as 2,5"
            )
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if not 1 <= lo <= hi <= MAX_K:
            raise UsageError(f"difficulty {part.strip()} out of range: k must satisfy 1 <= k <= {MAX_K}")
        ks.extend(range(lo, hi + 1))
    return tuple(dict.fromkeys(ks))


def _rng(task: str, k: int, seed: int, index: int, attempt: int, stream: str = "") -> random.Random:
    # Derived from the record's identity, not from a shared stream: records do not depend on each other.
    # A named stream (other-problem) hashes a different string; the record's own stream is unchanged.
    key = f"{task}/{k}/{seed}/{index}/{attempt}" + (f"/{stream}" if stream else "")
    digest = hashlib.sha256(key.encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _draw(
    task: str, k: int, seed: int, index: int, split: str, keep: Callable[[str], bool], stream: str = ""
) -> Example:
    """The first example of the record's stream (attempt 0, 1, ...) in ``split`` whose prompt ``keep``
    accepts."""
    make, attempts = TASKS[task].make, MAX_ATTEMPTS if split == "all" else MAX_SPLIT_ATTEMPTS
    for attempt in range(attempts):
        ex = make(_rng(task, k, seed, index, attempt, stream), k)
        if (split == "all" or (split == "novel") == ex.novel) and keep(ex.prompt):
            return ex
    raise UsageError(
        f"synth/{task} at k={k}: no prompt outside the excluded set after {attempts} draws; "
        "use a larger k or exclude fewer prompts"
        if split == "all"
        else f"synth/{task} at k={k}: no prompt in --split {split} outside the excluded set after "
        f"{attempts} draws; use a smaller k or exclude fewer prompts"
    )


def make_record(
    task: str,
    k: int,
    seed: int = 0,
    index: int = 0,
    exclude: frozenset[str] = frozenset(),
    *,
    plan_variant: str = "gold",
    split: str = "all",
    keep_gold_plan: bool = False,
) -> dict:
    """The record for one (task, k, seed, index); redrawn while its prompt is in ``exclude`` or it is
    outside ``split``; ``plan`` is ``plan_variant`` (see :class:`SynthConfig`)."""
    check_options(task, plan_variant, split)
    ex = _draw(task, k, seed, index, split, lambda prompt: prompt not in exclude)
    plan, plan_answer = _variant(ex, task, k, seed, index, plan_variant, split)
    record: dict = {
        "id": f"synth/{task}/k{k}/s{seed}/{index}",
        "task": f"synth/{task}",
        "prompt": ex.prompt,
        "plan": plan,
        "response": ex.response,
        "answer": ex.answer,
    }
    if plan_answer is not None:
        record["plan_answer"] = plan_answer
    meta: dict = {"k": k, "seed": seed, "index": index}
    if ex.novel is not None:
        meta["novel"] = ex.novel
    if plan_variant != "gold":
        meta["plan_variant"] = plan_variant
    record |= {"difficulty": k, "meta": {"synth": meta}}
    if keep_gold_plan:
        record["gold_plan"] = ex.plan
    return record


def _variant(
    ex: Example, task: str, k: int, seed: int, index: int, plan_variant: str, split: str
) -> tuple[str, str | None]:
    """The plan written for ``plan_variant`` and the answer it leads to (None: not written)."""
    if plan_variant == "gold":
        return ex.plan, None
    if plan_variant == "filler":
        return re.sub(r"[^\n]", ".", ex.plan), None
    if plan_variant == "other-problem":
        # Same split, so a train set's plans never show a held-out composition; exclude is about the
        # prompts written, and this prompt is not.
        other = _draw(task, k, seed, index, split, lambda prompt: prompt != ex.prompt, "other-problem")
        return other.plan, other.answer
    if plan_variant == "counterfactual" and ex.counterfactual is not None:
        return ex.counterfactual
    plan = {"random-values": ex.random_plan, "nl": ex.nl_plan}.get(plan_variant)
    if plan is None:  # check_options refuses it first; a task whose maker forgot the variant lands here
        raise UsageError(f"synth/{task} made no {plan_variant} plan")
    return plan, None


class SynthStage:
    """``synth`` as a stage: a source (no records in), ``n`` records per task out, tasks interleaved,
    k = ``k[index % len(k)]``; counts ``written.<task>`` (``run_stage`` counts ``written``)."""

    name = "synth"

    def __init__(self, config: SynthConfig) -> None:
        self.config = config

    def run(self, records: Iterable[dict], ctx: StageContext) -> Iterator[dict]:
        config, stats = self.config, ctx.stats
        exclude = config.exclude_prompts | load_prompts(config.exclude)
        for index in range(config.n):
            k = config.k[index % len(config.k)]
            for task in config.tasks:
                record = make_record(
                    task,
                    k,
                    config.seed,
                    index,
                    exclude,
                    plan_variant=config.plan_variant,
                    split=config.split,
                    keep_gold_plan=config.keep_gold_plan,
                )
                stats.inc(f"written.{task}")
                yield record


def synth_records(config: SynthConfig, ctx: StageContext | None = None) -> Iterator[dict]:
    """The library twin of ``codeplan synth``: the records ``config`` asks for (``ctx``: to read the
    counters from; left out, an in-memory ``StageContext("synth")``)."""
    from codeplan_tools.core.stage import StageContext

    return SynthStage(config).run(iter(()), ctx or StageContext("synth"))


def load_prompts(paths: Iterable[str]) -> frozenset[str]:
    """The prompts of the records in ``paths`` (any input shape ``normalize`` reads)."""
    from codeplan_tools.core.records import find_prompt
    from codeplan_tools.core.streams import read_records

    paths = list(paths)
    if not paths:
        return frozenset()
    return frozenset(
        p for r in read_records(paths) if isinstance(r, dict) and (p := find_prompt(r)) is not None
    )
