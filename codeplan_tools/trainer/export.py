"""A consolidated Hugging Face folder from the sharded model: what transformers and vLLM load.

Every rank takes part in gathering the full state dict (a collective, offloaded to CPU); rank 0
writes, into ``<out>/``:

- ``model.safetensors`` (or ``model-0000k-of-0000n.safetensors`` + index above ``max_shard_gib``),
  in ``dtype``; a tied ``lm_head.weight`` is left out as ``save_pretrained`` does;
- ``config.json`` (the model's config with that dtype);
- the tokenizer files of the base model, copied byte for byte (so the pack fingerprint of the
  exported model equals the base model's and it can be fine-tuned again on the same packs);
- ``generation_config.json`` whose ``eos_token_id`` starts with the format's end token (then the
  tokenizer's eos), so generation stops at the end of the answer under transformers and vLLM;
- ``codeplan.json`` last: format, end marker, pack fingerprint and step (the marker that the export
  is complete).

Each file is written under a temporary name and renamed into place.

A LoRA run (``lora.py``) exports the same folder with the adapters merged into the weights
(``export_model(..., lora=...)``), or with ``--export adapter`` only peft's adapter folder
(``export_adapter``: ``adapter_config.json``, ``adapter_model.safetensors``, then ``codeplan.json``),
gathering only the adapter weights. Each kind removes the other kind's weight files from the folder.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from codeplan_tools.formats.tokenizer import TOKENIZER_FILES


def _replace(tmp: Path, final: Path) -> None:
    os.replace(tmp, final)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    _replace(tmp, path)


def full_state_dict(model) -> dict:
    """The whole model's weights on CPU (collective: every rank must call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def trainable_state_dict(model) -> dict:
    """The parameters that require grad (a LoRA run's adapters), whole, on CPU (collective: every
    rank gathers the same parameters in the same order). Gathered one by one rather than through
    ``get_model_state_dict``, which would also gather a frozen tied ``lm_head.weight``."""
    from .checkpoint import frozen_keys, state_key

    frozen = frozen_keys(model)
    state = {}
    for name, param in model.named_parameters():
        key = state_key(name)
        if param.requires_grad and key not in frozen:
            whole = param.full_tensor() if hasattr(param, "full_tensor") else param  # a DTensor shard
            state[key] = whole.detach().cpu()
    return state


def export_model(
    model,
    out_dir: str | Path,
    *,
    tokenizer,
    tokenizer_src: str | Path,
    end_token_id: int | None,
    dtype,
    is_main: bool,
    info: dict,
    max_shard_gib: float = 5.0,
    lora=None,
) -> Path | None:
    """The consolidated folder; ``lora`` (a ``lora.LoraModel``): merge its adapters into the weights."""
    from safetensors.torch import save_file

    state = full_state_dict(model)
    if not is_main:
        return None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if lora is not None:
        from .lora import ADAPTER_FILES, merged_state_dict

        state = merged_state_dict(state, lora.scaling)
        for name in ADAPTER_FILES:
            (out / name).unlink(missing_ok=True)
    config = model.config
    if getattr(config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in state.items()}
    del state

    # Shards of at most max_shard_gib, in key order; one file when it fits.
    limit = int(max_shard_gib * 2**30)
    shards: list[dict] = [{}]
    size = 0
    for k in sorted(tensors):
        n = tensors[k].numel() * tensors[k].element_size()
        if shards[-1] and size + n > limit:
            shards.append({})
            size = 0
        shards[-1][k] = tensors[k]
        size += n
    for old in out.glob("model*.safetensors*"):
        old.unlink()
    if len(shards) == 1:
        tmp = out / "model.safetensors.tmp"
        save_file(shards[0], str(tmp), metadata={"format": "pt"})
        _replace(tmp, out / "model.safetensors")
    else:
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            tmp = out / (name + ".tmp")
            save_file(shard, str(tmp), metadata={"format": "pt"})
            _replace(tmp, out / name)
            weight_map.update(dict.fromkeys(shard, name))
        total = sum(t.numel() * t.element_size() for t in tensors.values())
        _write_json(
            out / "model.safetensors.index.json",
            {"metadata": {"total_size": total}, "weight_map": weight_map},
        )

    _write_config(config, out / "config.json", dtype, model)
    _copy_tokenizer(tokenizer, tokenizer_src, out)
    _write_json(
        out / "generation_config.json", generation_config(tokenizer_src, tokenizer, end_token_id, config)
    )
    _write_json(out / "codeplan.json", info)
    return out


def export_adapter(model, out_dir: str | Path, *, lora, dtype, is_main: bool, info: dict) -> Path | None:
    """peft's adapter folder of a LoRA run in ``out_dir``, adapter weights in ``dtype``, then
    ``codeplan.json`` (collective: every rank gathers the adapter weights; rank 0 writes)."""
    state = trainable_state_dict(model)
    if not is_main:
        return None
    state = {k: v.detach().to(dtype).contiguous() for k, v in state.items()}
    from .lora import save_adapter

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("model*.safetensors*"):  # a merged export of an earlier run of this --out
        old.unlink()
    save_adapter(lora, state, out)
    _write_json(out / "codeplan.json", info)
    return out


def _write_config(config, path: Path, dtype, model) -> None:
    """The model's config as save_pretrained writes it (only what differs from the defaults), in ``dtype``."""
    import copy

    cfg = copy.deepcopy(config)
    try:
        cfg.dtype = dtype
    except AttributeError:  # older configs call it torch_dtype
        cfg.torch_dtype = dtype
    if not getattr(cfg, "architectures", None):
        # fully_shard renames the class (FSDPLlamaForCausalLM); the export is the plain model.
        cfg.architectures = [type(model).__name__.removeprefix("FSDP")]
    tmp = path.with_name(path.name + ".tmp")
    cfg.to_json_file(str(tmp), use_diff=True)
    _replace(tmp, path)


def _copy_tokenizer(tokenizer, src: str | Path, out: Path) -> None:
    src = Path(src)
    copied = False
    if src.is_dir():
        for name in TOKENIZER_FILES:
            if (src / name).is_file() and (src / name).resolve() != (out / name).resolve():
                tmp = out / (name + ".tmp")
                shutil.copyfile(src / name, tmp)
                _replace(tmp, out / name)
                copied = True
            elif (src / name).is_file():
                copied = True
    if not copied:
        tokenizer.save_pretrained(str(out))


def generation_config(src: str | Path, tokenizer, end_token_id: int | None, config) -> dict:
    """The base model's generation_config (if any) with eos = [format end token, tokenizer eos]."""
    gen: dict = {}
    path = Path(src) / "generation_config.json"
    if path.is_file():
        gen = json.loads(path.read_text())
    eos: list[int] = []
    for tok in (end_token_id, tokenizer.eos_token_id, getattr(config, "eos_token_id", None)):
        for t in tok if isinstance(tok, list) else [tok]:
            if isinstance(t, int) and t not in eos:
                eos.append(t)
    if eos:
        gen["eos_token_id"] = eos if len(eos) > 1 else eos[0]
    if tokenizer.bos_token_id is not None:
        gen.setdefault("bos_token_id", tokenizer.bos_token_id)
    pad = tokenizer.pad_token_id
    gen["pad_token_id"] = pad if pad is not None else eos[0] if eos else None
    if gen.get("pad_token_id") is None:
        gen.pop("pad_token_id")
    gen.setdefault("transformers_version", _transformers_version())
    return gen


def _transformers_version() -> str:
    import transformers

    return transformers.__version__
