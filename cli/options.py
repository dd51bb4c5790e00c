"""Options declared once: the record-stream options, and options generated from config dataclasses.

A command takes a group of options as one dataclass-typed parameter (``io: StreamOptions``,
``config: FinetuneConfig``); ``with_options`` expands it into one click option per field, at the
parameter's place (so ``--help`` keeps its order), and calls the command with one dataclass value.

A library config is the single source of its options. For each field:

- ``--help`` is the field's attribute docstring (the string literal on the line after it, read with
  ``ast`` and cached; whitespace folded), so the docstring talks in flags;
- a ``Literal[...]`` type is a choice (any case; the value given is the choice as written);
- a ``bool`` that defaults to False is a ``--x`` switch, any other bool ``--x/--no-x``;
- the default is the field's (shown by ``--help``); a field without one is a required option;
- the flag is ``--field-name``; a nested config dataclass is expanded in place (flat flags, named by
  the inner field), so field names must be unique across the parts.

``Flag`` overrides what the command line needs beyond that (spellings, metavar, bounds) and keeps a
renamed flag's old spelling working as a hidden option for one release. ``bundle`` gathers fields
of several configs into one group (``cli/engine_options.py``); ``switches`` makes one on/off switch
per item of a registry (the filter's rules). Help panels are not set: the app prints plain click
help (``rich_markup_mode=None``), which has none. Float options refuse nan/inf
through ``refuse_non_finite``, applied once to the whole command tree.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import math
import sys
import textwrap
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin, get_type_hints

import click
import typer
from typer.models import OptionInfo

BadRecordMode = Literal["fail", "skip"]


def declare(hint: Any, *names: str, **settings: Any) -> Any:
    """An option declared by hand (the shared stream options below, options of commands without a
    config): the parameter annotation ``Annotated[hint, typer.Option(*names, **settings)]``."""
    return Annotated[hint, typer.Option(*names, **settings)]


Inputs = declare(
    list[str] | None,
    "-i",
    "--input",
    metavar="FILE",
    help="Input records: zstd (also concatenated shards), gzip, xz, bzip2 or plain JSONL, or Parquet / "
    "Arrow files, detected from the first bytes; a folder (a datasets save_to_disk folder, or "
    ".parquet/.arrow shards) is read as one input. Repeatable; '-' is stdin. [default: stdin]",
)
Output = declare(
    str | None,
    "-o",
    "--output",
    metavar="FILE",
    help="Write records to FILE instead of stdout; FILE may not be an input, and one run at a time writes "
    "it. Plain JSONL if FILE ends in .jsonl/.json, gzip for .gz, else zstd; --plain/--zstd force one (a "
    "resumed FILE keeps the encoding it has). Redirected stdout (> FILE) goes by its name the same way.",
)
Plain = declare(
    bool,
    "--plain",
    envvar="CODEPLAN_PLAIN",
    help="Write plain JSONL whatever the output's name (a terminal always gets plain).",
)
Zstd = declare(
    bool,
    "--zstd",
    help="Write zstd-compressed JSONL whatever the output's name (a pipe gets zstd unless --plain).",
)
StatsFile = declare(
    str | None,
    "--stats",
    metavar="FILE",
    help="Write the run's counters as JSON to FILE (shards merge by summing the counters).",
)
Rejects = declare(
    str | None,
    "--rejects",
    metavar="FILE",
    help="Write rejected records, each with meta.<command>.reason, to FILE.",
)
OnBadRecord = declare(
    BadRecordMode,
    "--on-bad-record",
    case_sensitive=False,
    help="On a malformed line, a missing or wrong-typed field, or damaged compressed input: 'fail' "
    "writes what was read before it, then stops with exit 65 naming file and line; 'skip' counts a bad "
    "line and writes it to --rejects (or names it on stderr), and skips damage to the next zstd frame, "
    "gzip member or input file (the lines in the damaged part are lost and counted in --stats).",
)
PromptField = declare(
    str | None,
    "--prompt-field",
    metavar="FIELD",
    help="Field holding the prompt (dotted path ok). [default: prompt, question, problem, "
    "instruction+input, or the last user turn of messages]",
)
ResponseField = declare(
    str | None,
    "--response-field",
    metavar="FIELD",
    help="Field holding the response. [default: response, output, solution, or the assistant turn of messages]",
)
Shard = declare(
    str | None,
    "--shard",
    metavar="I/N|auto",
    help="Process only the records whose id hashes to I mod N; 'auto' reads SLURM_ARRAY_TASK_ID "
    "and SLURM_ARRAY_TASK_COUNT. The N shard outputs together are exactly the unsharded output.",
)
Progress = declare(
    bool,
    "--progress/--no-progress",
    help="Show progress on stderr: a bar on a terminal (extract and generate also print a rate/ETA line to logs).",
)
Quiet = declare(bool, "-q", "--quiet", help="Do not print the end-of-run summary on stderr.")


def print_summary(stats, quiet: bool = False) -> None:
    """The end-of-run summary: one line of counters on stderr."""
    if not quiet:
        print(stats.summary(), file=sys.stderr)


# The stream options about reading records: a source (synth, tasks prepare), which makes its records,
# leaves them out (``@with_options(io=READING)``) and keeps where and how they are written.
READING = ("inputs", "rejects", "on_bad_record", "prompt_field", "response_field", "shard", "progress")


@dataclasses.dataclass(frozen=True)
class StreamOptions:
    """The record-stream options of one command invocation (each field is the option of the same name)."""

    inputs: Inputs = None
    output: Output = None
    plain: Plain = False
    zstd: Zstd = False
    rejects: Rejects = None
    on_bad_record: OnBadRecord = "fail"
    stats: StatsFile = None
    prompt_field: PromptField = None
    response_field: ResponseField = None
    shard: Shard = None
    progress: Progress = True
    quiet: Quiet = False

    def stage_io(self, stage: str, **settings: Any):
        """The ``StageIO`` of ``stage`` over these streams; ``settings`` adds require, resume_settings...
        or replaces a stream setting (a source names the files it reads as ``inputs``)."""
        from codeplan_tools.core.stage import StageIO

        streams = {
            "inputs": self.inputs or ["-"],
            "output": self.output,
            "plain": self.output_kind(),
            "rejects": self.rejects,
            "on_bad_record": self.on_bad_record,
            "stats_path": self.stats,
            "prompt_field": self.prompt_field,
            "response_field": self.response_field,
            "shard": self.shard,
            "progress": self.progress,
            "quiet": self.quiet,
        }
        return StageIO(stage=stage, **{**streams, **settings})

    def output_kind(self) -> bool | str:
        """What ``--plain``/``--zstd`` force, as ``streams.output_kind`` takes it (False: the name decides)."""
        return output_kind_flag(self.plain, self.zstd)


def output_kind_flag(plain: bool, zstd: bool) -> bool | str:
    """``--plain``/``--zstd`` as ``streams.output_kind`` takes them (False: the name decides)."""
    if plain and zstd:
        from codeplan_tools.core.errors import UsageError

        raise UsageError(
            "--plain (or CODEPLAN_PLAIN=1) and --zstd ask for different outputs; give one of them"
        )
    return "zstd" if zstd else plain


# ---------------------------------------------------------------------------------------------
# Options generated from config dataclasses.


class Flag:
    """How one config field appears on the command line, where the generated option does not fit.

    ``names``: the option's flags (default ``--field-name``; a bool field that defaults to False is a
    ``--x`` switch, any other bool ``--x/--no-x``). ``old``: the flags it had before a rename; they
    keep working, hidden from ``--help`` and the man pages, for one release. ``settings``: any other
    ``typer.Option`` setting (``min``, ``max``, ``metavar``, ``envvar``, ``help``...).
    """

    def __init__(self, *names: str, old: tuple[str, ...] = (), **settings: Any):
        self.names, self.old, self.settings = names, old, settings


# Per bundle parameter of ``with_options``: the fields it does not offer (they keep their defaults),
# or field name -> Flag (None: not offered). Nested config fields are named by their own name.
Flags = tuple[str, ...] | dict[str, Flag | None]


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Each field's attribute docstring (the string literal right after it), whitespace folded.

    Read with ``ast`` from the source of ``cls`` and of its base classes: they are the options' help.
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[:-1]):
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # a builtin or a class without source
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for stmt, after in zip(body, body[1:], strict=False):
            if (
                isinstance(stmt, ast.AnnAssign)
                and isinstance(stmt.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[stmt.target.id] = " ".join(after.value.value.split())
    return docs


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return inspect.Parameter.empty  # required


def _is_option(hint: Any) -> bool:
    """True for ``Annotated[T, typer.Option(...)]``: a field that declares its own option."""
    return get_origin(hint) is Annotated and any(isinstance(m, OptionInfo) for m in hint.__metadata__)


def _repeated(hint: Any) -> Any:
    """``T`` for ``tuple[T, ...]`` (or ``tuple[T, ...] | None``): a repeatable option; else None."""
    for kind in get_args(hint) if get_origin(hint) in (Union, UnionType) else (hint,):
        args = get_args(kind)
        if get_origin(kind) is tuple and len(args) == 2 and args[1] is Ellipsis:
            return args[0]
    return None


def _config_option(cls: type, name: str, hint: Any, default: Any, flag: Flag) -> Any:
    """``Annotated[hint, typer.Option(...)]`` for field ``name`` of the config ``cls``."""
    item = _repeated(hint)
    if item is not None:
        hint = list[item] | None  # typer repeats list options; the command gets a tuple back
    settings = dict(flag.settings)
    if "help" not in settings:
        try:
            settings["help"] = field_docs(cls)[name]
        except KeyError:
            raise TypeError(f"{cls.__name__}.{name} has no docstring: it is the option's --help") from None
    kinds = (
        [k for k in get_args(hint) if k is not type(None)]
        if get_origin(hint) in (Union, UnionType)
        else [hint]
    )
    if get_origin(kinds[0]) is Literal:
        settings.setdefault("case_sensitive", False)
    names = flag.names
    if not names:
        names = (f"--{name.replace('_', '-')}",)
        if kinds[0] is bool and default is not False:
            names = (f"{names[0]}/--no-{name.replace('_', '-')}",)
    return Annotated[hint, typer.Option(*names, **settings)]


OLD = "__old_name"  # suffix of the parameter that holds a renamed flag's old spelling


def _old_names(name: str, hint: Any, flag: Flag) -> inspect.Parameter:
    """A hidden option for the old flags of a renamed one (None unless given)."""
    new = next(n for n in (*flag.names, f"--{name.replace('_', '-')}") if n.startswith("--")).split("/")[0]
    settings = {k: v for k, v in flag.settings.items() if k != "help"}  # same bounds and metavar
    option = typer.Option(
        *flag.old, hidden=True, help=f"Old name of {new}, kept for one release.", **settings
    )
    return inspect.Parameter(
        name + OLD, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[hint | None, option], default=None
    )


def option(config: type, name: str, flag: Flag | None = None) -> Any:
    """The option of field ``name`` of ``config``, as a parameter annotation (its default is the field's)."""
    field = next(f for f in dataclasses.fields(config) if f.name == name)
    hint = get_type_hints(config, include_extras=True)[name]
    return _config_option(config, name, hint, _default(field), flag or Flag())


def bundle(name: str, *parts: tuple[type, str], flags: dict[str, Flag] | None = None) -> type:
    """A frozen dataclass of fields picked from configs, in the order given: a group of options.

    ``parts`` pairs a config with the names of its fields (space-separated); each bundle field is that
    config field (type, default and docstring), so several configs' settings can share one
    ``with_options`` parameter in the order ``--help`` shows them. ``bundle.of(config)`` is the values
    that belong to ``config``, as keyword arguments for it.
    """
    fields = []
    for config, names in parts:
        hints = get_type_hints(config, include_extras=True)
        by_name = {f.name: f for f in dataclasses.fields(config)}
        for field_name in names.split():
            metadata = {"config": config, "flag": (flags or {}).get(field_name)}
            default = dataclasses.field(default=_default(by_name[field_name]), metadata=metadata)
            fields.append((field_name, hints[field_name], default))

    def of(self: Any, config: type) -> dict[str, Any]:
        return {
            f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.metadata["config"] is config
        }

    return dataclasses.make_dataclass(name, fields, frozen=True, namespace={"of": of})


def switches(name: str, items: dict[str, tuple[str, bool]], off: str = "--skip-") -> type:
    """A frozen dataclass of one ``--KEY/--skip-KEY`` switch per item of a registry: key -> (help,
    default), in the registry's order. ``switches.on()`` is the keys switched on, in that order.

    The registry is read when the command is defined, so adding an item (a filter rule) adds its
    switch with no change to the command.
    """
    fields = [
        (
            key.replace("-", "_"),
            Annotated[bool, typer.Option(f"--{key}/{off}{key}", help=help)],
            dataclasses.field(default=default, metadata={"key": key}),
        )
        for key, (help, default) in items.items()
    ]

    def on(self: Any) -> tuple[str, ...]:
        return tuple(f.metadata["key"] for f in dataclasses.fields(self) if getattr(self, f.name))

    return dataclasses.make_dataclass(name, fields, frozen=True, namespace={"on": on})


def _expand(group: type, flags: dict[str, Flag | None], params: list[inspect.Parameter]) -> None:
    """Append one parameter per (nested) field of the dataclass ``group`` to ``params``."""
    hints = get_type_hints(group, include_extras=True)
    for field in dataclasses.fields(group):
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            _expand(hint, flags, params)
            continue
        if not field.init or (field.name in flags and flags[field.name] is None):
            continue
        flag = flags.get(field.name) or field.metadata.get("flag") or Flag()
        default = _default(field)
        if _repeated(hint) is not None and default == ():
            default = None  # shown as no default, like any repeatable option; () when not given
        if not _is_option(hint):
            hint = _config_option(field.metadata.get("config", group), field.name, hint, default, flag)
        params.append(
            inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, annotation=hint, default=default)
        )
        if flag.old:
            params.append(_old_names(field.name, hints[field.name], flag))


def _build(group: type, values: dict[str, Any]) -> Any:
    """The ``group`` instance (nested configs included) from the flat option values."""
    hints = get_type_hints(group)
    kwargs = {}
    for field in dataclasses.fields(group):
        if dataclasses.is_dataclass(hints[field.name]):
            kwargs[field.name] = _build(hints[field.name], values)
        elif field.name in values:
            old = values.pop(field.name + OLD, None)
            value = values.pop(field.name) if old is None else old
            if _repeated(hints[field.name]) is not None:
                if not value:
                    continue  # not given: the field's default
                value = tuple(value)
            kwargs[field.name] = value
    return group(**kwargs)


def with_options(**flags: Flags):
    """Expand each parameter annotated with a dataclass into one option per field.

    A field annotated ``Annotated[T, typer.Option(...)]`` (``StreamOptions``) is that option; any
    other field (a library config) becomes one from its docstring (the help), its type (``Literal``:
    a choice, any case; ``bool``: a switch) and its default. Fields that are dataclasses themselves
    are expanded in place, so nested configs give flat flags. ``flags`` adjusts, per parameter, the
    fields: ``@with_options(io=("shard",))`` leaves out ``shard`` (it keeps its default);
    ``@with_options(config={"model": Flag("-m", "--model"), "betas": None})``. The command is
    called with one dataclass value per such parameter.
    """

    def decorate(command):
        signature = inspect.signature(command, eval_str=True)
        params: list[inspect.Parameter] = []
        groups: dict[str, tuple[type, list[str]]] = {}
        for param in signature.parameters.values():
            group = param.annotation
            if not (isinstance(group, type) and dataclasses.is_dataclass(group)):
                params.append(param)
                continue
            given = flags.get(param.name, {})
            start = len(params)
            _expand(group, dict.fromkeys(given, None) if isinstance(given, tuple) else given, params)
            groups[param.name] = (group, [p.name for p in params[start:]])
        names = [p.name for p in params]
        if len(set(names)) != len(names):
            raise TypeError(f"{command.__name__}: two options share a name: {sorted(names)}")
        # Keyword-only: typer passes keywords, and a required field may follow one with a default.
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params]

        @functools.wraps(command)
        def run(**kwargs):
            for name, (group, fields) in groups.items():
                kwargs[name] = _build(group, {field: kwargs.pop(field) for field in fields})
            return command(**kwargs)

        run.__signature__ = signature.replace(parameters=params)
        run.__annotations__ = {p.name: p.annotation for p in params}
        del run.__wrapped__  # typer must read the expanded signature, not the command's own
        return run

    return decorate


class FiniteFloat(click.FloatRange):
    """A float option that refuses ``nan`` and ``inf`` (exit 2), optionally within ``min``/``max``.

    click's FloatRange lets ``nan`` through every bound (comparisons with nan are false).
    ``refuse_non_finite`` gives every bounded float option this type.
    """

    name = "float"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class _FiniteFloatParam(click.types.FloatParamType):
    """click's FLOAT, less ``nan`` and ``inf``."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


def refuse_non_finite(command: click.Command) -> click.Command:
    """Make every float option of ``command`` and its subcommands refuse ``nan``/``inf`` (exit 2).

    Done once over the whole command tree (``codeplan_cli.main.get_command``), so an option added
    later is covered without remembering to; a bounded option keeps its bounds and its help text
    (``FiniteFloat``, a ``FloatRange``), an unbounded one stays ``FLOAT``.
    """
    for param in command.params:
        kind = param.type
        if isinstance(kind, FiniteFloat | _FiniteFloatParam):
            continue
        if isinstance(kind, click.FloatRange):
            param.type = FiniteFloat(kind.min, kind.max, kind.min_open, kind.max_open, kind.clamp)
        elif isinstance(kind, click.types.FloatParamType):
            param.type = _FiniteFloatParam()
    for sub in getattr(command, "commands", {}).values():
        refuse_non_finite(sub)
    return command
