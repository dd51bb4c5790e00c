"""Run a record-to-record stage over streams: the one loop every subcommand shares.

``run_stage(io, transform)`` reads the inputs line by line, parses and normalises each record,
applies ``--shard`` and resume, hands the records to ``transform(records, ctx)`` and writes what it
yields. Accounting (SPEC §2): every input line is written, rejected (to ``--rejects`` with
``meta.<stage>.reason``), skipped as another shard's or as already done, or reported in an error::

    read == written + rejected + skipped_shard + skipped_done

A malformed line or a missing required field raises ``BadRecord`` (exit 65, ``file:line: reason``)
unless ``on_bad_record="skip"``, which rejects it instead. Without ``--rejects`` a skipped line is
reported on stderr with its file and line, so nothing disappears silently.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from tqdm import tqdm

from .errors import BadRecord, UsageError
from .records import MissingField, normalize, set_meta
from .resume import completed_ids, run_key
from .shard import in_shard, parse_shard
from .stats import Stats
from .streams import RecordWriter, iter_lines


@dataclass
class StageIO:
    """Where a stage reads and writes, and how it treats bad input."""

    stage: str
    inputs: list[str] = field(default_factory=lambda: ["-"])
    output: str | None = None
    plain: bool = False
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

    def __post_init__(self) -> None:
        if self.on_bad_record not in ("fail", "skip"):
            raise UsageError(f"--on-bad-record must be fail or skip, not {self.on_bad_record!r}")
        if not self.inputs:
            self.inputs = ["-"]
        if self.resume_settings is not None and self.output in (None, "-"):
            # Nothing to resume from on a pipe; the run still works.
            self.resume_settings = None


class StageContext:
    """One run's outputs (records, rejects, progress bar on stderr) and what a transform may use:
    the counters, rejection, flushing. Opened at construction, closed by :meth:`close`."""

    def __init__(self, io: StageIO, stats: Stats, key: str | None = None):
        self.io = io
        self.stats = stats
        self._key = key
        self._reported = 0
        append = key is not None  # resuming: zstd frames concatenate
        self.writer = RecordWriter(io.output, plain=io.plain, append=append)
        self._rejects = RecordWriter(io.rejects, plain=io.plain, append=append) if io.rejects else None
        self.started = time.monotonic()
        # tqdm on stderr; disable=None hides it when stderr is not a terminal (batch logs stay small).
        self.progress = tqdm(
            desc=f"codeplan {io.stage}", unit=" rec", file=sys.stderr, disable=None if io.progress else True
        )

    def close(self) -> None:
        """End of the run: close the progress bar, count the wall time, close output and rejects
        (each flushed as complete frames), and write ``--stats``."""
        self.progress.close()
        self.stats.inc("wall_seconds", round(time.monotonic() - self.started, 3))
        try:
            self.writer.close()
        finally:
            if self._rejects is not None:
                self._rejects.close()
            if self.io.stats_path:
                self.stats.write_json(self.io.stats_path)

    def stamp(self, record: dict, values: dict) -> dict:
        """Set ``meta.<stage>`` to ``values`` plus the run key (when resuming)."""
        if self._key is not None:
            values = {**values, "run_key": self._key, "settings": self.io.resume_settings}
        return set_meta(record, self.io.stage, values)

    def flush(self) -> None:
        """Write out what is pending (stages call it after each engine chunk)."""
        self.writer.flush()
        if self._rejects is not None:
            self._rejects.flush()

    def reject(self, record: dict, reason: str, **details: Any) -> None:
        """Send a record to the rejects file with ``meta.<stage>.reason``; counts ``rejected``."""
        self.stats.inc("rejected")
        self.stats.inc(f"rejected.{reason.split(':')[0]}")
        if self._rejects is not None:
            meta = dict(((record.get("meta") or {}).get(self.io.stage)) or {})
            meta.update(details, reason=reason)
            self.stamp(record, meta)
            self._rejects.write(record)
        elif details.get("line"):
            self._warn(f"{details.get('file')}:{details['line']}: {reason} (skipped)")

    def _warn(self, msg: str) -> None:
        self._reported += 1
        if self._reported <= 20:
            print(f"codeplan {self.io.stage}: warning: {msg}", file=sys.stderr)
        elif self._reported == 21:
            print(
                f"codeplan {self.io.stage}: warning: more skipped lines; use --rejects FILE", file=sys.stderr
            )


Transform = Callable[[Iterator[dict], StageContext], Iterable[dict]]


def run_stage(io: StageIO, transform: Transform, stats: Stats | None = None) -> Stats:
    """Stream records from ``io.inputs`` through ``transform`` to ``io.output``; return the counters."""
    stats = stats or Stats(io.stage)
    shard = parse_shard(io.shard)
    key = run_key(io.resume_settings) if io.resume_settings is not None else None
    done: set[str] = set()
    if key is not None:
        done = completed_ids([io.output, io.rejects], io.stage, key, io.resume_settings)
    ctx = StageContext(io, stats, key)
    written = 0
    write, update = ctx.writer.write, ctx.progress.update
    try:
        records = _read(io, ctx, shard, done)
        for record in transform(records, ctx):
            write(record)
            written += 1
            if not written & 255:  # the bar redraws itself; updating it per record costs time
                update(256)
    finally:
        stats.inc("written", written)
        ctx.progress.update(written & 255)
        ctx.close()
    return stats


def _read(io: StageIO, ctx: StageContext, shard, done: set[str]) -> Iterator[dict]:
    stats = ctx.stats
    loads, prompt_field, response_field, require = (
        orjson.loads,
        io.prompt_field,
        io.response_field,
        io.require,
    )
    read = 0
    try:
        for name, lineno, line in iter_lines(io.inputs):
            read += 1
            try:
                record = loads(line)
                if not isinstance(record, dict):
                    raise MissingField("a record must be a JSON object")
                normalize(record, prompt_field, response_field, require)
            except (orjson.JSONDecodeError, MissingField) as exc:
                reason = f"invalid JSON: {exc}" if isinstance(exc, orjson.JSONDecodeError) else str(exc)
                if io.on_bad_record == "fail":
                    raise BadRecord(name, lineno, reason) from None
                stats.inc("bad_records")
                bad = {"line": line.decode("utf-8", "replace")}
                ctx.reject(bad, f"bad-record: {reason}", file=name, line=lineno)
                continue
            if shard is not None and not in_shard(record["id"], shard):
                stats.inc("skipped_shard")
                continue
            if done and record["id"] in done:
                stats.inc("skipped_done")
                continue
            yield record
    finally:
        stats.inc("read", read)
