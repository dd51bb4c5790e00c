"""Synthetic multi-step reasoning tasks with exact ⟨prompt, plan, response, answer⟩ and a difficulty knob.

Every task makes one example from a random generator and a difficulty ``k``, the number of numbered
steps in the worked response (what one step is depends on the task; ``TASKS[name].k_means`` says).
The plan is a short Python-style code-form plan in the CodePlan style: the loop, condition or
operations behind the response, over the instance's data, without the intermediate results. It is
valid Python (``ast.parse`` accepts it) but it is never run. The response follows the plan one
numbered line per step and ends with ``The answer is X.``; ``answer`` is X.

Prompts and responses use a few constant phrases on purpose: the quickstart trains a tiny model from
scratch on them (see ENV-NOTES, "How fast a tiny from-scratch model learns").

Records (:class:`SynthStage`, :func:`synth_records`) carry ``id``
(``synth/<task>/k<k>/s<seed>/<index>``, stable), ``task`` (``synth/<task>``), ``prompt``, ``plan``,
``response``, ``answer``, ``difficulty`` (= k) and ``meta.synth`` = ``{"k", "seed", "index"}``. The same (task, k, seed, index) always gives the same
record, whatever other tasks or counts are asked for in the same run. With ``keep_gold_plan``
(``--keep-gold-plan``) a record also carries ``gold_plan``, a copy of ``plan`` that ``extract`` leaves
alone (it sets ``plan`` only), so ``score`` can measure a mined plan against it (``meta.score.plan``).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from codeplan_tools.core.errors import UsageError

if TYPE_CHECKING:
    from codeplan_tools.core.stage import StageContext


@dataclass(frozen=True)
class Example:
    prompt: str
    plan: str
    response: str
    answer: str


@dataclass(frozen=True)
class SynthTask:
    name: str
    make: Callable[[random.Random, int], Example]
    # The score family that judges it (see codeplan_tools.eval.scorers): numeric, exact or yesno.
    scorer: str
    # What one unit of difficulty k is for this task.
    k_means: str
    description: str


TASKS: dict[str, SynthTask] = {}
MAX_K = 64
# Redraws allowed per record when its prompt is excluded.
MAX_ATTEMPTS = 1000


def _task(name: str, scorer: str, k_means: str):
    def register(make: Callable[[random.Random, int], Example]):
        doc = (make.__doc__ or "").strip().splitlines()[0]
        TASKS[name] = SynthTask(name, make, scorer, k_means, doc)
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

    def __post_init__(self) -> None:
        for task in self.tasks:
            if task not in TASKS:
                raise UsageError(f"unknown synth task {task!r}; known: {', '.join(TASKS)}")
        if self.n < 0:
            raise UsageError("--n must be >= 0")
        if not self.k:
            raise UsageError("no difficulty given")


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


def _rng(task: str, k: int, seed: int, index: int, attempt: int) -> random.Random:
    # Derived from the record's identity, not from a shared stream: records do not depend on each other.
    digest = hashlib.sha256(f"{task}/{k}/{seed}/{index}/{attempt}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def make_record(
    task: str, k: int, seed: int = 0, index: int = 0, exclude: frozenset[str] = frozenset()
) -> dict:
    """The record for one (task, k, seed, index); redrawn while its prompt is in ``exclude``."""
    spec = TASKS[task]
    for attempt in range(MAX_ATTEMPTS):
        ex = spec.make(_rng(task, k, seed, index, attempt), k)
        if ex.prompt not in exclude:
            break
    else:
        raise UsageError(
            f"synth/{task} at k={k}: no prompt outside the excluded set after {MAX_ATTEMPTS} draws; "
            "use a larger k or exclude fewer prompts"
        )
    return {
        "id": f"synth/{task}/k{k}/s{seed}/{index}",
        "task": f"synth/{task}",
        "prompt": ex.prompt,
        "plan": ex.plan,
        "response": ex.response,
        "answer": ex.answer,
        "difficulty": k,
        "meta": {"synth": {"k": k, "seed": seed, "index": index}},
    }


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
                record = make_record(task, k, config.seed, index, exclude)
                if config.keep_gold_plan:
                    record["gold_plan"] = record["plan"]
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
