"""Multiple choice (AQuA, CommonsenseQA, date understanding, shuffled objects, BBH option tasks).

The options are read from the record's ``choices`` (``[{"label": "A", "text": ...}]``) or from the
question (``Answer Choices: (A) x (B) y`` or BBH's ``Options:\\n(A) x``). Gold ``B`` and ``(B)`` are the
same; a gold that is an option's text is mapped to its letter.

Strict: a letter at the start of the marked answer span (``The answer is (B)``, ``**B**``,
``\\boxed{B}``, a bare ``B`` / ``(B)``), or a span that is exactly one option's text. Lenient: the strict
letter, else the last ``(X)`` naming an option, else the option whose text the last line ends with,
else a lone option letter on the last line.

Three BBH golds are not letters and not options (the source split option texts at commas:
movie_recommendation ``Monsters, Inc``, ruin_names ``dearth, wind, & fire`` and
``rita, sue and bob poo``); those are compared as text, so feeding the gold back still scores, but a
model that picks a letter can never be right on them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from . import (
    Scorer,
    Verdict,
    answer_span,
    clean_span,
    gold_answer,
    last_line,
    register_scorer,
    strip_thinking,
)

_OPTS_AT = re.compile(r"(?:Answer Choices:|Options:)", re.I)
_OPT = re.compile(r"\(([A-Z])\)\s*(.*?)(?=\s*\([A-Z]\)|\s*$)", re.S)
_PAREN = re.compile(r"\(([A-Z])\)")
_LEAD = re.compile(r"^\(?([A-Z])\)?(?=$|[\s.:,;)\]]|\s*[-\u2013:])")


def options_of(record: Mapping) -> dict[str, str]:
    """Letter -> option text, from ``choices`` or parsed from the question."""
    choices = record.get("choices")
    if isinstance(choices, list) and choices and all(isinstance(c, dict) and "label" in c for c in choices):
        return {str(c["label"]).strip().upper(): str(c.get("text", "")).strip() for c in choices}
    question = record.get("question") or record.get("prompt") or ""
    marks = list(_OPTS_AT.finditer(question))
    part = question[marks[-1].end() :] if marks else question
    return {letter: text.strip() for letter, text in _OPT.findall(part)}


def _norm(s: str) -> str:
    return " ".join(re.sub(r"[^\w\s&/'-]", " ", s.lower()).split())


def letter_of(span: str | None, options: Mapping[str, str]) -> str | None:
    """The option letter a marked answer span names (``(B)``, ``B.``, ``B: text``, or an option's text)."""
    if not span:
        return None
    s = clean_span(span)
    s = re.sub(r"^(?:option|choice)\s+", "", s, flags=re.I)
    m = _LEAD.match(s)
    if m and (not options or m.group(1) in options):
        return m.group(1)
    by_text = {_norm(t): k for k, t in options.items() if t}
    return by_text.get(_norm(s))


def _bare_choice(line: str, options: Mapping[str, str]) -> bool:
    """A one-line response that is a choice: ``B``, ``(B)``, ``B.``, ``(B) text``, ``B: text`` or an option's text."""
    s = clean_span(line)
    if re.fullmatch(r"\(?[A-Z]\)?[.:]?", s) or re.match(r"\([A-Z]\)|[A-Z][.:)]\s", s):
        return True
    return _norm(s) in {_norm(t) for t in options.values() if t}


def lenient_letter(text: str | None, options: Mapping[str, str]) -> str | None:
    if not text:
        return None
    body = strip_thinking(text)
    found = [x for x in _PAREN.findall(body) if not options or x in options]
    if found:
        return found[-1]
    line = last_line(body)
    if not line:
        return None
    norm_line = _norm(line)
    ends = [(len(_norm(t)), k) for k, t in options.items() if _norm(t) and norm_line.endswith(_norm(t))]
    if ends:
        return max(ends)[1]
    lone = [x for x in re.findall(r"(?<![\w'])([A-Z])(?![\w'])", line) if not options or x in options]
    return lone[-1] if lone else None


@register_scorer("choice")
class ChoiceScorer(Scorer):
    def gold(self, record: Mapping, options: Mapping) -> tuple[str | None, str]:
        answer = gold_answer(record)
        opts = options_of(record)
        letter = letter_of(answer, opts) if len(answer.strip()) <= 3 else None
        if letter is None:
            by_text = {_norm(t): k for k, t in opts.items() if t}
            letter = by_text.get(_norm(answer))
        return letter, answer.strip()

    def score(self, text: str | None, record: Mapping, options: Mapping) -> Verdict:
        gold_letter, gold_text = self.gold(record, options)
        opts = options_of(record)
        if gold_letter is None:
            span = answer_span(text)  # a gold that is no option: compare text (see module docstring)
            strict = clean_span(span) if span else None
            lenient = strict if strict is not None else last_line(text)
            return Verdict(
                correct=lenient is not None and _norm(lenient) == _norm(gold_text),
                correct_strict=strict is not None and _norm(strict) == _norm(gold_text),
                extracted=_norm(lenient) if lenient else None,
                extracted_strict=_norm(strict) if strict else None,
            )
        strict = letter_of(answer_span(text, bare=lambda line: _bare_choice(line, opts)), opts)
        lenient = strict or lenient_letter(text, opts)
        return Verdict(
            correct=lenient == gold_letter,
            correct_strict=strict == gold_letter,
            extracted=lenient,
            extracted_strict=strict,
        )
