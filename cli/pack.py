"""``codeplan pack``: tokenize records through a format and pack them into training sequences."""

from __future__ import annotations

import click
import typer

from codeplan_cli import options as o
from codeplan_tools.stages.pack import PackConfig

Flag = o.Flag
Model = o.option(PackConfig, "model", Flag("--model", "-m", metavar="DIR"))
# PackConfig.chunk (records per worker task) is library-only.
Packing = o.bundle(
    "Packing",
    (PackConfig, "format max_len loss overlong template workers buffer trust_remote_code"),
    flags={
        "format": Flag("--format", "-f", click_type=click.STRING),
        "max_len": Flag(min=2),
        "workers": Flag(min=0),
        "buffer": Flag(min=1),
    },
)


@o.with_options(io=("shard",))
def pack_command(model: Model, io: o.StreamOptions, packing: Packing) -> None:
    """Tokenize prompt/plan/response records through a format and pack them (best fit decreasing) into
    sequences of at most --max-len tokens for `codeplan finetune`.

    Each pack carries input_ids, labels (-100 where there is no loss), position_ids restarting at 0 for
    every example, seq_lens, the ids of its examples and a fingerprint (tokenizer files, format,
    settings) that finetune checks against its model. --stats reports the packing efficiency
    (tokens / capacity), tokens with loss and the over-long counts.

    Example: codeplan pack --model mistral-7b -i mined.jsonl.zst --max-len 4096 --stats pack.json > packs.jsonl.zst
    """
    from codeplan_tools.core.stage import run_stage
    from codeplan_tools.stages.pack import PackConfig, PackStage

    config = PackConfig(model=model, **packing.of(PackConfig))
    stage = PackStage(config)
    result = run_stage(io.stage_io("pack", require=stage.require), stage)
    if not io.quiet:
        efficiency = result.derived.get("packing_efficiency")
        eff = "-" if efficiency is None else f"{efficiency:.4f}"
        typer.echo(f"codeplan pack: packing efficiency {eff}", err=True)
    o.print_summary(result, io.quiet)


def register(app: typer.Typer) -> None:
    app.command("pack")(pack_command)
