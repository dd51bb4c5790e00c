"""``codeplan extract``: mine a code-form plan for each prompt/response record."""

from __future__ import annotations

import typer

from codeplan_cli import engine_options as e
from codeplan_cli import options as o
from codeplan_tools.stages.extract import ExtractConfig, ExtractStage

ExtractOptions = o.bundle(
    "ExtractOptions",
    (ExtractConfig, "template keep_raw"),
    flags={"template": o.Flag(metavar="paper|nlplan|FILE")},
)


@o.with_options()
def extract_command(
    model: e.Model, io: o.StreamOptions, extract: ExtractOptions, engine_options: e.EngineOptions
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
    config = ExtractConfig(**extract.of(ExtractConfig), **engine_options.sampling())
    engine_options.run(ExtractStage, config, model, io)


def register(app: typer.Typer) -> None:
    app.command("extract")(extract_command)
