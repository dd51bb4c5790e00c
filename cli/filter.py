"""``codeplan filter``: keep the mined plans that pass the named rules."""

from __future__ import annotations

from typing import Annotated

import typer

from codeplan_cli import options as o
from codeplan_tools.stages.filter import RULES

RULES_PANEL = "Rules (each on by default; --skip-RULE turns one off)"
SETTINGS_PANEL = "Rule settings"


def _rule(name: str):
    return typer.Option(f"--{name}/--skip-{name}", help=RULES[name].help, rich_help_panel=RULES_PANEL)


@o.with_options(io=("shard",))
def filter_command(
    io: o.StreamOptions = o.StreamOptions(),
    terminated: Annotated[bool, _rule("terminated")] = True,
    nonempty: Annotated[bool, _rule("nonempty")] = True,
    length: Annotated[bool, _rule("length")] = True,
    code: Annotated[bool, _rule("code")] = True,
    no_leak: Annotated[bool, _rule("no-leak")] = True,
    dedup: Annotated[bool, _rule("dedup")] = True,
    min_plan_words: Annotated[
        int, typer.Option(min=0, help="length: fewest words a plan may have.", rich_help_panel=SETTINGS_PANEL)
    ] = 3,
    max_plan_words: Annotated[
        int, typer.Option(min=1, help="length: most words a plan may have.", rich_help_panel=SETTINGS_PANEL)
    ] = 200,
    max_plan_tokens: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="length: most generated tokens (meta.extract.tokens_out) a plan may have. [default: no limit]",
            rich_help_panel=SETTINGS_PANEL,
        ),
    ] = None,
    code_min_ratio: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="code: least share of plan lines that look like Python.",
            rich_help_panel=SETTINGS_PANEL,
        ),
    ] = 0.5,
    code_strict: Annotated[
        bool,
        typer.Option(
            "--code-strict",
            help="code: also require the plan to parse with ast.parse.",
            rich_help_panel=SETTINGS_PANEL,
        ),
    ] = False,
    leak_ngram: Annotated[
        int, typer.Option(min=1, help="no-leak: word n-gram size compared.", rich_help_panel=SETTINGS_PANEL)
    ] = 8,
    leak_max_overlap: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="no-leak: reject at this share of the response's n-grams found in the plan.",
            rich_help_panel=SETTINGS_PANEL,
        ),
    ] = 0.5,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Processes that parse, check and serialise records read from files (stdin is read in one "
            "process); the output is the same for every N. 1 = no worker processes. "
            "[default: usable CPUs, at most 4]",
            show_default=False,
        ),
    ] = None,
    annotate: Annotated[
        bool,
        typer.Option(
            "--annotate",
            help="Keep every record and mark it: meta.filter.kept, .reason (first failing rule), .reasons (all).",
        ),
    ] = False,
) -> None:
    """Keep the mined plans that pass the named rules; send the others to --rejects with the rule's name.

    Rules run in the order listed; a rejected record carries meta.filter.reason naming the first rule
    it failed, and --stats counts rejected.<rule> per rule plus the word lengths (mean, median, p95)
    of prompt, plan and response of what passed, and the share of plans with functions, conditions
    and loops (measured only when --stats is given: it costs as much as a rule).

    Example: codeplan filter -i mined.jsonl.zst --rejects rejected.jsonl.zst --stats filter.json > kept.jsonl.zst
    """
    from codeplan_tools.stages.filter import FilterConfig, filter_stream

    switches = {
        "terminated": terminated,
        "nonempty": nonempty,
        "length": length,
        "code": code,
        "no-leak": no_leak,
        "dedup": dedup,
    }
    config = FilterConfig(
        enabled=tuple(name for name, on in switches.items() if on),
        min_plan_words=min_plan_words,
        max_plan_words=max_plan_words,
        max_plan_tokens=max_plan_tokens,
        code_min_ratio=code_min_ratio,
        code_strict=code_strict,
        leak_ngram=leak_ngram,
        leak_max_overlap=leak_max_overlap,
        workers=workers,
        annotate=annotate,
        profile=io.stats is not None,
    )
    o.print_summary(filter_stream(io.stage_io("filter"), config), io.quiet)


def register(app: typer.Typer) -> None:
    app.command("filter")(filter_command)
