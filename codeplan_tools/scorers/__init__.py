"""Answer checking: one scorer per task family, reached through a registry.

A scorer turns a model's text into a ``Verdict``: the answer it extracted and whether it is right,
twice over, with *strict* and *lenient* extraction side by side.

- **strict** takes only an answer the model marked as its answer: the last ``\\boxed{...}``, a
  ``#### X`` line, a "the answer is X" / "Answer: X" / ``finish[X]`` phrase, or a response that is
  nothing but a short one-line answer (``B``, ``(B)``, ``True``, ``18``).
- **lenient** falls back, when strict finds nothing, to the family's best guess: the last number
  (numeric), math-verify's own extraction (math), the last ``(X)`` or option text (choice), the last
  label word (yes/no, closed label sets), the last line (free-form strings, QA).

The lenient verdict is the headline accuracy (what most published CoT evaluations use); the strict one
is reported beside it so a format failure is visible rather than hidden. Before extraction both drop a
``<think>...</think>`` block and markdown emphasis (``**18**``), and numbers lose thousands commas,
``$``, ``%`` and trailing units (``1,000 dollars`` -> ``1000``).

Families (``codeplan_tools.scorers.<family>``): ``numeric``, ``math``, ``choice``, ``exact``,
``yesno``, ``qa``, ``ifeval``. Each registers itself with ``register_scorer``; built-ins are imported on
first use, so adding a family is one module plus one entry in ``BUILTIN``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import UsageError


@dataclass
class Verdict:
    """The outcome of checking one sample."""

    correct: bool
    """Lenient verdict (the headline)."""
    correct_strict: bool
    extracted: str | None
    """Normalised answer found by lenient extraction (None: nothing found); also the vote for maj@k."""
    extracted_strict: str | None
    timed_out: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    """Family-specific numbers, e.g. ``f1`` / ``f1_strict`` (qa), instruction-level counts (ifeval)."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        extra = d.pop("extra")
        d.update(extra)
        return d


class Scorer:
    """Base class: ``score(text, record, options)`` for one sample; ``score_many`` for a batch.

    ``options`` are the task's ``scorer_options`` (e.g. the label set of an exact-match task).
    Scorers that need workers (math) override ``score_many`` and ``close``.
    """

    name = ""
    votable = True
    """Whether ``extracted`` is an answer that majority voting (maj@k) can count."""

    def __init__(self, timeout: float = 5.0, workers: int = 1):
        self.timeout = timeout
        self.workers = workers

    def gold(self, record: Mapping, options: Mapping) -> Any:
        """The parsed gold answer; raising ``NoGold`` marks the record unscorable."""
        return gold_answer(record)

    def score(self, text: str | None, record: Mapping, options: Mapping) -> Verdict:
        raise NotImplementedError

    def score_many(self, items: Sequence[tuple[str | None, Mapping, Mapping]]) -> list[Verdict]:
        return [self.score(text, record, options) for text, record, options in items]

    def close(self) -> None:
        pass


class NoGold(ValueError):
    """The record has no usable gold answer for this scorer."""


def gold_answer(record: Mapping, hint: str = "") -> str:
    """The record's gold ``answer``, a non-blank string; else ``NoGold`` saying what is wrong (absent or
    blank, or its JSON type: an ``answer`` that is a list is never read as its text)."""
    from ..filters import json_type

    answer = record.get("answer")
    if type(answer) is str and answer.strip():
        return answer
    if answer is None or type(answer) is str:
        raise NoGold(f"record has no gold 'answer'{hint}")
    raise NoGold(f"'answer' is {json_type(answer)}, not a string")


# name -> class; filled by register_scorer as family modules are imported.
SCORERS: dict[str, type[Scorer]] = {}
# Built-in families and the module that registers each (imported lazily: math-verify is slow to load).
BUILTIN = {
    "numeric": "numeric",
    "math": "math",
    "choice": "choice",
    "exact": "exact",
    "yesno": "yesno",
    "qa": "qa",
    "ifeval": "ifeval",
}


def register_scorer(name: str) -> Callable[[type[Scorer]], type[Scorer]]:
    """Class decorator: make a scorer family available as ``name``."""

    def deco(cls: type[Scorer]) -> type[Scorer]:
        cls.name = name
        SCORERS[name] = cls
        return cls

    return deco


def scorer_class(name: str) -> type[Scorer]:
    if name not in SCORERS and name in BUILTIN:
        importlib.import_module(f"{__name__}.{BUILTIN[name]}")
    if name not in SCORERS:
        raise UsageError(f"unknown scorer {name!r}; known: {', '.join(list_scorers())}")
    return SCORERS[name]


def get_scorer(name: str, **config: Any) -> Scorer:
    """A new scorer instance of family ``name`` (``timeout=``, ``workers=`` for the math pool)."""
    return scorer_class(name)(**config)


def list_scorers() -> list[str]:
    return sorted(set(SCORERS) | set(BUILTIN))


# ---------------------------------------------------------------------------------------------
# Text helpers shared by the families.

_THINK = re.compile(r"<think>.*?</think>", re.S)
_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_HASHES = re.compile(r"^\s*####\s*(.+?)\s*$", re.M)
# "the answer is X", "final answer: X", "Answer: X" (also in bold / headings); X runs to the end of the line.
_PHRASE = re.compile(
    r"\b(?:final\s+answer|answer)\b(?:\s*\([^)\n]{0,40}\))?\s*(?:is\b|:|=)[\s:*_#]*(.+)",
    re.I,
)
_FINISH = re.compile(r"\bfinish\[(.*?)\]", re.I | re.S)
_MD = re.compile(r"\*\*|__|(?<!\w)[*_](?=\S)|(?<=\S)[*_](?!\w)|`")


def strip_thinking(text: str) -> str:
    """Drop reasoning-model ``<think>`` blocks (and everything before a lone ``</think>``)."""
    text = _THINK.sub("", text)
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    return text


def strip_markdown(text: str) -> str:
    """Remove bold / italic / code marks: ``**18**`` -> ``18``."""
    return _MD.sub("", text)


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox``), braces matched; None if there is none."""
    starts = [m.end() for m in _BOXED.finditer(text)]
    if starts:
        # One pass pairs every brace (a scan per \boxed would be quadratic on long garbled output).
        closing: dict[int, int] = {}
        stack: list[int] = []
        for i in range(starts[0] - 1, len(text)):
            c = text[i]
            if c == "{":
                stack.append(i)
            elif c == "}" and stack:
                closing[stack.pop()] = i
        for start in reversed(starts):
            end = closing.get(start - 1)
            if end is not None:
                return text[start:end].strip()
    # "\boxed 5" (no braces) also occurs.
    bare = re.findall(r"\\boxed\s+([^\s$]+)", text)
    return bare[-1] if bare else None


def answer_span(
    text: str | None, bare: Callable[[str], bool] | bool = True, max_bare: int | None = 80
) -> str | None:
    """The part of ``text`` the model marked as its answer (strict extraction), or None.

    Priority: last ``\\boxed{}``; last ``#### X`` line; last ``finish[X]``; last "answer is X" phrase;
    the whole response when it is a single line (of at most ``max_bare`` characters) and ``bare``
    accepts it (a family passes a predicate, e.g. "is just a number", so a one-line sentence does not
    count as a marked answer).
    """
    if not text:
        return None
    text = strip_thinking(text)
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    hashes = _HASHES.findall(text)
    if hashes:
        return hashes[-1]
    finish = _FINISH.findall(text)
    if finish:
        return finish[-1].strip()
    plain = strip_markdown(text)
    phrases = _PHRASE.findall(plain)
    if phrases:
        return phrases[-1].strip()
    stripped = plain.strip()
    if (
        stripped
        and "\n" not in stripped
        and (max_bare is None or len(stripped) <= max_bare)
        and (bare is True or (bare and bare(stripped)))
    ):
        return stripped
    return None


def last_line(text: str | None) -> str | None:
    """The last non-empty line, markdown removed (lenient fallback for free-form answers)."""
    if not text:
        return None
    lines = [ln.strip() for ln in strip_markdown(strip_thinking(text)).splitlines() if ln.strip()]
    return lines[-1] if lines else None


def clean_span(span: str) -> str:
    """Strip what surrounds an answer: ``$``, ``\\text{}``, quotes, markdown, a trailing period."""
    s = strip_markdown(span).strip()
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"\\(?:mathrm|textbf|mathbf)\{([^{}]*)\}", r"\1", s)
    s = s.strip().strip("$").strip()
    s = s.strip("\"'“”‘’`").strip()
    s = re.sub(r"[.;,!]+$", "", s).strip()
    return s
