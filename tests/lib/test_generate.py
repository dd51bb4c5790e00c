"""codeplan_tools.stages.generate: prompting modes, reply parsing, seeds and samples on the tiny model (hf)."""

from __future__ import annotations

import pytest

from codeplan_tools.core.errors import UsageError
from codeplan_tools.core.progress import EngineProgress
from codeplan_tools.core.records import derive_seed
from codeplan_tools.core.stage import StageContext
from codeplan_tools.core.stats import Stats
from codeplan_tools.engines.runner import chunked
from codeplan_tools.engines.spec import EngineSpec
from codeplan_tools.stages.generate import (
    GenerateConfig,
    GenerateStage,
    generate_records,
    mode_prompt,
    parse_code_plan_reply,
)

QUESTIONS = [
    {
        "id": "q1",
        "prompt": "Tom has 3 apples and buys 4 more. How many apples?",
        "plan": "total = 3 + 4\nanswer(total)",
    },
    {"id": "q2", "question": "Spell cat backwards.", "plan": "print('cat'[::-1])"},
]


def test_mode_prompts():
    q = "What is 2 + 2?"
    assert mode_prompt("direct", q) == q
    assert mode_prompt("cot", q) == q + "\n\nLet's think step by step."
    assert mode_prompt("plan-and-solve", q).endswith("solve the problem step by step.")
    assert "### Plan:" in mode_prompt("code-plan", q) and "```python" in mode_prompt("code-plan", q)
    with_format = mode_prompt("cot", q, answer_instruction="End with 'The answer is N'.")
    assert with_format == q + "\n\nEnd with 'The answer is N'.\n\nLet's think step by step."
    given = mode_prompt("code-plan", q, plan="x = 2 + 2")
    assert "```python\nx = 2 + 2\n```" in given and "### Plan:" not in given


@pytest.mark.parametrize(
    "reply, plan, response",
    [
        ("### Plan:\n```python\nx = 2 + 2\n```\n\n### Answer:\nIt is 4.", "x = 2 + 2", "It is 4."),
        ("Plan first.\n```python\nx = 1\n```\nAnswer: one", "x = 1", "one"),
        ("```python\nx = 1\n```\n\n### Answer:\nThe answer is 1.", "x = 1", "The answer is 1."),
        ("No plan at all, the answer is 7.", None, "No plan at all, the answer is 7."),
    ],
)
def test_parse_code_plan_reply(reply, plan, response):
    assert parse_code_plan_reply(reply) == (plan, response)


def test_config_defaults_and_settings():
    assert GenerateConfig().format == "codeplan"
    spec = EngineSpec(model="m", engine="hf")
    assert GenerateConfig(n=2).settings(spec) != GenerateConfig(n=4).settings(spec)
    assert GenerateConfig(mode="cot").settings(spec)["mode_instruction_sha256"]


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"format": "vanilla", "mode": "cot"}, "give either --format (fine-tuned models) or --mode"),
        ({"format": "vanilla", "given_plan": True}, "--given-plan works with --format codeplan/nlplan"),
        ({"mode": "cot", "given_plan": True}, "--given-plan works with --format codeplan/nlplan"),
        ({"mode": "tree-of-thought"}, "unknown mode 'tree-of-thought'; choose one of: direct, cot"),
        ({"format": "chatml"}, "unknown format 'chatml'; choose one of: codeplan, vanilla, nlplan"),
        ({"n": 0}, "-n must be at least 1"),
        ({"max_tokens": 0}, "--max-tokens must be at least 1"),
        ({"temperature": -1.0}, "need --temperature >= 0 and 0 < --top-p <= 1"),
        ({"top_p": float("nan")}, "--temperature and --top-p must be finite numbers"),
    ],
)
def test_config_refuses(settings, message):
    with pytest.raises(UsageError) as caught:
        GenerateConfig(**settings)
    assert str(caught.value).startswith(message)


def test_chunked():
    assert list(chunked(range(5), 2)) == [[0, 1], [2, 3], [4]]
    assert list(chunked([], 3)) == []


def test_progress_eta_counts_only_records_that_reach_the_engine():
    class Total:
        total = 1000

    stats = Stats("extract")
    stats.inc("read", 100)
    stats.inc("skipped_shard", 50)  # half the lines belong to other shards
    p = EngineProgress("extract", stats, enabled=False, counter=Total())
    p._started = 0.0
    p.chunk_done(records=50, tokens_out=500, engine_seconds=5.0)
    rec_s, tok_s = p.rates(now=10.0)
    assert (rec_s, tok_s) == (5.0, 100.0)
    assert p.eta_seconds(now=10.0) == pytest.approx(900 * 0.5 / 5.0)
    assert "ETA 0:01:30" in p.describe(now=10.0)


@pytest.fixture(scope="module")
def hf_engine(tiny_model):
    from codeplan_tools.engines import get_engine

    return get_engine("hf", str(tiny_model), max_model_len=512)


def _run(engine, tiny_model, records, **kw):
    spec = EngineSpec(model=str(tiny_model), engine="hf", max_model_len=512)
    ctx = StageContext("generate")
    out = list(
        generate_records([dict(r) for r in records], GenerateConfig(**kw), spec, ctx=ctx, engine=engine)
    )
    return out, ctx


def test_samples_have_seeds_and_reproduce(hf_engine, tiny_model):
    kw = dict(format="codeplan", n=4, temperature=1.0, top_p=0.95, max_tokens=12, seed=11)
    out, ctx = _run(hf_engine, tiny_model, QUESTIONS, **kw)
    assert [r["id"] for r in out] == ["q1", "q2"] and ctx.stats["samples"] == 8
    for r in out:
        samples = r["samples"]
        assert len(samples) == 4
        assert len({s["seed"] for s in samples}) == 4
        for s in samples:
            assert set(s) == {"text", "plan", "response", "finish_reason", "tokens_out", "seed"}
            assert s["finish_reason"] in ("stop", "length") and 0 < s["tokens_out"] <= 12
        meta = r["meta"]["generate"]
        assert meta["seed"] == derive_seed(11, r["id"]) and meta["global_seed"] == 11
        assert (
            meta["format"] == "codeplan"
            and meta["n"] == 4
            and meta["tokens_out"] == sum(s["tokens_out"] for s in samples)
        )
    assert len({s["text"] for s in out[0]["samples"]}) > 1  # sampled, not copies
    again, _ = _run(hf_engine, tiny_model, QUESTIONS[::-1], **kw)  # other order, other batches
    assert {r["id"]: r["samples"] for r in again} == {r["id"]: r["samples"] for r in out}
    other, _ = _run(hf_engine, tiny_model, QUESTIONS, **{**kw, "seed": 12})
    assert [r["samples"] for r in other] != [r["samples"] for r in out]


def test_given_plan_generates_the_response_only(hf_engine, tiny_model):
    free, _ = _run(hf_engine, tiny_model, QUESTIONS, format="codeplan", max_tokens=6)
    given, _ = _run(hf_engine, tiny_model, QUESTIONS, format="codeplan", given_plan=True, max_tokens=6)
    for f, g, q in zip(free, given, QUESTIONS, strict=True):
        assert g["samples"][0]["plan"] == q["plan"]
        assert g["meta"]["generate"]["given_plan"] is True
        # The plan section is part of the prompt: more tokens in than the free run.
        assert g["meta"]["generate"]["tokens_in"] > f["meta"]["generate"]["tokens_in"]


def test_prompting_mode_and_rejects(hf_engine, tiny_model):
    records = [*QUESTIONS, {"id": "huge", "prompt": "word " * 800}]
    out, ctx = _run(hf_engine, tiny_model, records, mode="cot", max_tokens=4)
    assert [r["id"] for r in out] == ["q1", "q2"]
    assert out[0]["meta"]["generate"]["mode"] == "cot" and out[0]["samples"][0]["plan"] is None
    assert [r["id"] for r in ctx.rejected] == ["huge"]
    assert ctx.rejected[0]["meta"]["generate"]["reason"].startswith("prompt-too-long")


def test_task_answer_instruction_is_added_once():
    from codeplan_tools.stages.generate import task_answer_instruction

    text = task_answer_instruction({"task": "gsm8k", "prompt": "How many?"})
    assert text and "The answer is" in text
    prepared = {"task": "gsm8k", "prompt": f"How many?\n\n{text}"}  # as `codeplan tasks prepare` writes it
    assert task_answer_instruction(prepared) is None
    assert task_answer_instruction({"task": "no-such-task", "prompt": "Q"}) is None
    assert task_answer_instruction({"prompt": "Q"}) is None


def test_requests_stop_on_the_format_end_and_carry_the_given_plan(hf_engine, tiny_model):
    from codeplan_tools.formats import get_format

    spec = EngineSpec(model=str(tiny_model), engine="hf")
    fmt = get_format("codeplan", hf_engine.tokenizer)
    stage = GenerateStage(GenerateConfig(format="codeplan", given_plan=True, seed=4), spec, hf_engine)
    stage.bind(hf_engine)
    req = stage.request(dict(QUESTIONS[0]))
    assert req.stop == fmt.stop_strings() and fmt.end_marker in req.stop
    assert req.prompt == fmt.prefix_with_plan(
        hf_engine.tokenizer, QUESTIONS[0]["prompt"], QUESTIONS[0]["plan"]
    )
    assert req.prompt.endswith("```\n\n### Answer:\n") and req.seed == derive_seed(4, "q1")


def test_generate_stage_runs_on_files_through_run_stage(hf_engine, tiny_model, tmp_path):
    """The Stage shape: ``run_stage`` drives GenerateStage; rejects go to the rejects file."""
    from codeplan_tools.core.stage import StageIO, run_stage
    from tests.helpers import read_records, write_jsonl

    src = write_jsonl(tmp_path / "q.jsonl", [*QUESTIONS, {"id": "huge", "prompt": "word " * 800}])
    io = StageIO(
        stage="generate",
        inputs=[str(src)],
        output=str(tmp_path / "out.jsonl"),
        rejects=str(tmp_path / "rej.jsonl"),
        progress=False,
    )
    spec = EngineSpec(model=str(tiny_model), engine="hf", max_model_len=512)
    stats = run_stage(io, GenerateStage(GenerateConfig(mode="direct", max_tokens=3), spec, hf_engine))
    assert [r["id"] for r in read_records(tmp_path / "out.jsonl")] == ["q1", "q2"]
    assert [r["id"] for r in read_records(tmp_path / "rej.jsonl")] == ["huge"]
    assert stats["read"] == 3 and stats["written"] == 2 and stats["rejected.prompt-too-long"] == 1
