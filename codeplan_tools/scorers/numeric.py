"""Numeric answers (GSM8K, SVAMP, MultiArith, AddSub, SingleEq, BBH arithmetic and counting).

Strict: the first number in the marked answer span (``\\boxed{}``, ``#### X``, "the answer is X", a bare
number); when the span is an equation (``3 + 4 = 7``) the number after the last ``=``. Lenient: the
strict number, else the last number anywhere in the response. Numbers are compared exactly as
fractions (two integers exactly; otherwise up to float noise, a relative 1e-9), so ``1,000`` = ``1000``,
``18.00`` = ``18``, ``\\frac{1}{2}`` = ``0.5`` = ``1/2``; ``$``, ``%``, thousands commas, LaTeX thin
spaces and trailing units (``18 dollars``) are ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from fractions import Fraction

from . import (
    NoGold,
    Scorer,
    Verdict,
    answer_span,
    gold_answer,
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


def first_number(span: str | None) -> Fraction | None:
    """The first number in an answer span (after the last ``=`` of an equation)."""
    if not span:
        return None
    span = _clean(span)
    if "=" in span:
        span = span.rsplit("=", 1)[1]
    for m in _TOKEN.finditer(span):
        v = _value(m)
        if v is not None:
            return v
    return None


def last_number(text: str | None) -> Fraction | None:
    if not text:
        return None
    # GSM8K calculator annotations <<a*b=c>> repeat numbers; drop them.
    text = re.sub(r"<<[^<>]*>>", "", _clean(strip_thinking(text)))
    found = None
    for m in _TOKEN.finditer(text):
        v = _value(m)
        if v is not None:
            found = v
    return found


def is_bare_number(line: str) -> bool:
    """A response that is only a number, maybe with ``$``/``%`` and a unit word (``18``, ``$18.00``, ``25 %``)."""
    cleaned = _clean(line).strip().rstrip(".")
    m = _TOKEN.match(cleaned)
    return bool(m) and re.fullmatch(r"[\s%]*(?:[A-Za-z]+\.?)?\s*", cleaned[m.end() :]) is not None


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
        strict = first_number(answer_span(text, bare=is_bare_number))
        lenient = strict if strict is not None else last_number(text)
        return Verdict(
            correct=same_number(lenient, gold),
            correct_strict=same_number(strict, gold),
            extracted=number_key(lenient),
            extracted_strict=number_key(strict),
        )
