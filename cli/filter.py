"""``codeplan filter``: keep the mined plans that pass the named rules.

The rule switches (``--RULE/--skip-RULE``, on or off by the rule's default) come from ``RULES`` and
the rule settings from ``FilterConfig``'s fields, so a new rule or setting needs no change here.
"""

from __future__ import annotations

import dataclasses

import typer

from codeplan_cli import options as o
from codeplan_tools.stages.filter import RULES, FilterConfig

Flag = o.Flag
Rules = o.switches("Rules", {name: (rule.help, rule.default) for name, rule in RULES.items()})
SETTINGS: dict[str, o.Flag | None] = {
    "enabled": None,  # the rule switches
    "profile": None,  # on exactly when --stats is given
    "min_plan_words": Flag(min=0),
    "max_plan_words": Flag(min=1),
    "max_plan_tokens": Flag(min=1),
    "code_min_ratio": Flag(min=0.0, max=1.0),
    "leak_ngram": Flag(min=1),
    "leak_max_overlap": Flag(min=0.0, max=1.0),
    "grounded_min": Flag(min=0.0, max=1.0),
    "workers": Flag(min=1),
}


@o.with_options(io=("shard",), config=SETTINGS)
def filter_command(io: o.StreamOptions, rules: Rules, config: FilterConfig) -> None:
    """Keep the mined plans that pass the named rules; send the others to --rejects with the rule's name.

    Rules run in the order listed; a rejected record carries meta.filter.reason naming the first rule
    it failed, and --stats counts rejected.<rule> per rule plus the word lengths (mean, median, p95)
    of prompt, plan and response of what passed, and the share of plans with functions, conditions
    and loops (measured only when --stats is given: it costs as much as a rule).

    Example: codeplan filter -i mined.jsonl.zst --rejects rejected.jsonl.zst --stats filter.json > kept.jsonl.zst
    """
    from codeplan_tools.stages.filter import filter_stream

    config = dataclasses.replace(config, enabled=rules.on(), profile=io.stats is not None)
    o.print_summary(filter_stream(io.stage_io("filter"), config), io.quiet)


def register(app: typer.Typer) -> None:
    app.command("filter")(filter_command)
