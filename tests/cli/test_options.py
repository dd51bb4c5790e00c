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


def _click(function) -> click.Command:
    """The click command typer makes of ``function``."""
    app = typer.Typer()
    app.command()(function)
    app.callback()(lambda: None)
    return typer.main.get_command(app).commands[function.__name__]


def _command(**flags):
    seen = {}

    @o.with_options(config=flags)
    def toy(config: Toy) -> None:
        """Toy command."""
        seen["config"] = config

    return _click(toy), seen


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


Switches = o.switches("Switches", {"alpha": ("First.", True), "beta-two": ("Second.", False)})


def test_switches_make_one_on_off_flag_per_registry_item_in_order():
    seen = {}

    @o.with_options()
    def toy(switches: Switches) -> None:
        seen["on"] = switches.on()

    command = _click(toy)
    by_flag = {p.opts[0]: p for p in command.params}
    assert list(by_flag) == ["--alpha", "--beta-two"]
    assert (
        by_flag["--beta-two"].secondary_opts == ["--skip-beta-two"]
        and by_flag["--beta-two"].help == "Second."
    )
    for args, on in [([], ("alpha",)), (["--skip-alpha", "--beta-two"], ("beta-two",))]:
        result = CliRunner().invoke(command, args, standalone_mode=False, catch_exceptions=False)
        assert result.exit_code == 0 and seen["on"] == on


def test_stage_io_takes_the_stream_options_and_a_source_replaces_its_inputs():
    io = o.StreamOptions(output="out.zst", zstd=True, on_bad_record="skip", stats="s.json", quiet=True)
    stage_io = io.stage_io("toy", require=("prompt",))
    assert (stage_io.inputs, stage_io.plain, stage_io.on_bad_record, stage_io.stats_path) == (
        ["-"],
        "zstd",
        "skip",
        "s.json",
    )
    assert stage_io.require == ("prompt",) and stage_io.quiet
    source = io.stage_io("toy", inputs=["held-out.jsonl"], progress=False, source=True)
    assert source.inputs == ["held-out.jsonl"] and not source.progress and source.output == "out.zst"


def test_on_bad_record_is_a_choice_in_any_case_given_as_written_in_the_choices():
    seen = {}

    @o.with_options()
    def toy(io: o.StreamOptions) -> None:
        seen["mode"] = io.on_bad_record

    command = _click(toy)
    result = CliRunner().invoke(command, ["--on-bad-record", "SKIP"], standalone_mode=False)
    assert result.exit_code == 0 and seen["mode"] == "skip"


def test_the_command_line_starts_without_numpy_torch_or_transformers():
    import subprocess
    import sys

    code = (
        "import sys, codeplan_cli.main as m; m.get_command(); "
        "print(sorted({'numpy', 'torch', 'transformers'} & set(sys.modules)))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_sampling_config_is_one_class_for_the_runner_and_the_spec():
    from codeplan_tools.engines import runner, spec

    assert runner.SamplingConfig is spec.SamplingConfig
