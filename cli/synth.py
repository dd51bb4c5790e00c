"""``codeplan synth``: synthetic multi-step reasoning tasks with exact plans, responses and answers."""

from __future__ import annotations

from typing import Annotated

import typer

from codeplan_cli import options as o
from codeplan_tools.stages.synth import TASKS, SynthConfig

SYNTH_PANEL = "What to make"
KeepGoldPlan = o.option(SynthConfig, "keep_gold_plan")
PlanVariant = o.option(SynthConfig, "plan_variant")
Split = o.option(SynthConfig, "split")


def _task_table() -> str:
    width = max(map(len, TASKS))
    rows = [
        f"  {name:<{width}}  k = {t.k_means}; scored as {t.scorer}"
        + (f"; also {', '.join(t.variants)}" if t.variants else "")
        + ("; --split" if t.held_out else "")
        for name, t in TASKS.items()
    ]
    return "\n".join(rows)


HELP = f"""Make synthetic multi-step reasoning tasks: records with prompt, plan, response and answer, all exact.

The difficulty k is the number of steps (per task below); the plan is a short Python-style code-form
plan (valid Python, never run) and the response follows it step by step and ends with "The answer is
X." (add and parity, the positive controls, carry every value in the plan and answer at once).
Records carry task synth/<name>, difficulty k, meta.synth (k, seed, index) and a stable id
synth/<name>/k<k>/s<seed>/<index>. --n records per task, k cycling through --k; the same --seed gives
the same records. --plan-variant swaps the plan for a control (other-problem and filler for every
task; the task's own variants are listed below); --split picks nest's train or novel compositions.

\b
Tasks:
{_task_table()}

Example: codeplan synth last_letter,coin_flip --n 500 --k 2-4 --seed 1 > train.jsonl.zst
"""


def synth_command(
    tasks: Annotated[
        str | None,
        typer.Argument(
            metavar="TASK[,TASK...]|all", help="Comma-separated task names, or 'all' (see --list)."
        ),
    ] = None,
    n: Annotated[
        int, typer.Option("--n", "-n", min=0, help="Records per task.", rich_help_panel=SYNTH_PANEL)
    ] = 100,
    k: Annotated[
        str,
        typer.Option(
            "--k",
            "-k",
            metavar="K|A-B|A,B",
            help="Difficulties (steps per response): a number, a range or a list; records cycle through them.",
            rich_help_panel=SYNTH_PANEL,
        ),
    ] = "2-4",
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same records.")] = 0,
    exclude: Annotated[
        list[str] | None,
        typer.Option(
            "--exclude",
            metavar="FILE",
            help="Never produce a prompt found in FILE's records (e.g. the training set, when making a "
            "held-out set). Repeatable.",
            rich_help_panel=SYNTH_PANEL,
        ),
    ] = None,
    keep_gold_plan: KeepGoldPlan = False,
    plan_variant: PlanVariant = "gold",
    split: Split = "all",
    list_tasks: Annotated[bool, typer.Option("--list", help="List the tasks and exit.")] = False,
    output: o.Output = None,
    plain: o.Plain = False,
    zstd: o.Zstd = False,
    stats: o.StatsFile = None,
    quiet: o.Quiet = False,
) -> None:
    from codeplan_tools.core.errors import UsageError
    from codeplan_tools.core.stage import StageIO, run_stage
    from codeplan_tools.stages.synth import SynthStage, parse_k, parse_tasks

    if list_tasks:
        for name, t in TASKS.items():
            typer.echo(f"synth/{name}\t{t.scorer}\tk = {t.k_means}\t{t.description}")
        return
    if tasks is None:
        raise UsageError("name the tasks (e.g. last_letter,coin_flip or all); --list shows them")
    config = SynthConfig(
        tasks=parse_tasks(tasks),
        n=n,
        k=parse_k(k),
        seed=seed,
        exclude=tuple(exclude or ()),
        keep_gold_plan=keep_gold_plan,
        plan_variant=plan_variant,
        split=split,
    )
    stage_io = StageIO(
        stage="synth",
        inputs=list(config.exclude),
        output=output,
        plain=o.output_kind_flag(plain, zstd),
        stats_path=stats,
        progress=False,
        quiet=quiet,
        source=True,
    )
    o.print_summary(run_stage(stage_io, SynthStage(config)), quiet)


def register(app: typer.Typer) -> None:
    app.command("synth", help=HELP)(synth_command)
