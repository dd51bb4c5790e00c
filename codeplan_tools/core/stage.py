"""The stage contract, and ``run_stage``: the one loop every subcommand shares.

A stage is an object with a ``name`` and ``run(records, ctx) -> records`` (:class:`Stage`). Everything
it does to its run besides yielding records goes through ``ctx`` (:class:`StageContext`): counters,
rejects with a reason, bad records, stamping ``meta.<stage>``, progress, flushing. The base class is
the in-memory context of library use and tests; :class:`StreamContext` is the one ``run_stage`` opens
on files and pipes. A stage whose work is per record plus, at most, an ordered part derives from
:class:`PerRecordStage`; ``run_stage(io, stage, workers=N)`` may then run its per-record part in N
worker processes (``codeplan_tools.core.pool``) with the same output, rejects and counters.

``run_stage(io, stage)`` reads the inputs line by line, parses and normalises each record
(:class:`Reader`), applies ``--shard`` and resume, hands the records to the stage and writes what it
yields. Accounting (SPEC §2): every input line is written, rejected (to ``--rejects`` with
``meta.<stage>.reason``), skipped as another shard's or as already done, or reported in an error::

    read == written + rejected + skipped_shard + skipped_done

A malformed line or a missing required field raises ``BadRecord`` (exit 65, ``file:line: reason``)
unless ``on_bad_record="skip"``, which rejects it instead. Without ``--rejects`` a skipped line is
reported on stderr with its file and line, and any other reject (an engine error, an unscorable
record, an over-long example) with its record id, at most 20 lines per run, so nothing disappears
silently; filter's rule rejects are only counted per rule (``SELECTING_STAGES``). The counters are
complete when ``--stats`` is written, also when the run stops with an error (the reader, the stage
and the worker pool are closed first).

``StreamContext`` opens a run's outputs, and before it opens, reads or cuts anything it checks the
paths and takes the locks (``codeplan_tools.core.outputs``): inputs exist (66),
``-o``/``--rejects``/``--stats`` are not an input nor each other (2) and can be written (73), no other
run holds ``-o`` or ``--rejects`` (75); then a resuming stage reads the ids already done
(``resume.completed_ids``, 78 for a file it did not write) and appends in the encoding the file has.
A write failing part-way is exit 74.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from tqdm import tqdm

from codeplan_tools.core.errors import BadRecord, UsageError
from codeplan_tools.core.outputs import OutputLock, OutputWriter, check_paths, existing_encoding
from codeplan_tools.core.records import InvalidRecord, dumps, normalize, parse_record, set_meta
from codeplan_tools.core.resume import completed_ids, run_key
from codeplan_tools.core.shard import in_shard, parse_shard
from codeplan_tools.core.stats import Stats
from codeplan_tools.core.streams import InputDamage, iter_lines, output_kind

# Stages whose rejects are their result (filter's rules), counted per rule: without --rejects they
# are not named one by one on stderr. Other stages' rejects are failures, each named (capped).
SELECTING_STAGES = frozenset({"filter"})


@dataclass
class StageIO:
    """Where a stage reads and writes, and how it treats bad input."""

    stage: str
    inputs: list[str] = field(default_factory=lambda: ["-"])
    output: str | None = None
    plain: bool | str = False
    rejects: str | None = None
    on_bad_record: str = "fail"
    stats_path: str | None = None
    prompt_field: str | None = None
    response_field: str | None = None
    # Canonical fields every record must have for this stage.
    require: tuple[str, ...] = ()
    shard: str | None = None
    # Settings that determine the output; when given, the stage resumes from `output`.
    resume_settings: dict[str, Any] | None = None
    progress: bool = True
    quiet: bool = False
    # A source (synth, tasks prepare) makes its records: no input is read, ``inputs`` only names
    # files it reads itself (checked against the outputs like any input).
    source: bool = False

    def __post_init__(self) -> None:
        if self.on_bad_record not in ("fail", "skip"):
            raise UsageError(f"--on-bad-record must be fail or skip, not {self.on_bad_record!r}")
        if not self.inputs and not self.source:
            self.inputs = ["-"]
        if self.resume_settings is not None and self.output in (None, "-"):
            # Nothing to resume from on a pipe; the run still works.
            self.resume_settings = None


# A record's position: (file, line) and, from a reader, the line as read (bytes).
Where = tuple


class StageContext:
    """What a stage sees of its run, whoever runs it: the counters (``stats``), rejection with a
    reason (:meth:`reject`, :meth:`bad_record`), stamping ``meta.<stage>`` (:meth:`stamp`), progress
    (``progress``, a tqdm bar or a disabled one) and flushing after each chunk (:meth:`flush`).

    This base class is the in-memory context of library use and tests: rejects are kept on
    ``rejected`` (each stamped with its reason), nothing is written, a bad record raises
    ``BadRecord`` unless ``on_bad_record="skip"``. :class:`StreamContext` is the one ``run_stage``
    opens on files and pipes; stages never need to know which one they were given.
    """

    def __init__(self, stage: str, stats: Stats | None = None, *, on_bad_record: str = "fail"):
        if on_bad_record not in ("fail", "skip"):
            raise UsageError(f"--on-bad-record must be fail or skip, not {on_bad_record!r}")
        self.stage = stage
        self.stats = stats if stats is not None else Stats(stage)
        self.fail_on_bad_record = on_bad_record == "fail"
        self.rejected: list[dict] = []
        # (file, line, line bytes) of the record the reader handed out last: a stage that finds the
        # record bad after reading (a wrong-typed field) names it and rejects the line as read.
        self.where: Where | None = None
        # The input files (for progress by bytes) and whether progress is shown at all.
        self.inputs: list[str] = []
        self.show_progress = False
        self.progress = tqdm(disable=True)
        # Added to every stamp of meta.<stage> (the run key and settings when resuming).
        self.run_stamp: dict[str, Any] | None = None

    def reject(self, record: dict, reason: str, **details: Any) -> None:
        """Count ``rejected`` and ``rejected.<rule>`` and keep the record with ``meta.<stage>.reason``."""
        self.stats.inc("rejected")
        self.stats.inc(f"rejected.{reason.split(':')[0]}")
        self._keep_reject(record, reason, details)

    def _keep_reject(self, record: dict, reason: str, details: dict) -> None:
        self.rejected.append(self._stamp_reason(record, reason, details))

    def _stamp_reason(self, record: dict, reason: str, details: dict) -> dict:
        """``meta.<stage>`` of a rejected record: what it held, the details and the reason."""
        meta = dict(((record.get("meta") or {}).get(self.stage)) or {})
        meta.update(details, reason=reason)
        return self.stamp(record, meta)

    def bad_record(self, record: dict, reason: str, index: int = 0) -> None:
        """A parsed record the stage cannot use (a field of the wrong type), handled as the reader
        handles a malformed line: ``BadRecord`` naming its file and line in fail mode, else counted in
        ``bad_records`` and rejected as ``{"line": ...}`` with reason ``bad-record: <reason>``. The
        position is the reader's (``where``: call it before reading the next record) or, for records
        handed over from Python, ``<records>:index``; the line is the line as read, or the record."""
        name, lineno, *raw = self.where or ("<records>", index)
        if self.fail_on_bad_record:
            raise BadRecord(name, lineno, reason)
        self.stats.inc("bad_records")
        line = raw[0].decode("utf-8", "replace") if raw and raw[0] is not None else dumps(record).decode()
        self.reject({"line": line}, f"bad-record: {reason}", file=name, line=lineno)

    def stamp(self, record: dict, values: dict) -> dict:
        """Set ``meta.<stage>`` to ``values`` (plus the run key when resuming)."""
        if self.run_stamp is not None:
            values = {**values, **self.run_stamp}
        return set_meta(record, self.stage, values)

    def flush(self) -> None:
        """Write out what is pending (stages call it after each engine chunk); nothing in memory."""


MemoryContext = StageContext  # the name library users look for


class StreamContext(StageContext):
    """One run's outputs (records, rejects, progress bar on stderr) opened on files or pipes: what
    ``run_stage`` hands its stage. Opened at construction, closed by :meth:`close`."""

    def __init__(self, io: StageIO, stats: Stats, key: str | None = None):
        super().__init__(io.stage, stats, on_bad_record=io.on_bad_record)
        self.io = io
        self._key = key
        self._reported = 0
        self._name_rejects = io.stage not in SELECTING_STAGES
        self.inputs = list(io.inputs)
        self.show_progress = io.progress and not io.quiet
        if key is not None:
            self.run_stamp = {"run_key": key, "settings": io.resume_settings}
        # Nothing is opened, read or cut before the paths are checked and the outputs locked.
        outputs = [("-o", io.output or "-")]
        outputs += [
            (flag, path) for flag, path in (("--rejects", io.rejects), ("--stats", io.stats_path)) if path
        ]
        check_paths(io.inputs, outputs)
        self._locks = ExitStack()
        try:
            for path in (io.output, io.rejects):
                if path not in (None, "-"):
                    self._locks.enter_context(OutputLock(path))
            # Resuming: the ids already done (the output and rejects files are checked, then repaired).
            self.done: set[str] = set()
            if key is not None and io.resume_settings is not None:
                self.done = completed_ids([io.output, io.rejects], io.stage, key, io.resume_settings)
            self.writer = self._open(io.output)
            self._rejects = self._open(io.rejects) if io.rejects else None
        except BaseException:
            self._locks.close()
            raise
        self.started = time.monotonic()
        # tqdm on stderr; disable=None hides it when stderr is not a terminal (batch logs stay small).
        self.progress = tqdm(
            desc=f"codeplan {io.stage}", unit=" rec", file=sys.stderr, disable=None if io.progress else True
        )

    def _open(self, path: str | None) -> OutputWriter:
        """A writer for ``path``; when resuming, it appends in the encoding the file already has."""
        if self._key is None:
            return OutputWriter(path, plain=self.io.plain, background=True)
        found = existing_encoding(path)
        if found is not None and found != output_kind(path, self.io.plain):
            described = {"zstd": "zstd-compressed", "gzip": "gzip-compressed"}.get(found, "plain")
            print(
                f"codeplan {self.io.stage}: note: {path} is {described} JSONL; resuming in that encoding "
                "(--plain, --zstd, CODEPLAN_PLAIN and the file name are ignored)",
                file=sys.stderr,
            )
        # Appending, the writer keeps the encoding the file has (OutputWriter).
        return OutputWriter(path, plain=self.io.plain, append=True, background=True)

    def close(self) -> None:
        """End of the run: close the progress bar, count the wall time, close output and rejects
        (each flushed as complete frames), write ``--stats`` and release the output locks."""
        self.progress.close()
        if not self.io.source:  # a source's counters are what it made (synth's --stats stay as they were)
            self.stats.inc("wall_seconds", round(time.monotonic() - self.started, 3))
        try:
            self.writer.close()
        finally:
            try:
                if self._rejects is not None:
                    self._rejects.close()
                if self.io.stats_path:
                    self.stats.write_json(self.io.stats_path)
            finally:
                self._locks.close()

    def flush(self) -> None:
        """Write out what is pending (stages call it after each engine chunk)."""
        self.writer.flush()
        if self._rejects is not None:
            self._rejects.flush()

    def _keep_reject(self, record: dict, reason: str, details: dict) -> None:
        """To the rejects file; without one, named on stderr (capped), except filter's rule rejects."""
        if self._rejects is not None:
            self._rejects.write(self._stamp_reason(record, reason, details))
        elif details.get("line") or self._name_rejects:
            line = details.get("line")
            where = f"{details.get('file')}:{line}" if line else f"record {record.get('id')!r}"
            detail = f" ({details['detail']})" if details.get("detail") else ""
            self._warn(f"{where}: {reason}{detail} (skipped)")

    def _warn(self, msg: str) -> None:
        self._reported += 1
        if self._reported <= 20:
            print(f"codeplan {self.io.stage}: warning: {msg}", file=sys.stderr)
        elif self._reported == 21:
            print(
                f"codeplan {self.io.stage}: warning: more skipped records; use --rejects FILE to keep them",
                file=sys.stderr,
            )


class Stage(Protocol):
    """The one shape of a step: records in, records out. Everything else a stage does to its run
    (count, reject with a reason, stamp ``meta.<stage>``, show progress, flush after a chunk) goes
    through ``ctx``. A source (``synth``, ``tasks prepare``) ignores ``records``; ``pack`` yields packs."""

    name: str

    def run(self, records: Iterator[dict], ctx: StageContext) -> Iterator[dict]: ...


class Lines(NamedTuple):
    """Records that went on in a worker process, in input order: their JSON lines joined by newlines
    (written as they are, in one piece, when the ordered part lets them pass unchanged) and their
    notes as :meth:`PerRecordStage.pack_notes` packed them."""

    data: bytes
    number: int  # of records
    notes: Any


class PerRecordStage:
    """A stage whose work is per record, plus at most an ordered part, so that ``run_stage`` can run
    the per-record part in worker processes (``workers=N``) with the same result.

    - :meth:`per_record` does the work that needs one record alone (filter's rules, scoring) and
      yields ``(record, note)`` for each record that goes on; ``note`` (picklable, may be None)
      tells :meth:`ordered` what it needs. It rejects through ``ctx``. It may run in a worker
      process, called once per batch of records on a copy of the stage (:meth:`for_worker`); its
      records then reach :meth:`ordered` as their JSON lines (bytes), or a stage that overrides
      :meth:`ordered_lines` gets a batch's records as one :class:`Lines` (notes packed with
      :meth:`pack_notes`) and may pass it on whole.
    - :meth:`ordered` runs in the main process over those pairs, in input order, and yields what is
      written: the part that depends on the records before (filter's dedup, the length profile).
      A record given as bytes stays bytes unless the ordered part changes it (:func:`as_record`).
    - :meth:`close` frees what ``per_record`` keeps between calls (score's math-verify processes).

    ``run`` composes them in one process: what library use and ``workers=1`` run.
    """

    name: str

    def per_record(self, records: Iterable[dict], ctx: StageContext) -> Iterator[tuple[dict, Any]]:
        raise NotImplementedError

    def ordered(self, items: Iterable[tuple[dict | bytes, Any]], ctx: StageContext) -> Iterator[dict | bytes]:
        """By default nothing depends on order: every record goes on as it came."""
        for record, _note in items:
            yield record

    def ordered_lines(
        self, items: Iterable[tuple[dict | bytes, Any] | Lines], ctx: StageContext
    ) -> Iterator[dict | bytes | Lines]:
        """:meth:`ordered` over what a worker pool hands on: ``(record, note)`` pairs and, from worker
        processes, :class:`Lines` of several records. By default each :class:`Lines` is taken apart
        into pairs; a stage may override this to pass whole :class:`Lines` on (``run_stage`` writes
        them as they are), so that the main process does no work per record."""
        return self.ordered(self._pairs(items), ctx)

    def _pairs(self, items: Iterable[tuple[dict | bytes, Any] | Lines]) -> Iterator[tuple[dict | bytes, Any]]:
        for item in items:
            if item.__class__ is Lines:
                data, number, packed = item
                yield from zip(data.split(b"\n"), self.unpack_notes(packed, number), strict=True)
            else:
                yield item  # type: ignore[misc]

    def for_worker(self) -> PerRecordStage:
        """The stage as each worker process runs it (e.g. with its own helper processes scaled down)."""
        return self

    def close(self) -> None:
        """Free what :meth:`per_record` keeps between calls; the stage may be used again after."""

    def pack_notes(self, notes: list) -> Any:
        """A worker batch's notes as sent to the main process, where :meth:`unpack_notes` reads them
        back: a stage whose notes are small objects, one per record, may pack them into a few
        (pickling costs per object)."""
        return notes

    def unpack_notes(self, packed: Any, count: int) -> Sequence:
        """The ``count`` notes that :meth:`pack_notes` packed, in order."""
        return packed

    def run(self, records: Iterable[dict], ctx: StageContext) -> Iterator[dict | bytes]:
        try:
            yield from self.ordered(self.per_record(records, ctx), ctx)
        finally:
            self.close()


def as_record(item: dict | bytes) -> dict:
    """The record of an item of :meth:`PerRecordStage.ordered`: itself, or parsed from a worker's line."""
    return parse_record(item) if item.__class__ is bytes else item  # type: ignore[return-value]


Transform = Callable[[Iterator[dict], StageContext], Iterable[dict]]


@dataclass(frozen=True)
class Reader:
    """What turns input lines into a stage's records (picklable: worker processes read with it too):
    parse (``records.parse_record``) and normalise each line, drop other shards' records and those
    already done. A bad line raises ``BadRecord`` in fail mode, else it is counted and rejected.
    Counts ``read``, ``bad_records``, ``skipped_shard`` and ``skipped_done``; sets ``ctx.where`` to the
    (file, line, line bytes) of the record handed out last."""

    prompt_field: str | None = None
    response_field: str | None = None
    require: tuple[str, ...] = ()
    shard: tuple[int, int] | None = None
    done: frozenset[str] | set[str] = frozenset()

    def records(
        self, lines: Iterable[tuple[str, int, bytes]], ctx: StageContext
    ) -> Generator[dict, None, None]:
        stats, shard, done = ctx.stats, self.shard, self.done
        prompt_field, response_field, require = self.prompt_field, self.response_field, self.require
        fail = ctx.fail_on_bad_record
        read = 0
        try:
            for name, lineno, line in lines:
                read += 1
                try:
                    record = parse_record(line)
                    normalize(record, prompt_field, response_field, require)
                except InvalidRecord as exc:
                    if fail:
                        raise BadRecord(name, lineno, str(exc)) from None
                    stats.inc("bad_records")
                    bad = {"line": line.decode("utf-8", "replace")}
                    ctx.reject(bad, f"bad-record: {exc}", file=name, line=lineno)
                    continue
                if shard is not None and not in_shard(record["id"], shard):
                    stats.inc("skipped_shard")
                    continue
                if done and record["id"] in done:
                    stats.inc("skipped_done")
                    continue
                ctx.where = (name, lineno, line)  # a later reject of this record keeps the line as read
                yield record
        finally:
            stats.inc("read", read)


def run_stage(
    io: StageIO, stage: Stage | PerRecordStage | Transform, stats: Stats | None = None, *, workers: int = 1
) -> Stats:
    """Stream records from ``io.inputs`` through a stage (or a bare ``transform(records, ctx)``) to
    ``io.output``; return the counters. With ``workers > 1`` a :class:`PerRecordStage` runs its
    per-record part in that many processes where it pays (``codeplan_tools.core.pool``)."""
    stats = stats or Stats(io.stage)
    shard = parse_shard(io.shard)
    key = run_key(io.resume_settings) if io.resume_settings is not None else None
    ctx = StreamContext(io, stats, key)
    reader = Reader(io.prompt_field, io.response_field, io.require, shard, ctx.done)
    run = stage.run if hasattr(stage, "run") else stage
    written = 0
    writer, update = ctx.writer, ctx.progress.update
    write, write_line, write_lines = writer.write, writer.write_line, writer.write_lines
    shown = 0  # records counted on the progress bar
    # Closed in order before the outputs are: the counters are complete when --stats is written.
    opened: list[Generator] = []
    try:
        if io.source:
            items = run(iter(()), ctx)
        elif workers > 1 and isinstance(stage, PerRecordStage):
            from codeplan_tools.core import pool

            per_record = pool.per_record(io.inputs, stage, ctx, reader, workers)
            opened.append(per_record)
            items = stage.ordered_lines(per_record, ctx)
        else:
            on_damage = None if ctx.fail_on_bad_record else damage_reporter(ctx)
            records = reader.records(iter_lines(io.inputs, on_damage), ctx)
            opened.append(records)
            items = run(records, ctx)
        if isinstance(items, Generator):
            opened.insert(0, items)
        for item in items:
            if isinstance(item, bytes):  # serialised in a worker process
                write_line(item)
                written += 1
            elif isinstance(item, Lines):  # several, serialised in a worker process
                write_lines(item.data, item.number)
                written += item.number
            else:
                write(item)
                written += 1
            if written - shown >= 256:  # the bar redraws itself; updating it per record costs time
                update(written - shown)
                shown = written
    finally:
        try:
            for generator in opened:
                generator.close()
        finally:
            stats.inc("written", written)
            ctx.progress.update(written - shown)
            ctx.close()
    return stats


def damage_reporter(ctx: StageContext) -> Callable[[InputDamage], None]:
    """``--on-bad-record skip``: damaged input is counted (``input_damage``, its bytes skipped and
    lines known lost) and named on stderr each time (it is rare, and each one loses data)."""

    def report(damage: InputDamage) -> None:
        ctx.stats.inc("input_damage")
        ctx.stats.inc("input_damage_bytes_skipped", damage.skipped_bytes)
        ctx.stats.inc("input_damage_lines_lost", damage.lost_lines)
        print(f"codeplan {ctx.stage}: warning: {damage.message()}", file=sys.stderr)

    return report


# -- helpers for stages that work in batches -----------------------------------------------------
def take_batches(records: Iterable[Any], size: int) -> Iterator[list]:
    """Lists of up to ``size`` items of ``records``, in order. When reading ``records`` raises (a bad
    line in fail mode, a damaged file), the items taken so far come out first and the error is raised
    when the next list is asked for: a stage that works in batches (score's chunks, pack's window)
    writes what it read before it fails. (``Exception`` only: Ctrl-C and SIGTERM stop at once.)"""
    batch: list = []
    items = iter(records)
    while True:
        try:
            item = next(items)
        except StopIteration:
            break
        except Exception as exc:
            if batch:
                yield batch
            raise exc
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
