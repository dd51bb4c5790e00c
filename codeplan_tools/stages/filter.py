"""``codeplan filter``: named rules that decide whether a mined plan is kept.

Each rule is a small function ``(record, config) -> reason | None`` listed once in ``RULES`` with
its default and a one-line description (shown by ``codeplan filter --help``); ``dedup``, the one rule
that depends on the records before, is ``(prompt digest, digests seen) -> reason | None``. The runner, not the
rule, counts, annotates and routes: a rejected record goes to ``--rejects`` with
``meta.filter.reason`` naming the first rule that failed (rules run in ``RULES`` order), and
``rejected.<rule>`` is counted; ``--annotate`` keeps every record and lists all failing rules.

Plan quality (``grounded``, ``consistent``; off by default, see their help). Both parse the plan with
``ast`` and never run it (``codeplan_tools.eval.plans``): ``grounded`` rejects a plan when under
``--grounded-min`` of its distinct literals occur in the prompt or response (the reason gives the share
and the literals not found); ``consistent`` rejects a plan whose printed value disagrees with the
response's final answer (the reason gives both). A plan with no literals, or whose value or whose
response's answer cannot be read, passes. They are opt-in because parsing costs ~10x the default rules,
and filter's throughput matters at corpus scale. Each counts what it saw over every record it checked
(it runs only on records the rules before it passed, all records with ``--annotate``):
``grounded.share_<bin>`` / ``grounded.none`` / ``grounded.share_sum_1e4`` and ``consistent.agree`` /
``.disagree`` / ``.unknown``. They are counters, so worker processes' and shards' counts add up;
``--stats`` also shows them as ``derived.grounded`` (the share histogram: n, none, mean, bins) and
``derived.consistent``.

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

The stage (:class:`FilterStage`, or :func:`filter_records` in a program) has two parts. Every rule
but ``dedup`` looks at one record alone (``per_record``: the rules, marking ``meta.filter``,
measuring the ``--stats`` profile); ``dedup`` and the profile depend on the records before
(``ordered``: first kept wins). ``codeplan filter --workers N`` (:func:`filter_stream`) runs the
per-record part in N processes (``codeplan_tools.core.pool``) and the ordered part in the main
process; the output, rejects and counters are the same for every N. A record the per-record part
kept and marked and dedup then rejects is unmarked again (``meta.filter`` as it was read) before it
is rejected, as if dedup had run with the other rules.
"""

from __future__ import annotations

import ast
import hashlib
import re
import statistics
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Literal, NamedTuple

from codeplan_tools.core.records import WrongType
from codeplan_tools.core.stage import Lines, PerRecordStage, StageContext, StageIO, as_record, run_stage
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
# Line starts that _CODE_LINE accepts whatever follows (checked in C before the regex runs, which
# costs ~4,500 instructions a line): its prefix alternatives, and the shortest forms of return\b,
# else\s*:, try\s*: and except\b.
_CODE_PREFIXES = (
    *("def ", "class ", "for ", "while ", "if ", "elif ", "with ", "import ", "from ", "print("),
    *("return ", "return(", "else:", "try:", "except ", "except:", "except("),
)

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


RuleName = Literal["terminated", "nonempty", "length", "code", "no-leak", "grounded", "consistent", "dedup"]


@dataclass
class FilterConfig:
    """Settings of every rule; ``enabled`` lists the rules that run."""

    enabled: tuple[RuleName, ...] = ("terminated", "nonempty", "length", "code", "no-leak", "dedup")
    """The rules that run (all but grounded and consistent by default; --RULE / --skip-RULE turn one on / off)."""
    min_plan_words: int = 3
    """length: fewest words a plan may have."""
    max_plan_words: int = 200
    """length: most words a plan may have."""
    max_plan_tokens: int | None = None
    """length: most generated tokens (meta.extract.tokens_out) a plan may have. [default: no limit]"""
    code_min_ratio: float = 0.5
    """code: least share of plan lines that look like Python."""
    code_strict: bool = False
    """code: also require the plan to parse with ast.parse."""
    leak_ngram: int = 8
    """no-leak: word n-gram size compared."""
    leak_max_overlap: float = 0.5
    """no-leak: reject at this share of the response's n-grams found in the plan."""
    grounded_min: float = 0.5
    """grounded: least share of the plan's distinct literals that occur in the prompt or response.
    Measured on synth gold plans (but the positive controls add and parity, whose plans carry computed
    values) and on plans built from SVAMP/MultiArith/AddSub/GSM8K: gold plans have a
    mean share >= 0.996 and none is rejected at 0.5; plans of the wrong problem (shifted) are 73-90%
    rejected."""
    workers: int | None = None
    """Processes that parse, check and serialise records read from files (stdin is read in one
    process); the output is the same for every N. 1 = no worker processes. [default: usable CPUs, at most 4]"""
    annotate: bool = False
    """Keep every record and mark it: meta.filter.kept, .reason (first failing rule), .reasons (all)."""
    profile: bool = True
    """Measure the length/structure profile of what passed (``stats.derived["passed"]``). The command
    turns it off when no --stats file will show it: it costs as much as a rule."""


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


# grounded and consistent parse the plan (codeplan_tools.eval.plans, imported when they first run: it
# costs ~50 ms that the default rules do not need). With a Stats (the stage passes its own), each also
# counts what it saw: additive counters, so workers' and shards' counts merge by summing.
_NOT_FOUND_SHOWN = 5  # literals named in a grounded reason; the rest are counted


def _text_field(record: dict, name: str) -> str | None:
    value = record.get(name)
    if value is not None and value.__class__ is not str:
        raise WrongType(name, value, "a string")
    return value


def grounded(record: dict, config: FilterConfig, stats: Stats | None = None) -> str | None:
    """Reject plans whose literals (numbers, strings, names of the prompt's entities) mostly do not occur in the prompt or response: a share under --grounded-min (a plan with no literals passes). Off by default: it parses each plan, ~10x the cost of the default rules."""
    from codeplan_tools.eval.plans import grounding

    prompt, response = _text_field(record, "prompt"), _text_field(record, "response")
    found = grounding(record.get("plan") or "", prompt, response)
    share = found.share
    if stats is not None:
        count_share(stats, share)
    if share is None or share >= config.grounded_min:
        return None
    missing = ", ".join(found.ungrounded[:_NOT_FOUND_SHOWN])
    if len(found.ungrounded) > _NOT_FOUND_SHOWN:
        missing += f" and {len(found.ungrounded) - _NOT_FOUND_SHOWN} more"
    return (
        f"grounded: {share:.2f} of the plan's literals occur in the prompt or response "
        f"(< {config.grounded_min}; not found: {missing})"
    )


def consistent(record: dict, config: FilterConfig, stats: Stats | None = None) -> str | None:
    """Reject plans whose printed value (a final print/return of literal arithmetic, computed without running the plan) disagrees with the response's final answer; plans or responses without one pass. Off by default: it parses each plan, ~10x the cost of the default rules."""
    from codeplan_tools.eval.plans import plan_final_value, response_answer, values_agree
    from codeplan_tools.eval.scorers.numeric import number_key

    answer = response_answer(_text_field(record, "response"))
    value = plan_final_value(record.get("plan") or "") if answer is not None and answer.strip() else None
    reason = None
    if value is None or answer is None:
        outcome = "unknown"
    elif values_agree(value, answer):
        outcome = "agree"
    else:
        outcome = "disagree"
        shown = value if isinstance(value, str) else number_key(value)
        said = answer.strip().rstrip(".")  # "The answer is 7." marks "7."
        reason = f"consistent: the plan prints {shown!r} but the response's answer is {said!r}"
    if stats is not None:
        stats.inc(f"consistent.{outcome}")
    return reason


def count_share(stats: Stats, share: float | None) -> None:
    """Count one grounded share: ``grounded.none``, or ``grounded.share_<bin>`` and ``grounded.share_sum_1e4``
    (the share in units of 1/10,000, an integer: float sums would differ in the last digits with the
    order the workers' counts are added in)."""
    from codeplan_tools.eval.plans import bin_label

    if share is None:
        stats.inc("grounded.none")
    else:
        stats.inc(f"grounded.share_{bin_label(share)}")
        stats.inc("grounded.share_sum_1e4", round(share * 10_000))


def plan_quality_summary(counters: Mapping[str, float]) -> dict[str, Any]:
    """``--stats`` ``derived`` of grounded and consistent, from their counters (those that ran)."""
    from codeplan_tools.eval.plans import BINS, bin_label

    out: dict[str, Any] = {}
    labels = [bin_label(i / BINS) for i in range(BINS)]
    bins = {label: int(counters.get(f"grounded.share_{label}", 0)) for label in labels}
    n, none = sum(bins.values()), int(counters.get("grounded.none", 0))
    if n or none:
        mean = round(counters.get("grounded.share_sum_1e4", 0) / 10_000 / n, 4) if n else None
        out["grounded"] = {"n": n, "none": none, "mean": mean, "bins": bins}
    agreement = {k: int(counters.get(f"consistent.{k}", 0)) for k in ("agree", "disagree", "unknown")}
    if any(agreement.values()):
        out["consistent"] = agreement
    return out


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


def dedup(digest: bytes, seen: set[bytes]) -> str | None:
    """Reject a record whose prompt equals an earlier one after Unicode (NFKC), case and whitespace normalisation."""
    if digest in seen:
        return DUPLICATE
    seen.add(digest)
    return None


@dataclass(frozen=True)
class Rule:
    """A rule: ``check(record, config) -> reason | None``, or for the one rule that depends on the
    records before (``ordered``: dedup), ``check(prompt_digest, seen) -> reason | None``."""

    name: str
    check: Callable[..., str | None]
    default: bool
    needs_plan: bool
    ordered: bool = False

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
        Rule("grounded", grounded, False, True),
        Rule("consistent", consistent, False, True),
        Rule("dedup", dedup, True, False, ordered=True),
    )
}


# The rules that take the stage's Stats to count what they measure.
_COUNTING = frozenset({grounded, consistent})


def required_fields(config: FilterConfig) -> tuple[str, ...]:
    needed = ["prompt"] if "dedup" in config.enabled else []
    if any(RULES[name].needs_plan for name in config.enabled):
        needed.append("plan")
    return tuple(needed)


def rule_checks(config: FilterConfig) -> list[Callable[[dict, FilterConfig], str | None]]:
    """The functions of the enabled rules that look at one record alone, in ``RULES`` order."""
    unknown = set(config.enabled) - set(RULES)
    if unknown:
        raise ValueError(f"unknown filter rules: {sorted(unknown)}")
    return [r.check for name, r in RULES.items() if name in config.enabled and not r.ordered]


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


class _Notes(NamedTuple):
    """The notes of a worker's batch (``FilterStage.per_record``'s, packed): ``passed`` per record
    (None: all), dedup's digests (None: dedup is off), the ``--stats`` measures (None: no profile) and
    the ``meta.filter`` read with a record, by index, where there was one."""

    passed: bytes | None
    digests: list[bytes] | None
    measured: list | None
    earlier: dict[int, Any] | None


class FilterStage(PerRecordStage):
    """``codeplan filter`` as a stage: the rules of ``config`` (see the module docstring)."""

    name = "filter"

    def __init__(self, config: FilterConfig):
        self.config = config
        self.checks = rule_checks(config)
        self.seen: set[bytes] = set()  # dedup's digests of the prompts kept so far (one run, one shard)

    def per_record(self, records: Iterable[dict], ctx: StageContext) -> Iterator[tuple[dict, tuple]]:
        """Every rule but dedup; yields ``(record, (passed, digest, measured, earlier))``: whether it
        passed them, what dedup compares (when dedup will look), its ``--stats`` measure (when it
        passed) and the ``meta.filter`` it was read with (restored if dedup rejects it)."""
        config, stats = self.config, ctx.stats
        # The plan-quality rules count what they measure into this run's (this batch's) counters.
        checks = [partial(c, stats=stats) if c in _COUNTING else c for c in self.checks]
        annotate, profile_on = config.annotate, config.profile
        dedup_on = "dedup" in config.enabled
        for index, record in enumerate(records, 1):
            try:
                reasons = check_record(record, config, checks)
            except WrongType as exc:
                ctx.bad_record(record, str(exc), index)
                continue
            meta = record.get("meta")
            if not isinstance(meta, dict):
                record["meta"] = meta = {}
            if reasons is None:
                digest = prompt_digest(record) if dedup_on else None
                earlier = meta.get("filter") if dedup_on and not annotate else None
                measured = measure(record) if profile_on else None
                meta["filter"] = {"kept": True}
                yield record, (True, digest, measured, earlier)
                continue
            count_failures(stats, reasons, annotate)
            if annotate:
                meta["filter"] = {"kept": False, "reason": reasons[0], "reasons": reasons}
                yield record, (False, prompt_digest(record) if dedup_on else None, None, None)
            else:
                ctx.reject(record, reasons[0])

    def pack_notes(self, notes: list) -> _Notes:
        """A worker batch's notes as a few objects (see :class:`_Notes`)."""
        passed = [note[0] for note in notes]
        return _Notes(
            None if all(passed) else bytes(passed),
            [note[1] for note in notes] if notes[0][1] is not None else None,
            [note[2] for note in notes] if self.config.profile else None,
            {i: note[3] for i, note in enumerate(notes) if note[3] is not None} or None,
        )

    def unpack_notes(self, packed: _Notes, count: int) -> list[tuple]:
        passed, digests, measured, earlier = packed
        earlier = earlier or {}
        return [
            (
                passed is None or bool(passed[i]),
                None if digests is None else digests[i],
                None if measured is None else measured[i],
                earlier.get(i),
            )
            for i in range(count)
        ]

    def ordered(self, items: Iterable[tuple[dict | bytes, Any]], ctx: StageContext) -> Iterator[dict | bytes]:
        """dedup (first kept wins), ``kept`` and the ``--stats`` profile of what passed."""
        return self.ordered_lines(items, ctx)  # type: ignore[return-value]  # (no Lines without workers)

    def ordered_lines(
        self, items: Iterable[tuple[dict | bytes, Any] | Lines], ctx: StageContext
    ) -> Iterator[dict | bytes | Lines]:
        """dedup (first kept wins), ``kept`` and the ``--stats`` profile of what passed. A worker's
        :class:`Lines` with no prompt seen before (nor twice in it) pass whole: set operations, no
        work per record here."""
        seen, stats = self.seen, ctx.stats
        profile = LengthProfile()
        add = profile.add_measured
        kept = 0  # counted here and added once: stats.inc per record costs more than a rule
        try:
            for entry in items:
                if entry.__class__ is Lines:
                    notes: _Notes = entry.notes
                    digests = notes.digests
                    count = entry.number
                    if digests is None or (seen.isdisjoint(digests) and len(set(digests)) == count):
                        if digests is not None:
                            seen.update(digests)
                        kept += count if notes.passed is None else notes.passed.count(1)
                        if notes.measured is not None:
                            for measured in notes.measured:
                                if measured is not None:
                                    add(measured)
                        yield entry
                        continue
                    pairs: Iterable = zip(
                        entry.data.split(b"\n"), self.unpack_notes(notes, count), strict=True
                    )
                else:
                    pairs = (entry,)
                for item, (passed, digest, measured, earlier) in pairs:
                    if digest is not None:
                        if digest in seen:  # (the rule `dedup`, inline: this loop is the main process's)
                            record = self._duplicate(as_record(item), passed, earlier, ctx)
                            if record is None:
                                continue
                            item, passed = record, False
                        else:
                            seen.add(digest)
                    if passed:
                        kept += 1
                        if measured is not None:
                            add(measured)
                    yield item
        finally:
            if kept:
                stats.inc("kept", kept)
        if self.config.profile:
            stats.derived["passed"] = profile.summary()
        if not _COUNTING.isdisjoint(self.checks):
            # Every batch's counters are in by now (the workers' too): their distributions, once.
            stats.derived.update(plan_quality_summary(stats.counters))

    def _duplicate(self, record: dict, passed: bool, earlier: Any, ctx: StageContext) -> dict | None:
        """Mark (``--annotate``) or reject a duplicate, as dedup's place last among the rules does."""
        meta = record["meta"]
        if not passed:  # --annotate: one more failing rule
            meta["filter"]["reasons"].append(DUPLICATE)
            ctx.stats.inc("failed.dedup")  # (count_failures counted the others)
            return record
        if self.config.annotate:
            meta["filter"] = {"kept": False, "reason": DUPLICATE, "reasons": [DUPLICATE]}
            count_failures(ctx.stats, [DUPLICATE], annotate=True)
            return record
        meta["filter"] = earlier
        ctx.reject(record, DUPLICATE)
        return None


def filter_records(
    records: Iterable[dict], config: FilterConfig, ctx: StageContext | None = None
) -> Iterator[dict]:
    """Yield the kept records (all records with ``annotate``); the others go to ``ctx.reject``.

    A record with a field of the wrong type goes to ``ctx.bad_record``: ``BadRecord`` naming its
    file and line (``ctx.where``, else ``<records>:N``), or rejected with ``on_bad_record="skip"``.
    """
    return FilterStage(config).run(records, ctx or StageContext("filter"))  # type: ignore[return-value]


def default_workers() -> int:
    """Usable CPUs, at most 4: beyond that the main process (decompress, compress, write) is the limit."""
    from codeplan_tools.core.pool import usable_cpus

    return max(1, min(4, usable_cpus()))


def filter_stream(io: StageIO, config: FilterConfig) -> Stats:
    """``codeplan filter``: the stage over ``io``'s streams, its per-record part in ``config.workers``
    processes (default :func:`default_workers`; see ``codeplan_tools.core.pool`` for when they start)."""
    io = replace(io, require=required_fields(config))
    workers = default_workers() if config.workers is None else config.workers
    return run_stage(io, FilterStage(config), workers=workers)


def count_failures(stats: Stats, reasons: list[str], annotate: bool) -> None:
    """``failed.<rule>`` for every failing rule not sent to rejects (which counts ``rejected.<rule>``)."""
    for reason in reasons[1:]:
        stats.inc(f"failed.{reason.split(':')[0]}")
    if annotate:
        stats.inc(f"failed.{reasons[0].split(':')[0]}")
        stats.inc("marked")
