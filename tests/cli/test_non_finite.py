"""Every float option of every command refuses nan and inf (exit 2), keeping its bounds."""

from __future__ import annotations

import click
import pytest

from codeplan_cli.main import get_command
from tests.helpers import invoke


def _float_params(command: click.Command, path: tuple[str, ...] = ()):
    for param in command.params:
        if isinstance(param.type, click.types.FloatParamType):
            yield " ".join(path), param
    for name, sub in getattr(command, "commands", {}).items():
        yield from _float_params(sub, (*path, name))


FLOAT_PARAMS = list(_float_params(get_command()))


def test_the_tree_has_float_options_to_check():
    names = {param.name for _, param in FLOAT_PARAMS}
    assert {"temperature", "lr", "timeout", "code_min_ratio"} <= names


@pytest.mark.parametrize(("where", "param"), FLOAT_PARAMS, ids=[f"{w}:{p.name}" for w, p in FLOAT_PARAMS])
@pytest.mark.parametrize("text", ["nan", "inf", "-inf", "NaN"])
def test_every_float_option_refuses_non_finite_values(where, param, text):
    # nan slips through every bound (comparisons with nan are false): only the finite check stops it.
    with pytest.raises(click.BadParameter, match="not a finite number" if "nan" in text.lower() else ""):
        param.type.convert(text, param, None)


def test_bounds_are_kept_and_the_command_line_exits_2():
    result = invoke(["filter", "--code-min-ratio", "1.5"])
    assert result.exit_code == 2 and "--code-min-ratio" in result.stderr
    result = invoke(["score", "--timeout", "nan"])
    assert result.exit_code == 2 and "not a finite number" in result.stderr
