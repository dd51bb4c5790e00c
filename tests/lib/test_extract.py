"""codeplan_tools.stages.extract: templates, reply cleaning, settings, and the stage on the tiny model (hf)."""

from __future__ import annotations

import pytest

from codeplan_tools.core.errors import UsageError
from codeplan_tools.core.stage import StageContext
from codeplan_tools.engines.spec import EngineSpec
from codeplan_tools.stages.extract import (
    ExtractConfig,
    clean_plan,
    extract_records,
    fill_template,
    load_template,
)

PAPER = (
    "Prompt: {prompt}\n"
    "Response: {response}\n"
    "Given a prompt-response pair, your task is to describe the high-level logic of the response using a pseudo "
    "Python code. Such that following this code, models can easily generate the response.\n"
    "The code should balance conciseness and informativeness. The code should be high-level, instead of replicating "
    "low-level details in the response. The code should be less than 200 words (adjust its length based on response "
    "lengths)."
)


def test_paper_template_is_the_papers_text_verbatim():
    name, text = load_template("paper")
    assert (name, text) == ("paper", PAPER)


def test_nlplan_template_asks_for_a_natural_language_plan():
    _, text = load_template("nlplan")
    assert "{prompt}" in text and "{response}" in text
    assert "natural language" in text and "pseudo Python" not in text


def test_template_file(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text('Q={prompt} A={response} as JSON {"plan": ...}\n')
    name, text = load_template(str(f))
    assert name == str(f) and text.endswith("...}")  # one trailing newline dropped, braces kept


@pytest.mark.parametrize(
    "content, message",
    [
        ("only {prompt}\n", "template '{path}' lacks the placeholder(s) {{response}}"),
        ("{response} alone", "template '{path}' lacks the placeholder(s) {{prompt}}"),
        ("neither", "template '{path}' lacks the placeholder(s) {{prompt}}, {{response}}"),
        (None, "--template '{path}': not paper or nlplan and no such file"),
    ],
)
def test_template_file_refused(tmp_path, content, message):
    path = tmp_path / "t.txt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UsageError) as caught:
        load_template(str(path))
    assert str(caught.value) == message.format(path=path)


def test_fill_template_does_not_refill_placeholders_inside_values():
    out = fill_template("P: {prompt}\nR: {response}", "what is {response}?", "use {prompt} here")
    assert out == "P: what is {response}?\nR: use {prompt} here"


@pytest.mark.parametrize(
    "reply, plan",
    [
        (
            "Here is the high-level logic in pseudo Python code:\n\n```python\ndef solve():\n    total = 48 + 24\n"
            "    return total\n```\n\nThis code computes the total.",
            "def solve():\n    total = 48 + 24\n    return total",
        ),
        (
            "Sure! Here's the plan:\n\ndef f(x):\n    return x\n\nThis pseudo code outlines the logic.",
            "def f(x):\n    return x",
        ),
        (
            "Pseudo code:\n  for w in words:\n      out += w[-1]\n  print(out)",
            "for w in words:\n    out += w[-1]\nprint(out)",
        ),
        ("```\nif x:\n    y()\n```\nNote: x is a flag.\n```\nexample\n```", "if x:\n    y()"),
        (
            "```python\ndef cut_off():\n    step_one(",
            "def cut_off():\n    step_one(",
        ),  # reply stopped at the limit
        (
            "Here is the plan:\n1. Read the question.\n2. Add the numbers.\n\nThis plan captures it.",
            "1. Read the question.\n2. Add the numbers.",
        ),
        ("If the user asks X:\n    answer(Y)", "If the user asks X:\n    answer(Y)"),
        ("   \n\n", ""),
    ],
)
def test_clean_plan(reply, plan):
    assert clean_plan(reply) == plan


def test_settings_cover_template_and_sampling():
    spec = EngineSpec(model="m", engine="hf")
    base = ExtractConfig().settings(spec)
    assert base["template"] == "paper" and len(base["template_sha256"]) == 16
    assert ExtractConfig(template="nlplan").settings(spec)["template_sha256"] != base["template_sha256"]
    assert ExtractConfig(temperature=0.5).settings(spec) != base
    assert ExtractConfig(seed=1).settings(spec) != base
    assert ExtractConfig(chunk_size=3).settings(spec) == base  # chunking does not change the output


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"top_p": 0}, "need --temperature >= 0 and 0 < --top-p <= 1"),
        ({"top_p": 1.5}, "need --temperature >= 0 and 0 < --top-p <= 1"),
        ({"temperature": float("inf")}, "--temperature and --top-p must be finite numbers (not nan or inf)"),
        ({"max_tokens": 0}, "--max-tokens must be at least 1"),
    ],
)
def test_config_refuses(settings, message):
    with pytest.raises(UsageError) as caught:
        ExtractConfig(**settings)
    assert str(caught.value) == message


def test_extract_records_on_the_tiny_model(tiny_model):
    records = [
        {"id": "a", "prompt": "Add 2 and 3.", "response": "2 + 3 = 5. The answer is 5."},
        {"id": "b", "question": "Name a fruit.", "output": "An apple."},  # other shapes are normalised
        {"id": "long", "prompt": "word " * 600, "response": "ok"},
    ]
    spec = EngineSpec(model=str(tiny_model), engine="hf", max_model_len=512)
    ctx = StageContext("extract")
    out = list(extract_records(records, ExtractConfig(max_tokens=8, seed=3), spec, ctx=ctx))
    assert [r["id"] for r in out] == ["a", "b"]
    for r in out:
        meta = r["meta"]["extract"]
        assert isinstance(r["plan"], str)
        assert meta["model"] == str(tiny_model) and meta["engine"] == "hf"
        assert meta["template"] == "paper" and meta["template_sha256"] == ExtractConfig().template_sha256
        assert meta["finish_reason"] in ("stop", "length") and 0 < meta["tokens_out"] <= 8
        assert meta["tokens_in"] > 0 and meta["global_seed"] == 3
        assert meta["temperature"] == 0.0 and meta["top_p"] == 1.0 and meta["max_tokens"] == 8
    from codeplan_tools.core.records import derive_seed

    assert out[0]["meta"]["extract"]["seed"] == derive_seed(3, "a")
    assert [r["id"] for r in ctx.rejected] == ["long"]
    assert ctx.rejected[0]["meta"]["extract"]["reason"].startswith("prompt-too-long: ")
    assert ctx.stats["rejected.prompt-too-long"] == 1 and ctx.stats["tokens_out"] > 0
