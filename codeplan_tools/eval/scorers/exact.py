"""Exact strings (Last Letter, BBH free-form and closed-label tasks).

Two kinds, chosen by the task's ``scorer_options``:

- a closed label set (``labels=["True", "False"]``, ``["valid", "invalid"]``): strict takes the first
  label word in the marked answer span (or a bare one-word response, also after a qualifier:
  ``Probably yes.``); a label after "not" / "rather than" does not count. A span that joins different
  labels with "or" / "/" (``yes or no``, ``True/False``) is **hedged**, one with no label is
  **invalid**; both are wrong and lenient does not guess past them. Lenient, only when no answer is
  marked: the last label word anywhere in the response, leaving out a parenthesised choice that echoes
  the question (``(Yes or No)``); the guess is hedged when it ends a ``yes or no`` pair. Case is ignored.
- free form: the marked span (strict), else the last line (lenient), compared after normalisation
  ``normalize=``: ``text`` (default: lower case, markdown, quotes and a trailing period removed, spaces
  collapsed), ``compact`` (also every space, quote and period removed: Last Letter ``y a j o`` = ``yajo``,
  Dyck ``) ] >`` = ``)]>``) or ``words`` (words split at spaces or commas: BBH word sorting). A marked
  span that is empty after normalisation is invalid.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence

from . import (
    NoGold,
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
    strip_markdown,
)


def normalize_text(s: str | None, mode: str = "text") -> str | None:
    if s is None:
        return None
    s = clean_span(s).lower()
    if mode == "compact":
        s = re.sub(r"[\s\"'.`]", "", s)
    elif mode == "words":
        s = " ".join(w for w in re.split(r"[\s,]+", s) if w)
    else:
        s = " ".join(s.split())
    return s or None


@functools.lru_cache(maxsize=64)
def _label_pattern(labels: Sequence[str]) -> re.Pattern:
    alts = "|".join(re.escape(x) for x in sorted(labels, key=len, reverse=True))
    return re.compile(rf"(?<![\w-])({alts})(?![\w-])", re.I)


# Between two labels of a hedge: "yes or no", "True/False", "yes, or maybe no" ("and" is left out:
# "True and False" is an expression in BBH boolean_expressions, not two answers).
_OR_BETWEEN = re.compile(r"\s*,?\s*(?:or|and/or|/)\s*(?:(?:either|maybe|possibly|perhaps)\s+)?", re.I)


def _hits(text: str, labels: Sequence[str]) -> list[tuple[re.Match, str]]:
    """Every label word of ``text`` that is not negated, with its canonical (lower-case) label."""
    return [
        (m, m.group(1).lower()) for m in _label_pattern(labels).finditer(text) if not negated(text, m.start())
    ]


def _hedge(hits: list[tuple[re.Match, str]], i: int, text: str) -> bool:
    """Whether hits ``i - 1`` and ``i`` are different labels joined by "or" / "/"."""
    (m1, a), (m2, b) = hits[i - 1], hits[i]
    return a != b and _OR_BETWEEN.fullmatch(text, m1.end(), m2.start()) is not None


@functools.lru_cache(maxsize=64)
def _label_choice_pattern(labels: tuple[str, ...]) -> re.Pattern:
    """A parenthesised choice between labels, as a question offers it: ``(Yes or No)``, ``(True/False)``."""
    pat = _label_pattern(labels).pattern
    return re.compile(rf"\(\s*{pat}(?:{_OR_BETWEEN.pattern}{pat})+\s*\)", re.I)


def find_label(text: str | None, labels: Sequence[str], last: bool) -> str | None:
    if not text:
        return None
    found = _label_pattern(labels).findall(strip_markdown(text))
    if not found:
        return None
    hit = found[-1] if last else found[0]
    return next(x for x in labels if x.lower() == hit.lower())


def label_of_span(span: str, labels: Sequence[str]) -> tuple[str | None, bool]:
    """(the first label a marked answer span names, whether its first clause is a hedge)."""
    clause = answer_clause(strip_markdown(span))
    hits = _hits(clause, labels)
    if any(_hedge(hits, i, clause) for i in range(1, len(hits))):
        return None, True
    hits = hits or _hits(strip_markdown(span), labels)
    return (hits[0][1] if hits else None), False


def lenient_label(body: str, labels: Sequence[str]) -> tuple[str | None, bool]:
    """(the last label word of a response with no marked answer, whether it ends a hedge); a
    parenthesised choice such as ``(Yes or No)`` echoes the question and is left out."""
    text = _label_choice_pattern(labels).sub(" ", strip_markdown(body))
    hits = _hits(text, labels)
    if not hits:
        return None, False
    if len(hits) > 1 and _hedge(hits, len(hits) - 1, text):
        return None, True
    return hits[-1][1], False


@register_scorer("exact")
class ExactScorer(Scorer):
    default_labels: tuple[str, ...] = ()

    def labels(self, options: Mapping) -> tuple[str, ...]:
        return tuple(options.get("labels") or self.default_labels)

    def gold(self, record: Mapping, options: Mapping) -> str:
        answer = gold_answer(record)
        labels = self.labels(options)
        if labels:
            g = find_label(answer, labels, last=False)
            if g is None:
                raise NoGold(f"gold {answer!r} is not one of {list(labels)}")
            return g.lower()
        return normalize_text(answer, options.get("normalize", "text")) or ""

    def score(self, text: str | None, record: Mapping, options: Mapping) -> Verdict:
        gold = self.gold(record, options)
        labels = self.labels(options)
        body = own_text(text, record)
        if labels:
            pat = _label_pattern(labels)
            return marked_or_guessed(
                body,
                gold,
                bare=lambda line: pat.fullmatch(clean_span(line)) is not None,
                read=lambda span: label_of_span(span, labels),
                guess=lambda body: lenient_label(body, labels),
            )
        mode = options.get("normalize", "text")
        # A one-line response is the answer whatever its length (BBH word lists run long).
        span = answer_span(body, max_bare=None)
        strict = normalize_text(span, mode)
        lenient = strict if span is not None else normalize_text(last_line(body), mode)
        return Verdict(
            correct=lenient is not None and lenient == gold,
            correct_strict=strict is not None and strict == gold,
            extracted=lenient,
            extracted_strict=strict,
            invalid=span is not None and strict is None,
        )
