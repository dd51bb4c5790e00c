"""Plan quality without running plans: grounding, consistency, fidelity to a reference, plan-following.

A mined plan can have the right shape and the wrong values (``for word in ["planet", "planet"]`` for
"Join the last letters of: lion chair"). These pure functions measure that. Plans are parsed into a
tree (``ast.parse``) and never run: nothing here calls ``eval`` or ``exec``, and the only arithmetic
done is on literals, by walking the tree with size limits (see :func:`plan_final_value`).

**Literals** (:func:`plan_literals`). Code fences are dropped and the plan is dedented, then parsed:

- *numbers*: int and float constants as exact numbers (an ``int`` when whole, so ``6.0`` is ``6``;
  else a ``Fraction``: ``0.1`` is 1/10), a unary minus folded in (``word[-1]`` has ``-1``); complex,
  infinite and oversized numbers are left out;
- *strings*: str/bytes constants with at least one letter or digit (``""``, ``" "``, ``", "`` are
  separators, not data); the constant parts of f-strings (formatting text) and strings that stand
  alone as a statement (docstrings) are left out;
- *booleans*: ``True`` / ``False`` constants (kept for fidelity: a coin-flip plan's data; never
  grounded, since text rarely spells them);
- *names*: identifiers of variables, attributes and parameters, at least two characters long; Python
  keywords and builtins (``print``, ``len``, ``range``), and the names of called functions or methods
  (``insort(...)``, ``word.count(...)``) and of defined functions and classes, are left out: they
  name operations, not entities.

``#`` comments are ignored. A plan that does not parse (pseudo-code, a truncated line, a stray
apostrophe) falls back to a small regex tokenizer over the text with the same rules, as far as
tokens tell them (a name followed by ``(`` is a call; docstrings are kept; f-strings are dropped
whole); ``PlanLiterals.parsed`` says which ran. Plans over ``MAX_PARSE_CHARS`` go to the tokenizer.

**Grounding** (:func:`grounding`, :func:`grounded_share`): the share of the plan's *distinct* literals
that occur in the prompt or the response. Distinct, so that a repeated name or value counts once.

- Numbers compare as numbers, by magnitude (``-= 3`` is grounded by "gives away 3"): ``6`` matches
  ``6.0``, ``1,000`` matches ``1000`` (a comma group also grounds its parts, for lists written
  ``3,5,7``), ``$1.50`` matches ``1.5``. Number words count: ``one`` ... ``ninety``, simple compounds
  (``twenty-five``, ``three hundred``), ``hundred`` / ``thousand`` / ``million``, ordinals up to
  ``tenth``, ``dozen`` (12), ``half`` / ``double`` / ``twice`` (2), ``triple`` / ``thrice`` (3),
  ``quarter`` (4 and 1/4), ``half`` also 1/2. ``20%`` grounds ``20``, ``0.2``, ``100`` and ``0.01``.
  ``0`` and ``1`` are *neutral* (left out): they start sums, step loops and index (``word[-1]``)
  whatever the prompt says.
- Strings compare case-insensitively as whole words (``"heads"`` matches "Heads up" but not
  "headset"; a multi-word string must occur as that phrase). ``yes`` / ``no`` / ``true`` / ``false``
  are neutral: a yes/no question implies them.
- Names count only when they *name an entity of the prompt*: one of the identifier's parts (split at
  ``_`` and camelCase; parts under three letters and generic words such as ``total``, ``result``,
  ``per``, ``left`` dropped) occurs as a word of the prompt or response, singular or plural
  (``stamps``, ``zoe_stamps``, ``stamps_left``, ``eggsPerDay`` for "Zoe has 6 stamps" / "16 eggs per
  day"). Such a name is grounded by definition; any other name (``result``, ``books`` for a prompt
  about stamps) is a variable name we cannot tell from a hallucinated entity without a dictionary,
  and is left out rather than counted against the plan. So names can raise a share, never lower it:
  values decide, and a plan whose only wrong literal is its entity's name (``books = 6`` for "6
  stamps") is caught by ``consistent`` or fidelity, not by grounding.

The share is None when nothing is left to count.

**Final value** (:func:`plan_final_value`): when the plan's last statement (or, for a plan that is
one function, its body's last) is ``print(x)`` or ``return x`` and ``x`` is a literal or simple
arithmetic (``+ - * / // % **``, unary minus, parentheses) over literals and over names bound by
straight-line assignments before it (``stamps = 6`` / ``stamps += 3`` / ``print(stamps)``), that
value: a ``Fraction`` or a ``str``. A name assigned inside a loop, a condition or any other compound
statement is unknown from there on, so loops are never unrolled. Arithmetic is exact (fractions) with
limits (see ``MAX_BITS``, ``MAX_EXPONENT``, ``MAX_EXPR_NODES``): ``9**9**9`` gives None at once.

**Agreement** (:func:`consistent`, :func:`follows_plan`): the plan's final value and an answer agree as
numbers when both read as numbers (the answer through the numeric scorer's ``first_number``:
``$1,000``, ``18 dollars``, ``3 + 4 = 7``), up to float noise and up to the answer's own rounding
(``3.33`` agrees with ``10 / 3``); else as strings normalised like the exact scorer (case, quotes,
a trailing period, spaces). None when either side is missing. A response's final answer is what the
scorers' strict extraction marks (:func:`response_answer`: "The answer is X", ``\\boxed{}``,
``#### X``, or a response that is only a number).

**Fidelity** (:func:`plan_fidelity`): against a reference plan, exact match after whitespace
normalisation, exact match with comments and blank lines also ignored, and precision/recall of the
multiset of value literals (numbers, strings, booleans; names are left out: renaming a variable is
not a wrong value, and ``exact`` sees it).

**Distributions** (:class:`ShareHistogram`, :func:`share_histogram`): ten bins of 0.1 (1.0 in the
last), a count of None, and the mean, for ``--stats``.
"""

from __future__ import annotations

import ast
import builtins
import functools
import keyword
import re
import textwrap
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction

from codeplan_tools.eval.scorers import answer_span
from codeplan_tools.eval.scorers.exact import normalize_text
from codeplan_tools.eval.scorers.numeric import first_number, is_bare_number, number_key, same_number

# Plans longer than this are read by the tokenizer, never parsed (mined plans are ~50 words).
MAX_PARSE_CHARS = 50_000
# Limits of the literal arithmetic of plan_final_value: numerator / denominator size, exponent, tree size.
MAX_BITS = 4096
MAX_EXPONENT = 1024
MAX_EXPR_NODES = 256
# Numbers written in the prompt/response with more characters than this are not read.
MAX_TEXT_DIGITS = 100

Value = Fraction | str
Number = int | Fraction

_NOT_NAMES = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | frozenset(dir(builtins))
_NEUTRAL_NUMBERS = frozenset({0, 1})
_NEUTRAL_STRINGS = frozenset({"yes", "no", "true", "false"})
# Identifier parts that name a variable's role, not an entity of the prompt.
_GENERIC_PARTS = frozenset(
    "answer ans result res total sum count num number numbers value values val item items list lst "
    "index idx tmp temp output input data final current new old step steps solve solution main "
    "word words letter letters char string text per each left remaining initial start end first last "
    "and the for with from all".split()
)
_FENCE = re.compile(r"^[ \t]*```.*$", re.M)
_ALNUM = re.compile(r"[^\W_]")


@dataclass(frozen=True)
class PlanLiterals:
    """The literals of a plan, in source order, repeats kept (see the module docstring)."""

    numbers: tuple[Number, ...] = ()
    """Exact values: an ``int`` when whole (``6.0`` is ``6``), else a ``Fraction`` (``0.1`` is 1/10)."""
    strings: tuple[str, ...] = ()
    booleans: tuple[bool, ...] = ()
    names: tuple[str, ...] = ()
    parsed: bool = True
    """True when ``ast`` parsed the plan; False when the fallback tokenizer read it."""

    def values(self) -> Counter[tuple[str, object]]:
        """The value literals as a multiset of tagged keys (``True`` and ``1`` stay apart)."""
        return Counter(
            [("num", n) for n in self.numbers]
            + [("str", s) for s in self.strings]
            + [("bool", b) for b in self.booleans]
        )


def _source(plan: str) -> str:
    """The plan without code-fence lines, dedented."""
    if "```" in plan:
        plan = _FENCE.sub("", plan)
    return textwrap.dedent(plan)


@functools.lru_cache(maxsize=8)
def _parse(plan: str) -> ast.Module | None:
    """The plan's tree (None: it does not parse). Cached: the filter's ``grounded`` and ``consistent``
    and score's fidelity and plan-following read the same plan one after the other, and parsing is the
    largest single cost; callers only read the tree."""
    if len(plan) > MAX_PARSE_CHARS:
        return None
    try:
        return ast.parse(_source(plan))
    except (SyntaxError, ValueError, RecursionError, MemoryError, OverflowError):
        return None


def _number(value: object) -> Number | None:
    """An int or float constant as an exact number (``6.0`` -> 6, ``0.1`` -> 1/10); None for others.

    Whole numbers stay ``int``: an ``int`` and an equal ``Fraction`` hash and compare alike, and ints
    are much cheaper to make."""
    if type(value) is int:
        return value
    if type(value) is float:
        if value.is_integer():
            return int(value)
        try:
            return Fraction(repr(value))
        except ValueError:  # inf, nan
            return None
    return None


def plan_literals(plan: str) -> PlanLiterals:
    """Numbers, strings, booleans and names of ``plan`` (parsed, never run; see the module docstring)."""
    tree = _parse(plan)
    if tree is None:
        return _scan_literals(plan)
    numbers: list[Number] = []
    strings: list[str] = []
    booleans: list[bool] = []
    names: list[str] = []
    # Iterative walk (a long chain such as 1+1+...+1 is a deep tree); children are pushed in reverse
    # so that literals come out in source order.
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        children: list[ast.AST]
        if isinstance(node, ast.Constant):
            value = node.value
            if type(value) is str:
                if _ALNUM.search(value):
                    strings.append(value)
            elif type(value) is bool:
                booleans.append(value)
            elif type(value) is bytes:
                text = value.decode("utf-8", "replace")
                if _ALNUM.search(text):
                    strings.append(text)
            elif (number := _number(value)) is not None:
                numbers.append(number)
            continue
        if isinstance(node, ast.Name):
            if len(node.id) >= 2 and node.id not in _NOT_NAMES:
                names.append(node.id)
            continue
        if isinstance(node, ast.UnaryOp):
            operand = node.operand
            if isinstance(operand, ast.Constant) and isinstance(node.op, ast.USub | ast.UAdd):
                number = _number(operand.value)
                if number is not None:
                    numbers.append(-number if isinstance(node.op, ast.USub) else number)
                    continue
            children = [operand]
        elif isinstance(node, ast.Call):
            func = node.func
            # The called function or method is an operation, not an entity: skip its name.
            called = (
                [func.value]
                if isinstance(func, ast.Attribute)
                else []
                if isinstance(func, ast.Name)
                else [func]
            )
            children = [*called, *node.args, *node.keywords]
        elif isinstance(node, ast.Attribute):
            if len(node.attr) >= 2 and node.attr not in _NOT_NAMES:
                names.append(node.attr)
            children = [node.value]
        elif isinstance(node, ast.arg):
            if len(node.arg) >= 2 and node.arg not in _NOT_NAMES:
                names.append(node.arg)
            children = [node.annotation] if node.annotation else []
        elif (
            isinstance(node, ast.Expr)
            and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str)
        ):
            continue  # a docstring, or a string used as a comment
        elif isinstance(node, ast.JoinedStr):
            # Only the expressions of an f-string: its constant parts and format specs are formatting.
            children = [v.value for v in node.values if isinstance(v, ast.FormattedValue)]
        elif isinstance(node, ast.Import | ast.ImportFrom):
            continue
        else:
            children = []
            for field_name in node._fields:
                child = getattr(node, field_name, None)
                if type(child) is list:
                    children.extend(c for c in child if isinstance(c, ast.AST))
                elif isinstance(child, ast.AST):
                    children.append(child)
        children.reverse()
        stack.extend(children)
    return PlanLiterals(tuple(numbers), tuple(strings), tuple(booleans), tuple(names), parsed=True)


# A Python string token: an optional prefix, then triple quotes (across lines) or single quotes (one line).
_STRING = (
    r"(?P<prefix>[rRbBuUfF]{0,2})"
    r"(?:\"\"\"[\s\S]*?\"\"\"|'''[\s\S]*?'''|\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*')"
)
_COMMENT = r"#[^\n]*"
_NUMBER_TOKEN = (
    r"(?<![\w.])(?:0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)"
)
# The fallback tokenizer: strings, comments, numbers, names, and any other non-space character as an
# operator (tried in that order, so a '#' inside a string is not a comment).
_SCAN = re.compile(
    rf"(?P<str>{_STRING})|(?P<comment>{_COMMENT})|(?P<num>{_NUMBER_TOKEN})|(?P<name>[^\W\d]\w*)|(?P<op>\S)"
)
# After these tokens a minus sign is unary (``x = -1``, ``[-1]``), after others binary (``n - 1``).
_BEFORE_UNARY = frozenset("=([{,:+-*/%<>!") | {None, "return", "in", "and", "or", "not", "print"}


def _exact(value: Fraction) -> Number:
    """``value`` as an ``int`` when whole."""
    return value.numerator if value.denominator == 1 else value


def _number_token(text: str) -> Number | None:
    """A Python number token (``12``, ``1_000``, ``0x1F``, ``2.5e3``) as an exact number."""
    try:
        if text.isdigit():
            return int(text)
        if text[:2].lower() in ("0x", "0o", "0b"):
            return int(text, 0)
        return _exact(Fraction(text.replace("_", "")))
    except (ValueError, ZeroDivisionError):  # e.g. more digits than int() converts
        return None


def _scan_literals(plan: str) -> PlanLiterals:
    """Literals of a plan that does not parse, from the regex tokenizer (see the module docstring)."""
    tokens = [(m.lastgroup, m) for m in _SCAN.finditer(_source(plan)) if m.lastgroup != "comment"]
    numbers: list[Number] = []
    strings: list[str] = []
    booleans: list[bool] = []
    names: list[str] = []
    for i, (kind, m) in enumerate(tokens):
        text = m.group()
        prev = tokens[i - 1][1].group() if i else None
        if kind == "str":
            prefix = m.group("prefix")
            if "f" in prefix.lower():
                continue  # formatting text
            body = text[len(prefix) :]
            quote = 3 if body[:3] in ('"""', "'''") else 1
            body = body[quote:-quote]
            if _ALNUM.search(body):
                strings.append(body)
        elif kind == "num":
            value = _number_token(text)
            if value is None:
                continue
            before = tokens[i - 2][1].group() if i >= 2 else None
            if prev == "-" and before in _BEFORE_UNARY:
                value = -value
            numbers.append(value)
        elif kind == "name":
            if text in ("True", "False"):
                booleans.append(text == "True")
                continue
            following = tokens[i + 1][1].group() if i + 1 < len(tokens) else None
            if following == "(" or prev in ("def", "class", "import", "from"):
                continue
            if len(text) >= 2 and text not in _NOT_NAMES:
                names.append(text)
    return PlanLiterals(tuple(numbers), tuple(strings), tuple(booleans), tuple(names), parsed=False)


# ------------------------------------------------------------------------------------- grounding

_TEXT_NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(\s*%)?|(?<![\w.])\.(\d+)")
_TEXT_WORD = re.compile(r"[^\W_]+")
_UNITS = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}
_WORD_NUMBERS: dict[str, tuple[Number, ...]] = {
    **{w: (i,) for i, w in enumerate(_UNITS)},
    **{w: (20 + 10 * i,) for i, w in enumerate(_TENS)},
    **{w: (v,) for w, v in _SCALES.items()},
    **{
        w: (i,)
        for i, w in enumerate("_ first second third fourth fifth sixth seventh eighth ninth tenth".split())
        if i
    },
    **dict.fromkeys(("third", "thirds"), (3, Fraction(1, 3))),
    **dict.fromkeys(("dozen", "dozens"), (12,)),
    **dict.fromkeys(("half", "halves", "halved", "halve"), (2, Fraction(1, 2))),
    **dict.fromkeys(("double", "doubles", "doubled", "twice", "twin", "twins", "pair", "pairs"), (2,)),
    **dict.fromkeys(("triple", "triples", "tripled", "thrice"), (3,)),
    **dict.fromkeys(("quadruple", "quadruples", "quadrupled"), (4,)),
    **dict.fromkeys(("quarter", "quarters"), (4, Fraction(1, 4))),
}


def _magnitude(number: Number) -> Number:
    return -number if number < 0 else number


def _split_identifier(name: str) -> list[str]:
    """``numStamps`` / ``num_stamps`` -> ``["num", "stamps"]`` (lower case, parts of 3+ letters)."""
    parts = re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+", name)
    return [p.lower() for p in parts if len(p) >= 3]


def _digit_numbers(text: str) -> Iterator[Number]:
    """The numbers written in digits in ``text`` (see the module docstring: commas, decimals, %)."""
    percent = False
    for m in _TEXT_NUMBER.finditer(text):
        whole, decimals, pct, bare_decimals = m.groups()
        if len(m.group()) > MAX_TEXT_DIGITS:
            continue  # no plan literal is that long (and int() refuses over 4300 digits)
        if bare_decimals is not None:  # ".5"
            yield Fraction(f"0.{bare_decimals}")
            continue
        digits = whole.replace(",", "")
        value: Number = _exact(Fraction(digits + decimals)) if decimals else int(digits)
        yield value
        if len(digits) != len(whole):  # "3,5,7" may be a list: its parts ground too
            yield from (int(part) for part in whole.split(","))
        if pct:
            percent = True
            yield _exact(Fraction(value) / 100)
    if percent:  # the plan may compute the share itself: x * 20 / 100, x * 0.01
        yield 100
        yield Fraction(1, 100)


def _word_numbers(words: list[str]) -> Iterator[Number]:
    """The numbers spelled by ``words`` (lower case): number words and simple compounds."""
    previous: tuple[Number, ...] = ()
    for i, word in enumerate(words):
        values = _WORD_NUMBERS.get(word, ())
        yield from values
        # Compounds: "twenty five" (tens + unit), "three hundred" (n * scale).
        if values and previous and words[i - 1] in _TENS and word in _UNITS[1:10]:
            yield previous[0] + values[0]
        if word in _SCALES and previous:
            yield previous[0] * _SCALES[word]
        previous = values


@dataclass
class _Text:
    """The prompt and response as grounding reads them; each view is built on first use (most plans
    are settled by the numbers written in digits, and never need the number words)."""

    text: str
    _lower: str | None = None
    _words: frozenset[str] | None = None
    _digit_numbers: frozenset[Number] | None = None
    _word_numbers: frozenset[Number] | None = None

    @property
    def lower(self) -> str:
        if self._lower is None:
            self._lower = " ".join(self.text.lower().split())
        return self._lower

    @property
    def words(self) -> frozenset[str]:
        if self._words is None:
            self._words = frozenset(_TEXT_WORD.findall(self.lower))
        return self._words

    def has_number(self, number: Number) -> bool:
        """Whether ``|number|`` is written in the text, in digits or in words."""
        number = _magnitude(number)
        if self._digit_numbers is None:
            self._digit_numbers = frozenset(_digit_numbers(self.text))
        if number in self._digit_numbers:
            return True
        if self._word_numbers is None:
            self._word_numbers = frozenset(_word_numbers(_TEXT_WORD.findall(self.lower)))
        return number in self._word_numbers

    def has_string(self, string: str) -> bool:
        phrase = " ".join(string.lower().split())
        if _TEXT_WORD.fullmatch(phrase):
            return phrase in self.words
        return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", self.lower) is not None

    def names_entity(self, name: str) -> bool:
        words = self.words
        return any(
            p in words or p + "s" in words or p + "es" in words or (p.endswith("s") and p[:-1] in words)
            for p in _split_identifier(name)
            if p not in _GENERIC_PARTS
        )


@dataclass(frozen=True)
class Grounding:
    """How many of a plan's distinct literals occur in the prompt or response, and which do not."""

    grounded: int
    counted: int
    ungrounded: tuple[str, ...] = field(default=())
    """The literals that do not occur, as written in a reject reason (numbers canonical: ``10``, ``0.5``)."""

    @property
    def share(self) -> float | None:
        return self.grounded / self.counted if self.counted else None


def grounding(plan: str, prompt: str | None, response: str | None = None) -> Grounding:
    """Which of ``plan``'s distinct literals occur in ``prompt`` or ``response`` (module docstring)."""
    literals = plan_literals(plan)
    text = _Text(f"{prompt or ''}\n{response or ''}")
    grounded, missing = 0, []
    numbers = {_magnitude(n) for n in literals.numbers} - _NEUTRAL_NUMBERS
    for number in sorted(numbers):
        if text.has_number(number):
            grounded += 1
        else:
            missing.append(number_key(Fraction(number)) or str(number))
    strings = {" ".join(s.lower().split()) for s in literals.strings} - _NEUTRAL_STRINGS
    for string in sorted(strings):
        if text.has_string(string):
            grounded += 1
        else:
            missing.append(repr(string))
    entities = sum(1 for name in set(literals.names) if text.names_entity(name))
    return Grounding(grounded + entities, len(numbers) + len(strings) + entities, tuple(missing))


def grounded_share(plan: str, prompt: str | None, response: str | None = None) -> float | None:
    """The share of ``plan``'s distinct literals found in ``prompt`` or ``response``; None if it has none."""
    return grounding(plan, prompt, response).share


# ------------------------------------------------------------------------------------- final value


def _small(value: Fraction) -> Fraction | None:
    """``value`` if numerator and denominator stay within ``MAX_BITS``; else None."""
    if value.numerator.bit_length() > MAX_BITS or value.denominator.bit_length() > MAX_BITS:
        return None
    return value


def _power(base: Fraction, exponent: Fraction) -> Fraction | None:
    if exponent.denominator != 1 or abs(exponent) > MAX_EXPONENT:
        return None  # roots are irrational; huge exponents are refused before computing
    n = int(exponent)
    if base == 0 and n < 0:
        return None
    bits = max(base.numerator.bit_length(), base.denominator.bit_length())
    if bits * abs(n) > MAX_BITS:
        return None
    return base**n


def _arithmetic(node: ast.expr, env: dict[str, Value], budget: list[int]) -> Value | None:
    """The value of a literal / arithmetic expression over literals and known names; None otherwise.
    Each node visited spends one of ``budget[0]``; raises ``_OverBudget`` when none is left."""
    budget[0] -= 1
    if budget[0] < 0:
        raise _OverBudget
    if isinstance(node, ast.Constant):
        if type(node.value) is str:
            return node.value
        number = _number(node.value)
        return None if number is None else Fraction(number)
    if isinstance(node, ast.Name):
        return env.get(node.id)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        operand = _arithmetic(node.operand, env, budget)
        if not isinstance(operand, Fraction):
            return None
        return -operand if isinstance(node.op, ast.USub) else operand
    if isinstance(node, ast.BinOp):
        left = _arithmetic(node.left, env, budget)
        if not isinstance(left, Fraction):
            return None
        right = _arithmetic(node.right, env, budget)
        if not isinstance(right, Fraction):
            return None
        return _apply(node.op, left, right)
    return None


def _apply(op: ast.operator, left: Fraction, right: Fraction) -> Fraction | None:
    if isinstance(op, ast.Add):
        return _small(left + right)
    if isinstance(op, ast.Sub):
        return _small(left - right)
    if isinstance(op, ast.Mult):
        return _small(left * right)
    if isinstance(op, ast.Pow):
        return _power(left, right)
    if right == 0:
        return None
    if isinstance(op, ast.Div):
        return _small(left / right)
    if isinstance(op, ast.FloorDiv):
        return Fraction(left // right)
    if isinstance(op, ast.Mod):
        return _small(left % right)
    return None


def _evaluate(node: ast.expr, env: dict[str, Value]) -> Value | None:
    """``_arithmetic`` on an expression of at most ``MAX_EXPR_NODES`` nodes (a budget spent as nodes are
    visited: no separate walk, and a deep chain stops at the limit instead of recursing on)."""
    budget = [MAX_EXPR_NODES]
    try:
        return _arithmetic(node, env, budget)
    except _OverBudget:
        return None


class _OverBudget(Exception):
    pass


# Statement fields that hold statements (walked by _stored_names) and those that hold binding targets.
_STATEMENT_LISTS = ("body", "orelse", "finalbody", "handlers", "cases")
_TARGET_FIELDS = ("targets", "target", "items", "names")


def _stored_names(statement: ast.stmt, walrus: bool = True) -> set[str]:
    """Every name ``statement`` may bind (assignments, loop targets, walrus, defs, imports, deletes).

    Without ``walrus`` (the plan has no ``:=``), an expression binds nothing, so only statements and
    their targets are visited, not every expression node (the full walk is most of the cost of
    :func:`plan_final_value`); comprehension variables, which do not leak, are then not counted."""
    names: set[str] = set()
    if walrus:
        nodes: Iterable[ast.AST] = ast.walk(statement)
    else:
        nodes = _statements_and_targets(statement)
    for node in nodes:
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store | ast.Del):
            names.add(node.id)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
    return names


def _statements_and_targets(statement: ast.stmt) -> Iterator[ast.AST]:
    """The statements nested in ``statement`` (itself included) and every node of their targets."""
    stack: list[ast.AST] = [statement]
    while stack:
        node = stack.pop()
        yield node
        for name in _STATEMENT_LISTS:
            stack.extend(getattr(node, name, ()))
        for name in _TARGET_FIELDS:
            target = getattr(node, name, None)
            if isinstance(target, list):
                for item in target:
                    if isinstance(item, ast.AST):
                        yield from ast.walk(item)
            elif isinstance(target, ast.AST):
                yield from ast.walk(target)


def _printed(statement: ast.stmt) -> ast.expr | None:
    """``x`` of a final ``print(x)`` or ``return x``."""
    if isinstance(statement, ast.Return):
        return statement.value
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Call):
        call = statement.value
        if (
            isinstance(call.func, ast.Name)
            and call.func.id == "print"
            and len(call.args) == 1
            and not call.keywords
            and not isinstance(call.args[0], ast.Starred)
        ):
            return call.args[0]
    return None


def plan_final_value(plan: str) -> Value | None:
    """What the plan's final ``print(x)`` / ``return x`` shows, when computable without running it.

    ``x`` must be a literal or literal arithmetic over names bound by straight-line assignments
    (see the module docstring); the result is a ``Fraction`` (``print(7 / 2)`` gives 7/2) or a
    ``str``. None otherwise, and for plans that do not parse.
    """
    tree = _parse(plan)
    if tree is None or not tree.body:
        return None
    body = tree.body
    if isinstance(body[-1], ast.FunctionDef | ast.AsyncFunctionDef):
        body = body[-1].body  # a plan that is one function: its return
    shown = _printed(body[-1])
    if shown is None:
        return None
    walrus = ":=" in plan  # (else expressions bind no names: _stored_names can skip them)
    env: dict[str, Value] = {}
    for statement in body[:-1]:
        value: Value | None = None
        target: str | None = None
        if isinstance(statement, ast.Assign) and all(isinstance(t, ast.Name) for t in statement.targets):
            value = _evaluate(statement.value, env)
            targets = [t.id for t in statement.targets if isinstance(t, ast.Name)]
        elif (
            isinstance(statement, ast.AnnAssign)
            and isinstance(statement.target, ast.Name)
            and statement.value
        ):
            value, targets = _evaluate(statement.value, env), [statement.target.id]
        elif isinstance(statement, ast.AugAssign) and isinstance(statement.target, ast.Name):
            target = statement.target.id
            current, operand = env.get(target), _evaluate(statement.value, env)
            if isinstance(current, Fraction) and isinstance(operand, Fraction):
                value = _apply(statement.op, current, operand)
            targets = [target]
        else:
            targets = []
        for name in _stored_names(statement, walrus):
            env.pop(name, None)
        if value is not None:
            env.update(dict.fromkeys(targets, value))
    return _evaluate(shown, env)


# ------------------------------------------------------------------------------------- agreement


def response_answer(response: str | None) -> str | None:
    """The final answer a response marks ("The answer is X", ``\\boxed{}``, ``#### X``, a bare number)."""
    return answer_span(response, bare=is_bare_number)


def _full_number(text: str) -> Fraction | None:
    """A string that is nothing but a number (``"12"``, ``"-0.5"``) as a fraction."""
    try:
        return Fraction(text.strip().replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None


def _decimals(value: Fraction, most: int = 12) -> int | None:
    """How many decimal places ``value`` is written with (None: not a terminating decimal)."""
    for places in range(most + 1):
        if (value * 10**places).denominator == 1:
            return places
    return None


def numbers_agree(plan_value: Fraction, answer: Fraction) -> bool:
    """Equal up to float noise, or ``plan_value`` rounds to ``answer`` at the answer's decimal places."""
    if same_number(plan_value, answer):
        return True
    places = _decimals(answer)
    if not places:
        return False
    return abs(plan_value - answer) <= Fraction(1, 2 * 10**places)


def values_agree(plan_value: Value, answer: str) -> bool:
    """``plan_value`` and ``answer`` agree as numbers when both read as numbers, else as strings."""
    plan_number = plan_value if isinstance(plan_value, Fraction) else _full_number(plan_value)
    answer_number = first_number(answer)
    if plan_number is not None and answer_number is not None:
        return numbers_agree(plan_number, answer_number)
    plan_text = number_key(plan_value) if isinstance(plan_value, Fraction) else plan_value
    expected = normalize_text(plan_text)
    return expected is not None and expected == normalize_text(answer)


def consistent(plan: str, response_final_answer: str | None) -> bool | None:
    """Whether the plan's final value (:func:`plan_final_value`) agrees with the response's final
    answer (e.g. :func:`response_answer`); None when either is not available."""
    if response_final_answer is None or not response_final_answer.strip():
        return None
    plan_value = plan_final_value(plan)
    if plan_value is None:
        return None
    return values_agree(plan_value, response_final_answer)


def follows_plan(plan: str, final_answer: str | None) -> bool | None:
    """Plan-following: whether a sample's final answer (e.g. the scorer's extracted answer) equals
    the value its own plan shows; None where that value is not computable without running the plan."""
    return consistent(plan, final_answer)


# ------------------------------------------------------------------------------------- fidelity

_COMMENT_OR_STRING = re.compile(rf"(?P<str>{_STRING})|{_COMMENT}")


def without_comments(plan: str) -> str:
    """``plan`` with its ``#`` comments (not a ``#`` inside a string) and blank lines removed."""
    text = _COMMENT_OR_STRING.sub(lambda m: m.group() if m.group("str") else "", plan)
    return "\n".join(line.rstrip() for line in text.splitlines() if line.strip())


def _normalise_space(text: str) -> str:
    return " ".join(text.split())


def plan_fidelity(plan: str, gold_plan: str) -> dict[str, bool | float | None]:
    """``plan`` against a reference: ``exact`` (whitespace normalised), ``exact_no_comments`` (comments
    and blank lines ignored too), ``literal_precision`` / ``literal_recall`` of the multiset of value
    literals (None when the plan / the reference has none)."""
    mine, gold = plan_literals(plan).values(), plan_literals(gold_plan).values()
    shared = sum((mine & gold).values())
    return {
        "exact": _normalise_space(plan) == _normalise_space(gold_plan),
        "exact_no_comments": _normalise_space(without_comments(plan))
        == _normalise_space(without_comments(gold_plan)),
        "literal_precision": shared / sum(mine.values()) if mine else None,
        "literal_recall": shared / sum(gold.values()) if gold else None,
    }


# ------------------------------------------------------------------------------------- distributions

BINS = 10


def bin_label(share: float) -> str:
    """The bin of a share in [0, 1]: ``"0.0-0.1"`` ... ``"0.9-1.0"`` (1.0 falls in the last)."""
    index = min(BINS - 1, max(0, int(share * BINS + 1e-9)))
    return f"{index / BINS:.1f}-{(index + 1) / BINS:.1f}"


@dataclass
class ShareHistogram:
    """A running distribution of shares (bins of 0.1) with the number of Nones and the mean."""

    bins: Counter[str] = field(default_factory=Counter)
    none: int = 0
    total: float = 0.0

    def add(self, share: float | None) -> None:
        if share is None:
            self.none += 1
            return
        self.bins[bin_label(share)] += 1
        self.total += share

    def summary(self) -> dict[str, object]:
        """``{"n", "none", "mean", "bins"}``, every bin listed (0 included) in order."""
        n = sum(self.bins.values())
        labels = [bin_label(i / BINS) for i in range(BINS)]
        return {
            "n": n,
            "none": self.none,
            "mean": round(self.total / n, 4) if n else None,
            "bins": {label: self.bins.get(label, 0) for label in labels},
        }


def share_histogram(values: Iterable[float | None]) -> dict[str, object]:
    """The :class:`ShareHistogram` summary of ``values``."""
    histogram = ShareHistogram()
    for value in values:
        histogram.add(value)
    return histogram.summary()
