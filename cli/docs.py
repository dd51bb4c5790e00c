"""Generate ``man/``, ``completions/`` and the CLI surface snapshot from the click command tree.

    python -m codeplan_cli.docs            # rewrite man/, completions/ and tests/cli_surface.json
    python -m codeplan_cli.docs --check    # exit 1 if the committed files are stale (tests do this)

Man pages come from click-man, completion scripts from click's own shell completion; both read the
same command objects as ``--help``, so they cannot drift from the CLI. ``tests/cli_surface.json``
freezes what a user can type: for every command, each parameter's flags, type or choices, default,
and whether it is required, repeatable or hidden (help wording is left to the man pages). A change
to the surface then shows up in review as a diff of that file, and ``tests/test_cli_surface.py``
fails until it is regenerated.
"""

from __future__ import annotations

import enum
import json
import sys
import tempfile
from pathlib import Path

import click
from click.shell_completion import BashComplete, FishComplete, ZshComplete

from codeplan_cli.main import COMPLETE_VAR, get_command
from codeplan_tools import __version__

REPO = Path(__file__).resolve().parents[1]
# click's own classes, named: typer swaps its classes into click's registry once a typer app builds
# completion, and the scripts must not depend on what ran before (`make docs` vs the test suite).
SHELLS = {"codeplan.bash": BashComplete, "_codeplan": ZshComplete, "codeplan.fish": FishComplete}
# A fixed date keeps the pages reproducible (the staleness test compares bytes).
MAN_DATE = "2026-11-22"
SURFACE = REPO / "tests" / "cli_surface.json"


def _type(kind: click.ParamType) -> str:
    """A parameter type as a short stable string: ``integer``, ``float 0<=x<=1``, ``choice a|b (any case)``."""
    if isinstance(kind, click.Choice):
        case = "" if kind.case_sensitive else " (any case)"
        return "choice " + "|".join(map(str, kind.choices)) + case
    if isinstance(kind, click.types._NumberRangeBase):
        return f"{kind.name} {kind._describe_range()}"
    return kind.name


def _plain(value):
    """A default as JSON: enum members by value, tuples as lists."""
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return repr(value)


def _param(param: click.Parameter, ctx: click.Context) -> dict:
    entry = {
        "flags": [*param.opts, *param.secondary_opts],
        "type": _type(param.type),
        "default": _plain(param.get_default(ctx, call=False)),
        "required": param.required,
    }
    if isinstance(param, click.Argument):
        entry["argument"] = True
    if getattr(param, "is_flag", False):
        entry["flag"] = True
    if param.metavar:
        entry["metavar"] = param.metavar
    if param.multiple or param.nargs != 1:
        entry["multiple"] = True
    if param.envvar:
        entry["envvar"] = param.envvar
    if getattr(param, "hidden", False):
        entry["hidden"] = True
    return entry


def surface(command: click.Command, name: str = "codeplan") -> dict[str, dict[str, dict]]:
    """Every command of the tree (``"codeplan tasks list"``...) -> its parameters, by first long flag."""
    ctx = click.Context(command)
    params = {}
    for param in command.params:
        key = next((flag for flag in param.opts if flag.startswith("--")), param.human_readable_name)
        params[key] = _param(param, ctx)
    found = {name: params}
    for sub_name, sub in sorted(getattr(command, "commands", {}).items()):
        found.update(surface(sub, f"{name} {sub_name}"))
    return found


def surface_json(command: click.Command) -> str:
    """``surface`` as JSON with one line per parameter, so that a review diff names each change."""
    lines = ["{"]
    commands = surface(command)
    for i, (name, params) in enumerate(commands.items()):
        lines.append(f"  {json.dumps(name)}: {{")
        rows = [f"    {json.dumps(flag)}: {json.dumps(entry)}" for flag, entry in params.items()]
        lines.append(",\n".join(rows))
        lines.append("  }" + ("," if i < len(commands) - 1 else ""))
    lines.append("}")
    return "\n".join(line for line in lines if line) + "\n"


def render(target: Path) -> None:
    """Write every generated file under ``target``: ``man/``, ``completions/``, ``tests/cli_surface.json``."""
    from click_man.core import write_man_pages

    command = get_command()
    man = target / "man"
    man.mkdir(parents=True, exist_ok=True)
    write_man_pages("codeplan", command, version=__version__, target_dir=str(man), date=MAN_DATE)
    completions = target / "completions"
    completions.mkdir(parents=True, exist_ok=True)
    for filename, completion in SHELLS.items():
        source = completion(command, {}, "codeplan", COMPLETE_VAR).source()
        (completions / filename).write_text(source)
    snapshot = target / SURFACE.relative_to(REPO)
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    snapshot.write_text(surface_json(command))


def stale_files(repo: Path = REPO) -> list[str]:
    """Generated files that differ from (or are missing in) the repository."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        render(fresh)
        names = {p.relative_to(fresh) for p in fresh.rglob("*") if p.is_file()}
        for sub in ("man", "completions"):
            names |= {p.relative_to(repo) for p in (repo / sub).rglob("*") if p.is_file()}
        names.add(SURFACE.relative_to(REPO))
        return sorted(
            str(n)
            for n in names
            if not (fresh / n).exists()
            or not (repo / n).exists()
            or (fresh / n).read_bytes() != (repo / n).read_bytes()
        )


def main(argv: list[str]) -> int:
    if "--check" in argv:
        stale = stale_files()
        if stale:
            print("stale generated files (run: make docs): " + ", ".join(stale), file=sys.stderr)
            return 1
        return 0
    for sub in ("man", "completions"):
        for old in (REPO / sub).glob("*"):
            old.unlink()
    render(REPO)
    print(f"wrote {REPO / 'man'}, {REPO / 'completions'} and {SURFACE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
