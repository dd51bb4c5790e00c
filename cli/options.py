"""Options shared by several commands, declared once so help and defaults cannot diverge.

A command takes the record-stream options as one parameter, ``io: StreamOptions``; ``with_options``
expands it into the individual click options (at the parameter's place, so the help keeps its order)
and hands the command one ``StreamOptions`` value. ``cli/engine_options.py`` does the same for the
engine and sampling options of ``extract`` and ``generate``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import sys
from enum import Enum
from typing import Annotated, Any, get_type_hints

import click
import typer

IO_PANEL = "Input and output"


class BadRecordMode(str, Enum):
    fail = "fail"
    skip = "skip"


Inputs = Annotated[
    list[str] | None,
    typer.Option(
        "-i",
        "--input",
        metavar="FILE",
        help="Input records: zstd (also concatenated shards), gzip, xz, bzip2 or plain JSONL, or Parquet / "
        "Arrow files, detected from the first bytes; a folder (a datasets save_to_disk folder, or "
        ".parquet/.arrow shards) is read as one input. Repeatable; '-' is stdin. [default: stdin]",
        rich_help_panel=IO_PANEL,
    ),
]
Output = Annotated[
    str | None,
    typer.Option(
        "-o",
        "--output",
        metavar="FILE",
        help="Write records to FILE instead of stdout; FILE may not be an input, and one run at a time writes "
        "it. Plain JSONL if FILE ends in .jsonl/.json, gzip for .gz, else zstd; --plain/--zstd force one (a "
        "resumed FILE keeps the encoding it has). Redirected stdout (> FILE) goes by its name the same way.",
        rich_help_panel=IO_PANEL,
    ),
]
Plain = Annotated[
    bool,
    typer.Option(
        "--plain",
        envvar="CODEPLAN_PLAIN",
        help="Write plain JSONL whatever the output's name (a terminal always gets plain).",
        rich_help_panel=IO_PANEL,
    ),
]
Zstd = Annotated[
    bool,
    typer.Option(
        "--zstd",
        help="Write zstd-compressed JSONL whatever the output's name (a pipe gets zstd unless --plain).",
        rich_help_panel=IO_PANEL,
    ),
]
StatsFile = Annotated[
    str | None,
    typer.Option(
        "--stats",
        metavar="FILE",
        help="Write the run's counters as JSON to FILE (shards merge by summing the counters).",
        rich_help_panel=IO_PANEL,
    ),
]
Rejects = Annotated[
    str | None,
    typer.Option(
        "--rejects",
        metavar="FILE",
        help="Write rejected records, each with meta.<command>.reason, to FILE.",
        rich_help_panel=IO_PANEL,
    ),
]
OnBadRecord = Annotated[
    BadRecordMode,
    typer.Option(
        "--on-bad-record",
        case_sensitive=False,
        help="On a malformed line, a missing or wrong-typed field, or damaged compressed input: 'fail' "
        "writes what was read before it, then stops with exit 65 naming file and line; 'skip' counts a bad "
        "line and writes it to --rejects (or names it on stderr), and skips damage to the next zstd frame, "
        "gzip member or input file (the lines in the damaged part are lost and counted in --stats).",
        rich_help_panel=IO_PANEL,
    ),
]
PromptField = Annotated[
    str | None,
    typer.Option(
        "--prompt-field",
        metavar="FIELD",
        help="Field holding the prompt (dotted path ok). [default: prompt, question, problem, "
        "instruction+input, or the last user turn of messages]",
        rich_help_panel=IO_PANEL,
    ),
]
ResponseField = Annotated[
    str | None,
    typer.Option(
        "--response-field",
        metavar="FIELD",
        help="Field holding the response. [default: response, output, solution, or the assistant turn of messages]",
        rich_help_panel=IO_PANEL,
    ),
]
Shard = Annotated[
    str | None,
    typer.Option(
        "--shard",
        metavar="I/N|auto",
        help="Process only the records whose id hashes to I mod N; 'auto' reads SLURM_ARRAY_TASK_ID "
        "and SLURM_ARRAY_TASK_COUNT. The N shard outputs together are exactly the unsharded output.",
        rich_help_panel=IO_PANEL,
    ),
]
Progress = Annotated[
    bool,
    typer.Option(
        "--progress/--no-progress",
        help="Show progress on stderr: a bar on a terminal (extract and generate also print a rate/ETA line to logs).",
        rich_help_panel=IO_PANEL,
    ),
]
Quiet = Annotated[
    bool,
    typer.Option(
        "-q", "--quiet", help="Do not print the end-of-run summary on stderr.", rich_help_panel=IO_PANEL
    ),
]


def print_summary(stats, quiet: bool = False) -> None:
    """The end-of-run summary: one line of counters on stderr."""
    if not quiet:
        print(stats.summary(), file=sys.stderr)


@dataclasses.dataclass(frozen=True)
class StreamOptions:
    """The record-stream options of one command invocation (each field is the option of the same name)."""

    inputs: Inputs = None
    output: Output = None
    plain: Plain = False
    zstd: Zstd = False
    rejects: Rejects = None
    on_bad_record: OnBadRecord = BadRecordMode.fail
    stats: StatsFile = None
    prompt_field: PromptField = None
    response_field: ResponseField = None
    shard: Shard = None
    progress: Progress = True
    quiet: Quiet = False

    def stage_io(self, stage: str, **settings: Any):
        """The ``StageIO`` of ``stage`` over these streams; ``settings`` adds require, resume_settings..."""
        from codeplan_tools.core.stage import StageIO

        return StageIO(
            stage=stage,
            inputs=self.inputs or ["-"],
            output=self.output,
            plain=self.output_kind(),
            rejects=self.rejects,
            on_bad_record=self.on_bad_record.value,
            stats_path=self.stats,
            prompt_field=self.prompt_field,
            response_field=self.response_field,
            shard=self.shard,
            progress=self.progress,
            quiet=self.quiet,
            **settings,
        )

    def output_kind(self) -> bool | str:
        """What ``--plain``/``--zstd`` force, as ``streams.output_kind`` takes it (False: the name decides)."""
        return output_kind_flag(self.plain, self.zstd)


def output_kind_flag(plain: bool, zstd: bool) -> bool | str:
    """``--plain``/``--zstd`` as ``streams.output_kind`` takes them (False: the name decides)."""
    if plain and zstd:
        from codeplan_tools.core.errors import UsageError

        raise UsageError(
            "--plain (or CODEPLAN_PLAIN=1) and --zstd ask for different outputs; give one of them"
        )
    return "zstd" if zstd else plain


def with_options(**omit: tuple[str, ...]):
    """Expand each parameter annotated with an options dataclass into that dataclass's options.

    ``omit`` names, per parameter, fields the command does not offer (they keep their defaults):
    ``@with_options(io=("shard",))``. The command is called with one dataclass value per parameter.
    """

    def decorate(command):
        signature = inspect.signature(command, eval_str=True)
        params: list[inspect.Parameter] = []
        bundles: dict[str, tuple[type, list[str]]] = {}
        for param in signature.parameters.values():
            bundle = param.annotation
            if not (isinstance(bundle, type) and dataclasses.is_dataclass(bundle)):
                params.append(param)
                continue
            hints = get_type_hints(bundle, include_extras=True)
            names = [f.name for f in dataclasses.fields(bundle) if f.name not in omit.get(param.name, ())]
            bundles[param.name] = (bundle, names)
            for f in dataclasses.fields(bundle):
                if f.name in names:
                    params.append(param.replace(name=f.name, annotation=hints[f.name], default=f.default))

        @functools.wraps(command)
        def run(**kwargs):
            for name, (bundle, names) in bundles.items():
                kwargs[name] = bundle(**{field: kwargs.pop(field) for field in names})
            return command(**kwargs)

        run.__signature__ = signature.replace(parameters=params)
        run.__annotations__ = {p.name: p.annotation for p in params}
        del run.__wrapped__  # typer must read the expanded signature, not the command's own
        return run

    return decorate


class _FiniteFloatParam(click.types.FloatParamType):
    """click's FLOAT, less ``nan`` and ``inf``."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def refuse_non_finite(command: click.Command) -> click.Command:
    """Make every float option of ``command`` and its subcommands refuse ``nan``/``inf`` (exit 2).

    Done once over the whole command tree (``codeplan_cli.main.get_command``), so an option added
    later is covered without remembering to; a bounded option keeps its bounds and its help text
    (``FiniteFloat`` from ``engine_options``, a ``FloatRange``), an unbounded one stays ``FLOAT``.
    """
    from codeplan_cli.engine_options import FiniteFloat

    for param in command.params:
        kind = param.type
        if isinstance(kind, FiniteFloat | _FiniteFloatParam):
            continue
        if isinstance(kind, click.FloatRange):
            param.type = FiniteFloat(kind.min, kind.max, kind.min_open, kind.max_open, kind.clamp)
        elif isinstance(kind, click.types.FloatParamType):
            param.type = _FiniteFloatParam()
    for sub in getattr(command, "commands", {}).values():
        refuse_non_finite(sub)
    return command
