"""Options generated from config dataclasses (``codeplan_cli.options``): help, choices, defaults, names."""

from __future__ import annotations

import dataclasses
from typing import Literal

import click
import pytest
import typer
from click.testing import CliRunner

from codeplan_cli import options as o


@dataclasses.dataclass(kw_only=True)
class Part:
    """A nested part: its fields become flat flags."""

    every: int = 5
    """How often."""


@dataclasses.dataclass(kw_only=True)
class Toy:
    name: str
    """The name (required: no default)."""
    mode: Literal["fast", "slow"] = "fast"
    """How to run."""
    strict: bool = False
    """Be strict."""
    colour: bool = True
    """Use colour."""
    files: tuple[str, ...] = ()
    """Extra files. Repeatable."""
    part: Part = dataclasses.field(default_factory=Part)
    library_only: int = 0
    """Not on the command line."""


def _command(**flags):
    seen = {}

    @o.with_options(config=flags)
    def toy(config: Toy) -> None:
        """Toy command."""
        seen["config"] = config

    app = typer.Typer()
    app.command()(toy)
    app.callback()(lambda: None)
    return typer.main.get_command(app).commands["toy"], seen


FLAGS = {"library_only": None, "every": o.Flag("--save-every", min=1, old=("--checkpoint-every",))}


def test_each_field_is_an_option_with_its_docstring_type_and_default():
    command, _ = _command(**FLAGS)
    by_name = {p.name: p for p in command.params}
    assert set(by_name) == {"name", "mode", "strict", "colour", "files", "every", "every" + o.OLD}
    assert by_name["name"].required and by_name["name"].help == "The name (required: no default)."
    mode = by_name["mode"]
    assert isinstance(mode.type, click.Choice) and list(mode.type.choices) == ["fast", "slow"]
    assert not mode.type.case_sensitive and mode.default == "fast"
    assert by_name["strict"].opts == ["--strict"] and not by_name["strict"].secondary_opts
    assert by_name["colour"].secondary_opts == ["--no-colour"]
    assert by_name["files"].multiple and by_name["files"].default is None
    assert by_name["every"].opts == ["--save-every"] and by_name["every"].type.min == 1
    old = by_name["every" + o.OLD]
    assert old.hidden and old.opts == ["--checkpoint-every"] and old.type.min == 1


@pytest.mark.parametrize(
    ("args", "want"),
    [
        (["--name", "x"], Toy(name="x")),
        (
            ["--name", "x", "--mode", "SLOW", "--strict", "--no-colour", "--files", "a", "--files", "b"],
            Toy(name="x", mode="slow", strict=True, colour=False, files=("a", "b")),
        ),
        (["--name", "x", "--save-every", "7"], Toy(name="x", part=Part(every=7))),
        (["--name", "x", "--checkpoint-every", "9"], Toy(name="x", part=Part(every=9))),
    ],
)
def test_the_command_gets_the_config_back(args, want):
    command, seen = _command(**FLAGS)
    result = CliRunner().invoke(command, args, standalone_mode=False, catch_exceptions=False)
    assert result.exit_code == 0 and seen["config"] == want


@dataclasses.dataclass
class Undocumented:
    x: int = 0


def test_a_field_without_a_docstring_is_refused():
    with pytest.raises(TypeError, match=r"Undocumented.x has no docstring"):

        @o.with_options()
        def bad(config: Undocumented) -> None:
            pass


def test_a_bundle_gathers_fields_of_several_configs_in_order():
    Bundle = o.bundle("Bundle", (Part, "every"), (Toy, "mode"), flags={"every": o.Flag(min=2)})
    value = Bundle(every=3, mode="slow")
    assert [f.name for f in dataclasses.fields(Bundle)] == ["every", "mode"]
    assert value.of(Part) == {"every": 3} and value.of(Toy) == {"mode": "slow"}
    assert Bundle().every == 5 and Bundle().mode == "fast"


def test_field_docs_fold_whitespace_and_read_base_classes():
    @dataclasses.dataclass
    class Child(Part):
        more: int = 1
        """Spread over
        two lines."""

    assert o.field_docs(Child) == {"every": "How often.", "more": "Spread over two lines."}
