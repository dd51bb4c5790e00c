"""``codeplan extract``: mine a code-form plan for each prompt/response record."""

from __future__ import annotations

from typing import Annotated

import typer

from codeplan_cli import engine_options as e
from codeplan_cli import options as o


def extract_command(
    model: e.Model,
    inputs: o.Inputs = None,
    output: o.Output = None,
    plain: o.Plain = False,
    rejects: o.Rejects = None,
    on_bad_record: o.OnBadRecord = o.BadRecordMode.fail,
    stats: o.StatsFile = None,
    prompt_field: o.PromptField = None,
    response_field: o.ResponseField = None,
    shard: o.Shard = None,
    progress: o.Progress = True,
    quiet: o.Quiet = False,
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
    """Mine the plan behind each prompt/response pair with an instruct model.

    The template is filled with the record's prompt and response and sent as one chat user turn; the
    reply, cleaned of code fences and chatter, becomes the record's 'plan'. meta.extract records the
    model, template hash, sampling parameters, the record's seed, the finish reason and token counts.
    Rows the engine cannot take (longer than the context) go to --rejects with the reason.

    Re-running the same command with the same -o FILE resumes where it stopped; other settings are
    refused. Progress (records/s, tokens/s, ETA) goes to stderr.

    Example: codeplan extract -m Meta-Llama-3-8B-Instruct -i pairs.jsonl.zst -o mined.jsonl.zst --rejects rejected.jsonl.zst
    """
    from codeplan_tools.extract import ExtractConfig, extract_records
    from codeplan_tools.stage import StageIO, run_stage

    spec = e.engine_spec(
        model, engine, dtype, tensor_parallel_size, base_url, api_key_env, concurrency, max_model_len,
        batch_size, trust_remote_code, tokenizer, enforce_eager, gpu_memory_utilization,
    )  # fmt: skip
    config = ExtractConfig(
        template=template,
        temperature=temperature,
        top_p=top_p,
        max_tokens=max_tokens,
        seed=seed,
        chunk_size=chunk_size,
        keep_raw=keep_raw,
    )
    io = StageIO(
        stage="extract",
        inputs=inputs or ["-"],
        output=output,
        plain=plain,
        rejects=rejects,
        on_bad_record=on_bad_record.value,
        stats_path=stats,
        prompt_field=prompt_field,
        response_field=response_field,
        require=("prompt", "response"),
        shard=shard,
        resume_settings=config.settings(spec),
        progress=progress,
        quiet=quiet,
    )
    result = run_stage(io, lambda records, ctx: extract_records(records, config, spec, ctx=ctx))
    o.print_summary(result, quiet)


def register(app: typer.Typer) -> None:
    app.command("extract")(extract_command)
