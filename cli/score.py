"""``codeplan score``: check model answers per task family, report accuracy, compare runs."""

from __future__ import annotations

from typing import Annotated

import typer

from codeplan_cli import options as o
from codeplan_tools.stages.score import ScoreConfig

Flag = o.Flag
Checking = o.bundle(
    "Checking",
    (ScoreConfig, "task timeout workers report gold_plan_field plan_answer_field"),
    flags={
        "task": Flag(metavar="NAME"),
        "timeout": Flag(min=0.1, metavar="SECONDS"),
        "workers": Flag(min=0, metavar="N"),
        "report": Flag(metavar="FILE"),
        "gold_plan_field": Flag(metavar="FIELD"),
        "plan_answer_field": Flag(metavar="FIELD"),
    },
)
Reporting = o.bundle(
    "Reporting", (ScoreConfig, "plot average_over"), flags={"plot": Flag(metavar="FILE.png")}
)


@o.with_options(io=("prompt_field", "response_field"))
def score_command(
    runs: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="[RUN...]",
            help="With --compare: the runs to compare, as FILE or NAME=FILE (scored or not); the first is the baseline.",
            show_default=False,
        ),
    ] = None,
    io: o.StreamOptions = o.StreamOptions(),
    checking: Checking = Checking(),
    compare: Annotated[
        bool,
        typer.Option(
            "--compare",
            help="Compare the RUN files side by side (no records on stdout): accuracy per task, absolute and "
            "relative improvement over the first run, the average relative improvement, and a paired test "
            "per task (McNemar, or bootstrap with several samples).",
        ),
    ] = False,
    reporting: Reporting = Reporting(),
) -> None:
    """Check each sample's answer with its task's scorer and write the records with meta.score.

    Scorers: numeric (GSM8K, SVAMP, ...), math (MATH: \\boxed{} + math-verify, in worker processes with
    a hard --timeout), choice, exact, yesno, qa (EM/F1 with aliases) and ifeval (strict/loose).
    Strict extraction (only an answer the model marked: \\boxed{}, '#### X', 'The answer is X', a bare
    answer, also with qualifiers such as 'most likely') and lenient extraction (falls back to the last
    number / option / line only when no answer is marked) are reported side by side; accuracy is the
    lenient one. A hedged answer ('(A) or (B)', '12 or 14') and a marked answer that is not valid for
    the task (a letter that is no option) are wrong in both. A record without 'samples' is scored on its 'response'.
    A record with an unknown task, no gold answer or a field of the wrong type (samples not a list) stops
    the run with exit 65 naming its file and line (--on-bad-record skip rejects it).
    A record with a 'plan_answer' (the answer its given, changed plan leads to: synth --plan-variant, then
    generate --given-plan) also gets meta.score.given_plan: whether each sample followed the plan, the
    prompt or neither, reported as rates per run and task.
    Re-running with the same -o FILE resumes. With --compare, the RUN arguments are the runs to
    compare (FILE or NAME=FILE, scored or not; the first is the baseline) and no records are written.
    The report (accuracy with 95% Wilson interval per task and subtask, unextracted, hedged, invalid
    and timed-out counts, pass@k and maj@k with several samples) goes to stderr and to --report files.

    Example: codeplan generate --model ckpt/ < gsm8k.jsonl.zst | codeplan score --report gsm8k.md > scored.jsonl.zst

    Example: codeplan score --compare vanilla=vanilla.jsonl.zst codeplan=codeplan.jsonl.zst --report cmp.md --plot cmp.png
    """
    from codeplan_tools.core.errors import UsageError
    from codeplan_tools.stages.score import compare_runs, report_comparison, score_stream

    config = ScoreConfig(**checking.of(ScoreConfig), **reporting.of(ScoreConfig))
    if compare:
        if io.inputs:
            raise UsageError("--compare takes the runs as arguments (RUN...), not -i")
        comparison = compare_runs(runs or [], config, on_bad_record=io.on_bad_record)
        report_comparison(comparison, config, quiet=io.quiet)
        return
    if runs:
        raise UsageError(
            f"unexpected argument {runs[0]!r}: give input files with -i, or compare runs with --compare"
        )
    o.print_summary(score_stream(io.stage_io("score"), config), io.quiet)


def register(app: typer.Typer) -> None:
    app.command("score")(score_command)
