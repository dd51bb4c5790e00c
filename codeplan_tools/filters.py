"""``codeplan filter``: named rules that decide whether a mined plan is kept.

Each rule is a small function ``(record, config) -> reason | None`` listed once in ``RULES`` with
its default and a one-line description (shown by ``codeplan filter --help``). The runner, not the
rule, counts, annotates and routes: a rejected record goes to ``--rejects`` with
``meta.filter.reason`` naming the first rule that failed (rules run in ``RULES`` order), and
``rejected.<rule>`` is counted; ``--annotate`` keeps every record and lists all failing rules.

``--stats`` also describes what passed: mean / median / 95th-percentile word lengths of prompt,
plan and response (the paper reports means of 36.2 / 45.7 / 134.7 words) and the share of plans
that use functions, conditions and loops.
"""

from __future__ import annotations

import ast
import hashlib
import re
import statistics
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from .stats import Stats

_FENCE = re.compile(r"^\s*```")
_COMMENT = re.compile(r"^\s*#")
# A line that reads like Python: a keyword statement, an assignment, a call or a return.
_CODE_LINE = re.compile(
    r"^\s*(def |class |for |while |if |elif |else\s*:|return\b|try\s*:|except\b|with |import |from |print\(|"
    r"[A-Za-z_][\w\.\[\]'\"]*(\s*,\s*[A-Za-z_][\w\.\[\]]*)*\s*(=|\+=|-=|\*=|/=)[^=]|[A-Za-z_][\w\.]*\(.*\)\s*:?\s*$)"
)
# Structure of a plan, for the --stats profile: one pass over the plan's keywords.
_KEYWORDS = re.compile(r"\b(def|if|elif|for|while)\b")
_FEATURE = {"def": "functions", "if": "conditions", "elif": "conditions", "for": "loops", "while": "loops"}


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
    # Normalised-prompt digests seen so far (dedup's state; one run, one shard).
    seen: set = field(default_factory=set, repr=False)


def words(text: str | None) -> int:
    # str.split() splits on the same (Unicode) whitespace as \S+ and is several times faster.
    return len(text.split()) if text else 0


def _plan_lines(plan: str) -> list[str]:
    return [ln for ln in plan.splitlines() if ln.strip() and not _FENCE.match(ln)]


def terminated(record: dict, config: FilterConfig) -> str | None:
    """Reject plans whose generation stopped at the token limit (meta.extract.finish_reason 'length'), as in the paper."""
    finish = ((record.get("meta") or {}).get("extract") or {}).get("finish_reason")
    if finish == "length":
        return "terminated: generation hit the token limit"
    return None


def nonempty(record: dict, config: FilterConfig) -> str | None:
    """Reject plans with no line besides blanks, code fences and comments."""
    for line in (record.get("plan") or "").splitlines():
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
        tokens = ((record.get("meta") or {}).get("extract") or {}).get("tokens_out")
        if isinstance(tokens, int) and tokens > config.max_plan_tokens:
            return f"length: {tokens} tokens > {config.max_plan_tokens}"
    return None


def code(record: dict, config: FilterConfig) -> str | None:
    """Reject plans that do not read as Python: fewer than --code-min-ratio of their lines look like code (with --code-strict: ast.parse fails; the plan is parsed, never run)."""
    plan = record.get("plan") or ""
    lines = [ln for ln in _plan_lines(plan) if not _COMMENT.match(ln)]
    if not lines:
        return "code: no code lines"
    ratio = sum(1 for ln in lines if _CODE_LINE.match(ln)) / len(lines)
    if ratio < config.code_min_ratio:
        return f"code: {ratio:.2f} of lines look like code < {config.code_min_ratio}"
    if config.code_strict:
        try:
            ast.parse("\n".join(_plan_lines(plan)))
        except (SyntaxError, ValueError) as exc:
            return f"code: not valid Python ({exc.__class__.__name__} line {getattr(exc, 'lineno', '?')})"
    return None


# Punctuation becomes space, so "total," and "total" are the same word (C-level, fast).
_PUNCT = str.maketrans({c: " " for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"})


def _tokens(text: str) -> list[str]:
    return text.lower().translate(_PUNCT).split()


def _ngram_set(tokens: list[str], n: int) -> set[tuple[str, ...]]:
    return set(zip(*(tokens[i:] for i in range(n))))


def no_leak(record: dict, config: FilterConfig) -> str | None:
    """Reject plans that copy the response wholesale: at least --leak-max-overlap of the response's word n-grams (--leak-ngram) appear in the plan."""
    response = record.get("response")
    n = config.leak_ngram
    if not response:
        return None
    plan_words = _tokens(record.get("plan") or "")
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
    return " ".join(unicodedata.normalize("NFKC", prompt).casefold().split())


def dedup(record: dict, config: FilterConfig) -> str | None:
    """Reject a record whose prompt equals an earlier one after Unicode (NFKC), case and whitespace normalisation."""
    digest = hashlib.blake2b(normalize_prompt(record.get("prompt") or "").encode(), digest_size=16).digest()
    if digest in config.seen:
        return "dedup: duplicate prompt"
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


def check_record(record: dict, config: FilterConfig, rules: list[Rule]) -> list[str]:
    """Reasons from the failing rules: all of them with --annotate, else the first."""
    reasons = []
    for rule in rules:
        reason = rule.check(record, config)
        if reason is not None:
            reasons.append(reason)
            if not config.annotate:
                break
    return reasons


class LengthProfile:
    """Word-length and structure statistics of the records that passed."""

    def __init__(self) -> None:
        self.lengths: dict[str, list[int]] = {"prompt": [], "plan": [], "response": []}
        self.features = {"functions": 0, "conditions": 0, "loops": 0}
        self.plans = 0

    def add(self, record: dict) -> None:
        for name, values in self.lengths.items():
            text = record.get(name)
            if isinstance(text, str):
                values.append(words(text))
        plan = record.get("plan")
        if isinstance(plan, str):
            self.plans += 1
            for feature in {_FEATURE[k] for k in _KEYWORDS.findall(plan)}:
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


def filter_records(records: Iterable[dict], config: FilterConfig, stats: Stats, reject) -> Iterator[dict]:
    """Yield kept records (all records with ``annotate``); ``reject(record, reason)`` takes the rest."""
    unknown = set(config.enabled) - set(RULES)
    if unknown:
        raise ValueError(f"unknown filter rules: {sorted(unknown)}")
    rules = [r for name, r in RULES.items() if name in config.enabled]
    profile = LengthProfile()
    for record in records:
        reasons = check_record(record, config, rules)
        meta = record.setdefault("meta", {}) if isinstance(record.get("meta"), dict) else None
        if meta is None:
            record["meta"] = meta = {}
        if not reasons:
            stats.inc("kept")
            profile.add(record)
            meta["filter"] = {"kept": True}
            yield record
            continue
        for reason in reasons[1:]:
            stats.inc(f"failed.{reason.split(':')[0]}")
        if config.annotate:
            stats.inc(f"failed.{reasons[0].split(':')[0]}")
            stats.inc("marked")
            meta["filter"] = {"kept": False, "reason": reasons[0], "reasons": reasons}
            yield record
        else:
            reject(record, reasons[0])
    stats.derived["passed"] = profile.summary()
