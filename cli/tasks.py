"""``codeplan tasks``: list the benchmark tasks and turn their files into records."""

from __future__ import annotations

from typing import Annotated

import typer

from codeplan_cli import options as o

tasks_app = typer.Typer(
    name="tasks",
    help="List the benchmark tasks and turn their public files into records for 'codeplan generate'.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
)


@tasks_app.command("list")
def list_command(
    group: Annotated[
        str | None,
        typer.Option("--group", metavar="NAME", help="Only the tasks of this group (e.g. bbh, synth)."),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON object per task instead of a table.")
    ] = False,
) -> None:
    """List the tasks: name, scorer family, difficulty dimension, source files and a description.

    Example: codeplan tasks list --group bbh
    """
    import orjson

    from codeplan_tools.eval.tasks import list_tasks

    tasks = [t for t in list_tasks() if group is None or t.group == group]
    if as_json:
        for t in tasks:
            row = {
                "name": t.name,
                "scorer": t.scorer,
                "group": t.group,
                "difficulty": t.difficulty,
                "files": list(t.files),
                "instruction": t.instruction,
                "description": t.description,
            }
            typer.echo(orjson.dumps(row).decode())
        return
    width = max((len(t.name) for t in tasks), default=4)
    typer.echo(f"{'task':<{width}}  {'scorer':<7}  {'difficulty':<10}  source")
    for t in tasks:
        source = (
            ", ".join(t.files)
            if t.files
            else "generated (codeplan synth)"
            if t.group == "synth"
            else "-i FILE|DIR (Parquet, Arrow, datasets folder)"
            if t.corpus
            else "-"
        )
        typer.echo(
            f"{t.name:<{width}}  {t.scorer or '-':<7}  {t.difficulty or '-':<10}  {source}  {t.description}"
        )


@tasks_app.command("prepare")
@o.with_options(io=(*o.READING, "stats"))
def prepare_command(
    names: Annotated[
        str,
        typer.Argument(
            metavar="TASK[,TASK...]",
            help="Task names (see 'codeplan tasks list'); a group name such as bbh means all its tasks.",
        ),
    ],
    data_dir: Annotated[
        str | None,
        typer.Option(
            "--data-dir",
            metavar="DIR",
            help="Folder with the task files (the layout of shared/data). [default: $CODEPLAN_DATA, "
            "else ../shared/data relative to the current directory]",
        ),
    ] = None,
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "-i",
            "--input",
            metavar="FILE",
            help="Read the task's public file instead (as downloaded: JSON, JSON Lines, BIG-bench "
            "task.json or CSV; zstd/gzip ok; Parquet or Arrow files, a folder of them or a datasets "
            "folder for a corpus such as webinstructsub). Repeatable; needs a single task.",
        ),
    ] = None,
    limit: Annotated[
        int | None, typer.Option("--limit", metavar="N", min=0, help="At most N records per task.")
    ] = None,
    instruction: Annotated[
        bool,
        typer.Option(
            "--instruction/--no-instruction",
            help="Append the task's answer-format instruction to the prompt ('question' keeps the bare text).",
        ),
    ] = True,
    gold_response: Annotated[
        bool,
        typer.Option(
            "--gold-response",
            help="Also write the gold (worked solution or answer) as 'response': 'codeplan score' on the "
            "result checks the scorers (it should report 100%).",
        ),
    ] = False,
    io: o.StreamOptions = o.StreamOptions(),
) -> None:
    """Write records (id, task, prompt, question, answer and the source's extra fields) for the tasks;
    for a training corpus (webinstructsub), prompt/response records with the row's source kept.

    Example: codeplan tasks prepare gsm8k,math500 --limit 100 > eval.jsonl.zst

    Example: codeplan tasks prepare gsm8k -i grade-school-math/test.jsonl > gsm8k.jsonl.zst

    Example: codeplan tasks prepare webinstructsub -i WebInstructSub/data > webinstruct.jsonl.zst
    """
    from codeplan_tools.core.stage import run_stage
    from codeplan_tools.eval.tasks import PrepareStage, expand_task_names

    stage = PrepareStage(expand_task_names(names), data_dir, inputs, limit, instruction, gold_response)
    result = run_stage(io.stage_io("tasks", inputs=stage.files, progress=False, source=True), stage)
    if not io.quiet:
        typer.echo(
            f"codeplan tasks prepare: {int(result['written'])} records from {len(stage.tasks)} task(s)",
            err=True,
        )


def register(app: typer.Typer) -> None:
    app.add_typer(tasks_app, name="tasks")
