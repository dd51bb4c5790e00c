"""LoRA under FSDP2: peft's adapters on a frozen base model, and the two exports of a LoRA run.

``apply`` injects peft's LoRA layers into the Hugging Face model in place (before ``fully_shard``,
which then shards base and adapter weights alike) and freezes everything but the adapters. The
trainer keeps training the same model object, so the rest of the loop does not change: the optimizer
gets the parameters that require grad, and checkpoints leave frozen parameters out
(``checkpoint.trainable_state_dict``), so a resume loads the base from ``--model`` and the adapters from
the checkpoint.

State-dict keys of the adapted model are the base model's with peft's layout, e.g.
``model.layers.0.self_attn.q_proj.base_layer.weight`` and ``...q_proj.lora_A.default.weight``.
``merged_state_dict`` turns a gathered state dict back into the base model's keys with
``W + scaling * B @ A`` (peft's ``get_delta_weight`` for a ``Linear``), so the merged export is a plain
Hugging Face folder; ``save_adapter`` writes peft's adapter folder (its file layout and peft's own
``adapter_config.json``) from the gathered adapter weights.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from codeplan_tools.core.errors import UsageError, require

from .config import LoraConfig

ADAPTER = "default"  # peft's name for the one adapter
# What an adapter export writes; a merged export into the same folder removes them (and back).
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


class LoraModel:
    """The peft wrapper of an adapted model, and each adapted module's scaling (for the merge).

    ``peft_model.get_base_model()`` is the Hugging Face model the trainer shards and trains.
    """

    def __init__(self, peft_model, scaling: dict[str, float]):
        self.peft_model = peft_model
        self.scaling = scaling

    @property
    def model(self):
        return self.peft_model.get_base_model()


def apply(model, config: LoraConfig, *, base_name: str) -> LoraModel:
    """Inject LoRA adapters into ``model`` (in place) and freeze the rest; ``MissingDependency``
    without peft, ``UsageError`` for a target that names no ``Linear`` module of the model."""
    import torch

    peft = require("peft", "lora")
    linear_names: set[str] = set()
    other_names: set[str] = set()
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        (linear_names if isinstance(module, torch.nn.Linear) else other_names).add(leaf)
    for target in config.lora_targets:
        if target not in linear_names:
            what = "is not a Linear layer" if target in other_names else "names no module"
            raise UsageError(
                f"--lora-targets {target} {what} of {base_name} (its Linear layers: "
                f"{', '.join(sorted(linear_names))})"
            )
    peft_config = peft.LoraConfig(
        r=config.lora_r,
        lora_alpha=config.alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_targets),
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = peft.get_peft_model(model, peft_config)
    scaling = {
        name: float(module.scaling[ADAPTER])
        for name, module in peft_model.get_base_model().named_modules()
        if isinstance(module, peft.tuners.lora.LoraLayer)
    }
    return LoraModel(peft_model, scaling)


def merged_state_dict(state: dict, scaling: dict[str, float]) -> dict:
    """The base model's state dict with each adapter merged in: ``W + scaling * B @ A`` in fp32,
    stored in W's dtype; ``base_layer.`` dropped from the keys. ``state``: a gathered state dict
    of the adapted model (every key, CPU tensors)."""
    import torch

    merged = {}
    for key, value in state.items():
        if ".lora_" in key:
            continue
        module, _, leaf = key.partition(".base_layer.")
        if not leaf:
            merged[key] = value
            continue
        if leaf == "weight":
            a = state[f"{module}.lora_A.{ADAPTER}.weight"].to(torch.float32)
            b = state[f"{module}.lora_B.{ADAPTER}.weight"].to(torch.float32)
            value = (value.to(torch.float32) + (b @ a) * scaling[module]).to(value.dtype)
        merged[f"{module}.{leaf}"] = value
    return merged


def adapter_file_state(adapter_state: dict) -> dict:
    """The keys peft's adapter file uses: ``base_model.model.`` + the model's key without the adapter
    name (``...q_proj.lora_A.default.weight`` -> ``base_model.model....q_proj.lora_A.weight``).

    Named here rather than by ``PeftModel.save_pretrained(state_dict=...)``, which picks the keys by
    the live model's module names: under activation checkpointing they hold the wrapper's
    ``_checkpoint_wrapped_module`` and it saved nothing."""
    return {
        "base_model.model." + re.sub(rf"\.(lora_[AB])\.{ADAPTER}\.", r".\1.", key): value
        for key, value in adapter_state.items()
    }


def save_adapter(lora: LoraModel, adapter_state: dict, out: Path) -> None:
    """peft's adapter folder in ``out``: ``adapter_model.safetensors`` from the gathered adapter
    weights (keys of the adapted Hugging Face model), then peft's ``adapter_config.json``."""
    import copy

    from safetensors.torch import save_file

    tmp = out / "adapter_model.safetensors.tmp"
    save_file(adapter_file_state(adapter_state), str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / "adapter_model.safetensors")
    config = copy.deepcopy(lora.peft_model.peft_config[ADAPTER])
    config.inference_mode = True  # as peft saves it: loaded for inference unless asked otherwise
    config.save_pretrained(str(out))


def count_trainable(model) -> tuple[int, int]:
    """(trainable parameters, all parameters)."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
