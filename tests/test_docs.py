"""Generated docs are current; every command and option is documented."""

import click
import pytest

from codeplan_cli.docs import stale_files
from codeplan_cli.main import COMMANDS, get_command
from tests.helpers import invoke


def test_man_pages_and_completions_are_current():
    assert stale_files() == [], "run `make docs` and commit man/ and completions/"


def _commands():
    root = get_command()
    out = []
    stack = [("codeplan", root)]
    while stack:
        name, cmd = stack.pop()
        out.append((name, cmd))
        if isinstance(cmd, click.Group):
            stack.extend((f"{name} {sub}", c) for sub, c in cmd.commands.items())
    return out


@pytest.mark.parametrize("name,cmd", _commands(), ids=lambda x: x if isinstance(x, str) else "")
def test_every_command_and_option_has_help(name, cmd):
    assert (cmd.help or "").strip(), f"{name} has no help text"
    for param in cmd.params:
        if isinstance(param, click.Option):
            assert (param.help or "").strip(), f"{name} {param.opts[0]} has no help"
    result = invoke([*name.split()[1:], "--help"])
    assert result.exit_code == 0
    for param in cmd.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert param.opts[0] in result.stdout.decode()


def test_root_help_lists_every_installed_command():
    text = invoke(["--help"]).stdout.decode().split("Commands:")[1]
    listed = {line.split()[0] for line in text.splitlines() if line.startswith("  ") and line.split()}
    installed = set(get_command().commands)
    assert "filter" in installed and listed == installed <= set(COMMANDS)


def test_a_bad_subcommand_is_one_line():
    result = invoke(["no-such-command"])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
