"""Throughput and ETA for stages that call an engine in chunks (``extract``, ``generate``).

After each chunk the stage calls :meth:`EngineProgress.chunk_done`. On a terminal the numbers go into
the stage's tqdm bar; otherwise (batch logs, pipes) one line goes to stderr for the first chunk and
then at most every ``interval`` seconds::

    codeplan extract: 2048 records, 12.4 rec/s, 3,310 tok/s out, ETA 0:41:07

The ETA needs the number of input records. :class:`LineCounter` counts the lines of the input files
in a background thread (stdin cannot be counted; then the line shows no ETA). Records skipped by
``--shard`` or resume cost nothing, so the remaining work is estimated as the unread lines times the
share of lines read so far that reached the engine.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TYPE_CHECKING, TextIO

from codeplan_tools.core.columnar import row_count
from codeplan_tools.core.stats import Stats
from codeplan_tools.core.streams import count_newlines, open_input

if TYPE_CHECKING:
    from tqdm import tqdm

_COUNT_BLOCK = 1 << 20


class LineCounter:
    """Count the lines of ``inputs`` in a daemon thread; ``total`` is None until done (or for stdin)."""

    def __init__(self, inputs: list[str]) -> None:
        self.total: int | None = None
        self._inputs = [str(p) for p in inputs]
        if "-" in self._inputs or not self._inputs:
            return
        self._thread = threading.Thread(target=self._count, name="codeplan-count-lines", daemon=True)
        self._thread.start()

    def _count(self) -> None:
        n = 0
        try:
            for path in self._inputs:
                # Parquet/Arrow: the row count from footers and batch headers, not a re-conversion.
                if (rows := row_count(path)) is not None:
                    n += rows
                    continue
                last = b"\n"
                with open_input(path) as fh:
                    while block := fh.read(_COUNT_BLOCK):
                        n += count_newlines(block)
                        last = block[-1:]
                if last != b"\n":
                    n += 1
        except Exception:  # an unreadable input is reported by the reader itself, not here
            return
        self.total = n


def format_duration(seconds: float) -> str:
    seconds = int(max(0, round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}"


class EngineProgress:
    """records/s, tokens/s and ETA, reported per chunk (see the module docstring)."""

    def __init__(
        self,
        stage: str,
        stats: Stats,
        bar: tqdm | None = None,
        enabled: bool = True,
        counter: LineCounter | None = None,
        interval: float = 10.0,
        stream: TextIO | None = None,
    ) -> None:
        self.stage = stage
        self.stats = stats
        self.bar = bar
        self.enabled = enabled
        self.counter = counter
        self.interval = interval
        self.stream = stream
        self.records = 0  # records the engine has answered (written or rejected)
        self.tokens_out = 0
        self.engine_seconds = 0.0
        self._started: float | None = None
        self._last_line: float | None = None

    def start(self) -> None:
        """Call when the first chunk goes to the engine (model loading is not throughput)."""
        if self._started is None:
            self._started = time.monotonic()

    def chunk_done(self, records: int, tokens_out: int, engine_seconds: float) -> None:
        self.start()
        self.records += records
        self.tokens_out += tokens_out
        self.engine_seconds += engine_seconds
        if not self.enabled:
            return
        now = time.monotonic()
        if self.bar is not None and not getattr(self.bar, "disable", True):
            self.bar.set_postfix_str(self.describe(now, with_records=False), refresh=True)
            return
        if self._last_line is None or now - self._last_line >= self.interval:
            self._last_line = now
            print(f"codeplan {self.stage}: {self.describe(now)}", file=self.stream or sys.stderr, flush=True)

    def rates(self, now: float | None = None) -> tuple[float, float]:
        """(records per second of wall time since the first chunk, output tokens per engine second)."""
        now = time.monotonic() if now is None else now
        wall = max(now - (now if self._started is None else self._started), 1e-9)
        rec_s = self.records / wall
        tok_s = self.tokens_out / self.engine_seconds if self.engine_seconds > 0 else 0.0
        return rec_s, tok_s

    def eta_seconds(self, now: float | None = None) -> float | None:
        total = self.counter.total if self.counter is not None else None
        if total is None or self.records == 0:
            return None
        rec_s, _ = self.rates(now)
        read = self.stats["read"]
        if read <= 0 or rec_s <= 0:
            return None
        skipped = self.stats["skipped_shard"] + self.stats["skipped_done"] + self.stats["bad_records"]
        share = max(read - skipped, 0) / read  # of the lines read, the share that reached the engine
        remaining = max(total - read, 0) * share
        return remaining / rec_s

    def describe(self, now: float | None = None, with_records: bool = True) -> str:
        rec_s, tok_s = self.rates(now)
        eta = self.eta_seconds(now)
        parts = [f"{self.records} records"] if with_records else []
        parts += [
            f"{rec_s:.1f} rec/s",
            f"{tok_s:,.0f} tok/s out",
            f"ETA {format_duration(eta) if eta is not None else '?'}",
        ]
        return ", ".join(parts)
