"""Record streams: every byte of input and output goes through here.

Input compression is sniffed from the first bytes (zstd, including concatenated frames such as
``cat shard-*.zst``; gzip, including concatenated members; otherwise plain JSONL). Output is JSON
Lines, zstd-compressed unless plain output is asked for (``--plain``, ``CODEPLAN_PLAIN=1``, a name
ending in ``.jsonl``/``.json``, or a terminal). Compressed output is a sequence of complete zstd
frames, one per flush; a flush happens when about 1 MiB is pending, when 2 s have passed since the
last one, and at the end. A reader downstream therefore sees progress, and a killed process leaves
a readable prefix (at most a torn last frame, which ``codeplan_tools.resume`` cuts off).
SIGTERM and SIGINT are held back while a frame is being written, so a frame is never half-written
by our own shutdown.
"""

from __future__ import annotations

import gzip
import io
import os
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

import orjson
import zstandard

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
READ_BUFFER = 1 << 20
FLUSH_BYTES = 1 << 20
FLUSH_SECONDS = 2.0
_BLOCKED = {signal.SIGTERM, signal.SIGINT}


class PipeClosed(Exception):
    """The reader of our output went away (``| head``). Not an OSError, so click leaves it to us."""


class NoInput(Exception):
    """Standard input is a terminal and nothing was piped in: the command prints its usage."""


def display_name(path: str) -> str:
    return "<stdin>" if path == "-" else str(path)


def open_input(path: str | os.PathLike) -> BinaryIO:
    """Open a file (or ``-`` for stdin) and return a binary stream of its decompressed bytes."""
    if str(path) == "-":
        if sys.stdin is None or sys.stdin.isatty():
            raise NoInput()
        raw: BinaryIO = sys.stdin.buffer
        buffered = io.BufferedReader(raw, READ_BUFFER) if not hasattr(raw, "peek") else raw
    else:
        buffered = open(path, "rb", buffering=READ_BUFFER)  # noqa: SIM115 - returned to the caller
    head = buffered.peek(4)[:4]
    if head.startswith(ZSTD_MAGIC):
        return io.BufferedReader(_ZstdFrames(buffered), READ_BUFFER)
    if head.startswith(GZIP_MAGIC):
        return io.BufferedReader(gzip.GzipFile(fileobj=buffered), READ_BUFFER)
    return buffered


class _ZstdFrames(io.RawIOBase):
    """Decompress concatenated zstd frames; a frame cut short at the end of input is an error.

    (zstandard's ``stream_reader`` returns a truncated frame's bytes silently.)
    """

    def __init__(self, source: BinaryIO):
        self._source = source
        self._dctx = zstandard.ZstdDecompressor()
        self._dobj = None
        self._pending = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            chunk = self._source.read(READ_BUFFER)
            if not chunk:
                if self._dobj is not None:
                    raise zstandard.ZstdError("input ends inside a zstd frame (truncated file?)")
                return 0
            while chunk:
                if self._dobj is None:
                    self._dobj = self._dctx.decompressobj()
                self._pending += self._dobj.decompress(chunk)
                if self._dobj.eof:
                    chunk = self._dobj.unused_data
                    self._dobj = None
                else:
                    chunk = b""
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        super().close()
        self._source.close()


def iter_lines(paths: Iterable[str]) -> Iterator[tuple[str, int, bytes]]:
    """Yield ``(display path, 1-based line number, line bytes without newline)``; blank lines skipped."""
    for path in paths:
        name = display_name(path)
        stream = open_input(path)
        lineno = 0
        try:
            for line in stream:
                lineno += 1
                if not line.isspace():  # blank lines are skipped (but counted for line numbers)
                    yield name, lineno, line.rstrip(b"\r\n")
        except zstandard.ZstdError as exc:
            from .errors import BadRecord

            raise BadRecord(name, lineno + 1, f"corrupt or truncated zstd input: {exc}") from exc
        except (EOFError, gzip.BadGzipFile) as exc:
            from .errors import BadRecord

            raise BadRecord(name, lineno + 1, f"corrupt or truncated gzip input: {exc}") from exc
        finally:
            if path != "-":
                stream.close()


def read_records(paths: Iterable[str]) -> Iterator[dict]:
    """Plain record reader for library use (no error accounting): every line parsed as JSON."""
    for _name, _lineno, line in iter_lines(paths):
        yield orjson.loads(line)


def wants_plain(path: str | None, plain: bool | None = None) -> bool:
    """Decide plain vs zstd output for ``path`` (None = stdout)."""
    if plain:
        return True
    if os.environ.get("CODEPLAN_PLAIN", "") not in ("", "0"):
        return True
    if path is None or path == "-":
        try:
            return sys.stdout.isatty()
        except (AttributeError, ValueError):
            return False
    return str(path).endswith((".jsonl", ".json"))


def dumps(record: dict) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)


class RecordWriter:
    """Write records as JSON Lines to a file or stdout, as flushed zstd frames unless plain.

    ``append=True`` appends to an existing file (used when resuming; zstd frames concatenate).
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        plain: bool | None = None,
        append: bool = False,
        level: int = 3,
        flush_bytes: int = FLUSH_BYTES,
        flush_seconds: float = FLUSH_SECONDS,
    ):
        self.path = None if path in (None, "-") else str(path)
        self.plain = wants_plain(self.path, plain)
        if self.path is None:
            self._fh: BinaryIO = sys.stdout.buffer
            self._owns = False
        else:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "ab" if append else "wb")  # noqa: SIM115
            self._owns = True
        self._cctx = None if self.plain else zstandard.ZstdCompressor(level=level)
        self._buf = bytearray()
        self._flush_bytes = flush_bytes
        self._flush_seconds = flush_seconds
        self._last_flush = time.monotonic()
        self.records_written = 0
        self.closed = False

    def write(self, record: dict) -> None:
        self.write_line(dumps(record))

    def write_line(self, line: bytes) -> None:
        self._buf += line
        self._buf += b"\n"
        self.records_written += 1
        if len(self._buf) >= self._flush_bytes or time.monotonic() - self._last_flush >= self._flush_seconds:
            self.flush()

    def flush(self) -> None:
        self._last_flush = time.monotonic()
        if not self._buf:
            return
        data = bytes(self._buf) if self._cctx is None else self._cctx.compress(bytes(self._buf))
        self._buf.clear()
        # A frame is written whole: our own SIGTERM/SIGINT handling waits until it is out.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
        try:
            self._fh.write(data)
            self._fh.flush()
        except BrokenPipeError:
            raise PipeClosed() from None
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.flush()
        except PipeClosed:
            if self._owns:
                raise
        finally:
            if self._owns:
                self._fh.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
