"""``codeplan generate``: sample plans and answers for question records."""

from __future__ import annotations

from typing import Annotated

import typer

from codeplan_cli import engine_options as e
from codeplan_cli import options as o
from codeplan_tools.stages.generate import FormatName, PromptingMode

PROMPT_PANEL = "Prompting"


@o.with_options(io=("response_field",))
def generate_command(
    model: e.Model,
    io: o.StreamOptions = o.StreamOptions(),
    format: Annotated[
        FormatName | None,
        typer.Option(
            "--format",
            case_sensitive=False,
            rich_help_panel=PROMPT_PANEL,
            help="For fine-tuned models: render the prompt as 'codeplan' (plan, then answer), 'vanilla' or "
            "'nlplan' were trained, stop on the format's end and parse plan and response from each sample. "
            "[default: codeplan unless --mode is given]",
        ),
    ] = None,
    mode: Annotated[
        PromptingMode | None,
        typer.Option(
            "--mode",
            case_sensitive=False,
            rich_help_panel=PROMPT_PANEL,
            help="For instruct models (one chat user turn): 'direct', 'cot' (Let's think step by step), "
            "'plan-and-solve', or 'code-plan' (asks for a pseudo-Python plan, then the answer).",
        ),
    ] = None,
    given_plan: Annotated[
        bool,
        typer.Option(
            "--given-plan",
            rich_help_panel=PROMPT_PANEL,
            help="Condition on each record's 'plan' and generate the response only (--format codeplan/nlplan "
            "or --mode code-plan).",
        ),
    ] = False,
    answer_instruction: Annotated[
        bool,
        typer.Option(
            "--answer-instruction/--no-answer-instruction",
            rich_help_panel=PROMPT_PANEL,
            help="With --mode, add the task's answer-format instruction when the tasks registry has one.",
        ),
    ] = True,
    n: Annotated[
        int,
        typer.Option("-n", "--samples", min=1, rich_help_panel=e.SAMPLING_PANEL, help="Samples per record."),
    ] = 1,
    engine_options: e.EngineOptions = e.EngineOptions(),
) -> None:
    """Generate samples for question records: each gets 'samples' (text, plan, response, finish reason,
    tokens out, seed) and meta.generate.

    Sample j of a record is drawn with a seed derived from --seed, the record id and j, so re-running
    reproduces it. Rows the engine cannot take (longer than the context) go to --rejects with the reason.
    Re-running the same command with the same -o FILE resumes where it stopped; other settings, or a
    model whose files changed, are refused.

    Example: codeplan generate -m ckpt/ --format codeplan -n 4 -t 0.7 -i gsm8k.jsonl.zst -o samples.jsonl.zst
    """
    from codeplan_tools.core.stage import run_stage
    from codeplan_tools.stages.generate import GenerateConfig, GenerateStage

    spec = engine_options.spec(model)
    config = GenerateConfig(
        format=format,
        mode=mode,
        n=n,
        given_plan=given_plan,
        answer_instruction=answer_instruction,
        **engine_options.sampling(),
    )
    stage = GenerateStage(config, spec)  # checks the model now, before any input is read
    stage_io = io.stage_io("generate", require=stage.require, resume_settings=config.settings(spec))
    o.print_summary(run_stage(stage_io, stage), io.quiet)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_command)
