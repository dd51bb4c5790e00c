"""Attention never crosses a pack boundary: packed logits equal each example run alone."""

from __future__ import annotations

import pytest
import torch

from codeplan_tools.core.errors import UsageError
from codeplan_tools.trainer import attention


@pytest.fixture(scope="module")
def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        vocab_size=256,
        initializer_range=0.3,  # a random model whose outputs depend strongly on context
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_logits_equal_each_example_alone(llama, impl):
    llama.config._attn_implementation = impl
    g = torch.Generator().manual_seed(1)
    rows = [[7, 12, 3], [5, 16]]  # two packs; the second one padded at the end
    examples = [[torch.randint(0, 256, (n,), generator=g) for n in lens] for lens in rows]
    length = 24
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    pos = torch.zeros(len(rows), length, dtype=torch.long)
    for r, exs in enumerate(examples):
        flat = torch.cat(exs)
        ids[r, : flat.numel()] = flat
        pos[r] = torch.cat([torch.arange(e.numel()) for e in exs] + [torch.arange(length - flat.numel())])
    kwargs = attention.model_inputs(ids, pos, rows, impl, float_dtype=torch.float32)
    assert kwargs["attention_mask"].shape == (2, 1, length, length)
    with torch.no_grad():
        packed = llama(**kwargs).logits
        worst = 0.0
        for r, exs in enumerate(examples):
            start = 0
            for e in exs:
                alone = llama(input_ids=e[None]).logits[0]
                worst = max(worst, (packed[r, start : start + e.numel()] - alone).abs().max().item())
                start += e.numel()
        # Plain causal attention over the pack differs a lot: the check above can fail.
        causal = llama(input_ids=ids[:1]).logits[0, 7:10]
        alone = llama(input_ids=examples[0][1][None]).logits[0, :3]
    assert worst <= 1e-4
    assert (causal - alone).abs().max().item() > 1e-2
    assert torch.isfinite(packed).all()  # padding rows are not empty, so no NaN


def test_block_causal_mask_shape_and_content():
    seg = attention.segment_ids([[2, 1]], 5)
    assert seg.tolist() == [[0, 0, 1, 2, 2]]
    m = attention.block_causal_mask(seg)[0, 0].int().tolist()
    assert m == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 1, 1],
    ]
    f = attention.block_causal_mask(seg, dtype=torch.float32)[0, 0]
    assert f[1, 0] == 0 and f[2, 0] == torch.finfo(torch.float32).min


def test_varlen_inputs_give_cumulative_lengths_including_padding():
    ids = torch.arange(16).reshape(2, 8)
    pos = torch.zeros(2, 8, dtype=torch.long)
    kw = attention.model_inputs(ids, pos, [[3, 5], [2, 4]], "flash_attention_2")
    assert kw["cu_seq_lens_q"].tolist() == [0, 3, 8, 10, 14, 16]
    assert kw["max_length_q"] == 5 and kw["input_ids"].shape == (1, 16)
    assert "attention_mask" not in kw


@pytest.mark.parametrize("impl", [None, "flex_attention", "paged_attention"])
def test_plain_causal_or_unknown_attention_is_refused(impl):
    with pytest.raises(UsageError, match="refused"):
        attention.check_confined(impl)


def test_choose_on_cpu():
    assert attention.choose("auto", "cpu") == "sdpa"
    assert attention.choose("eager", "cpu") == "eager"
    with pytest.raises(UsageError):
        attention.choose("flash", "cpu")
