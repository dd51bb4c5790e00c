"""The math scorer's speed-ups change no verdict: the worker's parse cache, several jobs in flight per
worker (with the hard timeout still per job) and chunks checked while the next is read.

The fixture (``tests/fixtures/score_math/records.jsonl``, written by ``make_records.py`` there) is 200
MATH-shaped records with right answers, near misses, other forms, other records' answers, repeats,
unmarked and unparsable answers."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import orjson
import pytest

from codeplan_tools.core.stage import StageContext
from codeplan_tools.eval.scorers import get_scorer, own_text
from codeplan_tools.eval.scorers import math as math_scorer
from codeplan_tools.stages.score import ScoreConfig, score_records

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "score_math" / "records.jsonl"


def _records() -> list[dict]:
    return [orjson.loads(line) for line in FIXTURE.read_bytes().splitlines()]


def _scores(config: ScoreConfig) -> list[dict]:
    out = list(score_records(copy.deepcopy(_records()), config, StageContext("score")))
    return [r["meta"]["score"] for r in out]


@pytest.fixture(scope="module")
def with_speedup() -> list[dict]:
    return _scores(ScoreConfig(workers=1, timeout=20, chunk_size=64))


def test_fixture_has_right_near_miss_and_repeated_answers(with_speedup):
    samples = [s for score in with_speedup for s in score["samples"]]
    assert len(with_speedup) == 200 and len(samples) > 800
    right = sum(s["correct"] for s in samples)
    assert 0.3 * len(samples) < right < 0.8 * len(samples)  # right and wrong answers both, many of each
    assert sum(s["invalid"] for s in samples) > 3 and sum(s["extracted_strict"] is None for s in samples) > 20
    records = _records()
    # The cache's cases: a sample whose marked answer is the gold's text, and a gold met again.
    assert sum(s == f"\\boxed{{{r['answer']}}}" for r in records for s in r["samples"]) > 20
    assert len({r["answer"] for r in records}) < len(records) / 3
    assert not any(s["timed_out"] for s in samples)


def test_cache_off_and_two_workers_give_the_same_scores(with_speedup, monkeypatch):
    # The switch is read when a worker process starts: these workers parse every answer anew.
    monkeypatch.setenv(math_scorer.PARSE_CACHE_ENV, "0")
    without = _scores(ScoreConfig(workers=2, timeout=20, chunk_size=64))
    assert len(without) == len(with_speedup)
    for a, b in zip(with_speedup, without, strict=True):
        assert a == b  # every verdict, vote key, pass@k, maj@k and majority


def test_verdicts_match_check_answer_run_here_without_cache(with_speedup, monkeypatch):
    """The reference: each sample checked in this process, every parse made anew, no pool."""
    pytest.importorskip("math_verify")
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    monkeypatch.setattr(math_scorer, "_cached_parse", math_scorer._parse_boxed)
    scorer = get_scorer("math")
    for record, score in zip(_records(), with_speedup, strict=True):
        gold = scorer.gold(record, {})
        for text, got in zip(record["samples"], score["samples"], strict=True):
            ok_strict, ok, span, key, invalid = math_scorer.check_answer(gold, own_text(text, record))
            assert (got["correct_strict"], got["correct"], got["invalid"]) == (ok_strict, ok, invalid), text
            assert got["extracted"] == (None if invalid else key), text
            assert got["extracted_strict"] == (None if invalid else span), text


def test_jobs_queued_behind_a_hung_check_are_checked_by_the_next_worker():
    scorer = get_scorer("math", timeout=2.0, workers=1)
    try:
        items = [(rf"\boxed{{{n}}}", {"answer": str(n)}, {}) for n in range(12)]
        items.insert(3, (r"So we get $\boxed{9^{9^{9^{9}}}}$", {"answer": "1"}, {}))
        got = scorer.score_many(items)
        assert got[3].timed_out and not got[3].correct
        assert all(v.correct and not v.timed_out for i, v in enumerate(got) if i != 3)
        assert [v.extracted for i, v in enumerate(got) if i != 3] == [str(n) for n in range(12)]
        assert scorer.pool.restarts == 1
    finally:
        scorer.close()


def test_answers_longer_than_a_pipe_go_through():
    """Queued jobs are kept under what the pipe holds; one longer than that goes alone."""
    filler = "We keep going. " * 40_000  # ~600 KB a sample
    items = [(filler + rf"\boxed{{{n}}}", {"answer": str(n)}, {}) for n in range(6)]
    items += [(rf"\boxed{{{n + 1}}}", {"answer": str(n)}, {}) for n in range(20)]
    scorer = get_scorer("math", timeout=20, workers=1)
    try:
        got = scorer.score_many(items)
    finally:
        scorer.close()
    assert [v.correct for v in got] == [True] * 6 + [False] * 20
