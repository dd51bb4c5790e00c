"""``codeplan show``: read records in a terminal (the library part is ``codeplan_tools.tools.show``)."""

from __future__ import annotations

import typer

from codeplan_cli import options as o

HELP = """Show records for reading: prompt, plan (Python-highlighted), response, answer, samples with
their verdicts, and meta folded to one line.

On a terminal the output is coloured and paged ($PAGER, else less); piped, it is plain text. Reads
what every command reads (zstd, gzip or plain JSONL, -i FILE or stdin).

\b
Examples:
  codeplan show -i mined.jsonl.zst --sample 5 --seed 1
  codeplan show -i rejects.zst --where meta.filter.reason=code --fields id,plan
  codeplan show -i scored.zst --where meta.score.correct=false
"""


Fields = o.declare(
    str | None,
    "--fields",
    metavar="F1,F2,...",
    help="Show only these fields, in this order (dotted paths ok; 'meta' named here is shown unfolded). "
    "[default: all, meta folded]",
)
Where = o.declare(
    list[str] | None,
    "--where",
    metavar="FIELD=VALUE",
    help="Show only records whose FIELD (dotted path, e.g. meta.filter.reason) equals VALUE; numbers, "
    "true/false and null compare as JSON. Repeatable: all must hold.",
)
Sample = o.declare(
    int | None,
    "--sample",
    metavar="N",
    min=1,
    help="Show N of the (matching) records picked at random, in input order. [default: all]",
)
Seed = o.declare(int, "--seed", help="Seed of --sample: the same seed picks the same records.")
Pager = o.declare(bool, "--pager/--no-pager", help="On a terminal, page the output ($PAGER, else less).")


def show_command(
    inputs: o.Inputs = None,
    fields: Fields = None,
    where: Where = None,
    sample: Sample = None,
    seed: Seed = 0,
    pager: Pager = True,
    on_bad_record: o.OnBadRecord = "fail",
    prompt_field: o.PromptField = None,
    response_field: o.ResponseField = None,
) -> None:
    from codeplan_tools.core.outputs import check_inputs
    from codeplan_tools.tools import show

    paths = inputs or ["-"]
    wheres = [show.parse_where(spec) for spec in where or []]
    names = [f.strip() for f in fields.split(",") if f.strip()] if fields else None
    check_inputs(paths)
    records = show.read(
        paths,
        skip_bad=on_bad_record == "skip",
        prompt_field=prompt_field,
        response_field=response_field,
        warn=show.capped(),
    )
    chosen = show.select(records, wheres, sample, seed)
    first = next(chosen, None)  # read before the pager starts: a bad input is an error, not a page
    if first is None:
        return
    with show.open_console(page=pager) as console:
        renderer = show.Renderer(console, names)
        renderer.render(first)
        for record in chosen:
            renderer.render(record)


def register(app: typer.Typer) -> None:
    app.command("show", help=HELP)(show_command)
