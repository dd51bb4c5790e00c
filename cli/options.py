"""Options shared by several commands, declared once so help and defaults cannot diverge."""

from __future__ import annotations

import sys
from enum import Enum
from typing import Annotated

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
        help="Input records: zstd (also concatenated shards), gzip or plain JSONL, detected from the "
        "first bytes. Repeatable; '-' is stdin. [default: stdin]",
        rich_help_panel=IO_PANEL,
    ),
]
Output = Annotated[
    str | None,
    typer.Option(
        "-o",
        "--output",
        metavar="FILE",
        help="Write records to FILE instead of stdout. zstd unless --plain or FILE ends in .jsonl/.json.",
        rich_help_panel=IO_PANEL,
    ),
]
Plain = Annotated[
    bool,
    typer.Option(
        "--plain",
        envvar="CODEPLAN_PLAIN",
        help="Write plain JSONL instead of zstd-compressed JSONL (a terminal always gets plain).",
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
        help="On a malformed line or a missing field: 'fail' stops with exit 65 naming file and line; "
        "'skip' counts it and writes it to --rejects (or reports its line on stderr).",
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
