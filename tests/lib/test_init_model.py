"""init_model: a from-scratch Llama + byte-level BPE folder that transformers loads (vLLM: test_engines)."""

from __future__ import annotations

import json

import pytest

from codeplan_tools.core.errors import UsageError
from codeplan_tools.tools.init_model import (
    CHAT_TEMPLATE,
    builtin_corpus,
    init_model,
    read_corpus,
    train_tokenizer,
)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(builtin_corpus(n=400), vocab_size=512)


def test_tiny_model_loads_with_the_asked_shape(tiny_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    cfg = model.config
    assert cfg.model_type == "llama" and cfg.head_dim == 32 and cfg.num_key_value_heads == 2
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads) == (128, 2, 4)
    assert cfg.vocab_size == len(tok) == 1024
    assert 300_000 < sum(p.numel() for p in model.parameters()) < 600_000
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == ("<s>", "</s>", "<pad>")
    assert model.generation_config.eos_token_id == tok.eos_token_id
    with torch.no_grad():
        logits = model(**tok(["Hello"], return_tensors="pt")).logits
    assert logits.shape[-1] == 1024 and torch.isfinite(logits).all()
    saved = json.loads((tiny_model / "tokenizer_config.json").read_text())
    assert saved["tokenizer_class"] == "PreTrainedTokenizerFast"


def test_byte_level_tokenizer_round_trips_any_text(tokenizer):
    for text in [
        "plain ascii",
        "naïve café – 東京 🚀",
        "\x00\x01 tabs\tand\nnewlines  ",
        "### Plan:\n```python\n",
    ]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token is None  # nothing is unknown: all 256 bytes are in the alphabet


def test_bos_is_added_and_chat_template_ends_turns_with_eos(tokenizer):
    ids = tokenizer("hi")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}], tokenize=False
    )
    assert text == "<s><|user|>\nQ</s>\n<|assistant|>\nA</s>\n"
    assert tokenizer.chat_template == CHAT_TEMPLATE
    # Role markers are single tokens.
    assert len(tokenizer("<|assistant|>", add_special_tokens=False)["input_ids"]) == 1


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    small = dict(
        hidden_size=64, layers=1, heads=2, kv_heads=1, vocab_size=300, corpus_texts=["abc abd abe"] * 20
    )
    a = init_model(tmp_path / "a", seed=1, **small)
    b = init_model(tmp_path / "b", seed=1, **small)
    c = init_model(tmp_path / "c", seed=2, **small)
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / "model.safetensors").read_bytes() != (c / "model.safetensors").read_bytes()
    assert (a / "tokenizer.json").read_text() == (b / "tokenizer.json").read_text()


def test_bad_sizes_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="multiple of --kv-heads"):
        init_model(tmp_path / "x", heads=4, kv_heads=3)
    with pytest.raises(UsageError, match="vocab-size"):
        train_tokenizer(["abc"], vocab_size=200)


def test_read_corpus_renders_records_and_reads_text(tmp_path):
    import zstandard

    records = b'{"prompt": "Q1", "plan": "x = 1", "response": "R1"}\n{"question": "Q2", "answer": "A2"}\n'
    (tmp_path / "r.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(records))
    (tmp_path / "t.txt").write_text("line one\nline two\n")
    texts = read_corpus([str(tmp_path / "r.jsonl.zst"), str(tmp_path / "t.txt")])
    assert texts[0] == "### Question:\nQ1\n\n### Plan:\n```python\nx = 1\n```\n\n### Answer:\nR1\n"
    assert texts[1] == "### Question:\nQ2\n\n### Answer:\nA2\n"
    assert texts[2] == "line one\nline two"
