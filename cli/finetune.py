"""``codeplan finetune``: FSDP2 fine-tuning on packs, as one process, --nproc N workers, torchrun or srun."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

OPT_PANEL = "Optimisation"
RUN_PANEL = "Run, checkpoints and export"


class Precision(str, Enum):
    auto = "auto"
    bf16 = "bf16"
    fp32 = "fp32"


class Attention(str, Enum):
    auto = "auto"
    flash = "flash"
    sdpa = "sdpa"
    eager = "eager"


class ExportDtype(str, Enum):
    auto = "auto"
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


def finetune_command(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            metavar="DIR",
            help="Hugging Face model folder to start from (the one packed for).",
        ),
    ],
    data: Annotated[
        list[str],
        typer.Option(
            "--data", "-i", metavar="FILE", help="Packs from `codeplan pack` (repeatable; files, not stdin)."
        ),
    ],
    out: Annotated[
        str,
        typer.Option(
            "--out",
            "-o",
            metavar="DIR",
            help="Output folder: the exported model, checkpoints/ and run.json. Re-running the same "
            "command with the same --out resumes from the newest checkpoint.",
        ),
    ],
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc",
            min=1,
            help="Start this many local worker processes (like torchrun --standalone). Leave at 1 under "
            "torchrun or srun, which start the processes themselves.",
            rich_help_panel=RUN_PANEL,
        ),
    ] = 1,
    lr: Annotated[
        float, typer.Option("--lr", min=0.0, help="Peak learning rate (AdamW).", rich_help_panel=OPT_PANEL)
    ] = 2e-5,
    warmup_steps: Annotated[
        int,
        typer.Option(
            "--warmup-steps",
            help="Linear warmup steps; -1: --warmup-ratio of the run.",
            rich_help_panel=OPT_PANEL,
        ),
    ] = -1,
    warmup_ratio: Annotated[
        float,
        typer.Option(
            "--warmup-ratio",
            min=0.0,
            max=1.0,
            help="Warmup share when --warmup-steps is -1.",
            rich_help_panel=OPT_PANEL,
        ),
    ] = 0.03,
    min_lr_ratio: Annotated[
        float,
        typer.Option(
            "--min-lr-ratio",
            min=0.0,
            max=1.0,
            help="The cosine decays to this fraction of --lr.",
            rich_help_panel=OPT_PANEL,
        ),
    ] = 0.1,
    weight_decay: Annotated[
        float, typer.Option("--weight-decay", min=0.0, help="AdamW weight decay.", rich_help_panel=OPT_PANEL)
    ] = 0.0,
    max_grad_norm: Annotated[
        float,
        typer.Option(
            "--max-grad-norm",
            min=0.0,
            help="Clip the gradient norm to this (0: no clipping).",
            rich_help_panel=OPT_PANEL,
        ),
    ] = 1.0,
    micro_batch: Annotated[
        int,
        typer.Option(
            "--micro-batch", min=1, help="Packs per forward pass on each rank.", rich_help_panel=OPT_PANEL
        ),
    ] = 1,
    grad_accum: Annotated[
        int,
        typer.Option(
            "--grad-accum",
            min=1,
            help="Micro-batches per optimizer step on each rank. The loss is normalised per loss token over "
            "the whole step (all micro-batches, all ranks).",
            rich_help_panel=OPT_PANEL,
        ),
    ] = 1,
    epochs: Annotated[
        float, typer.Option("--epochs", min=0.0, help="Passes over the packs.", rich_help_panel=OPT_PANEL)
    ] = 1.0,
    max_steps: Annotated[
        int,
        typer.Option(
            "--max-steps", min=0, help="Optimizer steps (0: from --epochs).", rich_help_panel=OPT_PANEL
        ),
    ] = 0,
    seed: Annotated[
        int, typer.Option("--seed", help="Seed of the pack order and of torch.", rich_help_panel=OPT_PANEL)
    ] = 0,
    precision: Annotated[
        Precision,
        typer.Option(
            "--precision",
            case_sensitive=False,
            help="bf16 mixed precision (fp32 master weights and gradient reduction) or fp32; auto: bf16 on GPU, fp32 on CPU.",
            rich_help_panel=OPT_PANEL,
        ),
    ] = Precision.auto,
    activation_checkpointing: Annotated[
        bool | None,
        typer.Option(
            "--activation-checkpointing/--no-activation-checkpointing",
            help="Recompute each decoder layer in backward. [default: on for GPU, off for CPU]",
            rich_help_panel=OPT_PANEL,
        ),
    ] = None,
    attention: Annotated[
        Attention,
        typer.Option(
            "--attention",
            case_sensitive=False,
            help="How attention is kept inside each packed example: flash (flash-attn varlen, GPU), sdpa or "
            "eager (block-diagonal mask); auto: flash when installed on GPU, else sdpa.",
            rich_help_panel=OPT_PANEL,
        ),
    ] = Attention.auto,
    save_every: Annotated[
        int,
        typer.Option(
            "--save-every",
            min=0,
            help="Write a sharded checkpoint every N steps (0: only at the end and on SIGTERM).",
            rich_help_panel=RUN_PANEL,
        ),
    ] = 100,
    keep_checkpoints: Annotated[
        int,
        typer.Option("--keep-checkpoints", min=1, help="Newest checkpoints kept.", rich_help_panel=RUN_PANEL),
    ] = 1,
    log_every: Annotated[
        int,
        typer.Option(
            "--log-every", min=1, help="Write a metrics line every N steps.", rich_help_panel=RUN_PANEL
        ),
    ] = 1,
    tensorboard: Annotated[
        str | None,
        typer.Option(
            "--tensorboard",
            metavar="DIR",
            help="Also write the metrics (loss, lr, grad_norm, tokens/s, MFU, memory...) as TensorBoard scalars "
            "into DIR (rank 0; needs pip install 'codeplan[tensorboard]'). The JSON lines on stdout stay.",
            rich_help_panel=RUN_PANEL,
        ),
    ] = None,
    export_dtype: Annotated[
        ExportDtype,
        typer.Option(
            "--export-dtype",
            case_sensitive=False,
            help="dtype of the exported weights; auto: the base model's.",
            rich_help_panel=RUN_PANEL,
        ),
    ] = ExportDtype.auto,
    trust_remote_code: Annotated[
        bool,
        typer.Option(
            "--trust-remote-code", help="Allow a model that ships its own code.", rich_help_panel=RUN_PANEL
        ),
    ] = False,
) -> None:
    """Fine-tune a model on packs with FSDP2 and export a Hugging Face folder that transformers and vLLM load.

    Runs as one process, as --nproc N local workers, under torchrun, or under srun (rank, world size
    and master address from the SLURM variables); every rank runs the same number of steps. Attention
    never crosses a pack boundary. Sharded checkpoints go to OUT/checkpoints every --save-every steps;
    SIGTERM (e.g. SLURM preemption, scontrol requeue) saves one and exits 0, and the same command run
    again resumes. stdout gets one JSON line per logged step: step, loss, lr, grad_norm,
    tokens_per_s, mfu (null when the device's peak is unknown, e.g. on CPU), peak_mem_gib; with
    --tensorboard DIR the same values also go to TensorBoard. Packs made for another tokenizer are
    refused.

    Example: codeplan finetune --model base/ --data packs.jsonl.zst --out ckpt/ --nproc 2 --lr 1e-4 > metrics.jsonl
    """
    from codeplan_tools.trainer.data import LoaderConfig
    from codeplan_tools.trainer.loop import FinetuneConfig, run
    from codeplan_tools.trainer.lr_schedule import LRConfig
    from codeplan_tools.trainer.metrics import MetricsConfig

    if tensorboard is not None:
        # Refused here, before any worker starts, rather than in each of them.
        from codeplan_tools.core.errors import require
        from codeplan_tools.core.outputs import check_writable_folder

        require("tensorboard", "tensorboard")
        check_writable_folder(tensorboard, "--tensorboard")

    config = FinetuneConfig(
        model=model,
        data=list(data),
        out=out,
        loader=LoaderConfig(
            micro_batch=micro_batch, grad_accum=grad_accum, epochs=epochs, max_steps=max_steps, seed=seed
        ),
        lr=LRConfig(lr=lr, warmup_steps=warmup_steps, warmup_ratio=warmup_ratio, min_lr_ratio=min_lr_ratio),
        checkpoint_every=save_every,
        keep_checkpoints=keep_checkpoints,
        metrics=MetricsConfig(log_every=log_every, tensorboard=tensorboard),
        weight_decay=weight_decay,
        max_grad_norm=max_grad_norm,
        precision=precision.value,
        activation_checkpointing=activation_checkpointing,
        attention=attention.value,
        export_dtype=export_dtype.value,
        seed=seed,
        trust_remote_code=trust_remote_code,
    )
    code = run(config, nproc=nproc)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune_command)
