"""``codeplan finetune``: FSDP2 fine-tuning on packs, as one process, --nproc N workers, torchrun or srun.

The options are ``FinetuneConfig``'s fields (``codeplan_tools.trainer.config``), nested parts flattened;
only the flags' spellings, metavars and bounds are written here.
"""

from __future__ import annotations

import typer

from codeplan_cli import options as o
from codeplan_tools.trainer.config import FinetuneConfig

Flag = o.Flag
FLAGS: dict[str, o.Flag | None] = {
    "model": Flag("--model", "-m", metavar="DIR"),
    "data": Flag("--data", "-i", metavar="FILE"),
    "out": Flag("--out", "-o", metavar="DIR"),
    "betas": None,  # library only
    "tensorboard": Flag(metavar="DIR"),
    "lora_targets": Flag(metavar="NAME"),
    # Bounds, by kind of value: counts of at least 1, counts where 0 has a meaning (see their help),
    # non-negative numbers and fractions.
    **dict.fromkeys(("nproc", "micro_batch", "grad_accum", "keep_checkpoints", "log_every"), Flag(min=1)),
    **dict.fromkeys(("max_steps", "save_every", "export_every", "lora_r"), Flag(min=0)),
    **dict.fromkeys(("lr", "weight_decay", "max_grad_norm", "epochs", "lora_alpha"), Flag(min=0.0)),
    "lora_dropout": Flag(min=0.0, max=1.0),  # 1 is refused by LoraConfig.validate
    **dict.fromkeys(("warmup_ratio", "min_lr_ratio"), Flag(min=0.0, max=1.0)),
}


@o.with_options(config=FLAGS)
def finetune_command(config: FinetuneConfig) -> None:
    """Fine-tune a model on packs with FSDP2 and export a Hugging Face folder that transformers and vLLM load.

    Runs as one process, as --nproc N local workers, under torchrun, or under srun (rank, world size
    and master address from the SLURM variables); every rank runs the same number of steps. Attention
    never crosses a pack boundary. Sharded checkpoints go to OUT/checkpoints every --save-every steps;
    SIGTERM (e.g. SLURM preemption, scontrol requeue) saves one and exits 0, and the same command run
    again resumes. stdout gets one JSON line per logged step: step, loss, lr, grad_norm,
    tokens_per_s, mfu (null when the device's peak is unknown, e.g. on CPU), peak_mem_gib; with
    --tensorboard DIR the same values also go to TensorBoard. Packs made for another tokenizer are
    refused. With --lora-r R only LoRA adapters train (peft, pip install 'codeplan[lora]'); the export
    is the merged model, or with --export adapter the adapter folder alone.

    Example: codeplan finetune --model base/ --data packs.jsonl.zst --out ckpt/ --nproc 2 --lr 1e-4 > metrics.jsonl
    """
    from codeplan_tools.trainer.loop import run

    code = run(config)
    if code:
        raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command("finetune")(finetune_command)
