"""Attention never crosses a pack boundary: packed logits equal each example run alone."""

from __future__ import annotations

import pytest
import torch

from codeplan_tools.core.errors import MissingDependency, UsageError
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


def packed_batch(rows: list[list[int]], length: int, seed: int = 1):
    """Random examples of the given lengths packed into rows of ``length`` (padding at the end)."""
    g = torch.Generator().manual_seed(seed)
    examples = [[torch.randint(0, 256, (n,), generator=g) for n in lens] for lens in rows]
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    pos = torch.zeros(len(rows), length, dtype=torch.long)
    for r, exs in enumerate(examples):
        flat = torch.cat(exs)
        ids[r, : flat.numel()] = flat
        pos[r] = torch.cat([torch.arange(e.numel()) for e in exs] + [torch.arange(length - flat.numel())])
    return examples, ids, pos


def worst_gap_to_alone(llama, packed, examples) -> float:
    """The largest |packed - alone| logit over every example (alone: plain causal attention, sdpa)."""
    llama.config._attn_implementation = "sdpa"
    worst = 0.0
    with torch.no_grad():
        for r, exs in enumerate(examples):
            start = 0
            for e in exs:
                alone = llama(input_ids=e[None]).logits[0]
                worst = max(worst, (packed[r, start : start + e.numel()] - alone).abs().max().item())
                start += e.numel()
    return worst


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_logits_equal_each_example_alone(llama, impl):
    llama.config._attn_implementation = impl
    rows = [[7, 12, 3], [5, 16]]  # two packs; the second one padded at the end
    length = 24
    examples, ids, pos = packed_batch(rows, length)
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


@pytest.mark.slow  # transformers compiles flex_attention (inductor, C++ on CPU: ~45 s on 2 shared cores)
def test_flex_packed_logits_equal_each_example_alone(llama, tmp_path, monkeypatch):
    """The GPU path without flash-attn, forward only (flex has no CPU backward): the document-causal
    BlockMask keeps each example to itself, across a 128-token block boundary too."""
    from torch.nn.attention.flex_attention import BlockMask

    # A private compile cache: inductor's on-disk key leaves out ATEN_CPU_CAPABILITY, and a kernel
    # compiled by a run with the default (AVX-512) kernels, loaded under =avx2, gave wrong logits.
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))

    rows = [[7, 12, 3], [5, 16], [100, 60, 20]]  # short packs, a padded one, and examples across blocks
    length = 200
    examples, ids, pos = packed_batch(rows, length, seed=2)
    kwargs = attention.model_inputs(ids, pos, rows, "flex_attention")
    mask = kwargs["attention_mask"]
    assert isinstance(mask, BlockMask) and mask.shape == (3, 1, length, length)
    # One segment per row: plain causal attention over each pack, same positions (same compiled kernel).
    causal_mask = attention.document_causal_block_mask(torch.zeros(3, length, dtype=torch.long))
    llama.config._attn_implementation = "flex_attention"
    try:
        with torch.no_grad():
            packed = llama(**kwargs).logits
            causal = llama(input_ids=ids, position_ids=pos, attention_mask=causal_mask).logits[2, 100:160]
    finally:
        llama.config._attn_implementation = "sdpa"
    assert torch.isfinite(packed).all()
    assert worst_gap_to_alone(llama, packed, examples) <= 1e-4
    # Attention over the whole pack (what the mask prevents) differs a lot: the check above can fail.
    with torch.no_grad():
        alone = llama(input_ids=examples[2][1][None]).logits[0]
    assert (causal - alone).abs().max().item() > 1e-2


def test_flex_block_mask_is_document_causal_and_skips_other_examples():
    seg = attention.segment_ids([[130, 126]], 256)  # two examples, each about one 128-token block
    mask = attention.document_causal_block_mask(seg)
    dense = mask.to_dense()[0, 0]  # (query blocks, key blocks): 1 where a block is computed
    assert dense.tolist() == [[1, 0], [1, 1]]  # the second block row still holds 2 tokens of example 0
    # The mask function itself, at token level, equals the SDPA mask.
    q = torch.arange(256)[:, None]
    k = torch.arange(256)[None, :]
    allowed = mask.mask_mod(torch.zeros((), dtype=torch.long), None, q, k)
    assert torch.equal(allowed, attention.block_causal_mask(seg)[0, 0])
    seg = attention.segment_ids([[128, 128]], 256)  # examples on the block boundary: block 1 skips block 0
    assert attention.document_causal_block_mask(seg).to_dense()[0, 0].tolist() == [[1, 0], [0, 1]]


@pytest.mark.parametrize("impl", [None, "paged_attention", "flash_attention_1"])
def test_plain_causal_or_unknown_attention_is_refused(impl):
    with pytest.raises(UsageError, match="refused"):
        attention.check_confined(impl)


def test_choose_on_cpu():
    assert attention.choose("auto", "cpu") == "sdpa"
    assert attention.choose("eager", "cpu") == "eager"
    with pytest.raises(UsageError):
        attention.choose("flash", "cpu")
    with pytest.raises(UsageError, match="no CPU backward"):
        attention.choose("flex", "cpu")


def test_auto_on_a_gpu_is_flash_when_installed_else_flex(monkeypatch):
    monkeypatch.setattr(attention, "flash_available", lambda: False)
    assert attention.choose("auto", "cuda") == "flex_attention"
    assert attention.choose("flex", "cuda") == "flex_attention"
    with pytest.raises(MissingDependency, match="--attention flex"):
        attention.choose("flash", "cuda")
    monkeypatch.setattr(attention, "flash_available", lambda: True)
    assert attention.choose("auto", "cuda") == "flash_attention_2"
    assert attention.check_confined("flex_attention") == "blockmask"
