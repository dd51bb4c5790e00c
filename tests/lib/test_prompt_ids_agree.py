"""``generate`` feeds the local engines the prompt ids ``pack`` trains on (issue #11).

A record's text may contain a special-token string of the tokenizer (``<|user|>``, ``</s>``); pack
tokenizes it as text (``RecordTokenizer``), so generate must too, or the model sees at inference a
control token it never saw in that place in training. The ids are taken from the hf engine's batches
(what it really feeds ``model.generate``) and compared with the prompt part (the labels == -100
prefix) of the example pack makes of the same record, on the tiny model, whose chat template puts
``<s>``, ``<|user|>``, ``</s>`` and ``<|assistant|>`` around the prompt.
"""

from __future__ import annotations

import numpy as np
import pytest

from codeplan_tools.core.records import normalize
from codeplan_tools.core.stage import StageContext
from codeplan_tools.engines.base import Request, prompt_token_ids
from codeplan_tools.engines.spec import EngineSpec
from codeplan_tools.stages.extract import ExtractConfig, extract_records
from codeplan_tools.stages.generate import GenerateConfig, generate_records
from codeplan_tools.stages.pack import IGNORE, PackConfig, pack_records

SPECIALS = ("<s>", "</s>", "<|user|>", "<|assistant|>")
RECORDS = [
    {
        "id": "plain",
        "prompt": "Tom has 3 apples and buys 4 more. How many apples?",
        "plan": "total = 3 + 4\nanswer(total)",
        "response": "Tom has 7 apples.",
    },
    {
        "id": "roles",
        "prompt": "Reply to <|user|> as <|assistant|> would.\n<|user|>\nHi",
        "plan": "say('<|assistant|> hello')",
        "response": "Hello there.",
    },
    {
        "id": "bos-eos",
        "prompt": "What do <s> and </s> mean?</s>",
        "plan": "explain('<s>')\nexplain('<|user|>')",
        "response": "They mark the start and the end.",
    },
]


@pytest.fixture(scope="module")
def hf_engine(tiny_model):
    from codeplan_tools.engines import get_engine

    return get_engine("hf", str(tiny_model), max_model_len=512)


@pytest.fixture
def fed(hf_engine, monkeypatch) -> dict[str, list[int]]:
    """Request id -> the prompt ids the hf engine puts into its batches."""
    seen: dict[str, list[int]] = {}
    run_batch = hf_engine._run_batch

    def spy(batch):
        for row in batch:
            seen[row.request.id] = list(row.ids)
        return run_batch(batch)

    monkeypatch.setattr(hf_engine, "_run_batch", spy)
    return seen


def _generate(engine, model, records, **config):
    spec = EngineSpec(model=str(model), engine="hf", max_model_len=512)
    ctx = StageContext("generate")
    config = GenerateConfig(max_tokens=1, **config)
    out = list(generate_records([dict(r) for r in records], config, spec, ctx=ctx, engine=engine))
    return out, ctx


def _pack_examples(model, records, fmt: str) -> dict[str, tuple[list[int], int]]:
    """Example id -> (its token ids, its number of prompt tokens) in the packs of ``records``."""
    examples, ctx = {}, StageContext("pack")
    config = PackConfig(model=str(model), format=fmt, max_len=512, workers=1)
    for pack in pack_records([normalize(dict(r)) for r in records], config, ctx):
        ids, labels = np.asarray(pack["input_ids"]), np.asarray(pack["labels"])
        start = 0
        for example_id, n in zip(pack["example_ids"], pack["seq_lens"], strict=True):
            n_prompt = int(np.argmax(labels[start : start + n] != IGNORE))
            examples[example_id] = (ids[start : start + n].tolist(), n_prompt)
            start += n
    assert not ctx.rejected
    return examples


def _special_ids(tok) -> dict[str, int]:
    return {s: tok.convert_tokens_to_ids(s) for s in SPECIALS}


def _assert_specials_only_from_template(tok, ids: list[int], template_ids: list[int]) -> None:
    """Each control token occurs as often as in a prompt without special-token strings."""
    for text, token in _special_ids(tok).items():
        assert ids.count(token) == template_ids.count(token), text


@pytest.mark.parametrize("fmt", ["codeplan", "vanilla"])
def test_format_prompt_ids_are_packs_prompt(hf_engine, tiny_model, fed, fmt):
    out, ctx = _generate(hf_engine, tiny_model, RECORDS, format=fmt)
    assert [r["id"] for r in out] == [r["id"] for r in RECORDS] and not ctx.rejected
    examples = _pack_examples(tiny_model, RECORDS, fmt)
    tok = hf_engine.tokenizer
    for record in RECORDS:
        ids, n_prompt = examples[record["id"]]
        assert fed[record["id"]] == ids[:n_prompt], record["id"]
        # The rendering comes back whole: the special-token strings are in it, as text.
        assert tok.decode(fed[record["id"]]) == hf_engine_prompt_text(tok, fmt, record["prompt"])
        _assert_specials_only_from_template(tok, fed[record["id"]], fed["plain"])


def hf_engine_prompt_text(tok, fmt: str, prompt: str) -> str:
    from codeplan_tools.formats import get_format

    return get_format(fmt, tok).prompt_text(tok, prompt)


def test_given_plan_prompt_ids_are_packs_up_to_the_response(hf_engine, tiny_model, fed):
    """A plan-conditioned prompt is pack's prompt, then its target up to the response, tokenized apart
    as pack tokenizes them (one text would merge tokens across the junction)."""
    out, ctx = _generate(hf_engine, tiny_model, RECORDS, format="codeplan", given_plan=True)
    assert len(out) == len(RECORDS) and not ctx.rejected
    examples = _pack_examples(tiny_model, RECORDS, "codeplan")
    tok = hf_engine.tokenizer
    for record in RECORDS:
        ids, n_prompt = examples[record["id"]]
        got = fed[record["id"]]
        assert n_prompt < len(got) < len(ids) and got == ids[: len(got)], record["id"]
        # What pack trains on after it is the response and the end marker.
        assert tok.decode(ids[len(got) :]) == record["response"] + "</s>"
        _assert_specials_only_from_template(tok, got, fed["plain"])


@pytest.mark.parametrize("mode", ["direct", "code-plan"])
def test_mode_user_turn_keeps_special_strings_as_text(hf_engine, tiny_model, fed, mode):
    """The prompting modes' chat turn: the engine applies the template, the content stays text."""
    out, ctx = _generate(hf_engine, tiny_model, RECORDS, mode=mode)
    assert len(out) == len(RECORDS) and not ctx.rejected
    tok = hf_engine.tokenizer
    for record in RECORDS:
        _assert_specials_only_from_template(tok, fed[record["id"]], fed["plain"])
        assert record["prompt"] in tok.decode(fed[record["id"]])


def test_extract_user_turn_keeps_special_strings_as_text(hf_engine, tiny_model, fed):
    spec = EngineSpec(model=str(tiny_model), engine="hf", max_model_len=512)
    ctx = StageContext("extract")
    config = ExtractConfig(max_tokens=1)
    out = list(extract_records([dict(r) for r in RECORDS], config, spec, ctx=ctx, engine=hf_engine))
    assert len(out) == len(RECORDS) and not ctx.rejected
    tok = hf_engine.tokenizer
    for record in RECORDS:
        _assert_specials_only_from_template(tok, fed[record["id"]], fed["plain"])
        text = tok.decode(fed[record["id"]])
        assert record["prompt"] in text and record["response"] in text


def test_raw_prompt_and_given_ids(hf_engine):
    """A raw prompt is the caller's rendering (its special strings are tokens); given ids are used."""
    tok = hf_engine.tokenizer
    eos = tok.eos_token_id
    assert eos in prompt_token_ids(tok, Request(id="raw", prompt="a</s>b"))
    assert prompt_token_ids(tok, Request(id="ids", prompt="ignored", prompt_token_ids=[5, 6])) == [5, 6]
    with pytest.raises(ValueError, match="prompt text"):
        Request(id="x", messages=[{"role": "user", "content": "hi"}], prompt_token_ids=[5])


def test_special_string_the_template_changes_is_rejected(tiny_model):
    """A template that trims the content: a prompt holding a special string cannot be located in the
    rendering, so it is rejected ``special-token-text`` (as pack rejects it); others are generated."""
    from codeplan_tools.engines import get_engine

    engine = get_engine("hf", str(tiny_model), max_model_len=512)
    tok = engine.tokenizer
    tok.chat_template = tok.chat_template.replace("message['content']", "(message['content'] | trim)")
    records = [
        {"id": "padded-special", "prompt": "  say <|user|> here  "},
        {"id": "padded", "prompt": "  say hello here  "},
    ]
    for config in ({"format": "codeplan"}, {"mode": "direct"}):
        out, ctx = _generate(engine, tiny_model, records, **config)
        assert [r["id"] for r in out] == ["padded"], config
        assert [r["meta"]["generate"]["reason"] for r in ctx.rejected] == ["special-token-text"]
        assert [r["id"] for r in ctx.rejected] == ["padded-special"]
