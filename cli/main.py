"""The ``codeplan`` command: registers the subcommands and is the single error boundary.

Library errors (``codeplan_tools.core.errors.CodeplanError``) and click usage errors become one line on
stderr and an exit code; a closed downstream pipe ends quietly with status 0; SIGTERM and Ctrl-C
end the run after the current output frame is closed. Unexpected exceptions keep their traceback
under pytest or with ``CODEPLAN_RAISE_ERRORS=1``; otherwise they are one line too (exit 70).
"""

from __future__ import annotations

import importlib
import os
import signal
import sys

import click
import typer

from codeplan_tools import __version__
from codeplan_tools.core.errors import EX_INTERRUPTED, EX_SOFTWARE, EX_TERMINATED, CodeplanError
from codeplan_tools.core.streams import NoInput, PipeClosed

# Every subcommand, in help order. A module cli/<name>.py with register(app) provides each one;
# a command whose module is absent is simply not offered.
COMMANDS = [
    "extract",
    "filter",
    "pack",
    "finetune",
    "generate",
    "score",
    "show",
    "tasks",
    "synth",
    "init-model",
]


def _new_app() -> typer.Typer:
    return typer.Typer(
        name="codeplan",
        help="Mine, filter, pack, fine-tune on, generate and score code-form plans (CodePlan, ICLR 2025).\n\n"
        "Every command reads JSONL records (zstd, gzip or plain) on stdin or -i FILE and writes JSONL on "
        "stdout: zstd on a pipe, by name on a redirect (> out.jsonl plain, .gz gzip, .zst zstd), so "
        "commands compose with pipes:\n\n"
        "\b\n  cat data.jsonl | codeplan extract --model M | codeplan filter > mined.jsonl.zst",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    )


def _version(value: bool) -> None:
    if value:
        print(f"codeplan {__version__}")
        raise typer.Exit()


def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Mine, filter, pack, fine-tune on, generate and score code-form plans (CodePlan, ICLR 2025)."""


def build_app(names: list[str] | None = None) -> typer.Typer:
    """The command group with the subcommands ``names`` (default: all). A module cli/<name>.py with
    register(app) provides each one; a command whose module is absent is simply not offered."""
    app = _new_app()
    app.callback()(_root)
    for name in COMMANDS if names is None else names:
        module = "codeplan_cli." + name.replace("-", "_")
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register(app)
    return app


# click >= 8.2 raises this for a group called with no arguments; older click prints help itself.
_NoArgsIsHelp = getattr(click.exceptions, "NoArgsIsHelpError", ())


COMPLETE_VAR = "_CODEPLAN_COMPLETE"


class Terminated(BaseException):
    """SIGTERM arrived: unwind so that writers close their frames."""


def _on_sigterm(signum, frame):
    raise Terminated()


def get_command(only: str | None = None) -> click.Command:
    """The ``codeplan`` click group; with ``only`` (a subcommand's name) the group holds that one alone,
    so running one command imports one command module (the others load the stages, the scorers and
    the report: ~0.5 s of start-up that ``pack`` on one record would pay for nothing)."""
    from codeplan_cli.options import refuse_non_finite

    return refuse_non_finite(typer.main.get_command(build_app([only] if only else None)))


def _subcommand(argv: list[str]) -> str:
    for arg in argv:
        if arg in COMMANDS:
            return f"codeplan {arg}"
    return "codeplan"


def _raise_unexpected() -> bool:
    return bool(getattr(sys, "_called_from_test", False) or os.environ.get("CODEPLAN_RAISE_ERRORS"))


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (the console script exits with it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    prog = _subcommand(argv)
    instruction = os.environ.get(COMPLETE_VAR)
    # The root takes no option but --help/--version, so a first argument that names a command is it.
    only = argv[0] if argv and argv[0] in COMMANDS and not instruction else None
    command = get_command(only)
    if instruction:
        # The scripts in completions/ call back here; click answers (typer's own hook is not used).
        from click.shell_completion import shell_complete

        return shell_complete(command, {}, "codeplan", COMPLETE_VAR, instruction)
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        status = command.main(args=argv, prog_name="codeplan", standalone_mode=False)
        if status == EX_INTERRUPTED:
            # typer turns Ctrl-C into Exit(130) and, without standalone mode, returns the code (our
            # commands return None); by now the stage's `finally` has closed its output frames.
            print(f"{prog}: interrupted", file=sys.stderr)
            return EX_INTERRUPTED
        return 0
    except _NoArgsIsHelp as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc), err=True)
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        where = f"codeplan {exc.ctx.info_name}" if exc.ctx and exc.ctx.parent else prog
        print(f"{where}: error: {exc.format_message()} (see '{where} --help')", file=sys.stderr)
        return 2
    except click.ClickException as exc:
        print(f"{prog}: error: {exc.format_message()}", file=sys.stderr)
        return exc.exit_code
    except NoInput:
        sub = command.get_command(click.Context(command), prog.split()[-1]) if prog != "codeplan" else None
        ctx = click.Context(sub or command, info_name=prog)
        print(ctx.get_usage(), file=sys.stderr)
        print(
            f"{prog}: error: no input: pipe records in or give -i FILE (see '{prog} --help')", file=sys.stderr
        )
        return 2
    except (BrokenPipeError, PipeClosed):
        # The reader went away (| head): stop quietly, and keep Python from complaining at exit.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except CodeplanError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EX_INTERRUPTED
    except Terminated:
        print(f"{prog}: terminated", file=sys.stderr)
        return EX_TERMINATED
    except Exception as exc:
        if _raise_unexpected():
            raise
        print(
            f"{prog}: error: unexpected {type(exc).__name__}: {exc} (set CODEPLAN_RAISE_ERRORS=1 for the traceback)",
            file=sys.stderr,
        )
        return EX_SOFTWARE
    finally:
        signal.signal(signal.SIGTERM, previous)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
