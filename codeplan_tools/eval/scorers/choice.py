"""Multiple choice (AQuA, CommonsenseQA, date understanding, shuffled objects, BBH option tasks).

The options are read from the record's ``choices`` (``[{"label": "A", "text": ...}]``) or from the
question (``Answer Choices: (A) x (B) y`` or BBH's ``Options:\\n(A) x``). Gold ``B`` and ``(B)`` are the
same; a gold that is an option's text is mapped to its letter.

Strict: the letter a marked answer span names (``The answer is (B)``, ``**B**``, ``\\boxed{B}``,
``Answer: option C``, ``the answer is most likely C``, a bare ``B`` / ``(B)`` / ``Probably (B).``): a
letter at its start, else a span that is exactly one option's text, else the one option its first
clause names by ``(X)`` (``heptagon (B)``). A span that names two or more different options (``(A) or
(B)``, ``A and C``, ``circle or heptagon``; not counting ``not (A)``) is **hedged**; one that names no
option (``(F)`` of five, ``7 sides``) is **invalid**; both are wrong, and lenient does not guess past
them. Lenient, only when no answer is marked: the last ``(X)`` naming an option, else the option whose
text the last line ends with, else a lone option letter on the last line; the guess is hedged when it
is the second of an "X or Y" pair. Echoed option lists (``Answer Choices: ...``, ``Options:`` lines) are
never read as answers.

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
    answer_clause,
    answer_span,
    clean_span,
    gold_answer,
    last_line,
    marked_or_guessed,
    negated,
    own_text,
    register_scorer,
    strip_qualifiers,
)

_OPTS_AT = re.compile(r"(?:Answer Choices:|Options:)", re.I)
_OPT = re.compile(r"\(([A-Z])\)\s*(.*?)(?=\s*\([A-Z]\)|\s*$)", re.S)
_PAREN = re.compile(r"\(([A-Z])\)")
_LEAD = re.compile(r"^\(?([A-Z])\)?(?=$|[\s.:,;)\]]|\s*[-\u2013:])")
_NAMED_AS = re.compile(r"^(?:(?:either|both)\s+)?(?:(?:the\s+)?(?:option|choice|letter)\s+)?", re.I)
# A capital letter standing alone: "A or B", "B, C". "I" is a pronoun and "A circle" an article.
_LONE = re.compile(r"(?<![\w'\u2019(-])([A-Z])(?![\w'\u2019)-])")
_ARTICLE = re.compile(r"\s+(?!(?:or|and|nor|is|was|are|were|to)\b)[a-z]")
_OR = re.compile(r"\s*,?\s*\b(?:or|and/or)\s+(?:(?:either|maybe|possibly|perhaps)\s+)?", re.I)
# Between two (X) of an "X or Y" hedge: "(A) or (B)", "(A) circle or (B) heptagon".
_OR_BETWEEN = re.compile(
    r"[^()\n.!?;]{0,60}?\b(?:or|and/or)\s+(?:(?:either|maybe|possibly|perhaps)\s+)?", re.I
)


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


def _lead_or_text(s: str, options: Mapping[str, str]) -> str | None:
    """The letter ``s`` starts with (``(B)``, ``B.``, ``B: text``), or the option whose text ``s`` is."""
    s = _NAMED_AS.sub("", strip_qualifiers(s.strip()))
    m = _LEAD.match(s)
    if m and (not options or m.group(1) in options):
        return m.group(1)
    by_text = {_norm(t): k for k, t in options.items() if t}
    return by_text.get(_norm(s))


def _blank(text: str, part: str) -> str:
    """``text`` with every case-insensitive occurrence of ``part`` blanked out (no regex to compile)."""
    low, part = text.lower(), part.lower()
    if len(low) != len(text):  # lower() changed the length (rare Unicode): positions would not match
        return re.sub(re.escape(part), " ", text, flags=re.I)
    i = low.find(part)
    while i >= 0:
        text = text[:i] + " " * len(part) + text[i + len(part) :]
        i = low.find(part, i + len(part))
    return text


def named_options(clause: str, options: Mapping[str, str]) -> set[str]:
    """The options a clause names: by ``(X)``, by a lone letter, or as alternatives joined by "or"
    (each one a letter or an option's text); a mention after "not" / "rather than" does not count."""
    named = {
        m.group(1)
        for m in _PAREN.finditer(clause)
        if m.group(1) in options and not negated(clause, m.start())
    }
    rest = _PAREN.sub(" ", clause)
    for text in options.values():  # an option's own words are not letters ("Episode V")
        if len(text) > 1:
            rest = _blank(rest, text)
    for m in _LONE.finditer(rest):
        x = m.group(1)
        if x in options and x != "I" and not negated(rest, m.start()):
            if x == "A" and _ARTICLE.match(rest, m.end()):
                continue
            named.add(x)
    parts = _OR.split(clause)
    if len(parts) > 1:
        named.update(x for x in (_lead_or_text(clean_span(p), options) for p in parts if p.strip()) if x)
    return named


def letter_of(span: str | None, options: Mapping[str, str]) -> str | None:
    """The option letter a marked answer span names (``(B)``, ``B.``, ``B: text``, ``option B``, an
    option's text, or the one ``(X)`` in its first clause)."""
    if not span:
        return None
    s = clean_span(span)
    letter = _lead_or_text(s, options)
    if letter is not None:
        return letter
    named = {m.group(1) for m in _PAREN.finditer(answer_clause(s)) if m.group(1) in options}
    return named.pop() if len(named) == 1 else None


def span_is_hedged(span: str, options: Mapping[str, str]) -> bool:
    """A marked answer whose first clause names two or more different options."""
    return len(named_options(answer_clause(clean_span(span)), options)) > 1


def _bare_choice(line: str, options: Mapping[str, str]) -> bool:
    """A one-line response that is a choice: ``B``, ``(B)``, ``B.``, ``(B) text``, ``B: text``,
    ``Option B`` or an option's text."""
    s = _NAMED_AS.sub("", clean_span(line))
    if re.fullmatch(r"\(?[A-Z]\)?[.:]?", s) or re.match(r"\([A-Z]\)", s):
        return True
    # "B: heptagon" only with B's own text: "A: Let's think step by step" is a dialogue turn.
    m = re.match(r"([A-Z])[.:)]\s+(.+)", s)
    if m and options.get(m.group(1)) and _norm(m.group(2)).startswith(_norm(options[m.group(1)])):
        return True
    return _norm(s) in {_norm(t) for t in options.values() if t}


def lenient_letter(text: str | None, options: Mapping[str, str]) -> str | None:
    return _lenient(text or "", options)[0]


def _lenient(body: str, options: Mapping[str, str]) -> tuple[str | None, bool]:
    """(the best-guess letter of a response with no marked answer, whether the guess is a hedge)."""
    if not body:
        return None, False
    found = [m for m in _PAREN.finditer(body) if not options or m.group(1) in options]
    if found:
        last = found[-1]
        if len(found) > 1:
            prev = found[-2]
            if prev.group(1) != last.group(1) and _OR_BETWEEN.fullmatch(body, prev.end(), last.start()):
                return None, True
        return last.group(1), False
    line = last_line(body)
    if not line:
        return None, False
    norm_line = _norm(line)
    ends = [(len(_norm(t)), k) for k, t in options.items() if _norm(t) and norm_line.endswith(_norm(t))]
    if ends:
        return max(ends)[1], False
    # "A:" opening a line is the answer turn of a "Q: ... A:" dialogue, not option A.
    lone = [
        m
        for m in _LONE.finditer(line)
        if (not options or m.group(1) in options) and not (m.start() == 0 and line[1:2] == ":")
    ]
    if not lone:
        return None, False
    if len(lone) > 1 and lone[-2].group(1) != lone[-1].group(1):
        if _OR_BETWEEN.fullmatch(line, lone[-2].end(), lone[-1].start()):
            return None, True
    return lone[-1].group(1), False


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
        body = own_text(text, record)
        if gold_letter is None:
            span = answer_span(body)  # a gold that is no option: compare text (see module docstring)
            strict = clean_span(span) if span else None
            lenient = strict if span is not None else last_line(body)
            return Verdict(
                correct=_norm(lenient) == _norm(gold_text) if lenient else False,
                correct_strict=_norm(strict) == _norm(gold_text) if strict else False,
                extracted=_norm(lenient) if lenient else None,
                extracted_strict=_norm(strict) if strict else None,
                invalid=span is not None and not strict,
            )
        return marked_or_guessed(
            body,
            gold_letter,
            bare=lambda line: _bare_choice(line, opts),
            read=lambda span: (None, True) if span_is_hedged(span, opts) else (letter_of(span, opts), False),
            guess=lambda body: _lenient(body, opts),
        )
