"""``codeplan show`` as a library: pick records and render them for a person to read.

Reading is the stages' own: ``streams.iter_lines`` (zstd, gzip, xz, bzip2 or plain, told apart by
their first bytes), ``records.parse_record`` and ``records.normalize`` (so ``--prompt-field`` and
the shapes read without flags give the same ``prompt``/``response``). A bad line or damaged input
stops the run with exit 65 (``file:line``) under ``fail``, and is named on stderr and skipped under
``skip``.

Selection (``select``): ``--where FIELD=VALUE`` keeps a record when the value at the dotted path
FIELD equals VALUE (a string compared as is; a number, boolean or null by its JSON text, so
``meta.score.correct=false`` and ``difficulty=3`` work); several ``--where`` must all hold.
``--sample N`` then keeps N of the matching records chosen at random with ``--seed`` (reservoir
sampling: one pass, N records in memory, shown in input order; the same seed and input give the
same records).

Rendering (``render``): a rule with the record's id (and task), then the fields in reading order:
prompt, plan (Python syntax highlighting on a terminal), response, answer, samples (each with its
verdict from ``meta.score.samples``: correct or wrong, and the answer extracted), then any other
field as JSON, and ``meta`` folded to one line naming its stages. ``--fields`` names the fields to
show, in that order (dotted paths allowed); a ``meta`` named there is shown unfolded. Text is never
read as markup, so brackets in a prompt print as they are.

Output (``open_console``): on a terminal, colours and a pager (``$PAGER``, else ``less`` with
``LESS=-FRX`` unless set; fed as records are rendered, so a large file starts showing at once);
piped, plain text without escape codes and without wrapping (``show | grep`` sees whole lines).
"""

from __future__ import annotations

import os
import random
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import orjson
from rich.console import Console
from rich.rule import Rule
from rich.syntax import Syntax
from rich.text import Text

from codeplan_tools.core.errors import BadRecord, UsageError
from codeplan_tools.core.records import InvalidRecord, dumps, get_path, normalize, parse_record
from codeplan_tools.core.streams import PipeClosed, iter_lines

# Reading order of the fields a record may have; any other field follows them, meta last.
FIELD_ORDER = ("prompt", "plan", "response", "answer", "samples")
TITLE_FIELDS = ("id", "task")
MAX_WARNINGS = 20
PLAIN_WIDTH = 100  # the width of the rule between records when piped


# -- reading --------------------------------------------------------------------------------------
def read(
    paths: list[str],
    skip_bad: bool = False,
    prompt_field: str | None = None,
    response_field: str | None = None,
    warn: Callable[[str], None] | None = None,
) -> Iterator[dict]:
    """The records of ``paths``, normalised; bad lines and damage raise or (``skip_bad``) go to ``warn``."""
    warn = warn or (lambda msg: print(f"codeplan show: warning: {msg}", file=sys.stderr))
    on_damage = (lambda damage: warn(damage.message())) if skip_bad else None
    for name, lineno, line in iter_lines(paths, on_damage):
        try:
            yield normalize(parse_record(line), prompt_field, response_field)
        except InvalidRecord as exc:
            if not skip_bad:
                raise BadRecord(name, lineno, str(exc)) from None
            warn(f"{name}:{lineno}: bad-record: {exc} (skipped)")


def capped(limit: int = MAX_WARNINGS) -> Callable[[str], None]:
    """A stderr warner that names the first ``limit`` problems and then says there are more."""
    count = 0

    def warn(msg: str) -> None:
        nonlocal count
        count += 1
        if count <= limit:
            print(f"codeplan show: warning: {msg}", file=sys.stderr)
        elif count == limit + 1:
            print("codeplan show: warning: more bad lines skipped", file=sys.stderr)

    return warn


# -- selection ------------------------------------------------------------------------------------
def parse_where(spec: str) -> tuple[str, str]:
    """``FIELD=VALUE`` -> (FIELD, VALUE); the first ``=`` splits (a value may contain more)."""
    field, sep, value = spec.partition("=")
    if not sep or not field:
        raise UsageError(f"--where {spec!r}: give FIELD=VALUE, e.g. meta.filter.reason=code")
    return field, value


def _as_text(value: Any) -> str:
    return value if isinstance(value, str) else dumps(value).decode()


def matches(record: dict, wheres: Sequence[tuple[str, str]]) -> bool:
    """Whether every (dotted path, value) holds; a missing path never matches."""
    for path, want in wheres:
        got = get_path(record, path)
        if got is None and want != "null":
            return False
        if _as_text(got) != want:
            return False
    return True


def select(
    records: Iterable[dict],
    wheres: Sequence[tuple[str, str]] = (),
    sample: int | None = None,
    seed: int = 0,
) -> Iterator[dict]:
    """The records matching ``wheres``; with ``sample``, that many of them at random (see the docstring)."""
    kept = (r for r in records if matches(r, wheres)) if wheres else iter(records)
    if sample is None:
        yield from kept
        return
    rng = random.Random(seed)
    reservoir: list[tuple[int, dict]] = []
    for i, record in enumerate(kept):
        if i < sample:
            reservoir.append((i, record))
        else:
            j = rng.randrange(i + 1)
            if j < sample:
                reservoir[j] = (i, record)
    for _i, record in sorted(reservoir, key=lambda pair: pair[0]):
        yield record


# -- rendering ------------------------------------------------------------------------------------
def _json(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() if value is not None else "null"


class Renderer:
    """Renders records on ``console``; ``fields`` (dotted paths) limits and orders what is shown."""

    def __init__(self, console: Console, fields: list[str] | None = None) -> None:
        self.console = console
        self.fields = fields
        self.styled = console.is_terminal  # colours and highlighting only where a person sees them

    def render(self, record: dict) -> None:
        title = " · ".join(str(record[k]) for k in TITLE_FIELDS if isinstance(record.get(k), str | int))
        self.console.print(Rule(Text(title), style="cyan" if self.styled else ""))
        for name in self.fields or self._default_fields(record):
            value = get_path(record, name)
            if value is None and not (self.fields and name in record):
                continue
            self._field(record, name, value, unfold=bool(self.fields))
        self.console.print()

    def _default_fields(self, record: dict) -> list[str]:
        known = [f for f in FIELD_ORDER if f in record]
        rest = [f for f in record if f not in FIELD_ORDER and f not in TITLE_FIELDS and f != "meta"]
        return known + rest + (["meta"] if "meta" in record else [])

    def _label(self, text: str) -> None:
        self.console.print(Text(f"{text}:", style="bold magenta" if self.styled else ""))

    def _text(self, value: Any, style: str = "") -> None:
        text = value if isinstance(value, str) else _json(value)
        self.console.print(Text(text, style=style if self.styled else ""))

    def _code(self, plan: Any) -> None:
        if not isinstance(plan, str) or not self.styled:
            self._text(plan)
            return
        self.console.print(
            Syntax(plan, "python", theme="ansi_dark", word_wrap=True, background_color="default")
        )

    def _field(self, record: dict, name: str, value: Any, unfold: bool) -> None:
        if name == "meta" and not unfold:
            stages = ", ".join(value) if isinstance(value, dict) else type(value).__name__
            self.console.print(
                Text(f"meta: {stages} (folded; --fields meta shows it)", style="dim" if self.styled else "")
            )
            return
        if name == "samples" and isinstance(value, list):
            self._samples(record, value)
            return
        self._label(name)
        if name == "plan":
            self._code(value)
        else:
            self._text(value)

    def _samples(self, record: dict, samples: list) -> None:
        verdicts = get_path(record, "meta.score.samples")
        verdicts = verdicts if isinstance(verdicts, list) else []
        for j, sample in enumerate(samples):
            verdict = verdicts[j] if j < len(verdicts) and isinstance(verdicts[j], dict) else None
            self._sample_header(j, len(samples), verdict)
            if not isinstance(sample, dict):
                self._text(sample)
                continue
            if sample.get("plan") is not None:
                self._label("plan")
                self._code(sample["plan"])
            text = sample.get("response") if sample.get("response") is not None else sample.get("text")
            if text is not None:
                self._label("response" if sample.get("response") is not None else "text")
                self._text(text)
            facts = {k: sample[k] for k in ("finish_reason", "tokens_out", "seed") if k in sample}
            if facts:
                self._text("  ".join(f"{k}={_as_text(v)}" for k, v in facts.items()), style="dim")

    def _sample_header(self, j: int, n: int, verdict: dict | None) -> None:
        header = Text(f"sample {j + 1}/{n}", style="bold" if self.styled else "")
        if verdict is not None:
            if "correct" in verdict:
                mark, style = ("correct", "bold green") if verdict["correct"] else ("wrong", "bold red")
                header.append(f"  {mark}", style=style if self.styled else "")
            if "extracted" in verdict:
                header.append(f"  (extracted: {_as_text(verdict['extracted'])})")
        self.console.print(header)


# -- output ---------------------------------------------------------------------------------------
class _Console(Console):
    def on_broken_pipe(self) -> None:
        # rich exits with status 1; a reader that went away (| head, or quitting the pager) is normal:
        # PipeClosed ends the command quietly with 0 (cli/main.py), or just the paging here.
        raise PipeClosed()


@contextmanager
def open_console(page: bool = True) -> Iterator[Console]:
    """A console on stdout: plain when piped; on a terminal, coloured and (``page``) through a pager."""
    if not sys.stdout.isatty():
        # soft_wrap: text lines are written whole, never wrapped or cropped at the width (rules only).
        yield _Console(file=sys.stdout, highlight=False, no_color=True, width=PLAIN_WIDTH, soft_wrap=True)
        return
    command = os.environ.get("PAGER") or ("less" if shutil.which("less") else "")
    if not page or not command.strip():
        yield _Console(highlight=False)
        return
    width = shutil.get_terminal_size().columns
    env = {**os.environ, "LESS": os.environ.get("LESS", "-FRX")}  # -R: colours; -F: one screen exits
    try:
        pager = subprocess.Popen(shlex.split(command), stdin=subprocess.PIPE, env=env)
    except OSError as exc:
        print(
            f"codeplan show: warning: pager {command!r} did not start ({exc.strerror}); not paging",
            file=sys.stderr,
        )
        yield _Console(highlight=False)
        return
    assert pager.stdin is not None  # stdin=PIPE
    stream = open(pager.stdin.fileno(), "w", encoding="utf-8", errors="replace", closefd=False)  # noqa: SIM115
    try:
        yield _Console(file=stream, force_terminal=True, width=width, highlight=False)
        stream.flush()
    except PipeClosed:
        pass  # the reader quit the pager before the end: nothing more to show
    finally:
        try:
            stream.close()
            pager.stdin.close()
        except BrokenPipeError:
            pass
        pager.wait()
