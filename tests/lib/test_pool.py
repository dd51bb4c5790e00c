"""The runner's worker pool (``run_stage(io, stage, workers=N)``, ``codeplan_tools.core.pool``) against
one process, for every stage that uses it: the same output, rejects, stderr and counters, also with
--shard, resume, bad lines and bad records; and a bad line in fail mode stops both with the same
message after writing the same records."""

import orjson
import pytest

from codeplan_tools.core import pool
from codeplan_tools.core.errors import BadRecord
from codeplan_tools.core.stage import StageIO, run_stage
from codeplan_tools.stages.filter import FilterConfig, FilterStage, required_fields
from codeplan_tools.stages.score import ScoreConfig, ScoreStage

PLAN = "def solve(n):\n    total = 0\n    for x in range(n):\n        if x % 2:\n            total += x\n    return total"
RESPONSE = "We add up the odd numbers below n one by one and report the total we get at the very end of it."


def _filter_lines() -> list[bytes]:
    """Mined records: kept, failing rules, duplicates (kept and failed ones), bad lines and bad records."""
    lines = []
    for i in range(60):
        r = {
            "id": f"m{i}",
            "prompt": f"Question {i % 23}?",
            "plan": PLAN,
            "response": RESPONSE,
            "meta": {"extract": {"finish_reason": "length" if i % 11 == 0 else "stop"}},
        }
        if i % 7 == 0:
            r["plan"] = "We think about it.\nThen answer."
        if i % 13 == 0:
            r["plan"] = f"answer = '''{RESPONSE}'''"
        if i % 29 == 4:
            r["meta"] = {"extract": "stop"}  # a bad record: a field of the wrong type
        lines.append(orjson.dumps(r))
        if i % 17 == 5:
            lines.append(b'{"id": "broken"')
        if i % 19 == 3:
            lines.append(b'{"id": "noplan", "prompt": "x"}')
    return lines


def _score_lines() -> list[bytes]:
    """Answers to score (several tasks and scorers), unscorable records, bad lines and bad records."""
    lines = []
    for i in range(60):
        right = i % 3 != 0
        if i % 4 == 0:
            r = {
                "task": "gsm8k",
                "answer": "7",
                "samples": [{"response": f"The answer is {7 if right else 8}."}],
            }
        elif i % 4 == 1:
            r = {"task": "coin_flip", "answer": "yes", "response": "Yes." if right else "No."}
        elif i % 4 == 2:
            r = {"task": "gsm8k", "answer": "3", "samples": ["3", "3", "4" if right else "5"]}
        else:
            r = {"task": "bbh/navigate", "answer": "Yes", "samples": [{"response": "Yes" if right else "No"}]}
        r["id"] = f"s{i}"
        if i % 17 == 5:
            r["task"] = "no-such-task"
        if i % 19 == 3:
            r.pop("answer")
        if i % 23 == 7:
            r["samples"] = {"response": "7"}  # a bad record: samples is not a list
        lines.append(orjson.dumps(r))
        if i % 13 == 6:
            lines.append(b"not json")
    return lines


STAGES = {
    "filter": (lambda: FilterStage(FilterConfig()), required_fields(FilterConfig()), _filter_lines),
    "filter --annotate": (
        lambda: FilterStage(FilterConfig(annotate=True)),
        required_fields(FilterConfig()),
        _filter_lines,
    ),
    "score": (lambda: ScoreStage(ScoreConfig(workers=1)), (), _score_lines),
}


def _run(tmp_path, name, lines, workers, *, fail=False, shard=None, done_lines=0):
    """One run of stage ``name`` over ``lines``; returns (output, rejects, counters, derived, stderr)."""
    make, require, _ = STAGES[name]
    folder = tmp_path / f"w{workers}"
    folder.mkdir(exist_ok=True)
    source = tmp_path / "in.jsonl"  # (the same file for every run: rejects and messages name it)
    source.write_bytes(b"\n".join(lines) + b"\n")
    out, rejects = folder / "out.jsonl", folder / "rej.jsonl"
    settings = {"stage": name} if done_lines else None

    def io(inputs):
        return StageIO(
            stage=make().name,
            inputs=[str(inputs)],
            output=str(out),
            plain=True,
            rejects=None if fail else str(rejects),
            on_bad_record="fail" if fail else "skip",
            require=require,
            shard=shard,
            resume_settings=settings,
            progress=False,
        )

    if done_lines:  # a run stopped part-way, done in one process: the run below resumes it (score)
        head = tmp_path / "head.jsonl"
        head.write_bytes(b"\n".join(lines[:done_lines]) + b"\n")
        run_stage(io(head), make())
    stats = run_stage(io(source), make(), workers=workers)
    stats.counters.pop("wall_seconds")
    return out.read_bytes(), rejects.read_bytes() if not fail else b"", dict(stats.counters), stats.derived


SETTINGS = {"plain": {}, "shard": {"shard": "1/2"}, "resume": {"done_lines": 25}}
CASES = [(name, setting) for name in STAGES for setting in SETTINGS if setting != "resume" or name == "score"]


@pytest.mark.parametrize("name, setting", CASES, ids=[f"{name} {setting}" for name, setting in CASES])
def test_worker_pool_equals_one_process(name, setting, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(pool, "BATCH_LINES", 4)  # many batches over 2 workers
    started = []

    class Pool(pool._Pool):
        def __init__(self, n, job):
            started.append(n)
            super().__init__(n, job)

    monkeypatch.setattr(pool, "_Pool", Pool)
    lines = STAGES[name][2]()
    one = _run(tmp_path, name, lines, 1, **SETTINGS[setting])
    one_stderr = capsys.readouterr().err
    two = _run(tmp_path, name, lines, 2, **SETTINGS[setting])
    assert started == [2]
    assert two == one
    assert capsys.readouterr().err == one_stderr
    out, rejected, counters, _ = one
    # Every line is accounted for, and the input exercises what the pool must replay in order.
    assert counters["read"] == (
        counters["written"]
        + counters["rejected"]
        + counters.get("skipped_shard", 0)
        + counters.get("skipped_done", 0)
    )
    assert counters["bad_records"] >= 3 and counters["written"] > 5
    if name == "filter":
        assert counters["rejected.dedup"] > 0
    if name == "score":
        assert counters["rejected.unknown-task"] > 0 and counters["rejected.no-gold"] > 0


def _good_lines(name: str, n: int) -> list[bytes]:
    """Records every rule keeps, or answers that score."""
    if name == "filter":
        records = [
            {"id": f"g{i}", "prompt": f"Question {i}?", "plan": PLAN, "response": RESPONSE} for i in range(n)
        ]
    else:
        records = [{"id": f"g{i}", "task": "gsm8k", "answer": "7", "samples": ["7"]} for i in range(n)]
    return [orjson.dumps(r) for r in records]


BAD = {
    ("filter", "bad line"): (b'{"id": "noplan", "prompt": "x"}', "missing required field 'plan'"),
    ("score", "bad line"): (b"not json", "invalid JSON: invalid literal"),
    ("filter", "bad record"): (
        orjson.dumps({"id": "t", "prompt": "p", "plan": PLAN, "meta": {"extract": []}}),
        "meta.extract is a list, not an object",
    ),
    ("score", "bad record"): (
        orjson.dumps({"id": "t", "task": "gsm8k", "answer": "1", "samples": "1"}),
        "samples is a string, not a list",
    ),
    ("score", "unscorable record"): (
        orjson.dumps({"id": "t", "task": "nope", "answer": "1"}),
        "unknown task",
    ),
}


@pytest.mark.parametrize("name, what", list(BAD), ids=[" ".join(key) for key in BAD])
def test_worker_pool_stops_at_a_bad_line_with_its_file_and_line(name, what, tmp_path, monkeypatch):
    monkeypatch.setattr(pool, "BATCH_LINES", 4)
    good = _good_lines(name, 60)
    bad, message = BAD[(name, what)]
    lines = [*good[:30], bad, *good[30:]]
    results = []
    for workers in (1, 2):
        with pytest.raises(BadRecord) as err:
            _run(tmp_path, name, lines, workers, fail=True)
        output = (tmp_path / f"w{workers}" / "out.jsonl").read_bytes()
        results.append((str(err.value), output))
    assert results[0] == results[1]
    assert results[0][0].startswith(f"{tmp_path / 'in.jsonl'}:31: {message}")
    assert results[0][1].count(b"\n") == 30  # the records before it are written


def test_one_batch_starts_no_process(tmp_path, monkeypatch):
    """Where processes do not pay (one batch or less), the stage runs here."""

    def start(*args):
        raise AssertionError("a worker process was started")

    monkeypatch.setattr(pool._Pool, "__init__", start)
    assert _run(tmp_path, "filter", _good_lines("filter", 20), 4)[2]["read"] == 20
