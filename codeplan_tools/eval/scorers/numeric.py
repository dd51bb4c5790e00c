"""Numeric answers (GSM8K, SVAMP, MultiArith, AddSub, SingleEq, BBH arithmetic and counting).

Strict: the first number in the marked answer span (``\\boxed{}``, ``#### X``, "the answer is X", the
last ```` ```output ```` block of a tool-integrated solution, a bare number); when the span is an
equation (``3 + 4 = 7``) the number after the last ``=``. A span with no digits is read in English
number words (``twelve``, ``one hundred and five``, ``fifty-two point six two``, up to billions). A
marked span with no number at all is ``invalid``; one that joins different numbers with "or" (``12 or
14``, ``$12 (or $14)``) is ``hedged``; both are wrong. Lenient: the strict number whenever an answer is
marked, else the last number written in digits anywhere in the response (a hedge when it is the second
of "N or M"). Numbers are compared exactly as fractions (two integers exactly; otherwise up to float
noise, a relative 1e-9), so ``1,000`` = ``1000``, ``18.00`` = ``18``, ``\\frac{1}{2}`` = ``0.5`` =
``1/2``; ``$``, ``%``, thousands commas, LaTeX thin spaces and trailing units (``18 dollars``) are
ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from fractions import Fraction

from . import (
    NoGold,
    Scorer,
    Verdict,
    answer_clause,
    clean_span,
    gold_answer,
    marked_or_guessed,
    own_text,
    register_scorer,
    strip_markdown,
    strip_thinking,
)

_NUM = r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+"
_TOKEN = re.compile(
    rf"(?P<lneg>-)?\\[dt]?frac\s*\{{\s*(?P<ln>{_NUM})\s*\}}\s*\{{\s*(?P<ld>{_NUM})\s*\}}"
    rf"|(?P<sneg>-)?\\[dt]?frac(?P<sn>\d)(?P<sd>\d)"
    rf"|(?P<n>{_NUM})(?:\s*/\s*(?P<d>{_NUM}))?"
)
# Between two numbers of a hedge: "12 or 14", "12 apples or 14", "12, or maybe 14", "12 (or 14".
_OR_BETWEEN = re.compile(
    r"\s*(?:[A-Za-z%]+\s*)?[,(]?\s*(?:or|and/or)\s+(?:(?:maybe|possibly|perhaps|even|about)\s+)?\(?\s*", re.I
)

# English number words: units and teens, tens, scales; "point" then digit words for decimals.
_SMALL = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = {"hundred": 100, "thousand": 10**3, "million": 10**6, "billion": 10**9}
_WORD_VALUE = {w: i for i, w in enumerate(_SMALL)} | {w: 20 + 10 * i for i, w in enumerate(_TENS)}
_WORD = "|".join(sorted([*_SMALL, *_TENS, *_SCALES], key=len, reverse=True))
_DIGIT_WORD = "|".join(_SMALL[:10])
_WORDS = re.compile(
    rf"\b(?:(?P<neg>minus|negative)\s+)?(?P<int>(?:{_WORD})\b(?:(?:\s+and\s+|[\s-]+)(?:{_WORD})\b)*)"
    rf"(?:\s+point(?P<frac>(?:\s+(?:{_DIGIT_WORD})\b)+))?",
    re.I,
)


def _words_value(m: re.Match) -> Fraction:
    """The number a ``_WORDS`` match spells; it stops at the first word that cannot follow the ones
    before it ("one two" is 1), so a run of number words never becomes a sum of unrelated numbers."""
    total, current, prev = 0, 0, ""
    for w in re.split(r"[\s-]+", m.group("int").lower()):
        if w == "and":
            continue
        if w in _SCALES:
            if prev in _SCALES and _SCALES[prev] >= _SCALES[w]:
                break
            if w == "hundred":
                current = (current or 1) * 100
            else:
                total += (current or 1) * _SCALES[w]
                current = 0
        else:
            v = _WORD_VALUE[w]
            # A unit may follow a ten ("fifty-two") or a scale; nothing else follows a unit or a teen.
            if prev and prev not in _SCALES and not (prev in _TENS and v < 10):
                break
            current += v
        prev = w
    value = Fraction(total + current)
    if m.group("frac"):
        digits = "".join(str(_WORD_VALUE[w]) for w in m.group("frac").lower().split())
        value += Fraction(int(digits), 10 ** len(digits))
    return -value if m.group("neg") else value


def _clean(text: str) -> str:
    text = strip_markdown(text)
    text = text.replace("\u2212", "-").replace("\u2013", "-")
    # LaTeX spacing and escaped dollars; "1\,000" and "1{,}000" are thousands separators.
    text = (
        text.replace("\\,", "").replace("\\!", "").replace("{,}", ",").replace("\\$", "$").replace("\\%", "%")
    )
    # "$-5" / "-$5" both mean minus five.
    text = re.sub(r"-\s*\$\s*(?=\d)", "-", text)
    text = re.sub(r"\$\s*(?=-?\d)", "", text)
    return text


def _value(m: re.Match) -> Fraction | None:
    try:
        if m.group("ln") is not None:
            v = Fraction(m.group("ln").replace(",", "")) / Fraction(m.group("ld").replace(",", ""))
            return -v if m.group("lneg") else v
        if m.group("sn") is not None:
            v = Fraction(int(m.group("sn")), int(m.group("sd")))
            return -v if m.group("sneg") else v
        v = Fraction(m.group("n").replace(",", ""))
        if m.group("d") is not None:
            v = v / Fraction(m.group("d").replace(",", ""))
        return v
    except (ZeroDivisionError, ValueError):
        return None


def _numbers(text: str) -> Iterator[tuple[re.Match, Fraction]]:
    """Every number written in digits in (cleaned) ``text``, in order, with its value."""
    for m in _TOKEN.finditer(text):
        v = _value(m)
        if v is not None:
            yield m, v


def _after_equals(span: str) -> str:
    return span.rsplit("=", 1)[1] if "=" in span else span


def first_number(span: str | None) -> Fraction | None:
    """The first number in an answer span (after the last ``=`` of an equation); in words if no digits."""
    if not span:
        return None
    span = _after_equals(_clean(span))
    for _m, v in _numbers(span):
        return v
    words = _WORDS.search(span)
    return _words_value(words) if words else None


def spelled_number(span: str) -> Fraction | None:
    """The number a span is, when it is nothing but English number words (``fifty-two.``)."""
    m = _WORDS.fullmatch(clean_span(span).strip())
    return _words_value(m) if m else None


def _hedge(first: tuple[re.Match, Fraction], second: tuple[re.Match, Fraction], text: str) -> bool:
    """Whether two numbers of ``text`` are different answers joined by "or"."""
    (m1, v1), (m2, v2) = first, second
    return not same_number(v1, v2) and _OR_BETWEEN.fullmatch(text, m1.end(), m2.start()) is not None


def span_is_hedged(span: str) -> bool:
    """A marked answer that offers different numbers: ``12 or 14`` (in its first clause)."""
    clause = answer_clause(_after_equals(_clean(span)))
    found = list(_numbers(clause))
    return any(_hedge(a, b, clause) for a, b in zip(found, found[1:], strict=False))


def last_number(text: str | None) -> Fraction | None:
    return _last_number(text)[0]


def _last_number(text: str | None) -> tuple[Fraction | None, bool]:
    """(the last number written in digits, whether it ends an "N or M" hedge)."""
    if not text:
        return None, False
    # GSM8K calculator annotations <<a*b=c>> repeat numbers; drop them.
    text = re.sub(r"<<[^<>]*>>", "", _clean(strip_thinking(text)))
    previous = last = None
    for found in _numbers(text):
        previous, last = last, found
    if last is None:
        return None, False
    return last[1], previous is not None and _hedge(previous, last, text)


def _guess(body: str) -> tuple[Fraction | None, bool]:
    """The lenient answer with no marked one: the last number, none when it ends a hedge."""
    value, hedged = _last_number(body)
    return (None if hedged else value), hedged


def is_bare_number(line: str) -> bool:
    """A response that is only a number, maybe with ``$``/``%`` and a unit word (``18``, ``$18.00``,
    ``25 %``), or only a number in words (``Twelve.``)."""
    cleaned = _clean(line).strip().rstrip(".")
    m = _TOKEN.match(cleaned) or _WORDS.match(cleaned)
    return m is not None and re.fullmatch(r"[\s%]*(?:[A-Za-z]+\.?)?\s*", cleaned[m.end() :]) is not None


def number_key(v: Fraction | None) -> str | None:
    """Canonical text of a number: ``18``, ``0.5``, ``1/3``."""
    if v is None:
        return None
    if v.denominator == 1:
        return str(v.numerator)
    d = v.denominator
    while d % 2 == 0:
        d //= 2
    while d % 5 == 0:
        d //= 5
    if d == 1:  # terminating decimal
        return (
            format(v.numerator / v.denominator, ".15g") if abs(v) < 1e15 else f"{v.numerator}/{v.denominator}"
        )
    return f"{v.numerator}/{v.denominator}"


def same_number(a: Fraction | None, b: Fraction | None, rel_tol: float = 1e-9) -> bool:
    """Exact equality, up to float noise (``0.30000000000000004`` = ``0.3``); integers never get a tolerance."""
    if a is None or b is None:
        return False
    if a == b:
        return True
    if a.denominator == 1 and b.denominator == 1:
        return False
    return abs(a - b) <= Fraction(rel_tol) * max(Fraction(1), abs(b))


@register_scorer("numeric")
class NumericScorer(Scorer):
    def gold(self, record: Mapping, options: Mapping) -> Fraction:
        answer = record.get("answer")
        # A JSON number is a gold answer too; other types are named by gold_answer.
        value = first_number(str(answer) if type(answer) in (int, float) else gold_answer(record))
        if value is None:
            raise NoGold(f"gold answer {answer!r} is not a number")
        return value

    def score(self, text: str | None, record: Mapping, options: Mapping) -> Verdict:
        gold = self.gold(record, options)
        body = own_text(text, record)
        return marked_or_guessed(
            body,
            gold,
            bare=is_bare_number,
            read=lambda span: (None, True) if span_is_hedged(span) else (first_number(span), False),
            guess=_guess,
            same=same_number,
            key=number_key,
        )
