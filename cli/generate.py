"""``codeplan generate``: sample plans and answers for question records."""

from __future__ import annotations

import typer

from codeplan_cli import engine_options as e
from codeplan_cli import options as o
from codeplan_tools.stages.generate import GenerateConfig, GenerateStage

# The flag of GenerateConfig.n is --samples (-n): the name users know; the resume key keeps "n".
Prompting = o.bundle(
    "Prompting",
    (GenerateConfig, "format mode given_plan answer_instruction n"),
    flags={"n": o.Flag("-n", "--samples", min=1)},
)


@o.with_options(io=("response_field",))
def generate_command(
    model: e.Model, io: o.StreamOptions, prompting: Prompting, engine_options: e.EngineOptions
) -> None:
    """Generate samples for question records: each gets 'samples' (text, plan, response, finish reason,
    tokens out, seed) and meta.generate.

    Sample j of a record is drawn with a seed derived from --seed, the record id and j, so re-running
    reproduces it. Rows the engine cannot take (longer than the context) go to --rejects with the reason.
    Re-running the same command with the same -o FILE resumes where it stopped; other settings, or a
    model whose files changed, are refused.

    Example: codeplan generate -m ckpt/ --format codeplan -n 4 -t 0.7 -i gsm8k.jsonl.zst -o samples.jsonl.zst
    """
    config = GenerateConfig(**prompting.of(GenerateConfig), **engine_options.sampling())
    engine_options.run(GenerateStage, config, model, io)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_command)
