import unicodedata

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codeplan_tools.core import parallel
from codeplan_tools.core.errors import BadRecord
from codeplan_tools.core.stage import StageIO, run_stage
from codeplan_tools.core.stats import Stats
from codeplan_tools.stages import filter as F
from codeplan_tools.stages.filter import RULES, FilterConfig, filter_records, required_fields

GOOD_PLAN = "def solve(n):\n    total = 0\n    for x in range(n):\n        if x % 2:\n            total += x\n    return total"
RESPONSE = "We add up the odd numbers below n one by one and report the total we get at the very end of it."


def rec(**kw):
    base = {"id": "1", "prompt": "Sum the odd numbers below n.", "plan": GOOD_PLAN, "response": RESPONSE}
    base.update(kw)
    return base


CASES = {
    # rule: (record that passes, record that fails, expected reason prefix)
    "terminated": (
        rec(meta={"extract": {"finish_reason": "stop"}}),
        rec(meta={"extract": {"finish_reason": "length"}}),
    ),
    "nonempty": (rec(), rec(plan="```python\n# nothing here\n```\n")),
    "length": (rec(), rec(plan="x = 1\n" * 120)),
    "code": (rec(), rec(plan="First we think about it.\nThen we write the answer down.\nDone.")),
    "no-leak": (rec(), rec(plan=f"answer = '''{RESPONSE}'''")),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_rule_passes_good_and_rejects_bad_with_its_name(name):
    good, bad = CASES[name]
    config = FilterConfig()
    assert RULES[name].check(good, config) is None
    reason = RULES[name].check(bad, config)
    assert reason is not None and reason.split(":")[0] == name


def test_length_bounds_and_tokens():
    config = FilterConfig(min_plan_words=3, max_plan_words=5, max_plan_tokens=10)
    assert RULES["length"].check(rec(plan="a b"), config).startswith("length: 2 words < 3")
    assert RULES["length"].check(rec(plan="a b c d e f"), config).startswith("length: 6 words > 5")
    assert RULES["length"].check(rec(plan="a b c", meta={"extract": {"tokens_out": 11}}), config) == (
        "length: 11 tokens > 10"
    )


def test_code_strict_parses_but_never_runs():
    config = FilterConfig(code_strict=True)
    assert RULES["code"].check(rec(plan="x = (1,\ny = 2"), config).startswith("code: not valid Python")
    # A plan that would have side effects if executed only gets parsed.
    assert RULES["code"].check(rec(plan="import os\nos.remove('/definitely/not/here')"), config) is None


def test_dedup_normalises_case_space_and_unicode():
    config = FilterConfig(enabled=("dedup",))
    records = [
        rec(id="a", prompt="What is  2+2?"),
        rec(id="b", prompt="what is 2+2?"),
        rec(id="c", prompt="ｗhat is 2+2?"),
        rec(id="d", prompt="What is 2+3?"),
    ]
    rejected = []
    kept = list(
        filter_records(records, config, Stats("filter"), lambda r, why: rejected.append((r["id"], why)))
    )
    assert [r["id"] for r in kept] == ["a", "d"]
    assert rejected == [("b", "dedup: duplicate prompt"), ("c", "dedup: duplicate prompt")]


def test_annotate_keeps_everything_and_lists_all_reasons():
    config = FilterConfig(annotate=True)
    bad = rec(id="b", prompt="another", plan="Just words here and nothing more " * 40)
    out = list(filter_records([rec(id="g"), bad], config, Stats("filter"), lambda r, why: None))
    assert [r["meta"]["filter"]["kept"] for r in out] == [True, False]
    reasons = [x.split(":")[0] for x in out[1]["meta"]["filter"]["reasons"]]
    assert reasons == ["length", "code"]


def test_stats_describe_what_passed():
    stats = Stats("filter")
    plans = [GOOD_PLAN, "def f():\n    return 1", "x = 1\nprint(x)"]
    list(
        filter_records(
            [rec(id=str(i), prompt=f"q {i}", plan=p) for i, p in enumerate(plans)],
            FilterConfig(),
            stats,
            lambda r, why: None,
        )
    )
    passed = stats.derived["passed"]
    assert passed["plan_share"] == {
        "functions": round(2 / 3, 4),
        "conditions": round(1 / 3, 4),
        "loops": round(1 / 3, 4),
    }
    assert passed["prompt_words"]["mean"] == 2.0 and passed["plan_words"]["n"] == 3


def test_profile_off_keeps_the_same_records_and_measures_nothing():
    records = [rec(id=str(i), prompt=f"q {i}", plan=GOOD_PLAN) for i in range(3)]
    on, off = Stats("filter"), Stats("filter")
    kept_on = list(filter_records([dict(r) for r in records], FilterConfig(), on, lambda r, why: None))
    kept_off = list(
        filter_records([dict(r) for r in records], FilterConfig(profile=False), off, lambda r, why: None)
    )
    assert kept_on == kept_off and len(kept_on) == 3
    assert "passed" in on.derived and "passed" not in off.derived


# The rules' fast paths (str methods, token counts without token lists) against their definitions.
_PIECES = [
    "def",
    "if",
    "elif",
    "for",
    "while",
    "x",
    "total",
    "=",
    "+=",
    "(",
    ")",
    ":",
    "#",
    "```",
    " ",
    "  ",
    "\t",
    "\n",
    "\r\n",
    "\x0b",
    "\x1c",
    "\x85",
    "\u2028",
    "\u00a0",
    "é",
    "İ",
    "ﬁ",
    "ｗ",
    "return",
    "print(",
    "a,b",
    "-",
    ".",
    "class ",
    "x = 1",
    "foo(bar)",
    "else:",
    "A",
    "ß",
    "\u3000",
    "'",
    "_",
    "1",
    "==",
    "\x00",
    "\x1f",
    "try:",
    "except",
    "with ",
    "import ",
    "x[0]",
    "-=",
    "*=",
    "/=",
    "\n    ",
]
_TEXT = st.lists(st.sampled_from(_PIECES), max_size=40).map("".join)


def _reference_code(plan, config):
    lines = [ln for ln in F._plan_lines(plan) if not F._COMMENT.match(ln)]
    if not lines:
        return "code: no code lines"
    ratio = sum(1 for ln in lines if F._CODE_LINE.match(ln)) / len(lines)
    return (
        None
        if ratio >= config.code_min_ratio
        else f"code: {ratio:.2f} of lines look like code < {config.code_min_ratio}"
    )


def _reference_no_leak(plan, response, config):
    n, plan_words, response_words = config.leak_ngram, F._tokens(plan), F._tokens(response)
    positions = len(response_words) - n + 1
    if not response or positions <= 0 or len(plan_words) - n + 1 < config.leak_max_overlap * positions:
        return None
    overlap = len(F._ngram_set(response_words, n) & F._ngram_set(plan_words, n)) / positions
    return (
        f"no-leak: {overlap:.2f} of the response's {n}-grams are in the plan"
        if overlap >= config.leak_max_overlap
        else None
    )


@settings(max_examples=300, deadline=None)
@given(
    plan=_TEXT,
    response=_TEXT,
    ascii_only=st.booleans(),
    ngram=st.integers(1, 4),
    overlap=st.sampled_from([0.0, 0.3, 1.0]),
)
def test_fast_paths_match_the_definitions(plan, response, ascii_only, ngram, overlap):
    if ascii_only:
        plan, response = (t.encode("ascii", "ignore").decode() for t in (plan, response))
    config = FilterConfig(leak_ngram=ngram, leak_max_overlap=overlap, code_min_ratio=overlap)
    record = rec(plan=plan, response=response, prompt=response)
    assert RULES["code"].check(record, config) == _reference_code(plan, config)
    assert RULES["no-leak"].check(record, config) == _reference_no_leak(plan, response, config)
    empty = all(not ln.strip() or ln.strip().startswith(("#", "```")) for ln in plan.splitlines())
    assert (RULES["nonempty"].check(record, config) is None) == (not empty)
    assert F.words(response) == len(response.split()) and F.words(plan) == len(plan.split())
    assert F.normalize_prompt(response) == " ".join(
        unicodedata.normalize("NFKC", response).casefold().split()
    )
    prompt_words, plan_words, response_words, bits = F.measure(record)
    features = {F._FEATURE[k] for k in F._KEYWORDS.findall(plan)}
    assert bits == sum(
        1 << i for i, name in enumerate(("functions", "conditions", "loops")) if name in features
    )
    assert (prompt_words, plan_words, response_words) == (
        len(response.split()),
        len(plan.split()),
        len(response.split()),
    )


_LINE = st.lists(st.sampled_from([p for p in _PIECES if p.isascii()]), max_size=8).map("".join)


@settings(max_examples=1000, deadline=None)
@given(lines=st.lists(_LINE, max_size=12), ratio=st.sampled_from([0.0, 0.5, 0.75, 1.0]))
def test_code_rule_on_multi_line_plans_matches_the_definition(lines, ratio):
    """`code` (str-method shortcuts) on plans of many ASCII lines against the regex definition."""
    plan = "\n".join(lines)
    config = FilterConfig(code_min_ratio=ratio)
    assert RULES["code"].check(rec(plan=plan), config) == _reference_code(plan, config)


def _mixed_lines():
    lines = []
    for i in range(60):
        r = rec(
            id=f"m{i}",
            prompt=f"Question {i % 23}?",
            meta={"extract": {"finish_reason": "length" if i % 11 == 0 else "stop"}},
        )
        if i % 7 == 0:
            r["plan"] = "We think about it.\nThen answer."
        if i % 13 == 0:
            r["plan"] = f"answer = '''{RESPONSE}'''"
        lines.append(orjson.dumps(r))
        if i % 17 == 5:
            lines.append(b'{"id": "broken"')
        if i % 19 == 3:
            lines.append(b'{"id": "noplan", "prompt": "x"}')
    return b"\n".join(lines) + b"\n"


@pytest.mark.parametrize("annotate", [False, True])
def test_parallel_path_equals_single_process(tmp_path, monkeypatch, annotate):
    path = tmp_path / "in.jsonl"
    path.write_bytes(_mixed_lines())
    results = {}
    for mode in ("single", "parallel"):
        config = FilterConfig(annotate=annotate)
        io = StageIO(
            stage="filter",
            inputs=[str(path)],
            output=str(tmp_path / f"{mode}.jsonl"),
            plain=True,
            rejects=str(tmp_path / f"{mode}-rej.jsonl"),
            on_bad_record="skip",
            require=required_fields(config),
            progress=False,
        )
        if mode == "single":
            stats = run_stage(
                io, lambda records, ctx, config=config: filter_records(records, config, ctx.stats, ctx.reject)
            )
        else:
            monkeypatch.setattr(parallel, "BATCH_LINES", 4)  # many batches over 2 workers
            assert parallel.can_run(io, config)
            stats = parallel.run_filter_parallel(io, config, 2)
        stats.counters.pop("wall_seconds")
        results[mode] = (
            (tmp_path / f"{mode}.jsonl").read_bytes(),
            (tmp_path / f"{mode}-rej.jsonl").read_bytes(),
            dict(stats.counters),
            stats.derived,
        )
    assert results["parallel"] == results["single"]
    out, rejected, counters, _ = results["single"]
    assert counters["read"] == counters["written"] + counters["rejected"] and counters["bad_records"] > 0
    assert counters.get("rejected.dedup", 0) + counters.get("failed.dedup", 0) > 0


def test_parallel_bad_line_fails_with_its_line(tmp_path, monkeypatch):
    path = tmp_path / "in.jsonl"
    path.write_bytes(_mixed_lines())
    monkeypatch.setattr(parallel, "BATCH_LINES", 2)
    messages = []
    for run in (
        lambda io, config: run_stage(
            io, lambda records, ctx: filter_records(records, config, ctx.stats, ctx.reject)
        ),
        lambda io, config: parallel.run_filter_parallel(io, config, 2),
    ):
        config = FilterConfig()  # a fresh dedup state for each run
        io = StageIO(
            stage="filter",
            inputs=[str(path)],
            output=str(tmp_path / "o.jsonl"),
            plain=True,
            require=required_fields(config),
            progress=False,
        )
        with pytest.raises(BadRecord) as err:
            run(io, config)
        messages.append((str(err.value), (tmp_path / "o.jsonl").read_bytes()))
    assert messages[0] == messages[1]
    assert messages[0][0] == f"{path}:5: missing required field 'plan'"
