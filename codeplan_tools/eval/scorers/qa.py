"""Open-domain QA (HotpotQA, MuSiQue, 2WikiMultihopQA, Bamboogle): exact match and F1 with aliases.

Answers are compared after SQuAD's normalisation (lower case, punctuation and the articles a/an/the
removed, spaces collapsed), against the gold ``answer`` and every alias in ``answer_aliases`` /
``aliases``; the best alias counts. Strict takes the marked answer span (``finish[X]`` as in ReAct,
"the answer is X", ``\\boxed{X}``, a bare one-line response); lenient falls back to the last line
only when no answer is marked (an empty marked answer is ``invalid``). Echoes of the question are
not searched.
``correct`` is exact match; token F1 (``f1`` / ``f1_strict``) is reported beside it.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Mapping

from . import NoGold, Scorer, Verdict, answer_span, clean_span, last_line, own_text, register_scorer

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """SQuAD v1.1 normalisation."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def f1_score(prediction: str, gold: str) -> float:
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    # yes / no / noanswer must match exactly (HotpotQA's official evaluation).
    special = {"yes", "no", "noanswer"}
    if (" ".join(p) in special or " ".join(g) in special) and p != g:
        return 0.0
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def golds_of(record: Mapping) -> list[str]:
    out = []
    answer = record.get("answer")
    if isinstance(answer, str) and answer.strip():
        out.append(answer)
    for key in ("answer_aliases", "aliases"):
        extra = record.get(key)
        if isinstance(extra, list):
            out.extend(a for a in extra if isinstance(a, str) and a.strip())
    return out


@register_scorer("qa")
class QAScorer(Scorer):
    def gold(self, record: Mapping, options: Mapping) -> list[str]:
        golds = golds_of(record)
        if not golds:
            raise NoGold("record has no gold 'answer'")
        return golds

    def score(self, text: str | None, record: Mapping, options: Mapping) -> Verdict:
        golds = self.gold(record, options)
        body = own_text(text, record)
        span = answer_span(body, max_bare=None)  # a one-line response is the answer, whatever its length
        raw_strict = span.strip() if span else None
        if span is not None:  # a marked answer: lenient takes it as it is
            raw_lenient = raw_strict
        else:
            line = last_line(body)
            raw_lenient = line.strip() if line else None
        strict = clean_span(raw_strict) if raw_strict else None
        lenient = clean_span(raw_lenient) if raw_lenient else None

        def em(pred: str | None, raw: str | None) -> bool:
            if pred and any(
                normalize_answer(pred) == normalize_answer(g) for g in golds if normalize_answer(g)
            ):
                return True
            # A gold that normalises to nothing (HotpotQA's band "!!!") is compared as written.
            if not raw:
                return False
            return any(not normalize_answer(g) and raw.lower() == g.strip().lower() for g in golds)

        def f1(pred: str | None) -> float:
            return max(f1_score(pred, g) for g in golds) if pred else 0.0

        return Verdict(
            correct=em(lenient, raw_lenient),
            correct_strict=em(strict, raw_strict),
            extracted=(normalize_answer(lenient) or lenient) if lenient else raw_lenient,
            extracted_strict=(normalize_answer(strict) or strict) if strict else raw_strict,
            invalid=span is not None and not raw_strict,
            extra={"f1": round(f1(lenient), 6), "f1_strict": round(f1(strict), 6)},
        )
