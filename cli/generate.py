"""``codeplan generate``: sample plans and answers for question records."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

import typer

from codeplan_cli import engine_options as e
from codeplan_cli import options as o

PROMPT_PANEL = "Prompting"


class FormatName(str, Enum):
    codeplan = "codeplan"
    vanilla = "vanilla"
    nlplan = "nlplan"


class ModeName(str, Enum):
    direct = "direct"
    cot = "cot"
    plan_and_solve = "plan-and-solve"
    code_plan = "code-plan"


def generate_command(
    model: e.Model,
    inputs: o.Inputs = None,
    output: o.Output = None,
    plain: o.Plain = False,
    rejects: o.Rejects = None,
    on_bad_record: o.OnBadRecord = o.BadRecordMode.fail,
    stats: o.StatsFile = None,
    prompt_field: o.PromptField = None,
    shard: o.Shard = None,
    progress: o.Progress = True,
    quiet: o.Quiet = False,
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
        ModeName | None,
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
    engine: e.Engine = e.EngineName.auto,
    dtype: e.Dtype = e.DType.auto,
    tensor_parallel_size: e.TensorParallel = None,
    base_url: e.BaseUrl = None,
    api_key_env: e.ApiKeyEnv = "OPENAI_API_KEY",
    concurrency: e.Concurrency = None,
    max_model_len: e.MaxModelLen = None,
    batch_size: e.BatchSize = None,
    chunk_size: e.ChunkSize = None,
    enforce_eager: e.EnforceEager = False,
    gpu_memory_utilization: e.GpuMemoryUtilization = None,
    trust_remote_code: e.TrustRemoteCode = False,
    tokenizer: e.Tokenizer = None,
    temperature: e.Temperature = 0.0,
    top_p: e.TopP = 1.0,
    max_tokens: e.MaxTokens = 512,
    seed: e.Seed = 0,
) -> None:
    """Generate samples for question records: each gets 'samples' (text, plan, response, finish reason,
    tokens out, seed) and meta.generate.

    Sample j of a record is drawn with a seed derived from --seed, the record id and j, so re-running
    reproduces it. Rows the engine cannot take (longer than the context) go to --rejects with the reason.
    Re-running the same command with the same -o FILE resumes where it stopped; other settings are refused.

    Example: codeplan generate -m ckpt/ --format codeplan -n 4 -t 0.7 -i gsm8k.jsonl.zst -o samples.jsonl.zst
    """
    from codeplan_tools.generate import GenerateConfig, generate_records
    from codeplan_tools.stage import StageIO, run_stage

    spec = e.engine_spec(
        model, engine, dtype, tensor_parallel_size, base_url, api_key_env, concurrency, max_model_len,
        batch_size, trust_remote_code, tokenizer, enforce_eager, gpu_memory_utilization,
    )  # fmt: skip
    config = GenerateConfig(
        format=format.value if format else None,
        mode=mode.value if mode else None,
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        seed=seed,
        given_plan=given_plan,
        answer_instruction=answer_instruction,
        chunk_size=chunk_size,
    )
    io = StageIO(
        stage="generate",
        inputs=inputs or ["-"],
        output=output,
        plain=plain,
        rejects=rejects,
        on_bad_record=on_bad_record.value,
        stats_path=stats,
        prompt_field=prompt_field,
        require=("prompt", "plan") if given_plan else ("prompt",),
        shard=shard,
        resume_settings=config.settings(spec),
        progress=progress,
        quiet=quiet,
    )
    result = run_stage(io, lambda records, ctx: generate_records(records, config, spec, ctx=ctx))
    o.print_summary(result, quiet)


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_command)
