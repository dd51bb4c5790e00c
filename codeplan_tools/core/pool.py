"""``run_stage(io, stage, workers=N)``: the per-record part of a stage in N worker processes.

The main process decodes the input (in a feeder thread, so reading never waits on writing), cuts it
into batches of ``BATCH_LINES`` lines or about ``BATCH_BYTES`` and hands batch ``i`` to worker
``i % N``. It does no work per line or per record: a batch of text input is whole decoded chunks
(``streams.iter_blocks``) cut at a newline, counted with ``bytes.count``; the worker splits it into
lines (``streams.block_lines``). A worker reads its batch as ``run_stage`` reads its input
(``stage.Reader``: parse, normalise, ``--shard``, resume), runs the stage's ``per_record`` part on it
(on the copy ``for_worker`` made) and serialises what goes on. It sends back, in order, the records
that go on as :class:`stage.Lines` (their JSON lines joined in one bytes object, with their notes
packed by the stage's ``pack_notes``: a few objects to pickle per batch, not one per record) and,
between them, each reject; with its counters and the error that stopped it, if any. The main process
takes the results back in batch order, replays the rejects in its own context (where they are
counted and written, once), hands the records to the stage's ``ordered_lines`` part (filter's dedup
and profile: set operations on a whole :class:`Lines`, which is then written as it is) and writes
them. So the output, the rejects, stderr and the counters are those of the single-process path, in
the same order.

When processes do not pay, none is started and the stage runs in this process, as with
``workers=1``: on stdin (a batch waits until it is full, which a slow pipe would turn into latency)
and when the input holds one batch or less.

Errors keep the single-process path's guarantees: a bad line or record in fail mode stops the run
with ``file:line`` after the records before it are written; when reading stops with an error (a
damaged file in fail mode), the lines read before it still go through as a last batch first; in skip
mode, damaged input comes out of ``_batches`` between the batches, in order, and is counted and
reported by the main process (``stage.damage_reporter``). When the run ends normally the workers are
let go (a stage's helpers, such as score's math-verify processes, are closed); when it stops early
they are killed (their helpers end at the end of their input).
"""

from __future__ import annotations

import multiprocessing
import os
import pickle
import queue
import signal
import threading
from collections.abc import Generator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from codeplan_tools.core.errors import BadRecord
from codeplan_tools.core.records import dumps
from codeplan_tools.core.stage import Lines, PerRecordStage, Reader, StageContext, damage_reporter
from codeplan_tools.core.stats import Stats
from codeplan_tools.core.streams import (
    Block,
    InputDamage,
    block_lines,
    count_newlines,
    iter_blocks,
    iter_lines,
)

BATCH_LINES = 1000
BATCH_BYTES = 1 << 20
_SENT = "a batch was sent"  # what the feeder tells the main thread (its result comes back in order)


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def per_record(
    inputs: list[str], stage: PerRecordStage, ctx: StageContext, reader: Reader, workers: int
) -> Generator[tuple[dict | bytes, Any] | Lines, None, None]:
    """``stage.per_record`` over the records of ``inputs``, in input order: from ``workers`` processes
    where that pays (as :class:`Lines`), else from this process (see the module docstring)."""
    skip_damage = not ctx.fail_on_bad_record
    report_damage = damage_reporter(ctx)
    lines: Iterable[tuple[str, int, bytes]]
    if "-" in inputs:
        lines = iter_lines(inputs, report_damage if skip_damage else None)
    else:
        batches = _batches(inputs, skip_damage)
        head, error = _first_batches(batches, 2)
        if error is None and sum(isinstance(item, _BATCHES) for item in head) >= 2:
            yield from _pooled(_chain(head, batches), stage, ctx, reader, workers)
            return
        lines = _lines_of(head, error, report_damage)
    records = reader.records(lines, ctx)
    try:
        yield from stage.per_record(records, ctx)
    finally:
        records.close()
        stage.close()


class _Batch:
    """Consecutive rows of a Parquet/Arrow input: their bytes, row numbers and file names (as runs of
    [name, count])."""

    __slots__ = ("lines", "linenos", "names", "size")

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.linenos: list[int] = []
        self.names: list[list] = []
        self.size = 0

    def add(self, name: str, lineno: int, line: bytes) -> None:
        self.lines.append(line)
        self.linenos.append(lineno)
        self.size += len(line)
        names = self.names
        if names and names[-1][0] is name:  # one name object per input file (iter_lines)
            names[-1][1] += 1
        else:
            names.append([name, 1])

    def full(self) -> bool:
        return len(self.lines) >= BATCH_LINES or self.size >= BATCH_BYTES

    def message(self) -> tuple:
        """What a worker is sent: one newline-joined bytes object and the positions."""
        return self.names, self.linenos, b"\n".join(self.lines)

    def items(self) -> Iterator[tuple[str, int, bytes]]:
        return _items(self.message())


class _TextBatch:
    """Consecutive lines of one text input, gathered from ``iter_blocks`` without looking at each line:
    a worker is sent them as one :class:`Block` and splits them itself."""

    __slots__ = ("name", "start", "parts", "lines", "size", "ended")

    def __init__(self, name: str, start: int) -> None:
        self.name, self.start = name, start
        self.parts: list[bytes] = []
        self.lines = 0  # newlines in parts
        self.size = 0
        self.ended = False  # the input's last line, without a newline, is in it: nothing may follow

    def follows(self, block: Block) -> bool:
        return not self.ended and block.name is self.name and block.start == self.start + self.lines

    def add(self, data: bytes, lines: int) -> None:
        self.parts.append(data)
        self.lines += lines
        self.size += len(data)
        self.ended = not data.endswith(b"\n")

    def message(self) -> Block:
        return Block(self.name, self.start, b"".join(self.parts))

    def items(self) -> Iterator[tuple[str, int, bytes]]:
        return block_lines(self.message())


_BATCHES = (_Batch, _TextBatch)


def _items(message: tuple) -> Iterator[tuple[str, int, bytes]]:
    """The ``(file, line, bytes)`` of a batch, as ``iter_lines`` gave them."""
    if message.__class__ is Block:
        return block_lines(message)
    names, linenos, data = message
    files: list[str] = []
    for name, count in names:
        files += [name] * count
    return zip(files, linenos, data.split(b"\n"), strict=True)


def _after_newline(data: bytes, n: int) -> int:
    """The offset just after the ``n``-th newline of ``data`` (which has at least ``n``)."""
    pos = 0
    for _ in range(n):
        pos = data.index(b"\n", pos) + 1
    return pos


def _batches(inputs: list[str], skip_damage: bool) -> Iterator[_Batch | _TextBatch | InputDamage]:
    """The lines of ``inputs`` in batches of at most BATCH_LINES lines or about BATCH_BYTES, and, with
    ``skip_damage``, each damaged stretch of input as an ``InputDamage`` in its place between them.
    When reading fails, the lines before the error come out first. Text input is cut into batches
    by counting newlines (C-level), not line by line: the main process does no work per line."""
    damages: list[InputDamage] = []
    rows = _Batch()  # Parquet/Arrow rows
    text: _TextBatch | None = None
    try:
        for item in iter_blocks(inputs, damages.append if skip_damage else None):
            if damages:  # found before this item was read
                if text is not None:
                    yield text
                    text = None
                if rows.lines:
                    yield rows
                    rows = _Batch()
                yield from damages
                damages.clear()
            if item.__class__ is not Block:  # a row of a Parquet/Arrow input
                if text is not None:
                    yield text
                    text = None
                rows.add(*item)
                if rows.full():
                    yield rows
                    rows = _Batch()
                continue
            if rows.lines:
                yield rows
                rows = _Batch()
            name, start, data = item
            if text is not None and not text.follows(item):
                yield text
                text = None
            count = count_newlines(data)
            while True:
                if text is None:
                    text = _TextBatch(name, start)
                room = BATCH_LINES - text.lines
                if count < room:
                    text.add(data, count)
                    if text.size >= BATCH_BYTES or text.ended:
                        yield text
                        text = None
                    break
                cut = _after_newline(data, room)
                text.add(data[:cut], room)
                yield text
                text = None
                data, start, count = data[cut:], start + room, count - room
                if not data:
                    break
    except Exception:
        if text is not None:
            yield text
        if rows.lines:
            yield rows
        raise
    if text is not None:
        yield text
    if rows.lines:
        yield rows
    yield from damages


def _first_batches(batches: Iterator, n: int) -> tuple[list, Exception | None]:
    """The items of ``batches`` up to its ``n``-th batch, and the error that ended it sooner, if any."""
    head: list = []
    try:
        for item in batches:
            head.append(item)
            if isinstance(item, _BATCHES):
                n -= 1
                if not n:
                    break
    except Exception as exc:  # raised after the items before it are handled
        return head, exc
    return head, None


def _chain(head: list, rest: Iterator) -> Iterator:
    yield from head
    yield from rest


def _lines_of(head: list, error: Exception | None, report_damage) -> Iterator[tuple[str, int, bytes]]:
    """The lines of the batches read ahead, damage reported in its place, then the error, if any."""
    for item in head:
        if isinstance(item, InputDamage):
            report_damage(item)
        else:
            yield from item.items()
    if error is not None:
        raise error


class Rejected(NamedTuple):
    """A reject made in a worker process; the main process counts and writes it."""

    record: dict
    reason: str
    details: dict


class _Failure(NamedTuple):
    """The ``BadRecord`` that stopped a worker's batch (an exception with a custom ``__init__`` does
    not unpickle)."""

    path: str
    line: int
    reason: str


@dataclass(frozen=True)
class _Job:
    """What each worker is given once: its copy of the stage, the reader, and its context's settings."""

    stage: PerRecordStage
    reader: Reader
    on_bad_record: str
    run_stamp: dict[str, Any] | None


class _WorkerContext(StageContext):
    """A worker's context: the batch's result is ``parts``, in input order: :class:`Lines` of the
    records that went on and, between them, each reject (``Rejected``); counters are per batch and
    added to the main process's."""

    def __init__(self, job: _Job):
        super().__init__(job.stage.name, on_bad_record=job.on_bad_record)
        self.run_stamp = job.run_stamp
        self.pack = job.stage.pack_notes
        self.parts: list[Lines | Rejected] = []
        self.lines: list[bytes] = []
        self.notes: list = []

    def end_lines(self) -> None:
        """The records gathered so far become one part."""
        if self.lines:
            self.parts.append(Lines(b"\n".join(self.lines), len(self.lines), self.pack(self.notes[:])))
            self.lines.clear()  # (cleared, not replaced: _work holds their append methods)
            self.notes.clear()

    def reject(self, record: dict, reason: str, **details: Any) -> None:
        self.end_lines()
        self.parts.append(Rejected(record, reason, details))


def _work(job: _Job, ctx: _WorkerContext, message: tuple) -> tuple[list, dict, Any]:
    """One batch through the reader and the stage's per-record part: ``(parts, counters, error)``."""
    ctx.parts, ctx.lines, ctx.notes = [], [], []
    ctx.stats = Stats(ctx.stage)
    error: Any = None
    records = job.reader.records(_items(message), ctx)
    add_line, add_note = ctx.lines.append, ctx.notes.append
    try:
        for record, note in job.stage.per_record(records, ctx):
            add_line(dumps(record))
            add_note(note)
    except BadRecord as exc:
        error = _Failure(exc.path, exc.line, exc.reason)
    except Exception as exc:  # raised by the main process in its place
        error = exc
    finally:
        records.close()  # counts `read` before the counters go back
    ctx.end_lines()
    try:
        pickle.dumps(error)
    except Exception:
        error = RuntimeError(f"{type(error).__name__}: {error}")
    return ctx.parts, dict(ctx.stats.counters), error


def _worker_main(inbox, outbox, job: _Job) -> None:
    # The main process owns the run: a terminal's Ctrl-C or a group's SIGTERM is its to handle,
    # and it lets the workers go (or kills them) when it stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # tqdm's default lock is a multiprocessing one (a semaphore): made in a worker that is killed
    # when a run stops early, it is reported as leaked on stderr. A worker draws no bar.
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())
    ctx = _WorkerContext(job)
    try:
        while True:
            try:
                message = inbox.recv()
            except (EOFError, OSError):
                return
            result = _work(job, ctx, message)
            try:
                outbox.send(result)
            except (BrokenPipeError, OSError):
                return
    finally:
        job.stage.close()


class _Pool:
    """N worker processes, each with a pipe in and a pipe out; batch i goes to worker i % N."""

    def __init__(self, n: int, job: _Job):
        # spawn: a clean interpreter (no inherited threads or locks), and the workers stay our children,
        # so their CPU time is counted in ours (getrusage RUSAGE_CHILDREN, `time`).
        mp = multiprocessing.get_context("spawn")
        self.inboxes, self.outboxes, self.procs = [], [], []
        for _ in range(n):
            in_r, in_w = mp.Pipe(duplex=False)
            out_r, out_w = mp.Pipe(duplex=False)
            proc = mp.Process(
                target=_worker_main, args=(in_r, out_w, job), daemon=True, name=f"codeplan-{job.stage.name}"
            )
            proc.start()
            in_r.close()
            out_w.close()
            self.inboxes.append(in_w)
            self.outboxes.append(out_r)
            self.procs.append(proc)

    def result(self, index: int) -> tuple[list, dict, Any]:
        worker = index % len(self.procs)
        try:
            return self.outboxes[worker].recv()
        except EOFError:
            self.procs[worker].join(1)
            raise RuntimeError(
                f"worker process {worker + 1} stopped (exit status {self.procs[worker].exitcode})"
            ) from None

    def close(self, finished: bool) -> None:
        """``finished``: every batch is done, the workers end at the end of their input (and close
        the stage); otherwise they are killed first, so that a feeder blocked on a full pipe gets
        EPIPE and ends."""
        if finished:
            for conn in self.inboxes:
                conn.close()
            for proc in self.procs:
                proc.join(5)
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
        for proc in self.procs:
            proc.join(5)
        for conn in self.inboxes + self.outboxes:
            conn.close()


def _feed(pool: _Pool, batches: Iterator, pending: queue.Queue, stop: threading.Event) -> None:
    """Feeder thread: read batches and send them round-robin; the main thread learns of each in order
    (and of damaged input, which goes to no worker)."""
    n = len(pool.inboxes)
    index = 0
    try:
        for batch in batches:
            if stop.is_set():
                return
            if isinstance(batch, InputDamage):
                pending.put(batch)
                continue
            pending.put(_SENT)  # its result comes back from worker index % n
            pool.inboxes[index % n].send(batch.message())
            index += 1
    except BaseException as exc:  # a read error (corrupt input) or a stopped run; the main thread decides
        if not stop.is_set():
            pending.put(exc)
    finally:
        pending.put(None)


def _pooled(
    batches: Iterator, stage: PerRecordStage, ctx: StageContext, reader: Reader, workers: int
) -> Iterator[Lines]:
    """The main process's half: results in batch order, rejects replayed in ``ctx``."""
    job = _Job(stage.for_worker(), reader, "fail" if ctx.fail_on_bad_record else "skip", ctx.run_stamp)
    pool = _Pool(workers, job)
    pending: queue.Queue = queue.Queue()
    stop = threading.Event()
    feeder = threading.Thread(target=_feed, args=(pool, batches, pending, stop), daemon=True)
    feeder.start()
    report_damage = damage_reporter(ctx)
    reject, counters = ctx.reject, ctx.stats.counters
    finished = False
    try:
        index = 0
        while (item := pending.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, InputDamage):
                report_damage(item)
                continue
            parts, batch_counters, error = pool.result(index)
            index += 1
            counters.update(batch_counters)
            for part in parts:
                if part.__class__ is Lines:
                    yield part
                else:
                    reject(part.record, part.reason, **part.details)
            if error is not None:
                raise BadRecord(*error) if isinstance(error, _Failure) else error
        finished = True
    finally:
        stop.set()
        pool.close(finished)
        feeder.join(5)
