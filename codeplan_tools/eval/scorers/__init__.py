"""Answer checking: one scorer per task family, reached through a registry.

A scorer turns a model's text into a ``Verdict``: the answer it extracted and whether it is right,
twice over, with *strict* and *lenient* extraction side by side.

- **strict** takes only an answer the model marked as its answer (``answer_span``): the last
  ``\\boxed{...}``, a ``#### X`` line, a ``finish[X]``, a "the answer is X" phrase (also "Answer: X",
  "the final/correct answer is X", "the answer would/should/must be X", "the correct option is X";
  a qualifier after the verb is dropped: "the answer is most likely C" gives ``C``), the last
  ```` ```output ```` block of a tool-integrated (ToRA-style) solution when no other marked answer follows
  it, or a response that is nothing but a short one-line answer (``B``, ``(B)``, ``True``, ``18``, also
  after a leading qualifier: ``Probably (B).``, ``I think B``).
- **lenient** is the strict answer whenever the sample marked one. Only a sample with **no** marked
  answer gets the family's best guess: the last number (numeric), math-verify's own extraction (math),
  the last ``(X)`` or option text (choice), the last label word (yes/no, closed label sets), the last
  line (free-form strings, QA).

Two outcomes are counted apart from plain wrong answers (both are wrong, strict and lenient):

- **hedged**: the answer names two or more different answers: ``(A) or (B)``, ``A and C``, ``yes or
  no``, ``12 or 14``. A marked answer is a hedge when the first clause of its span (up to the first
  sentence end, ``;`` or "because/since/which ...") names more than one option letter, option text
  joined by "or", label or number joined by "or"; a mention after "not", "rather than" or "instead of"
  does not count (``(B), not (A)`` is ``B``). A lenient guess is a hedge when the last candidate sits in
  such a disjunction. ``hedged_strict`` is the same for the strict answer.
- **invalid**: the sample marked an answer that is not valid for the task (a letter that is no option,
  a word that is no label, a span with no number); lenient does not fall back to guessing elsewhere.

Only the sample's own text is searched, and first the parts of it that echo the record's prompt are
removed (the whole prompt or question, or a paragraph of it, e.g. the answer-format instruction with its
"The answer is yes." example, and echoed ``Answer Choices:`` / ``Options:`` lists), so an echo gains
no credit. Before extraction a ``<think>...</think>`` block and markdown emphasis (``**18**``) are
dropped, and numbers lose thousands commas, ``$``, ``%`` and trailing units (``1,000 dollars`` ->
``1000``); a marked number may be written in words (``fifty-two point six two``).

The lenient verdict is the headline accuracy (what most published CoT evaluations use); the strict one
is reported beside it so a format failure is visible rather than hidden.

Families (``codeplan_tools.eval.scorers.<family>``): ``numeric``, ``math``, ``choice``, ``exact``,
``yesno``, ``qa``, ``ifeval``. Each registers itself with ``register_scorer``; built-ins are imported on
first use, so adding a family is one module plus one entry in ``BUILTIN``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from codeplan_tools.core.errors import UsageError


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
    hedged: bool = False
    """The (lenient) answer names two or more different answers (``(A) or (B)``): wrong, no vote."""
    hedged_strict: bool = False
    invalid: bool = False
    """The sample marked an answer that is not valid for the task (no option, no label, no number)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Family-specific numbers, e.g. ``f1`` / ``f1_strict`` (qa), instruction-level counts (ifeval)."""

    def to_dict(self) -> dict[str, Any]:
        """The fields, then the family's extras, flat (a shallow copy: ``asdict`` is slow per sample)."""
        d = {name: getattr(self, name) for name in _VERDICT_FIELDS}
        d.update(self.extra)
        return d


_VERDICT_FIELDS = tuple(f.name for f in fields(Verdict) if f.name != "extra")


class Scorer:
    """Base class: ``score(text, record, options)`` for one sample; ``score_many`` for a batch.

    ``options`` are the task's ``scorer_options`` (e.g. the label set of an exact-match task).
    Scorers that need workers (math) override ``score_many`` and ``close``.
    """

    name = ""
    votable = True
    """Whether ``extracted`` is an answer that majority voting (maj@k) can count."""

    def __init__(self, timeout: float = 5.0, workers: int = 1) -> None:
        self.timeout = timeout
        self.workers = workers

    def gold(self, record: Mapping, options: Mapping) -> Any:
        """The parsed gold answer; raising ``NoGold`` marks the record unscorable."""
        return gold_answer(record)

    def score(self, text: str | None, record: Mapping, options: Mapping) -> Verdict:
        raise NotImplementedError

    def score_many(self, items: Sequence[tuple[str | None, Mapping, Mapping]]) -> list[Verdict]:
        return [self.score(text, record, options) for text, record, options in items]

    def submit(self, items: Sequence[tuple[str | None, Mapping, Mapping]]) -> Callable[[], list[Verdict]]:
        """Start checking ``items``; the function returned gives their verdicts (``score_many``'s).
        A scorer that checks in other processes (math) returns at once, so that the caller prepares its
        next batch while they work; here the checking is done before it returns."""
        verdicts = self.score_many(items)
        return lambda: verdicts

    def warm(self) -> None:
        """Start what checking needs (math: the worker processes) before the first batch is read."""

    def close(self) -> None:
        pass


class NoGold(ValueError):
    """The record has no usable gold answer for this scorer."""


def gold_answer(record: Mapping, hint: str = "") -> str:
    """The record's gold ``answer``, a non-blank string; else ``NoGold`` saying what is wrong (absent or
    blank, or its JSON type: an ``answer`` that is a list is never read as its text)."""
    from codeplan_tools.core.records import json_type

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
# "the answer is X", "final answer: X", "Answer: X", "the correct option is X", "the answer would be X"
# (also in bold / headings); X runs to the end of the line.
_PHRASE = re.compile(
    r"\b(?:answer(?:\s+(?:choice|option))?|(?:correct|right|best)\s+(?:option|choice))\b"
    r"(?:\s*\([^)\n]{0,40}\))?\s*"
    r"(?:(?:is|(?:will|would|should|must)\s+be|(?:seems|appears)\s+to\s+be|becomes)\b|:|=)"
    r"[\s:*_#]*(.+)",
    re.I,
)
_FINISH = re.compile(r"\bfinish\[(.*?)\]", re.I | re.S)
_LATEX_TEXT = re.compile(r"\\(?:text|mathrm|textbf|mathbf)\{([^{}]*)\}")
# Bold / italic / code marks; "_{" is a LaTeX subscript (``4210_{5}``), not emphasis.
_MD = re.compile(r"\*\*|__|(?<!\w)[*_](?=\S)|(?<=\S)(?:\*|_(?!\{))(?!\w)|`")
# A tool-integrated (ToRA-style) program's printed result; an unclosed block is cut off at the end.
_OUTPUT_BLOCK = re.compile(r"```output[ \t]*\n(.*?)(?:```|\Z)", re.S)
# Words that qualify an answer without changing it: "the answer is most likely C", "Probably (B).",
# "I think B". Stripped from the front of a marked span (repeatedly: "therefore, most likely (B)").
_QUALIFIER = re.compile(
    r"^(?:(?:most|very|quite|highly|more)\s+likely|likely|probably|possibly|perhaps|maybe|presumably"
    r"|clearly|definitely|certainly|surely|obviously|therefore|thus|hence"
    r"|I\s+(?:think|believe|guess|suppose|would\s+(?:say|guess|choose|pick|go\s+with))"
    r"|I'd\s+(?:say|guess|choose|pick|go\s+with)|my\s+(?:best\s+)?(?:guess|choice|pick)\s+(?:is|would\s+be))\b"
    r"(?:\s+(?:to\s+be|be|that|it(?:'s|\s+is|\s+would\s+be)))?[\s,:]*",
    re.I,
)
# Where the first clause of a marked answer ends (for hedge detection: "(B) because (A) is ...").
_CLAUSE_END = re.compile(
    r"(?<=[^\s.])[.!?](?=\s|$)|;|\n|,?\s+(?:because|since|as|which|where|given|due\s+to|so\s+that)\b", re.I
)
# A mention after these words is not named as the answer: "(B), not (A)".
_NEGATED = re.compile(r"(?:\bnot|n't|\brather\s+than|\binstead\s+of|\bexcept|\bexcluding)\s*[\"'(]?$", re.I)


def strip_thinking(text: str) -> str:
    """Drop reasoning-model ``<think>`` blocks (and everything before a lone ``</think>``)."""
    if "think>" not in text:
        return text
    text = _THINK.sub("", text)
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    return text


def strip_markdown(text: str) -> str:
    """Remove bold / italic / code marks: ``**18**`` -> ``18``."""
    return _MD.sub("", text)


def strip_qualifiers(span: str) -> str:
    """``most likely C`` -> ``C``; ``I think (B)`` -> ``(B)`` (see ``_QUALIFIER``)."""
    for _ in range(4):
        m = _QUALIFIER.match(span)
        if not m or not m.end():
            break
        span = span[m.end() :]
    return span


def answer_clause(span: str) -> str:
    """The first clause of a marked answer span, where a hedge would be ("(A) or (B)")."""
    m = _CLAUSE_END.search(span)
    return span[: m.start()] if m else span


def negated(text: str, start: int) -> bool:
    """Whether the mention at ``text[start]`` follows a negation ("not (A)", "rather than yes")."""
    return _NEGATED.search(text[max(0, start - 24) : start]) is not None


_ECHO_LISTS = re.compile(
    # "Answer Choices: (A) x (B) y" to the end of its line; "Options:" and the option lines under it.
    r"Answer\s+Choices\s*:[^\n]*|^[ \t]*Options\s*:[ \t]*\n(?:[ \t]*(?:\([A-Z]\)|-)[^\n]*(?:\n|$))+",
    re.I | re.M,
)


def without_echo(text: str, record: Mapping) -> str:
    """``text`` less what echoes the record's prompt: the prompt or question itself, any paragraph of
    the prompt (the answer-format instruction with its "The answer is yes." example), and
    ``Answer Choices:`` / ``Options:`` lists. Only the sample's own words are searched for an answer."""
    for key in ("prompt", "question"):
        part = record.get(key)
        if type(part) is str and len(part.strip()) >= 12 and part.strip() in text:
            text = text.replace(part.strip(), " ")
    prompt = record.get("prompt")
    if type(prompt) is str and "\n\n" in prompt:
        for para in prompt.split("\n\n"):
            para = para.strip()
            if len(para) >= 20 and para in text:
                text = text.replace(para, " ")
    if "ptions" in text or "hoices" in text:
        text = _ECHO_LISTS.sub(" ", text)
    return text


def own_text(text: str | None, record: Mapping) -> str:
    """The sample's text as the families search it: ``<think>`` blocks and prompt echoes removed."""
    return without_echo(strip_thinking(text), record) if text else ""


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


def _marked(text: str) -> str | None:
    """The last marked answer in ``text``: ``\\boxed{}``, ``####``, ``finish[]``, then an answer phrase."""
    if "boxed" in text or "fbox" in text:
        boxed = last_boxed(text)
        if boxed is not None:
            return boxed
    if "####" in text:
        hashes = _HASHES.findall(text)
        if hashes:
            return hashes[-1]
    finish = _FINISH.findall(text)
    if finish:
        return finish[-1].strip()
    phrases = _PHRASE.findall(strip_markdown(text))
    if phrases:
        return strip_qualifiers(phrases[-1].strip())
    return None


def answer_span(
    text: str | None, bare: Callable[[str], bool] | bool = True, max_bare: int | None = 80
) -> str | None:
    """The part of ``text`` the model marked as its answer (strict extraction), or None.

    Priority: the last ```` ```output ```` block when no marked answer follows it (its last line); the
    last ``\\boxed{}``; the last ``#### X`` line; the last ``finish[X]``; the last "answer is X" phrase
    (qualifiers dropped); the whole response when it is a single line (of at most ``max_bare``
    characters) and ``bare`` accepts it, as written or after a leading qualifier (a family passes a
    predicate, e.g. "is just a number", so a one-line sentence does not count as a marked answer).
    """
    if not text:
        return None
    text = strip_thinking(text)
    if "```output" in text:
        blocks = list(_OUTPUT_BLOCK.finditer(text))
        if blocks:
            after = _marked(text[blocks[-1].end() :])
            if after is not None:
                return after
            lines = [ln.strip() for ln in blocks[-1].group(1).splitlines() if ln.strip()]
            return lines[-1] if lines else ""
    span = _marked(text)
    if span is not None:
        return span
    stripped = strip_markdown(text).strip()
    if not stripped or "\n" in stripped or (max_bare is not None and len(stripped) > max_bare):
        return None
    if bare is True:
        return stripped
    if bare:
        for candidate in (stripped, strip_qualifiers(stripped)):
            if candidate and bare(candidate):
                return candidate
    return None


A = TypeVar("A")


def marked_or_guessed(
    body: str,
    gold: Any,
    bare: Callable[[str], bool],
    read: Callable[[str], tuple[A | None, bool]],
    guess: Callable[[str], tuple[A | None, bool]],
    same: Callable[[A | None, Any], bool] = lambda found, gold: found is not None and found == gold,
    key: Callable[[A | None], str | None] = lambda found: None if found is None else str(found),
) -> Verdict:
    """The verdict of a family whose lenient answer is the strict one whenever an answer is marked.

    ``read(span)`` and ``guess(body)`` give (answer or None, hedged). A marked span (``answer_span``
    with ``bare``) is read for both verdicts, and one that names no valid answer without being a hedge
    is invalid: lenient does not guess past it. Only a body with no marked answer gets ``guess``.
    ``same(answer, gold)`` says whether an answer is right; ``key`` is the extracted answer's text."""
    span = answer_span(body, bare=bare)
    if span is not None:
        strict, hedged = read(span)
        lenient, hedged_strict, invalid = strict, hedged, strict is None and not hedged
    else:
        strict, hedged_strict, invalid = None, False, False
        lenient, hedged = guess(body)
    return Verdict(
        correct=same(lenient, gold),
        correct_strict=same(strict, gold),
        extracted=key(lenient),
        extracted_strict=key(strict),
        hedged=hedged,
        hedged_strict=hedged_strict,
        invalid=invalid,
    )


def last_line(text: str | None) -> str | None:
    """The last non-empty line, markdown removed (lenient fallback for free-form answers)."""
    if not text:
        return None
    lines = [ln.strip() for ln in strip_markdown(strip_thinking(text)).splitlines() if ln.strip()]
    return lines[-1] if lines else None


def clean_span(span: str) -> str:
    """Strip what surrounds an answer: ``$``, ``\\text{}``, quotes, markdown, a trailing period."""
    s = strip_markdown(span).strip()
    for _ in range(2):  # \text{\mathrm{x}}: the inner command first
        if "\\" in s:
            s = _LATEX_TEXT.sub(r"\1", s)
    s = s.strip().strip("$").strip()
    s = s.strip("\"'“”‘’`").strip()
    return s.rstrip(".;,!").strip()
