"""``codeplan pack``: tokenize records through a format and pack them into training sequences."""

from __future__ import annotations

from typing import Annotated

import typer

from codeplan_cli import options as o
from codeplan_tools.stages.pack import LossMode, OverlongMode, TemplateChoice

PACK_PANEL = "Packing"


@o.with_options(io=("shard",))
def pack_command(
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            metavar="DIR",
            help="The model to be fine-tuned: its tokenizer (and chat template) tokenizes the records.",
            rich_help_panel=PACK_PANEL,
        ),
    ],
    io: o.StreamOptions = o.StreamOptions(),
    format: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="How ⟨prompt, plan, response⟩ becomes model text: codeplan (plan as a Python block, then the "
            "response), nlplan (natural-language plan), vanilla (response only). generate must use the same.",
            rich_help_panel=PACK_PANEL,
        ),
    ] = "codeplan",
    max_len: Annotated[
        int, typer.Option("--max-len", min=2, help="Tokens per pack.", rich_help_panel=PACK_PANEL)
    ] = 2048,
    loss: Annotated[
        LossMode,
        typer.Option(
            "--loss",
            case_sensitive=False,
            help="assistant: loss on the plan + response (the assistant turn), not on the prompt; all: every token.",
            rich_help_panel=PACK_PANEL,
        ),
    ] = "assistant",
    overlong: Annotated[
        OverlongMode,
        typer.Option(
            "--overlong",
            case_sensitive=False,
            help="An example longer than --max-len: drop it (to --rejects, reason overlong; one far too long "
            "in characters is dropped without tokenizing), truncate it to --max-len, or split it into "
            "--max-len pieces (pieces without loss tokens are dropped).",
            rich_help_panel=PACK_PANEL,
        ),
    ] = "drop",
    template: Annotated[
        TemplateChoice,
        typer.Option(
            "--template",
            case_sensitive=False,
            help="auto: the tokenizer's chat template when it has one, else the plain template; chat or "
            "plain to force one.",
            rich_help_panel=PACK_PANEL,
        ),
    ] = "auto",
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=0,
            help="Processes that render and tokenize. 0: half the cores (up to 8; in-process below 4 cores) "
            "for windows of 5,000+ records. The output does not depend on it.",
            rich_help_panel=PACK_PANEL,
        ),
    ] = 0,
    buffer: Annotated[
        int,
        typer.Option(
            "--buffer",
            min=1,
            help="Examples bin-packed together (best-fit-decreasing window); bounds memory on huge inputs.",
            rich_help_panel=PACK_PANEL,
        ),
    ] = 200_000,
    trust_remote_code: Annotated[
        bool, typer.Option("--trust-remote-code", help="Allow a tokenizer that ships its own code.")
    ] = False,
) -> None:
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

    config = PackConfig(
        model=model,
        format=format,
        max_len=max_len,
        loss=loss,
        overlong=overlong,
        template=template,
        workers=workers,
        buffer=buffer,
        trust_remote_code=trust_remote_code,
    )
    stage = PackStage(config)
    result = run_stage(io.stage_io("pack", require=stage.require), stage)
    if not io.quiet:
        efficiency = result.derived.get("packing_efficiency")
        eff = "-" if efficiency is None else f"{efficiency:.4f}"
        typer.echo(f"codeplan pack: packing efficiency {eff}", err=True)
    o.print_summary(result, io.quiet)


def register(app: typer.Typer) -> None:
    app.command("pack")(pack_command)
