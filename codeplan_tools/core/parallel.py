"""``codeplan filter --workers N``: the per-record work of ``filter`` in worker processes.

The main process reads the input lines, cuts them into batches and hands batch ``i`` to worker
``i % N`` (from a feeder thread, so reading never waits on writing). A worker parses, normalises,
runs every rule but ``dedup``, measures the ``--stats`` profile and serialises the record. The main
process takes the results back in batch order and does everything that depends on order or owns a
file: ``dedup`` (first kept wins, on a digest the worker computed), writing, rejects, counters and
bad lines (exit 65 naming ``file:line``, or ``--on-bad-record skip``). The output, the rejects and
the counters are the same as those of the single-process path (``run_stage`` + ``filter_records``),
in the same order.

Workers start only when the input holds more than one batch, and only for file inputs: a batch
waits until it is full, which a slow pipe on stdin would turn into latency.

Errors keep the single-process path's guarantees: when reading stops with an error (a damaged file in
fail mode), the lines read before it still go out as a last batch and are written before the error is
raised; in skip mode, damaged input comes out of ``_batches`` between the batches, in order, and is
counted and reported by the main process (``stage.damage_reporter``).
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import threading
from dataclasses import dataclass, replace

from codeplan_tools.core.errors import BadRecord
from codeplan_tools.core.records import InvalidRecord, normalize, parse_record
from codeplan_tools.core.stage import StageIO, StreamContext, damage_reporter
from codeplan_tools.core.stats import Stats
from codeplan_tools.core.streams import InputDamage, dumps, iter_lines
from codeplan_tools.stages.filter import (
    DUPLICATE,
    RULES,
    FilterConfig,
    LengthProfile,
    check_record,
    count_failures,
    measure,
    prompt_digest,
)

BATCH_LINES = 1000
BATCH_BYTES = 1 << 20
_BAD = False  # first field of a bad line's result (a parsed record's is None or its reasons)


def default_workers() -> int:
    """Usable CPUs, at most 4: beyond that the main process (decompress, compress, write) is the limit."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def can_run(io: StageIO, config: FilterConfig) -> bool:
    """Whether the parallel path applies: file inputs, no shard or resume, dedup (if on) last."""
    if io.shard is not None or io.resume_settings is not None:
        return False
    if any(path == "-" for path in io.inputs):
        return False
    return "dedup" not in config.enabled or list(RULES)[-1] == "dedup"


@dataclass(frozen=True)
class Job:
    """What a worker needs: the rule settings (without dedup's state) and the reader's settings."""

    config: FilterConfig
    prompt_field: str | None
    response_field: str | None
    require: tuple[str, ...]


def work(lines: list[bytes], job: Job) -> list[tuple]:
    """Per line: ``(False, reason, None, None)`` for a bad line, else ``(reasons, line_out, digest, measured)``.

    ``reasons`` is None when every rule but dedup passed; ``line_out`` is the serialised record as it
    would be written (kept, or marked with --annotate); ``digest`` is set when dedup must look.
    """
    config = job.config
    checks = [r.check for name, r in RULES.items() if name in config.enabled and name != "dedup"]
    annotate, dedup_on = config.annotate, "dedup" in config.enabled
    pf, rf, require = job.prompt_field, job.response_field, job.require
    out = []
    append = out.append
    for line in lines:
        try:
            record = parse_record(line)
            normalize(record, pf, rf, require)
            reasons = check_record(record, config, checks)  # a field of the wrong type: InvalidRecord
        except InvalidRecord as exc:
            append((_BAD, str(exc), None, None))
            continue
        meta = record.get("meta")
        if not isinstance(meta, dict):
            record["meta"] = meta = {}
        digest = prompt_digest(record) if dedup_on and (reasons is None or annotate) else None
        if reasons is None:
            measured = measure(record) if config.profile else None
            meta["filter"] = {"kept": True}
            append((None, dumps(record), digest, measured))
        elif annotate:
            meta["filter"] = {"kept": False, "reason": reasons[0], "reasons": reasons}
            append((reasons, dumps(record), digest, None))
        else:
            append((reasons, None, None, None))
    return out


def _worker_main(inbox, outbox, job: Job) -> None:
    # The main process owns the run: a terminal's Ctrl-C or a group's SIGTERM is its to handle,
    # and it kills the workers when it stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        try:
            data = inbox.recv_bytes()
        except (EOFError, OSError):
            return
        try:
            result = work(data.split(b"\n"), job)
        except Exception as exc:  # handed to the main process, which raises it in order
            result = exc
        try:
            outbox.send(result)
        except (BrokenPipeError, OSError):
            return


class _Pool:
    """N worker processes, each with a pipe in and a pipe out; batch i goes to worker i % N."""

    def __init__(self, n: int, job: Job):
        # spawn: a clean interpreter (no inherited threads or locks), and the workers stay our children,
        # so their CPU time is counted in ours (getrusage RUSAGE_CHILDREN, `time`).
        mp = multiprocessing.get_context("spawn")
        self.inboxes, self.outboxes, self.procs = [], [], []
        for _ in range(n):
            in_r, in_w = mp.Pipe(duplex=False)
            out_r, out_w = mp.Pipe(duplex=False)
            proc = mp.Process(
                target=_worker_main, args=(in_r, out_w, job), daemon=True, name="codeplan-filter"
            )
            proc.start()
            in_r.close()
            out_w.close()
            self.inboxes.append(in_w)
            self.outboxes.append(out_r)
            self.procs.append(proc)

    def close(self) -> None:
        # Kill first: a feeder thread blocked on a full pipe then gets EPIPE and ends.
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
        for proc in self.procs:
            proc.join(5)
        for conn in self.inboxes + self.outboxes:
            conn.close()


def _batches(inputs: list[str], skip_damage: bool):
    """The lines of ``inputs`` as lists of ``(name, lineno, line)`` of at most BATCH_LINES lines or about
    BATCH_BYTES, and, with ``skip_damage``, each damaged stretch of input as an ``InputDamage`` in its
    place between them. When reading fails, the lines before the error come out first."""
    damages: list[InputDamage] = []
    batch, size = [], 0
    try:
        for item in iter_lines(inputs, damages.append if skip_damage else None):
            if damages:  # found before `item` was read
                if batch:
                    yield batch
                    batch, size = [], 0
                yield from damages
                damages.clear()
            batch.append(item)
            size += len(item[2])
            if len(batch) >= BATCH_LINES or size >= BATCH_BYTES:
                yield batch
                batch, size = [], 0
    except Exception:
        if batch:
            yield batch
        raise
    if batch:
        yield batch
    yield from damages


def run_filter_parallel(io: StageIO, config: FilterConfig, workers: int, stats: Stats | None = None) -> Stats:
    """``run_stage(io, filter_records...)`` with the per-record work spread over ``workers`` processes."""
    stats = stats or Stats(io.stage)
    unknown = set(config.enabled) - set(RULES)
    if unknown:
        raise ValueError(f"unknown filter rules: {sorted(unknown)}")
    job = Job(replace(config, seen=set()), io.prompt_field, io.response_field, io.require)
    ctx = StreamContext(io, stats)
    merge = _Merge(io, config, ctx)
    report_damage = damage_reporter(ctx)
    pool = feeder = None
    stop = threading.Event()
    try:
        batches = _batches(io.inputs, skip_damage=io.on_bad_record == "skip")
        head, error = _first_batches(batches, 2)
        if error is not None or sum(isinstance(item, list) for item in head) < 2:
            # One batch or none (or reading failed early): not worth starting processes.
            for item in head:
                if isinstance(item, InputDamage):
                    report_damage(item)
                else:
                    merge.batch(item, work([line for _, _, line in item], job))
            if error is not None:
                raise error
        else:
            pool = _Pool(workers, job)
            pending: queue.Queue = queue.Queue()
            feeder = threading.Thread(
                target=_feed, args=(pool, _chain(head, batches), pending, stop), daemon=True
            )
            feeder.start()
            index = 0
            while True:
                item = pending.get()
                if item is None:
                    break
                if isinstance(item, BaseException):
                    raise item
                if isinstance(item, InputDamage):
                    report_damage(item)
                    continue
                result = pool.outboxes[index % workers].recv()
                if isinstance(result, BaseException):
                    raise result
                merge.batch(item, result)
                index += 1
        if config.profile:
            stats.derived["passed"] = merge.profile.summary()
    finally:
        stop.set()
        if pool is not None:
            pool.close()
            feeder.join(5)
        merge.finish()
        ctx.close()
    return stats


def _first_batches(batches, n: int) -> tuple[list, Exception | None]:
    """The items of ``batches`` up to its ``n``-th batch, and the error that ended it sooner, if any."""
    head: list = []
    try:
        for item in batches:
            head.append(item)
            if isinstance(item, list):
                n -= 1
                if not n:
                    break
    except Exception as exc:  # raised after the items before it are handled
        return head, exc
    return head, None


def _chain(head, rest):
    yield from head
    yield from rest


def _feed(pool: _Pool, batches, pending: queue.Queue, stop: threading.Event) -> None:
    """Feeder thread: read batches and send them round-robin; the main thread learns of each in order
    (and of damaged input, which goes to no worker)."""
    n = len(pool.inboxes)
    index = 0
    try:
        for batch in batches:
            if stop.is_set():
                return
            pending.put(batch)
            if isinstance(batch, InputDamage):
                continue
            pool.inboxes[index % n].send_bytes(b"\n".join([item[2] for item in batch]))
            index += 1
    except BaseException as exc:  # a read error (corrupt input) or a stopped run; the main thread decides
        if not stop.is_set():
            pending.put(exc)
    finally:
        pending.put(None)


class _Merge:
    """The order-dependent half: dedup, writing, rejects, counters, bad lines (main process)."""

    def __init__(self, io: StageIO, config: FilterConfig, ctx: StreamContext):
        self.io, self.config, self.ctx = io, config, ctx
        self.profile = LengthProfile()
        self.read = self.written = self.kept = 0

    def batch(self, items: list[tuple], results: list[tuple]) -> None:
        io, config, ctx, stats = self.io, self.config, self.ctx, self.ctx.stats
        seen, annotate, fail = config.seen, config.annotate, io.on_bad_record == "fail"
        write_line, add, update = ctx.writer.write_line, self.profile.add_measured, ctx.progress.update
        for (name, lineno, line), (reasons, out, digest, measured) in zip(items, results, strict=True):
            self.read += 1
            if reasons is _BAD:
                if fail:
                    raise BadRecord(name, lineno, out)
                stats.inc("bad_records")
                ctx.reject(
                    {"line": line.decode("utf-8", "replace")}, f"bad-record: {out}", file=name, line=lineno
                )
                continue
            if digest is not None:
                if digest in seen:
                    reasons = [DUPLICATE] if reasons is None else [*reasons, DUPLICATE]
                    out = None  # written by the worker as kept: rebuilt below
                else:
                    seen.add(digest)
            if reasons is None:
                self.kept += 1
                if measured is not None:
                    add(measured)
            else:
                count_failures(stats, reasons, annotate)
                if not annotate:
                    ctx.reject(self._record(line), reasons[0])
                    continue
                if out is None:
                    record = self._record(line)
                    record["meta"]["filter"] = {"kept": False, "reason": reasons[0], "reasons": reasons}
                    out = dumps(record)
            write_line(out)
            self.written += 1
            if not self.written & 255:
                update(256)

    def _record(self, line: bytes) -> dict:
        """The record as the single-process path holds it when it rejects or marks it."""
        record = normalize(parse_record(line), self.io.prompt_field, self.io.response_field, self.io.require)
        if not isinstance(record.get("meta"), dict):
            record["meta"] = {}
        return record

    def finish(self) -> None:
        stats = self.ctx.stats
        stats.inc("read", self.read)
        if self.kept:
            stats.inc("kept", self.kept)
        stats.inc("written", self.written)
        self.ctx.progress.update(self.written & 255)
