"""``codeplan filter``: named rules that decide whether a mined plan is kept.

Each rule is a small function ``(record, config) -> reason | None`` listed once in ``RULES`` with
its default and a one-line description (shown by ``codeplan filter --help``). The runner, not the
rule, counts, annotates and routes: a rejected record goes to ``--rejects`` with
``meta.filter.reason`` naming the first rule that failed (rules run in ``RULES`` order), and
``rejected.<rule>`` is counted; ``--annotate`` keeps every record and lists all failing rules.

``--stats`` also describes what passed: mean / median / 95th-percentile word lengths of prompt,
plan and response (the paper reports means of 36.2 / 45.7 / 134.7 words) and the share of plans
that use functions, conditions and loops.

Field types. A field a rule reads, or that the filter writes into, must have the JSON type the rule
expects: ``meta`` and ``meta.extract`` an object (or absent/null), ``response`` a string (or
absent/null), ``meta.extract.finish_reason`` a string (``terminated``), ``meta.extract.tokens_out`` an
integer (``length`` with ``--max-plan-tokens``). ``prompt`` and ``plan`` are required strings, checked
by the reader. A record with another type is a *bad record*, not a rule failure: ``check_record``
raises :class:`WrongType` naming the field and its type (``meta.extract is a string, not an
object``), and the stage stops with exit 65 and ``file:line`` or, with ``--on-bad-record skip``,
rejects it with ``bad-record: <reason>`` and counts ``bad_records``. The checks are a few ``type()``
tests on lookups the rules make anyway, so they cost nothing measurable.
"""

from __future__ import annotations

import ast
import hashlib
import re
import statistics
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from codeplan_tools.core.records import WrongType
from codeplan_tools.core.stage import bad_record
from codeplan_tools.core.stats import Stats

_FENCE = re.compile(r"^\s*```")
_COMMENT = re.compile(r"^\s*#")  # (with _FENCE, the definition; `code` tests the same with str methods)
# A line that reads like Python: a keyword statement, an assignment, a call or a return.
_CODE_LINE = re.compile(
    r"^\s*(def |class |for |while |if |elif |else\s*:|return\b|try\s*:|except\b|with |import |from |print\(|"
    r"[A-Za-z_][\w\.\[\]'\"]*(\s*,\s*[A-Za-z_][\w\.\[\]]*)*\s*(=|\+=|-=|\*=|/=)[^=]|[A-Za-z_][\w\.]*\(.*\)\s*:?\s*$)"
)
# Structure of a plan, for the --stats profile: one pass over the plan's keywords.
_KEYWORDS = re.compile(r"\b(def|if|elif|for|while)\b")  # (the definition; see _FEATURE_WORDS)
_FEATURE = {"def": "functions", "if": "conditions", "elif": "conditions", "for": "loops", "while": "loops"}
# The same test one keyword at a time, behind a cheap substring check (findall over every word is slow).
_FEATURE_WORDS = {
    feature: [(k, re.compile(rf"\b{k}\b")) for k in _FEATURE if _FEATURE[k] == feature]
    for feature in ("functions", "conditions", "loops")
}
_FEATURE_TESTS = [(frozenset(k for k, _ in kws), kws) for kws in _FEATURE_WORDS.values()]
# Line starts that _CODE_LINE accepts whatever follows (checked in C before the regex runs).
_CODE_PREFIXES = ("def ", "class ", "for ", "while ", "if ", "elif ", "with ", "import ", "from ", "print(")

# Token counts of ASCII text without building the tokens: map separators to b" " and everything else
# to b"a"; a token starts at each b" a" (and at a leading b"a"). Separators are what str.split() splits
# on within ASCII (\t \n \v \f \r \x1c-\x1f and space), plus the punctuation no-leak ignores.
_ASCII_SPACE = "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f "
_PUNCT_CHARS = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
_SPACE_TABLE = bytes(32 if chr(i) in _ASCII_SPACE else 97 for i in range(256))
_TOKEN_TABLE = bytes(32 if chr(i) in _ASCII_SPACE + _PUNCT_CHARS else 97 for i in range(256))


def _count(text: str, table: bytes) -> int:
    """Number of tokens of ASCII ``text`` between the separators of ``table``."""
    marks = text.encode("ascii").translate(table)
    return marks.count(b" a") + marks.startswith(b"a")


_NO_META: dict = {}


def _extract_meta(record: dict) -> dict:
    """``meta.extract`` ({} when absent or null); ``check_record`` has checked that ``meta`` is an object."""
    meta = record.get("meta")
    extract = meta.get("extract") if meta is not None else None
    if extract is None:
        return {}
    if type(extract) is not dict:
        raise WrongType("meta.extract", extract, "an object")
    return extract


@dataclass
class FilterConfig:
    """Settings of every rule; ``enabled`` lists the rules that run."""

    enabled: tuple[str, ...] = ("terminated", "nonempty", "length", "code", "no-leak", "dedup")
    min_plan_words: int = 3
    max_plan_words: int = 200
    max_plan_tokens: int | None = None
    code_min_ratio: float = 0.5
    code_strict: bool = False
    leak_ngram: int = 8
    leak_max_overlap: float = 0.5
    annotate: bool = False
    # Measure the length/structure profile of what passed (stats.derived["passed"]). The command
    # turns it off when no --stats file will show it: it costs as much as a rule.
    profile: bool = True
    # Normalised-prompt digests seen so far (dedup's state; one run, one shard).
    seen: set = field(default_factory=set, repr=False)


def words(text: str | None) -> int:
    # str.split() splits on the same (Unicode) whitespace as \S+; counting ASCII text is faster still.
    if not text:
        return 0
    if text.isascii() and len(text) > 64:
        return _count(text, _SPACE_TABLE)
    return len(text.split())


def _plan_lines(plan: str) -> list[str]:
    return [ln for ln in plan.splitlines() if ln.strip() and not _FENCE.match(ln)]


def terminated(record: dict, config: FilterConfig) -> str | None:
    """Reject plans whose generation stopped at the token limit (meta.extract.finish_reason 'length'), as in the paper."""
    extract = (record.get("meta") or _NO_META).get("extract")  # check_record: meta is an object or null
    if extract.__class__ is not dict:  # (spelled out: this rule runs on every record)
        extract = _extract_meta(record)
    finish = extract.get("finish_reason")
    if finish == "length":
        return "terminated: generation hit the token limit"
    if finish is not None and finish.__class__ is not str:
        raise WrongType("meta.extract.finish_reason", finish, "a string")
    return None


def nonempty(record: dict, config: FilterConfig) -> str | None:
    """Reject plans with no line besides blanks, code fences and comments."""
    plan = record.get("plan") or ""
    # Line breaks are whitespace, so the stripped plan starts with its first non-blank line.
    first = plan.lstrip()
    if first and not first.startswith(("#", "```")):
        return None
    for line in plan.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "```")):
            return None
    return "nonempty: the plan is empty"


def length(record: dict, config: FilterConfig) -> str | None:
    """Reject plans shorter than --min-plan-words or longer than --max-plan-words (the template asks for < 200), or over --max-plan-tokens (meta.extract.tokens_out)."""
    n = words(record.get("plan"))
    if n < config.min_plan_words:
        return f"length: {n} words < {config.min_plan_words}"
    if n > config.max_plan_words:
        return f"length: {n} words > {config.max_plan_words}"
    if config.max_plan_tokens is not None:
        tokens = _extract_meta(record).get("tokens_out")
        if tokens is not None and type(tokens) is not int:
            raise WrongType("meta.extract.tokens_out", tokens, "an integer")
        if tokens is not None and tokens > config.max_plan_tokens:
            return f"length: {tokens} tokens > {config.max_plan_tokens}"
    return None


def code(record: dict, config: FilterConfig) -> str | None:
    """Reject plans that do not read as Python: fewer than --code-min-ratio of their lines look like code (with --code-strict: ast.parse fails; the plan is parsed, never run)."""
    plan = record.get("plan") or ""
    total = hits = 0
    prefixes, match = _CODE_PREFIXES, _CODE_LINE.match
    for line in plan.splitlines():
        # Same tests as _plan_lines, _COMMENT and _CODE_LINE: their leading \s* is what lstrip() removes.
        line = line.lstrip()
        if not line or line.startswith(("```", "#")):
            continue
        total += 1
        if line.startswith(prefixes) or match(line):
            hits += 1
    if not total:
        return "code: no code lines"
    ratio = hits / total
    if ratio < config.code_min_ratio:
        return f"code: {ratio:.2f} of lines look like code < {config.code_min_ratio}"
    if config.code_strict:
        try:
            ast.parse("\n".join(_plan_lines(plan)))
        except (SyntaxError, ValueError) as exc:
            return f"code: not valid Python ({exc.__class__.__name__} line {getattr(exc, 'lineno', '?')})"
    return None


# Punctuation becomes space, so "total," and "total" are the same word (C-level, fast).
_PUNCT = str.maketrans({c: " " for c in _PUNCT_CHARS})


def _tokens(text: str) -> list[str]:
    return text.lower().translate(_PUNCT).split()


def _ngram_set(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return set(zip(*(tokens[i:] for i in range(n)), strict=False))


def no_leak(record: dict, config: FilterConfig) -> str | None:
    """Reject plans that copy the response wholesale: at least --leak-max-overlap of the response's word n-grams (--leak-ngram) appear in the plan."""
    response = record.get("response")
    n = config.leak_ngram
    if response.__class__ is not str:
        if response is None:
            return None
        raise WrongType("response", response, "a string")
    if not response:
        return None
    plan = record.get("plan") or ""
    if response.isascii() and plan.isascii():
        # The same bound from token counts alone: most records end here without building token lists.
        positions = _count(response, _TOKEN_TABLE) - n + 1
        if positions <= 0 or _count(plan, _TOKEN_TABLE) - n + 1 < config.leak_max_overlap * positions:
            return None
    plan_words = _tokens(plan)
    response_words = _tokens(response)
    positions = len(response_words) - n + 1
    # The plan has at most len(plan_words) - n + 1 distinct n-grams to match with: most plans are
    # far too short to cover the share asked for, and need no n-gram sets at all.
    if positions <= 0 or len(plan_words) - n + 1 < config.leak_max_overlap * positions:
        return None
    shared = _ngram_set(response_words, n) & _ngram_set(plan_words, n)
    overlap = len(shared) / positions
    if overlap >= config.leak_max_overlap:
        return f"no-leak: {overlap:.2f} of the response's {n}-grams are in the plan"
    return None


def normalize_prompt(prompt: str) -> str:
    if prompt.isascii():
        # ASCII is NFKC-stable and casefolds as lower(); printable ASCII has no whitespace but " ".
        text = prompt.lower()
        if text.isprintable() and "  " not in text and not text.startswith(" ") and not text.endswith(" "):
            return text
        return " ".join(text.split())
    return " ".join(unicodedata.normalize("NFKC", prompt).casefold().split())


def prompt_digest(record: dict) -> bytes:
    """What dedup compares: a 16-byte hash of the normalised prompt."""
    return hashlib.blake2b(normalize_prompt(record.get("prompt") or "").encode(), digest_size=16).digest()


DUPLICATE = "dedup: duplicate prompt"


def dedup(record: dict, config: FilterConfig) -> str | None:
    """Reject a record whose prompt equals an earlier one after Unicode (NFKC), case and whitespace normalisation."""
    digest = prompt_digest(record)
    if digest in config.seen:
        return DUPLICATE
    config.seen.add(digest)
    return None


@dataclass(frozen=True)
class Rule:
    name: str
    check: Callable[[dict, FilterConfig], str | None]
    default: bool
    needs_plan: bool

    @property
    def help(self) -> str:
        return (self.check.__doc__ or "").strip()


RULES: dict[str, Rule] = {
    r.name: r
    for r in (
        Rule("terminated", terminated, True, True),
        Rule("nonempty", nonempty, True, True),
        Rule("length", length, True, True),
        Rule("code", code, True, True),
        Rule("no-leak", no_leak, True, True),
        Rule("dedup", dedup, True, False),
    )
}


def required_fields(config: FilterConfig) -> tuple[str, ...]:
    needed = ["prompt"] if "dedup" in config.enabled else []
    if any(RULES[name].needs_plan for name in config.enabled):
        needed.append("plan")
    return tuple(needed)


def check_record(record: dict, config: FilterConfig, checks: list[Callable]) -> list[str] | None:
    """Reasons from the failing rules (``checks``: their functions, in order): all of them with
    --annotate, else the first; None when every rule passed.

    Raises :class:`WrongType` for a field of the wrong type (see the module docstring): ``meta``
    always (the filter writes ``meta.filter`` into it), the others where a rule reads them.
    """
    meta = record.get("meta")
    if meta.__class__ is not dict and meta is not None:
        raise WrongType("meta", meta, "an object")
    reasons = None
    for check in checks:
        reason = check(record, config)
        if reason is not None:
            if reasons is None:
                reasons = [reason]
                if not config.annotate:
                    break
            else:
                reasons.append(reason)
    return reasons


def measure(record: dict) -> tuple:
    """Word lengths of prompt, plan and response (None when not a string) and the plan's feature bits."""
    prompt, plan, response = record.get("prompt"), record.get("plan"), record.get("response")
    plan_words = features = None
    if isinstance(plan, str):
        tokens = plan.split()
        plan_words = len(tokens)
        present = set(tokens)
        features = 0
        for bit, (names, keywords) in enumerate(_FEATURE_TESTS):
            # A keyword standing alone between spaces is a \b-bounded match; otherwise ask the regex.
            if not present.isdisjoint(names) or any(k in plan and p.search(plan) for k, p in keywords):
                features |= 1 << bit
    return (
        words(prompt) if isinstance(prompt, str) else None,
        plan_words,
        words(response) if isinstance(response, str) else None,
        features,
    )


class LengthProfile:
    """Word-length and structure statistics of the records that passed."""

    def __init__(self) -> None:
        self.lengths: dict[str, list[int]] = {"prompt": [], "plan": [], "response": []}
        self.features = {"functions": 0, "conditions": 0, "loops": 0}
        self.plans = 0

    def add(self, record: dict) -> None:
        self.add_measured(measure(record))

    def add_measured(self, measured: tuple) -> None:
        """Add what ``measure`` returned for one record (possibly computed in another process)."""
        prompt, plan, response, features = measured
        lengths = self.lengths
        if prompt is not None:
            lengths["prompt"].append(prompt)
        if plan is not None:
            lengths["plan"].append(plan)
        if response is not None:
            lengths["response"].append(response)
        if features is not None:
            self.plans += 1
            if features:
                for bit, feature in enumerate(_FEATURE_WORDS):
                    if features >> bit & 1:
                        self.features[feature] += 1

    def summary(self) -> dict:
        out: dict = {}
        for name, values in self.lengths.items():
            if values:
                ordered = sorted(values)
                out[f"{name}_words"] = {
                    "mean": round(statistics.fmean(values), 2),
                    "median": statistics.median(ordered),
                    "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
                    "n": len(values),
                }
        if self.plans:
            out["plan_share"] = {k: round(v / self.plans, 4) for k, v in self.features.items()}
        return out


def filter_records(
    records: Iterable[dict],
    config: FilterConfig,
    stats: Stats,
    reject,
    *,
    on_bad_record: str = "fail",
    where: Callable[[], tuple | None] | None = None,
) -> Iterator[dict]:
    """Yield kept records (all records with ``annotate``); ``reject(record, reason)`` takes the rest.

    A record with a field of the wrong type goes to :func:`bad_record` (``on_bad_record``: fail or
    skip); ``where()`` gives the file and line (and the line itself) of the record last read (the
    stage's reader), else the record's position in ``records`` is given as ``<records>:N``.
    """
    unknown = set(config.enabled) - set(RULES)
    if unknown:
        raise ValueError(f"unknown filter rules: {sorted(unknown)}")
    checks = [r.check for name, r in RULES.items() if name in config.enabled]
    annotate, fail = config.annotate, on_bad_record == "fail"
    profile = LengthProfile()
    add, profile_on = profile.add_measured, config.profile
    kept = 0  # counted here and added once: stats.inc per record costs more than a rule
    try:
        for index, record in enumerate(records, 1):
            try:
                reasons = check_record(record, config, checks)
            except WrongType as exc:
                position = (where and where()) or ("<records>", index)
                bad_record(record, str(exc), position, fail=fail, stats=stats, reject=reject)
                continue
            meta = record.get("meta")
            if not isinstance(meta, dict):
                record["meta"] = meta = {}
            if reasons is None:
                kept += 1
                if profile_on:
                    add(measure(record))
                meta["filter"] = {"kept": True}
                yield record
                continue
            count_failures(stats, reasons, annotate)
            if annotate:
                meta["filter"] = {"kept": False, "reason": reasons[0], "reasons": reasons}
                yield record
            else:
                reject(record, reasons[0])
    finally:
        if kept:
            stats.inc("kept", kept)
    if profile_on:
        stats.derived["passed"] = profile.summary()


def count_failures(stats: Stats, reasons: list[str], annotate: bool) -> None:
    """``failed.<rule>`` for every failing rule not sent to rejects (which counts ``rejected.<rule>``)."""
    for reason in reasons[1:]:
        stats.inc(f"failed.{reason.split(':')[0]}")
    if annotate:
        stats.inc(f"failed.{reasons[0].split(':')[0]}")
        stats.inc("marked")
