"""Formats: rendering with and without chat templates, the end marker, and parse(render(x)) round trips."""

from __future__ import annotations

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from codeplan_tools.core.errors import UsageError
from codeplan_tools.formats import FORMATS, TEXT_END_MARKER, end_marker_for, get_format


@pytest.fixture(scope="module")
def tiny_tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def _real(shared_data, name):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(shared_data / "tokenizers" / name)


# Text that likes to collide with the format: its headers, fences, markers and odd whitespace.
PIECES = st.sampled_from(
    ["### Plan:\n", "### Answer:\n", "```", "```python\n", "\n```\n\n", "\n\n", "</s>", "<|end|>", " ", "\n"]
)
TEXT = st.lists(st.one_of(st.text(max_size=20), PIECES), max_size=8).map("".join)


@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize("marker", ["</s>", TEXT_END_MARKER, "<|eot_id|>"])
@settings(max_examples=150, deadline=None)
@given(plan=TEXT, response=TEXT)
def test_parse_render_round_trip(name, marker, plan, response):
    fmt = get_format(name, chat=False, end_marker=marker)
    assume(fmt.unparseable_reason(plan, response) is None)
    parsed_plan, parsed_response = fmt.parse(fmt.target_text(plan, response))
    assert parsed_response == response
    assert parsed_plan == (plan if fmt.needs_plan else None)
    assert fmt.target_text(plan, response).endswith(marker)


@settings(max_examples=150, deadline=None)
@given(plan=TEXT, response=TEXT)
def test_round_trip_holds_for_most_text_and_reasons_name_the_rest(plan, response):
    fmt = get_format("codeplan", chat=False, end_marker="</s>")
    reason = fmt.unparseable_reason(plan, response)
    parsed = fmt.parse(fmt.target_text(plan, response))
    assert (reason is None) == (parsed == (plan, response))
    if reason is not None:
        assert reason in {"contains-end-marker", "plan-contains-separator"}


@pytest.mark.parametrize(
    ("name", "plan", "response", "reason"),
    [
        ("codeplan", "x = 1", "ok", None),
        ("codeplan", "x = 1\n```\n\n### Answer:\nsneaky", "ok", "plan-contains-separator"),
        ("codeplan", "x = 1", "a </s> b", "contains-end-marker"),
        ("codeplan", None, "ok", "missing-plan"),
        ("nlplan", "first\n\n### Answer:\nsecond", "r", "plan-contains-separator"),
        ("vanilla", None, "fine", None),
    ],
)
def test_unparseable_reasons(name, plan, response, reason):
    fmt = get_format(name, chat=False, end_marker="</s>")
    assert fmt.unparseable_reason(plan, response) == reason


def test_plain_template_texts():
    fmt = get_format("codeplan", chat=False, end_marker="</s>")
    prompt, target = fmt.render(None, "What is 2+3?", "total = 2 + 3\nprint(total)", "It is 5.")
    assert prompt == "### Question:\nWhat is 2+3?\n\n"
    assert target == "### Plan:\n```python\ntotal = 2 + 3\nprint(total)\n```\n\n### Answer:\nIt is 5.</s>"
    nl = get_format("nlplan", chat=False, end_marker="</s>")
    assert nl.target_text("Add them.", "5") == "### Plan:\nAdd them.\n\n### Answer:\n5</s>"
    van = get_format("vanilla", chat=False, end_marker="</s>")
    assert van.render(None, "Q", None, "A") == ("### Question:\nQ\n\n### Answer:\n", "A</s>")
    assert fmt.stop_strings() == ["</s>", "\n### Question:"]


def test_prefix_with_plan_and_response_after_plan():
    fmt = get_format("codeplan", chat=False, end_marker="</s>")
    prefix = fmt.prefix_with_plan(None, "Q", "x = 1")
    prompt, target = fmt.render(None, "Q", "x = 1", "R")
    assert prompt + target == prefix + "R</s>"
    assert fmt.response_after_plan("The answer is 4.</s>junk") == "The answer is 4."
    with pytest.raises(UsageError):
        get_format("vanilla", chat=False).prefix_with_plan(None, "Q", "x = 1")


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("just an answer</s>more", (None, "just an answer")),
        ("### Answer:\n42", (None, "42")),
        # Stopped at the token limit inside the plan: the plan so far, no response.
        ("### Plan:\n```python\nx = 1\ny = ", ("x = 1\ny = ", "")),
        ("### Plan:\n```python\nx = 1\n```", ("x = 1", "")),
        ("\n### Plan:\n```python\nx\n```\n\n### Answer:\nok", ("x", "ok")),
    ],
    ids=["no-plan", "answer-only", "cut-in-the-plan", "plan-only", "leading-newline"],
)
def test_parse_generated_text_that_is_off_format(text, parsed):
    assert get_format("codeplan", chat=False, end_marker="</s>").parse(text) == parsed


def test_unknown_format_is_a_usage_error():
    with pytest.raises(UsageError, match=r"^unknown format 'cot'; choose one of: codeplan, nlplan, vanilla$"):
        get_format("cot")


def test_tiny_tokenizer_chat_rendering_and_eos_marker(tiny_tokenizer):
    fmt = get_format("codeplan", tiny_tokenizer)
    assert fmt.chat and fmt.end_marker == tiny_tokenizer.eos_token == "</s>"
    assert fmt.end_token_id(tiny_tokenizer) == tiny_tokenizer.eos_token_id
    prompt, target = fmt.render(tiny_tokenizer, "Hi?", "p = 1", "r")
    assert prompt == "<s><|user|>\nHi?</s>\n<|assistant|>\n"
    assert target == "### Plan:\n```python\np = 1\n```\n\n### Answer:\nr</s>"
    # The end marker is one token when the target is tokenized.
    ids = tiny_tokenizer(target, add_special_tokens=False)["input_ids"]
    assert ids[-1] == tiny_tokenizer.eos_token_id
    plain = get_format("codeplan", tiny_tokenizer, chat=False)
    assert plain.prompt_text(tiny_tokenizer, "Hi?") == "### Question:\nHi?\n\n"


def test_unbound_format_binds_to_the_first_tokenizer(tiny_tokenizer):
    fmt = get_format("vanilla")
    assert fmt.end_marker == TEXT_END_MARKER
    assert fmt.prompt_text(tiny_tokenizer, "Q").startswith("<s><|user|>")
    assert fmt.end_marker == "</s>"


def test_llama3_original_template(shared_data):
    tok = _real(shared_data, "llama-3-8b-instruct")
    fmt = get_format("codeplan", tok)
    # The turn ends with <|eot_id|>, not with the tokenizer's eos <|end_of_text|>.
    assert fmt.end_marker == "<|eot_id|>" != tok.eos_token
    assert fmt.end_token_id(tok) == 128009
    prompt, target = fmt.render(tok, "Add 2 and 3.", "x = 2 + 3", "5")
    assert prompt == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nAdd 2 and 3.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert target.endswith("5<|eot_id|>")
    assert fmt.parse(target) == ("x = 2 + 3", "5")
    assert fmt.stop_strings() == ["<|eot_id|>"]


def test_qwen_template(shared_data):
    tok = _real(shared_data, "qwen2.5-instruct")
    fmt = get_format("nlplan", tok)
    assert fmt.end_marker == "<|im_end|>" == end_marker_for(tok)
    prompt = fmt.prompt_text(tok, "Hi")
    assert prompt.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert fmt.end_token_id(tok) == tok.convert_tokens_to_ids("<|im_end|>")


def test_mistral_has_no_chat_template_and_uses_eos(shared_data):
    tok = _real(shared_data, "mistral-7b-v0.1")
    fmt = get_format("codeplan", tok)
    assert not fmt.chat and fmt.end_marker == "</s>" and fmt.end_token_id(tok) == 2
    prompt, target = fmt.render(tok, "Q?", "p", "r")
    assert prompt == "### Question:\nQ?\n\n"
    ids = tok(prompt + target)["input_ids"]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    with pytest.raises(UsageError, match="no chat template"):
        get_format("codeplan", tok, chat=True)
