"""Attention confined to each packed example.

A pack holds several examples back to back. Plain causal attention over it would let an example
attend to the ones before it, so it is refused. What is used instead, per attention implementation
of the Hugging Face model:

- ``flash_attention_2`` / ``flash_attention_3`` (GPU, flash-attn installed): variable-length kernels.
  The batch is flattened into one row and the explicit sequence lengths become ``cu_seq_lens_q/k``
  (plus ``position_ids`` restarting per example), so no mask is materialised.
- ``flex_attention`` (GPU, no flash-attn needed): ``torch.nn.attention.flex_attention`` with a
  document-causal ``BlockMask`` built from the segment ids of the packs (the torchtitan/torchtune
  approach: query i sees key j iff j <= i and both are in one example). The mask is block-sparse, so
  the kernel skips the blocks of other examples instead of computing and masking them. transformers
  takes a ``BlockMask`` as ``attention_mask`` and uses it as given (``_preprocess_mask_arguments``
  returns any 4-D mask unchanged; read in 5.17, 5.19 and 5.23) and compiles flex_attention itself. flex has no CPU backward in this torch, so
  training with it needs a GPU; its forward is tested on CPU against each example run alone.
- ``sdpa``: a boolean block-diagonal causal mask of shape (batch, 1, L, L) passed as
  ``attention_mask``. transformers uses a 4-D mask as given (checked on 5.17-5.23 and 4.5x); the
  equality test in ``tests/lib/test_trainer_attention.py`` guards this. The CPU path. (On a GPU a
  dense mask rules out SDPA's flash kernel: that is what flex is for.)
- ``eager``: the same mask as additive floats (0 / dtype min).

Padding at the end of a row is its own block (causal inside), so no row of the mask is empty and no
NaN appears; pad tokens carry no loss.
"""

from __future__ import annotations

from typing import get_args

from codeplan_tools.core.errors import MissingDependency, UsageError

from .config import Attention

#: Implementations that can keep attention inside each packed example, and how.
CONFINED = {
    "flash_attention_2": "varlen",
    "flash_attention_3": "varlen",
    "flex_attention": "blockmask",
    "sdpa": "mask",
    "eager": "mask",
}


def flash_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


def choose(requested: str, device_type: str) -> str:
    """Map ``--attention`` to a transformers ``attn_implementation`` that confines attention."""
    if requested not in get_args(Attention):
        raise UsageError(f"--attention must be one of {', '.join(get_args(Attention))}, not {requested!r}")
    if requested == "auto":
        if device_type != "cuda":
            return "sdpa"
        return "flash_attention_2" if flash_available() else "flex_attention"
    if requested == "flash":
        if device_type != "cuda":
            raise UsageError("--attention flash needs a GPU; use sdpa on CPU")
        if not flash_available():
            raise MissingDependency(
                "flash-attn is not installed; pip install flash-attn, or use --attention flex"
            )
        return "flash_attention_2"
    if requested == "flex":
        if device_type != "cuda":
            # Measured on torch 2.13 CPU: "FlexAttention does not support backward on CPU".
            raise UsageError(
                "--attention flex needs a GPU (flex_attention has no CPU backward); use sdpa on CPU"
            )
        return "flex_attention"
    return requested


def check_confined(attn_implementation: str | None) -> str:
    """Refuse an implementation that would run plain causal attention over a pack."""
    mode = CONFINED.get(attn_implementation or "")
    if mode is None:
        raise UsageError(
            f"attention implementation {attn_implementation!r} cannot keep attention inside each packed "
            f"example (plain causal attention over a pack is refused); use one of {', '.join(CONFINED)}"
        )
    return mode


def segment_ids(seq_lens: list[list[int]], length: int):
    """(batch, length) ids: example k of a row is k; the padding after the last example is one more."""
    import torch

    rows = []
    for lens in seq_lens:
        ids = torch.repeat_interleave(torch.arange(len(lens)), torch.tensor(lens, dtype=torch.long))
        pad = length - ids.numel()
        if pad < 0:
            raise ValueError(f"a row of {ids.numel()} tokens does not fit length {length}")
        rows.append(torch.cat([ids, torch.full((pad,), len(lens), dtype=torch.long)]))
    return torch.stack(rows)


def block_causal_mask(seg, *, dtype=None):
    """Boolean (batch, 1, L, L) mask: query i sees key j iff j <= i and both are in one example.

    With ``dtype`` set, the additive float form for eager attention (0 where allowed, min elsewhere).
    """
    import torch

    length = seg.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool, device=seg.device).tril()
    mask = (seg[:, :, None] == seg[:, None, :]) & causal
    mask = mask[:, None]
    if dtype is None:
        return mask
    out = torch.zeros(mask.shape, dtype=dtype, device=seg.device)
    return out.masked_fill_(~mask, torch.finfo(dtype).min)


def document_causal_block_mask(seg):
    """A flex_attention ``BlockMask`` over (batch, L) segment ids: causal, and only within a segment.

    Built for every head at once (``H=None``). Blocks (128 x 128 by default) that lie wholly in
    another example are marked empty and skipped by the kernel; L need not be a multiple of 128.
    """
    from torch.nn.attention.flex_attention import create_block_mask

    def document_causal(batch, head, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (seg[batch, q_idx] == seg[batch, kv_idx])

    batch, length = seg.shape
    return create_block_mask(document_causal, batch, None, length, length, device=seg.device)


def model_inputs(
    input_ids, position_ids, seq_lens: list[list[int]], attn_implementation: str, *, float_dtype=None
):
    """Keyword arguments for the model's forward that keep attention inside each example.

    ``input_ids``/``position_ids`` are (batch, L) tensors already on the device; ``seq_lens`` gives
    the example lengths of each row (padding excluded).
    """
    import torch

    mode = check_confined(attn_implementation)
    batch, length = input_ids.shape
    if mode == "varlen":
        lens: list[int] = []
        for row in seq_lens:
            lens.extend(row)
            if length - sum(row) > 0:
                lens.append(length - sum(row))
        cu = torch.zeros(len(lens) + 1, dtype=torch.int32, device=input_ids.device)
        cu[1:] = torch.cumsum(torch.tensor(lens, dtype=torch.int32, device=input_ids.device), 0)
        return {
            "input_ids": input_ids.reshape(1, batch * length),
            "position_ids": position_ids.reshape(1, batch * length),
            "cu_seq_lens_q": cu,
            "cu_seq_lens_k": cu,
            "max_length_q": max(lens),
            "max_length_k": max(lens),
        }
    seg = segment_ids(seq_lens, length).to(input_ids.device)
    if mode == "blockmask":
        return {
            "input_ids": input_ids,
            "position_ids": position_ids,
            "attention_mask": document_causal_block_mask(seg),
        }
    mask = block_causal_mask(seg, dtype=float_dtype if attn_implementation == "eager" else None)
    return {"input_ids": input_ids, "position_ids": position_ids, "attention_mask": mask}
