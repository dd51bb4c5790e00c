"""``codeplan extract``: mine a code-form plan for each prompt/response record."""

from __future__ import annotations

from typing import Annotated

import typer

from codeplan_cli import engine_options as e
from codeplan_cli import options as o


@o.with_options()
def extract_command(
    model: e.Model,
    io: o.StreamOptions = o.StreamOptions(),
    template: Annotated[
        str,
        typer.Option(
            "--template",
            metavar="paper|nlplan|FILE",
            help="Extraction instruction: 'paper' (the CodePlan paper's, verbatim), 'nlplan' (a natural-language "
            "plan), or a file containing {prompt} and {response}.",
        ),
    ] = "paper",
    keep_raw: Annotated[
        bool,
        typer.Option("--keep-raw", help="Also keep the model's reply before cleaning in meta.extract.raw."),
    ] = False,
    engine_options: e.EngineOptions = e.EngineOptions(),
) -> None:
    """Mine the plan behind each prompt/response pair with an instruct model.

    The template is filled with the record's prompt and response and sent as one chat user turn; the
    reply, cleaned of code fences and chatter, becomes the record's 'plan'. meta.extract records the
    model, template hash, sampling parameters, the record's seed, the finish reason and token counts.
    Rows the engine cannot take (longer than the context) go to --rejects with the reason.

    Re-running the same command with the same -o FILE resumes where it stopped; other settings, or a
    model whose files changed, are refused. Progress (records/s, tokens/s, ETA) goes to stderr.

    Example: codeplan extract -m Meta-Llama-3-8B-Instruct -i pairs.jsonl.zst -o mined.jsonl.zst --rejects rejected.jsonl.zst
    """
    from codeplan_tools.core.stage import run_stage
    from codeplan_tools.stages.extract import ExtractConfig, ExtractStage

    spec = engine_options.spec(model)
    config = ExtractConfig(template=template, keep_raw=keep_raw, **engine_options.sampling())
    stage = ExtractStage(config, spec)  # checks the model now, before any input is read
    stage_io = io.stage_io("extract", require=stage.require, resume_settings=config.settings(spec))
    o.print_summary(run_stage(stage_io, stage), io.quiet)


def register(app: typer.Typer) -> None:
    app.command("extract")(extract_command)
