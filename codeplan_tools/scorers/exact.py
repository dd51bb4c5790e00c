"""Exact strings (Last Letter, BBH free-form and closed-label tasks).

Two kinds, chosen by the task's ``scorer_options``:

- a closed label set (``labels=["True", "False"]``, ``["valid", "invalid"]``): strict takes the first
  label word in the marked answer span (or a bare one-word response); lenient takes the last label word
  anywhere in the response. Case is ignored.
- free form: the marked span (strict), else the last line (lenient), compared after normalisation
  ``normalize=``: ``text`` (default: lower case, markdown, quotes and a trailing period removed, spaces
  collapsed), ``compact`` (also every space, quote and period removed: Last Letter ``y a j o`` = ``yajo``,
  Dyck ``) ] >`` = ``)]>``) or ``words`` (words split at spaces or commas: BBH word sorting).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from . import (
    NoGold,
    Scorer,
    Verdict,
    answer_span,
    clean_span,
    gold_answer,
    last_line,
    register_scorer,
    strip_markdown,
    strip_thinking,
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


def _label_pattern(labels: Sequence[str]) -> re.Pattern:
    alts = "|".join(re.escape(x) for x in sorted(labels, key=len, reverse=True))
    return re.compile(rf"(?<![\w-])({alts})(?![\w-])", re.I)


def find_label(text: str | None, labels: Sequence[str], last: bool) -> str | None:
    if not text:
        return None
    found = _label_pattern(labels).findall(strip_markdown(text))
    if not found:
        return None
    hit = found[-1] if last else found[0]
    return next(x for x in labels if x.lower() == hit.lower())


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
        if labels:
            pat = _label_pattern(labels)
            span = answer_span(text, bare=lambda line: pat.fullmatch(clean_span(line)) is not None)
            strict = find_label(span, labels, last=False)
            lenient = strict or find_label(strip_thinking(text or ""), labels, last=True)
            strict = strict.lower() if strict else None
            lenient = lenient.lower() if lenient else None
        else:
            mode = options.get("normalize", "text")
            # A one-line response is the answer whatever its length (BBH word lists run long).
            strict = normalize_text(answer_span(text, max_bare=None), mode)
            lenient = strict if strict is not None else normalize_text(last_line(text), mode)
        return Verdict(
            correct=lenient is not None and lenient == gold,
            correct_strict=strict is not None and strict == gold,
            extracted=lenient,
            extracted_strict=strict,
        )
