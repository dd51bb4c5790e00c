"""The settings of a fine-tuning run: ``FinetuneConfig`` and the configs of its parts.

Each part is the config of the component that uses it (``LRConfig``: ``lr_schedule.WarmupCosine``,
``LoaderConfig``: ``data.PackLoader``, ``CheckpointConfig``: ``checkpoint.Checkpointer``,
``MetricsConfig``: ``metrics.Metrics``, ``LoraConfig``: ``lora.apply``). They live here, in a
module that imports nothing heavy, because ``codeplan finetune`` builds its options from them at
start-up: each field's docstring is its option's help (so it talks in flags), a ``Literal`` type
its choices, the default its default.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, get_args

from codeplan_tools.core.errors import UsageError

Precision = Literal["auto", "bf16", "fp32"]
LoraExport = Literal["merged", "adapter"]
ExportDtype = Literal["auto", "bf16", "fp16", "fp32"]
Attention = Literal["auto", "flash", "flex", "sdpa", "eager"]
"""``--attention``: how attention is kept inside each packed example (see ``attention.choose``)."""


@dataclass(kw_only=True)
class LRConfig:
    """The learning-rate schedule: linear warmup, then cosine decay (``lr_schedule.WarmupCosine``)."""

    lr: float = 2e-5
    """Peak learning rate (AdamW)."""
    warmup_steps: int = -1
    """Linear warmup steps; -1: --warmup-ratio of the run."""
    warmup_ratio: float = 0.03
    """Warmup share when --warmup-steps is -1."""
    min_lr_ratio: float = 0.1
    """The cosine decays to this fraction of --lr."""


@dataclass(kw_only=True)
class LoaderConfig:
    """How packs become steps (``data.PackLoader``); ``seed`` also seeds torch."""

    micro_batch: int = 1
    """Packs per forward pass on each rank."""
    grad_accum: int = 1
    """Micro-batches per optimizer step on each rank. The loss is normalised per loss token over the
    whole step (all micro-batches, all ranks)."""
    epochs: float = 1.0
    """Passes over the packs."""
    max_steps: int = 0
    """Optimizer steps (0: from --epochs)."""
    seed: int = 0
    """Seed of the pack order and of torch."""


@dataclass(kw_only=True)
class CheckpointConfig:
    """When sharded checkpoints are written and how many are kept, and when the model is exported
    before the end (``checkpoint.Checkpointer``)."""

    save_every: int = 100
    """Write a sharded checkpoint every N steps (0: only at the end and on SIGTERM)."""
    keep_checkpoints: int = 1
    """Newest checkpoints kept."""
    export_every: int = 0
    """Also export the model every N steps as a complete Hugging Face folder OUT/step-NNNNNN (e.g.
    OUT/step-000500, loadable by codeplan generate -m) besides the final export into OUT; not at the
    last step. A resumed run keeps the exports already complete. 0: none."""


@dataclass(kw_only=True)
class MetricsConfig:
    """Which steps write a metrics line, and where else they go (``metrics.Metrics``)."""

    log_every: int = 1
    """Write a metrics line every N steps."""
    tensorboard: str | None = None
    """Also write the metrics (loss, lr, grad_norm, tokens/s, MFU, memory...) as TensorBoard scalars
    into DIR (rank 0; needs pip install 'codeplan[tensorboard]'). The JSON lines on stdout stay."""


# The attention and MLP projections of Llama, Qwen, Mistral and kin.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(kw_only=True)
class LoraConfig:
    """LoRA adapters (``lora.apply``, with peft): with ``lora_r > 0`` only the adapters train."""

    lora_r: int = 0
    """LoRA rank: train low-rank adapters on a frozen base model instead of every weight; only the
    adapters are in the optimizer and in the checkpoints (a resume reloads the base from --model).
    Needs pip install 'codeplan[lora]'. 0: full fine-tuning."""
    lora_alpha: float = 0.0
    """LoRA scale numerator: the adapters' update is scaled by alpha / r. 0: twice --lora-r."""
    lora_dropout: float = 0.05
    """Dropout on the adapters' input while training."""
    lora_targets: tuple[str, ...] = LORA_TARGETS
    """Modules that get adapters, by name (the last part of the module path; repeatable)."""
    export: LoraExport = "merged"
    """What a LoRA run exports into OUT (and OUT/step-NNNNNN): merged, the base model with the
    adapters merged in (a plain Hugging Face folder, as full fine-tuning writes); adapter, only
    adapter_config.json and adapter_model.safetensors, loadable by peft.PeftModel.from_pretrained(base, OUT)."""

    @property
    def enabled(self) -> bool:
        return self.lora_r > 0

    @property
    def alpha(self) -> float:
        return self.lora_alpha if self.lora_alpha > 0 else 2.0 * self.lora_r

    def validate(self) -> None:
        if self.export not in get_args(LoraExport):
            raise UsageError(f"--export must be one of {', '.join(get_args(LoraExport))}")
        if self.lora_r < 0 or self.lora_alpha < 0:
            raise UsageError("--lora-r and --lora-alpha must be >= 0")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise UsageError("--lora-dropout must be in [0, 1)")
        if not self.enabled and (self.export != "merged"):
            raise UsageError("--export adapter needs LoRA: give --lora-r R (R > 0)")
        if self.enabled and not self.lora_targets:
            raise UsageError("give the modules that get adapters with --lora-targets NAME")


@dataclass(kw_only=True)
class FinetuneConfig:
    """Everything a fine-tuning run is given: the single source of ``codeplan finetune``'s options.

    The parts (``lr``, ``loader``, ``checkpoint``, ``metrics``, ``lora``) are the configs of the components
    that use them; each field's docstring is its option's help, so it talks in flags.
    """

    model: str
    """Hugging Face model folder to start from (the one packed for)."""
    data: list[str]
    """Packs from `codeplan pack` (repeatable; files, not stdin)."""
    out: str
    """Output folder: the exported model, checkpoints/ and run.json. Re-running the same command with
    the same --out resumes from the newest checkpoint."""
    nproc: int = 1
    """Start this many local worker processes (like torchrun --standalone). Leave at 1 under torchrun
    or srun, which start the processes themselves."""
    lr: LRConfig = field(default_factory=LRConfig)
    weight_decay: float = 0.0
    """AdamW weight decay."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    max_grad_norm: float = 1.0
    """Clip the gradient norm to this (0: no clipping)."""
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    precision: Precision = "auto"
    """bf16 mixed precision (fp32 master weights and gradient reduction) or fp32; auto: bf16 on GPU,
    fp32 on CPU."""
    activation_checkpointing: bool | None = None
    """Recompute each decoder layer in backward. [default: on for GPU, off for CPU]"""
    attention: Attention = "auto"
    """How attention is kept inside each packed example: flash (flash-attn varlen, GPU), flex
    (flex_attention with a document-causal block mask, GPU), sdpa or eager (block-diagonal mask);
    auto: flash when installed on GPU, else flex on GPU, sdpa on CPU."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    export_dtype: ExportDtype = "auto"
    """dtype of the exported weights; auto: the base model's."""
    trust_remote_code: bool = False
    """Allow a model that ships its own code."""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> FinetuneConfig:
        d = json.loads(text)
        d["lr"] = LRConfig(**d["lr"])
        d["loader"] = LoaderConfig(**d["loader"])
        d["checkpoint"] = CheckpointConfig(**d["checkpoint"])
        d["metrics"] = MetricsConfig(**d["metrics"])
        lora = d.get("lora", {})
        if "lora_targets" in lora:
            lora["lora_targets"] = tuple(lora["lora_targets"])
        d["lora"] = LoraConfig(**lora)
        d["betas"] = tuple(d["betas"])
        return cls(**d)

    def validate(self) -> None:
        if self.precision not in get_args(Precision):
            raise UsageError(f"--precision must be one of {', '.join(get_args(Precision))}")
        if self.export_dtype not in get_args(ExportDtype):
            raise UsageError(f"--export-dtype must be one of {', '.join(get_args(ExportDtype))}")
        self.lora.validate()
        if not self.data:
            raise UsageError("give the packs with --data FILE (made by `codeplan pack`)")
        if "-" in self.data:
            raise UsageError("--data must name files: every rank reads them (stdin cannot be shared)")
        for p in self.data:
            if not Path(p).is_file():
                raise UsageError(f"--data {p}: no such file")
        self.check_out_is_safe()

    def check_out_is_safe(self) -> None:
        """Refuse an ``--out`` that is, or contains, the base model folder or a packs file.

        The export writes ``model.safetensors``, ``config.json`` and the tokenizer files into
        ``--out`` and prunes ``checkpoints/``: pointed at the base model it would overwrite it.
        Paths are compared after resolving symlinks, so another spelling of the same folder counts.
        """
        out = Path(self.out).resolve()
        inputs = [("--model", self.model)] + [("--data", p) for p in self.data]
        for flag, path in inputs:
            if not Path(path).exists():
                continue  # a hub id, or checked elsewhere
            target = Path(path).resolve()
            if target == out or out in target.parents:
                raise UsageError(
                    f"--out {self.out} is or contains {flag} {path}: the export would overwrite it; "
                    "choose another --out"
                )
