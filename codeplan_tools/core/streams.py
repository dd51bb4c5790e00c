"""Record streams: every byte of input and output goes through here.

Input. The container is told apart by its first bytes, read until there are 4 of them or the input
ends (a pipe may deliver fewer in its first write): zstd (also concatenated frames such as
``cat shard-*.zst``, and skippable frames, which are skipped), gzip (also concatenated members), xz
and bzip2 (read with the standard library's ``lzma``/``bz2``; also concatenated streams); anything
else is plain JSON Lines. Bytes that differ from the zstd, gzip or xz magic number in one place are a
damaged header, not plain text.

Parquet (``PAR1``) and Arrow IPC files (``ARROW1``) and streams (``FF FF FF FF``), and a folder given
as an input (a ``datasets`` folder or a folder of ``.parquet``/``.arrow`` shards), are read by
``columnar``: one JSON line per row, numbered by row (``file:row N``), in record batches. Telling them
apart costs one 6-byte read per input: a seekable input is read and sought back; on a pipe bytes are
read only while they may still begin such a magic (``{`` never does) and are handed back first
(``_Prefixed``), so a slow JSON Lines pipe is never waited on.

Input is decoded incrementally: compressed input is fed to the decompressor 16 KiB at a time and a
line is yielded as soon as it is complete; the decoded pieces and any damage come out in input order
(a file is decoded by a thread a few pieces ahead, stdin as it arrives). So an error further on
never takes back a line already handed out, and an error message names the first line that could
not be read (the lines read so far + 1), never an earlier one.

Damaged input (container level). A decompression error, a frame/member cut short at the end of the
input, bytes after a complete frame/member that do not start another (junk after the data; NUL
padding is accepted after gzip, xz and bzip2 data, as their own tools accept it), or junk before the
first frame (a zstd, gzip or xz header within the first KiB of an input that does not start like
JSON) is *damage*. What is recovered, and what is not (for Parquet and Arrow input see ``columnar``):

- every complete line decoded before the damage was found is read (with zstd, at most the lines of
  the blocks decoded from the same 16 KiB of compressed input as the damaged block are lost with it);
- the partial line the damage cuts through is lost (counted as a lost line);
- reading resumes at the next frame/member/stream of any of the containers above that follows the
  damage (found by its magic number and header, searched from just after the start of the damaged
  unit, so a frame that the damage ran into is still found; a gzip header glued to a zstd body loses
  nothing), else at the next input file. The first line after the resumption may be the tail of a
  line that began in the damaged part: it is then an ordinary bad line. Junk that itself decodes as
  a (tiny) valid frame can hide the start of the frame it overlaps; a magic number that occurs by
  chance inside damaged data can surface a few junk lines (bad lines, rejected as such);
- after resuming, line numbers count the lines read; the lost lines are unknown and not counted.

``iter_lines(paths, on_damage)`` reports damage to ``on_damage(InputDamage)`` and goes on (the
stages pass it in ``--on-bad-record skip`` mode: counted in ``--stats`` and named on stderr); without
``on_damage`` it raises ``BadRecord`` naming the file, the line count so far + 1 and the byte offset.

Output is JSON Lines of one of three kinds (``output_kind``): plain, gzip or zstd. Forced by
``--plain`` (or ``CODEPLAN_PLAIN=1``) or ``--zstd``; otherwise the name decides: ``-o FILE``, or the
file stdout is redirected to (``> FILE``, found on Linux through ``/proc/self/fd/1``), ending in
``.jsonl``/``.json`` is plain, ``.gz`` gzip, ``.zst`` zstd; any other name, and a pipe, get zstd; a
terminal gets plain. Compressed output is a sequence of complete zstd frames (with checksums) or
gzip members, one per flush; a flush happens when about 1 MiB is pending, when 2 s have passed since
the last one, and at the end. A reader downstream therefore sees progress, and a killed process
leaves a readable prefix (at most a torn last frame, which ``codeplan_tools.core.resume`` cuts off). A
compressed output with no records is one empty frame/member, which ``zstd -d``/``gzip -d`` read as
empty (a 0-byte file they reject). SIGTERM and SIGINT are held back while a frame is being written,
so a frame is never half-written by our own shutdown.
"""

from __future__ import annotations

import bz2
import gzip
import io
import itertools
import lzma
import os
import queue
import signal
import stat
import sys
import threading
import time
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, cast

import zstandard

from codeplan_tools.core.errors import BadRecord, InputMissing, OutputIOError
from codeplan_tools.core.records import InvalidRecord, dumps, parse_record

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
GZIP_MAGIC = b"\x1f\x8b"
XZ_MAGIC = b"\xfd7zXZ\x00"
BZIP2_MAGIC = b"BZh"
READ_BUFFER = 1 << 20
# Compressed bytes per decompressor call: what one damaged block can take with it (see above).
DECODE_PIECE = 1 << 14
# Compressed bytes of the current frame kept to search it again for a frame start after damage.
KEEP_FOR_RESYNC = 1 << 25
FLUSH_BYTES = 1 << 20
FLUSH_SECONDS = 2.0
_BLOCKED = {signal.SIGTERM, signal.SIGINT}


class PipeClosed(Exception):
    """The reader of our output went away (``| head``). Not an OSError, so click leaves it to us."""


class NoInput(Exception):
    """Standard input is a terminal and nothing was piped in: the command prints its usage."""


def display_name(path: str) -> str:
    return "<stdin>" if path == "-" else str(path)


# ---------------------------------------------------------------------------------------------
# Containers


@dataclass(frozen=True)
class _Container:
    """A compressed format: how its units (frames, members, streams) start and are decoded."""

    name: str
    unit: str
    new: Callable[[], Any]  # a decompressor for one unit: decompress(), eof, unused_data
    errors: tuple[type[BaseException], ...]
    find: bytes  # the fixed bytes a unit starts with (searched for after damage)
    head: int  # bytes `starts` looks at
    starts: Callable[[bytes], bool]
    padding: bool  # NUL bytes between or after units are allowed


def _zstd_frame():
    # A decompressor per frame: one ZstdDecompressor must not serve two threads (a stage reading
    # while the progress counter reads the same file).
    return zstandard.ZstdDecompressor().decompressobj()


def _zstd_starts(b: bytes) -> bool:
    if b[:4] == ZSTD_MAGIC:
        return len(b) > 4 and not b[4] & 0x08  # the frame header's reserved bit
    return len(b) >= 4 and b[0] & 0xF0 == 0x50 and b[1:4] == b"\x2a\x4d\x18"  # a skippable frame


def _gzip_starts(b: bytes) -> bool:
    return b[:3] == b"\x1f\x8b\x08" and len(b) > 3 and not b[3] & 0xE0  # deflate, reserved flags clear


def _bzip2_starts(b: bytes) -> bool:
    # "BZh" + block size, then a block or the end of the stream (both 48-bit magics).
    return b[:3] == BZIP2_MAGIC and b[3:4] in b"123456789" and b[4:10] in (b"1AY&SY", b"\x17rE8P\x90")


_CONTAINERS = {
    c.name: c
    for c in (
        _Container("zstd", "frame", _zstd_frame, (zstandard.ZstdError,), ZSTD_MAGIC, 5, _zstd_starts, False),
        _Container(
            "gzip",
            "member",
            lambda: zlib.decompressobj(31),
            (zlib.error,),
            b"\x1f\x8b\x08",
            4,
            _gzip_starts,
            True,
        ),
        _Container(
            "xz",
            "stream",
            lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ),
            (lzma.LZMAError,),
            XZ_MAGIC,
            7,
            lambda b: b[:6] == XZ_MAGIC and b[6:7] == b"\x00",
            True,
        ),
        _Container(
            "bzip2",
            "stream",
            bz2.BZ2Decompressor,
            (OSError, ValueError),
            BZIP2_MAGIC,
            10,
            _bzip2_starts,
            True,
        ),
    )
}
# Magic numbers a one-byte change must not turn into "plain text" (bzip2's "BZh" is too text-like).
_NEAR_MAGIC = {"zstd": ZSTD_MAGIC, "gzip": b"\x1f\x8b\x08", "xz": XZ_MAGIC}
_LONGEST_FIND = max(len(c.find) for c in _CONTAINERS.values())


def _detect(head: bytes) -> tuple[_Container | None, bool]:
    """The container of an input that begins with ``head`` (None: plain), and whether its magic is damaged."""
    if head[:4] == ZSTD_MAGIC or _zstd_starts(head[:4]):
        return _CONTAINERS["zstd"], False
    if head[:2] == GZIP_MAGIC:
        return _CONTAINERS["gzip"], False
    if head[:4] == XZ_MAGIC[:4]:
        return _CONTAINERS["xz"], False
    if head[:3] == BZIP2_MAGIC and head[3:4] in b"123456789" and len(head) >= 4:
        return _CONTAINERS["bzip2"], False
    for name, magic in _NEAR_MAGIC.items():
        n = min(len(magic), len(head))
        if n >= 3 and sum(a != b for a, b in zip(head[:n], magic[:n], strict=True)) == 1:
            return _CONTAINERS[name], True
    return None, False


@dataclass(frozen=True)
class _Break:
    """Damage found by the decoder: bytes ``start`` to ``end`` are skipped; ``resumed``: whether a
    frame/member follows (at ``end``), else ``end`` is the end of the input."""

    start: int
    end: int
    resumed: bool
    reason: str  # what is wrong and where (byte offsets)


@dataclass(frozen=True)
class InputDamage:
    """A damaged stretch of one input file (see the module docstring)."""

    path: str
    line: int  # the first line that could not be read: the lines read before the damage + 1
    offset: int  # byte offset (in the file as stored) of the damaged frame/member, or of the junk
    skipped_bytes: int  # from ``offset`` to where reading resumed (or to the end of the file)
    lost_lines: int  # lines known to be lost: the line the damage cut through (0 or 1)
    reason: str
    resumed: bool  # whether reading resumed in this file (else at the next input)
    unit: str = "line"  # "row" for Parquet/Arrow input (``columnar``): rows lost, row numbers kept

    def message(self) -> str:
        if self.unit == "row":
            rows = "1 row" if self.lost_lines == 1 else f"{self.lost_lines} rows"
            lost = f"; {rows} skipped" if self.lost_lines else ""
            goes_on = "reading goes on" if self.resumed else "nothing readable follows in this file"
            return f"{self.path}:{self.line}: {self.reason}{lost}; {goes_on}"
        end = self.offset + self.skipped_bytes
        lost = f" ({self.lost_lines} partial line lost)" if self.lost_lines else ""
        goes_on = (
            f"reading goes on at byte {end}; line numbers after it count the lines read"
            if self.resumed
            else "nothing readable follows in this file"
        )
        return f"{self.path}:{self.line}: {self.reason}; skipped bytes {self.offset}-{end}{lost}; {goes_on}"


class _Compressed:
    """The stored bytes of one input, read as needed; ``offset`` is the file offset of the next one."""

    def __init__(self, fh: BinaryIO):
        self._read = getattr(fh, "read1", None) or fh.read
        self.buf = b""
        self.pos = 0
        self.base = 0  # the file offset of buf[0]

    @property
    def offset(self) -> int:
        return self.base + self.pos

    def _more(self) -> bool:
        chunk = self._read(READ_BUFFER)
        if not chunk:
            return False
        self.base += self.pos
        self.buf = self.buf[self.pos :] + chunk if self.pos < len(self.buf) else chunk
        self.pos = 0
        return True

    def peek(self, n: int) -> bytes:
        """The next ``n`` bytes (fewer at the end of the input), reading until there are that many."""
        while len(self.buf) - self.pos < n and self._more():
            pass
        return self.buf[self.pos : self.pos + n]

    def take(self, n: int) -> bytes:
        if self.pos == len(self.buf) and not self._more():
            return b""
        piece = self.buf[self.pos : self.pos + n]
        self.pos += len(piece)
        return piece

    def unread(self, n: int) -> None:
        self.pos -= n

    def push_back(self, data: bytes, offset: int) -> None:
        """Put ``data``, which began at file ``offset``, before the unread bytes (to search it again)."""
        self.buf = data + self.buf[self.pos :]
        self.pos = 0
        self.base = offset

    def skip_nuls(self) -> None:
        while self.peek(1) == b"\x00":
            rest = self.buf[self.pos :]
            self.pos += len(rest) - len(rest.lstrip(b"\x00"))

    def unit_here(self) -> _Container | None:
        """The container whose frame/member/stream starts at the read position, if any."""
        for fmt in _CONTAINERS.values():
            if fmt.starts(self.peek(fmt.head)):
                return fmt
        return None

    def seek_unit(self) -> bool:
        """Move to the next place where a frame/member/stream of any container starts; False (at the
        end of the input) if there is none."""
        while True:
            hits = [i for fmt in _CONTAINERS.values() if (i := self.buf.find(fmt.find, self.pos)) >= 0]
            while hits:
                self.pos = min(hits)
                if self.unit_here() is not None:
                    return True
                hits = [
                    i for fmt in _CONTAINERS.values() if (i := self.buf.find(fmt.find, self.pos + 1)) >= 0
                ]
            # Keep the bytes that may begin a magic cut by the end of the buffer.
            self.pos = max(self.pos, len(self.buf) - _LONGEST_FIND + 1)
            if not self._more():
                self.pos = len(self.buf)
                return False


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _leading_junk(src: _Compressed) -> int:
    """For an input with no magic number at its start: where a zstd, gzip or xz unit starts in its
    first KiB after bytes that are not JSON (-1: none, it is plain JSON Lines).

    Their magic numbers are not UTF-8 text, so they are never inside a JSON line; bzip2's is text.
    An input that starts like JSON Lines is not searched (nor waited for, on a pipe).
    """
    n = 4
    while (probe := src.peek(n)).isspace() and len(probe) == n < 1024:
        n *= 2  # blank lines: read on to the first byte that is not blank
    if probe.lstrip()[:1] == b"{":
        return -1
    probe = src.peek(1024)
    starts = []
    for fmt in (_CONTAINERS["zstd"], _CONTAINERS["gzip"], _CONTAINERS["xz"]):
        i = probe.find(fmt.find)
        while i >= 0 and not fmt.starts(probe[i : i + fmt.head]):
            i = probe.find(fmt.find, i + 1)
        # Bytes before it are junk unless they could be JSON text ('{' in valid UTF-8): random bytes
        # may hold a '{' (a property test found 'A\x9f{*...').
        if i >= 0 and (b"{" not in probe[:i] or not _is_utf8(probe[:i])):
            starts.append(i)
    return min(starts, default=-1)


def _decoded(fh: BinaryIO) -> Generator[bytes | _Break, None, None]:
    """The decompressed bytes of one input as they are decoded, and a ``_Break`` where it is damaged.

    After the first unit, a unit of another container is read too (``cat a.zst b.gz``), and damage
    is skipped to the next unit of any container (a gzip header glued to a zstd body loses nothing).
    """
    src = _Compressed(fh)
    head = src.peek(4)
    fmt, damaged = _detect(head)
    if fmt is None:
        junk = _leading_junk(src)
        if junk < 0:  # plain JSON Lines
            while data := src.take(READ_BUFFER):
                yield data
            return
        src.take(junk)
        fmt = src.unit_here()
        assert fmt is not None  # _leading_junk stopped where a unit starts
        yield _Break(
            0, junk, True, f"junk before the {fmt.name} data: bytes 0-{junk} are no {fmt.name} {fmt.unit}"
        )
    elif damaged:
        reason = f"damaged {fmt.name} input: its magic number at byte 0 is wrong ({head.hex(' ')})"
        yield _resync(src, 0, reason, None)
    last: _Container | None = None  # the container of the last unit decoded whole
    while True:
        if last is not None and last.padding:
            src.skip_nuls()
        start = src.offset
        if not src.peek(1):
            return
        here = src.unit_here()
        if here is None:
            if last is not None:
                reason = f"junk after the end of the {last.name} data at byte {start} (not a {last.name} {last.unit})"
            else:
                reason = f"damaged {fmt.name} input: no valid {fmt.name} {fmt.unit} header at byte {start}"
            yield _resync(src, start, reason, None)
            continue
        fmt = here
        dec = fmt.new()
        kept: list[bytes] | None = []  # the unit's bytes so far, to search again after damage
        kept_size = 0
        while True:
            found = src.offset
            piece = src.take(DECODE_PIECE)
            if not piece:
                reason = (
                    f"truncated {fmt.name} input: the {fmt.unit} that starts at byte {start} "
                    f"is cut off at byte {found} (the end of the file)"
                )
                yield _Break(start, found, False, reason)
                return
            if kept is not None:
                kept.append(piece)
                kept_size += len(piece)
                if kept_size > KEEP_FOR_RESYNC:
                    kept = None
            try:
                out = dec.decompress(piece)
            except fmt.errors as exc:
                where = (
                    f"the {fmt.unit} that starts at byte {start}, found decoding bytes {found}-{src.offset}"
                )
                yield _resync(src, start, f"damaged {fmt.name} input: {exc} (in {where})", kept)
                break
            if out:
                yield out
            if dec.eof:
                src.unread(len(dec.unused_data))
                last = fmt
                break


READ_AHEAD = 8  # decoded chunks a reading thread may hold before they are taken


def _read_ahead(chunks: Iterable[bytes | _Break]) -> Generator[bytes | _Break, None, None]:
    """``chunks``, in order, made by a thread of their own up to ``READ_AHEAD`` ahead of the reader:
    zstd, zlib, lzma and bz2 let go of the GIL while they decode, so decoding costs no wall time in a
    run that is not short of cores. An error is raised in its place, after the chunks before it;
    closing this generator stops the thread (before the caller closes the file it reads)."""
    pending: queue.Queue = queue.Queue(READ_AHEAD)
    stop = threading.Event()

    def decode() -> None:
        try:
            for chunk in chunks:
                pending.put((True, chunk))
                if stop.is_set():
                    return
        except BaseException as exc:  # raised by the reader in its place
            pending.put((False, exc))
        else:
            pending.put((False, None))

    thread = threading.Thread(target=decode, name="codeplan-reader", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = pending.get()
            if ok:
                yield item
            elif item is None:
                return
            else:
                raise item
    finally:
        stop.set()
        while thread.is_alive():  # take what it puts, so that it sees the stop
            try:
                pending.get(timeout=0.05)
            except queue.Empty:
                pass
        thread.join()


def _resync(src: _Compressed, start: int, reason: str, kept) -> _Break:
    """Find where to go on after damage in the unit at ``start``: the next unit start after it,
    searched in the unit's own bytes first (``kept``) when they were kept."""
    if kept:
        src.push_back(b"".join(kept)[1:], start + 1)
    elif src.offset == start:
        src.take(1)  # the damaged unit starts here: look after its first byte
    ok = src.seek_unit()
    return _Break(start, src.offset, ok, reason)


# ---------------------------------------------------------------------------------------------
# Reading


class _Opened:
    """A binary handle on a file or stdin; stdin is not closed."""

    def __init__(self, path: str):
        self.path = path
        if path == "-":
            if sys.stdin is None or sys.stdin.isatty():
                raise NoInput()
            self.fh: BinaryIO = sys.stdin.buffer
        else:
            try:
                self.fh = open(path, "rb", buffering=0)  # noqa: SIM115 - closed by __exit__
            except OSError as exc:
                raise InputMissing(f"{path}: cannot be read ({exc.strerror or exc})") from None

    def __enter__(self) -> BinaryIO:
        return self.fh

    def __exit__(self, *exc) -> None:
        if self.path != "-":
            self.fh.close()


def _inputs(
    paths: Iterable[str], on_damage: Callable[[InputDamage], None] | None
) -> Generator[tuple[str, str, Iterator[tuple[str, int, bytes]] | None, BinaryIO | None], None, None]:
    """``(path, display name, rows, None)`` for a Parquet/Arrow input (a folder, or a file by its first
    bytes), else ``(path, display name, None, file)``: the text input, open and sniffed until the next
    one is asked for (or this generator is closed)."""
    for path in paths:
        name = display_name(path)
        if path != "-" and os.path.isdir(path):
            from codeplan_tools.core import columnar

            yield path, name, columnar.folder_lines(path, on_damage), None
            continue
        with _Opened(path) as opened:
            head, fh = _sniff(opened)
            if head[:1] in _COLUMNAR_FIRST and (kind := _columnar_kind(head)):
                from codeplan_tools.core import columnar

                yield path, name, columnar.file_lines(_columnar_source(path, fh), name, kind, on_damage), None
                continue
            yield path, name, None, fh


def _damaged(
    name: str, lineno: int, held: list[bytes], brk: _Break, on_damage: Callable[[InputDamage], None] | None
) -> int:
    """A damaged stretch after line ``lineno``: ``BadRecord`` without ``on_damage`` (fail mode), else
    reported to it. The start of a line ``held`` back is lost with it (and dropped); returns the lines
    lost (0 or 1)."""
    lost = 1 if b"".join(held).strip() else 0
    damage = _damage(name, lineno + 1, lost, brk)
    if on_damage is None:
        raise BadRecord(name, damage.line, _fail_reason(damage))
    on_damage(damage)
    held.clear()
    return lost


def iter_lines(
    paths: Iterable[str], on_damage: Callable[[InputDamage], None] | None = None
) -> Iterator[tuple[str, int, bytes]]:
    """Yield ``(display path, 1-based line number, line bytes without newline)``; blank lines skipped.

    Container damage goes to ``on_damage`` and reading goes on; without it, ``BadRecord`` (see the
    module docstring). A Parquet or Arrow input (a file by its first bytes, or a folder) yields one
    JSON line per row, numbered by row (``columnar``).
    """
    with closing(_inputs(paths, on_damage)) as inputs:  # (closed at once, not when a traceback lets go)
        for path, name, rows, fh in inputs:
            if rows is not None:  # a Parquet or Arrow input
                yield from rows
                continue
            lineno = 0
            held: list[bytes] = []  # the start of a line whose end has not been decoded yet
            # A file is decoded ahead by a thread (stdin as it comes: a pipe may be slow).
            chunks: Generator = _decoded(cast(BinaryIO, fh))
            chunks = chunks if path == "-" else _read_ahead(chunks)
            try:
                for chunk in chunks:
                    if isinstance(chunk, _Break):
                        lineno += _damaged(name, lineno, held, chunk, on_damage)
                        continue
                    cut = chunk.rfind(b"\n") + 1
                    if not cut:
                        held.append(chunk)
                        continue
                    # BytesIO shares the chunk (no copy) and finds newlines with memchr.
                    lines = BytesIO(chunk)
                    lines.truncate(cut)  # the tail, a line not complete yet, waits for the next chunk
                    if held:
                        first = chunk.find(b"\n") + 1
                        held.append(chunk[:first])
                        lines.seek(first)
                        line = b"".join(held)
                        held.clear()
                        lineno += 1
                        if not line.isspace():
                            yield name, lineno, line.rstrip(b"\r\n")
                    if cut < len(chunk):
                        held.append(chunk[cut:])
                    for line in lines:
                        lineno += 1
                        if not line.isspace():  # blank lines are skipped (but counted)
                            yield name, lineno, line.rstrip(b"\r\n")
            except OSError as exc:
                raise OutputIOError(
                    f"{name}: reading failed after line {lineno} ({exc.strerror or exc})"
                ) from None
            finally:
                chunks.close()  # (the thread stops before the file is closed)
            last = b"".join(held)
            if last and not last.isspace():  # a last line without its newline
                yield name, lineno + 1, last.rstrip(b"\r")


def count_newlines(data: bytes) -> int:
    """The newlines in ``data``. ``bytes.count`` looks at every byte in turn (~4.5 instructions a byte
    on JSONL); ``replace`` finds them with memchr: about a tenth of that on lines of a few hundred bytes."""
    return len(data) - len(data.replace(b"\n", b""))


class Block(NamedTuple):
    """Consecutive lines of one text input as read (``iter_blocks``): the lines after line ``start`` of
    ``name``, blank ones included, each ending in a newline but for the input's last."""

    name: str
    start: int
    data: bytes


def iter_blocks(
    paths: Iterable[str], on_damage: Callable[[InputDamage], None] | None = None
) -> Iterator[Block | tuple[str, int, bytes]]:
    """The lines of ``iter_lines`` as whole decoded chunks (:class:`Block`, cut at a newline), for a
    reader that hands lines on in bulk (the worker pool): no work per line here; :func:`block_lines`
    gives the lines. Damage is found, reported and raised as ``iter_lines`` does, after the lines
    before it. A Parquet or Arrow input yields ``iter_lines``' ``(file, row, line)`` triples."""
    with closing(_inputs(paths, on_damage)) as inputs:  # (closed at once, not when a traceback lets go)
        for _path, name, rows, fh in inputs:
            if rows is not None:  # a Parquet or Arrow input
                yield from rows
                continue
            lineno = 0  # the lines handed out (and lost) so far
            held: list[bytes] = []  # the start of a line whose end has not been decoded yet
            try:
                for chunk in _decoded(cast(BinaryIO, fh)):
                    if isinstance(chunk, _Break):
                        lineno += _damaged(name, lineno, held, chunk, on_damage)
                        continue
                    cut = chunk.rfind(b"\n") + 1
                    if not cut:
                        held.append(chunk)
                        continue
                    if held:
                        held.append(chunk[:cut])
                        data = b"".join(held)
                        held.clear()
                    else:
                        data = chunk[:cut] if cut < len(chunk) else chunk
                    if cut < len(chunk):
                        held.append(chunk[cut:])
                    yield Block(name, lineno, data)
                    lineno += count_newlines(data)
            except OSError as exc:
                raise OutputIOError(
                    f"{name}: reading failed after line {lineno} ({exc.strerror or exc})"
                ) from None
            if held:  # a last line without its newline
                yield Block(name, lineno, b"".join(held))


def block_lines(block: Block) -> Iterator[tuple[str, int, bytes]]:
    """``(file, line number, line)`` of a block's lines, as ``iter_lines`` yields them."""
    name, lineno, data = block
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    if b"\r" not in data and b"" not in lines and not any(map(bytes.isspace, lines)):
        # No line to skip or strip (the usual case): numbered in C, no Python per line.
        return zip(itertools.repeat(name), itertools.count(lineno + 1), lines)
    return _numbered(name, lineno, lines)


def _numbered(name: str, lineno: int, lines: list[bytes]) -> Iterator[tuple[str, int, bytes]]:
    for line in lines:
        lineno += 1
        if line and not line.isspace():  # blank lines are skipped (but counted)
            yield name, lineno, line.rstrip(b"\r")


# First bytes of the columnar magics (Parquet "PAR1", Arrow "ARROW1", Arrow stream FF FF FF FF).
_COLUMNAR_FIRST = (b"P", b"A", b"\xff")


def _columnar_kind(head: bytes) -> str | None:
    from codeplan_tools.core import columnar

    return columnar.kind_of(head)


def _columnar_source(path: str, fh: BinaryIO) -> str | BinaryIO:
    """What pyarrow reads: a regular file by its path (native reads), stdin or a pipe by its handle."""
    return fh if path == "-" or fh.__class__ is _Prefixed else path


def _sniff(fh: BinaryIO) -> tuple[bytes, BinaryIO]:
    """The first bytes of ``fh`` (enough to tell a Parquet/Arrow input), and a handle that reads from
    the start again. A seekable input is read and sought back; from a pipe, bytes are read only while
    they may still begin a columnar magic (JSON does not), and are put back by ``_Prefixed``."""
    try:
        if fh.seekable():
            start = fh.tell()
            head = fh.read(6)
            fh.seek(start)
            return head, fh
    except (OSError, ValueError):
        pass
    from codeplan_tools.core.columnar import may_start

    read = getattr(fh, "read1", None) or fh.read
    head = b""
    while may_start(head) and (piece := read(6 - len(head))):
        head += piece
    # _Prefixed is a file object like the pipe it wraps (a RawIOBase, which typeshed tells apart).
    return head, (cast(BinaryIO, _Prefixed(head, fh)) if head else fh)


class _Prefixed(io.RawIOBase):
    """A pipe whose first bytes were read to sniff it: they come first, then the rest of the pipe."""

    def __init__(self, head: bytes, fh: BinaryIO):
        self._head = head
        self._fh = fh
        self._read = getattr(fh, "read1", None) or fh.read

    def readable(self) -> bool:
        return True

    def read1(self, n: int = -1) -> bytes:
        if self._head:
            size = len(self._head) if n is None or n < 0 else n
            head, self._head = self._head[:size], self._head[size:]
            return head
        return self._read(n if n and n > 0 else READ_BUFFER)

    def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes, fewer only at the end of the input (pyarrow reads a stream this way)."""
        if n is None or n < 0:
            return self.read1() + self._fh.read()
        parts, size = [], 0
        while size < n and (piece := self.read1(n - size)):
            parts.append(piece)
            size += len(piece)
        return b"".join(parts)

    def readinto(self, buffer) -> int:
        data = self.read1(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def _damage(name: str, line: int, lost: int, brk: _Break) -> InputDamage:
    return InputDamage(name, line, brk.start, brk.end - brk.start, lost, brk.reason, brk.resumed)


def _fail_reason(damage: InputDamage) -> str:
    return f"{damage.reason}; {damage.line - 1} lines read before it"


def read_records(paths: Iterable[str]) -> Iterator[dict]:
    """Records of ``paths`` for library use: ``BadRecord`` (file:line) for a line that is not a record
    or for damaged input; no counters. Integers beyond 64 bits are kept exact."""
    for name, lineno, line in iter_lines(paths):
        try:
            yield parse_record(line)
        except InvalidRecord as exc:
            raise BadRecord(name, lineno, str(exc)) from None


class _DecodedRaw(io.RawIOBase):
    """``open_input``'s stream: the decoded bytes; damage raises ``BadRecord`` with the line reached."""

    def __init__(self, path: str):
        self._name = display_name(path)
        self._pending = memoryview(b"")
        self._lines = 0
        self._chunks: Iterator[bytes | _Break]
        if path != "-" and os.path.isdir(path):  # a Parquet/Arrow folder: its rows as JSON lines
            self._opened = None
            from codeplan_tools.core import columnar

            self._chunks = _columnar_chunks(columnar.folder_lines(path))
            return
        self._opened = _Opened(path)
        head, fh = _sniff(self._opened.fh)
        if head[:1] in _COLUMNAR_FIRST and (kind := _columnar_kind(head)):
            from codeplan_tools.core import columnar

            self._chunks = _columnar_chunks(columnar.file_lines(_columnar_source(path, fh), self._name, kind))
        else:
            self._chunks = _decoded(fh)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._pending:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            if isinstance(chunk, _Break):
                damage = _damage(self._name, self._lines + 1, 0, chunk)
                raise BadRecord(self._name, damage.line, _fail_reason(damage))
            self._lines += count_newlines(chunk)
            self._pending = memoryview(chunk)
        n = min(len(buffer), len(self._pending))
        buffer[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def close(self) -> None:
        if not self.closed and self._opened is not None:
            self._opened.__exit__()
        super().close()


def _columnar_chunks(rows: Iterator[tuple[str, int, bytes]]) -> Iterator[bytes]:
    """Rows of a Parquet/Arrow input as JSON Lines bytes, 1024 rows a chunk (``open_input``)."""
    while piece := list(itertools.islice(rows, 1024)):
        yield b"\n".join(line for _, _, line in piece) + b"\n"


def open_input(path: str | os.PathLike) -> BinaryIO:
    """Open a file (or ``-`` for stdin) and return a binary stream of its decompressed bytes."""
    return io.BufferedReader(_DecodedRaw(str(path)), READ_BUFFER)


# ---------------------------------------------------------------------------------------------
# Writing


OUTPUT_KINDS = ("plain", "gzip", "zstd")
_KIND_BY_SUFFIX = ((".jsonl", "plain"), (".json", "plain"), (".gz", "gzip"), (".zst", "zstd"))


def kind_of_name(name: str) -> str | None:
    """The output kind a file name asks for (``.jsonl``/``.json``, ``.gz``, ``.zst``), else None."""
    for suffix, kind in _KIND_BY_SUFFIX:
        if name.endswith(suffix):
            return kind
    return None


def _stdout_name() -> str | None:
    """The file stdout is redirected to (``> FILE``), or None for a pipe, a terminal or a device.

    Linux names it in ``/proc/self/fd/N``; elsewhere (or a test's captured stdout) this is None."""
    try:
        fd = sys.stdout.fileno()
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.readlink(f"/proc/self/fd/{fd}")
    except (AttributeError, OSError, ValueError):
        return None


def output_kind(path: str | None, plain: bool | str | None = None) -> str:
    """``"plain"``, ``"gzip"`` or ``"zstd"``: the output kind of ``path`` (None or ``-``: stdout).

    ``plain`` forces a kind: True (``--plain``) is plain, a kind name (``--zstd`` passes "zstd") is
    that kind; False/None leave it to ``CODEPLAN_PLAIN``, then the name (see the module docstring).
    """
    if plain in OUTPUT_KINDS:
        return plain
    if plain is True or os.environ.get("CODEPLAN_PLAIN", "") not in ("", "0"):
        return "plain"
    if path is None or path == "-":
        name = _stdout_name()
        if name is None:
            try:
                return "plain" if sys.stdout.isatty() else "zstd"
            except (AttributeError, ValueError):
                return "zstd"
        return kind_of_name(name) or "zstd"
    return kind_of_name(str(path)) or "zstd"


def wants_plain(path: str | None, plain: bool | str | None = None) -> bool:
    """Whether ``path`` (None = stdout) gets plain JSONL (see ``output_kind``)."""
    return output_kind(path, plain) == "plain"


def zstd_compressor(level: int = 3) -> zstandard.ZstdCompressor:
    """The compressor of every zstd output: frames carry a checksum, so damage is found when read."""
    return zstandard.ZstdCompressor(level=level, write_checksum=True)


def _compressor(kind: str, level: int = 3) -> Callable[[bytes], bytes] | None:
    """Bytes -> one complete zstd frame or gzip member (None for plain): a flush is readable alone."""
    if kind == "zstd":
        return zstd_compressor(level).compress
    if kind == "gzip":
        # Level 6 (gzip's own default): 9 costs several times the time for a few percent.
        return lambda data: gzip.compress(data, compresslevel=6, mtime=0)
    return None


class RecordWriter:
    """Write records as JSON Lines to a file or stdout: plain, or flushed zstd frames / gzip members.

    ``plain`` forces the kind as in ``output_kind`` (True: plain; "plain", "gzip" or "zstd"), else
    the name decides. ``append=True`` appends to an existing file (used when resuming; zstd frames,
    and gzip members, concatenate).

    ``background=True`` (a stage's outputs): compressed output is compressed and written by a thread
    of its own, in order, while the caller makes the next records (zstd and zlib let go of the GIL
    while they compress), so compressing costs no wall time in a run that is not short of cores. A
    flush when about ``flush_bytes`` are pending hands them over and goes on; :meth:`flush` and
    :meth:`close` return once every frame handed over is written; a failed write is raised by the
    next write, flush or close. The thread blocks SIGTERM and SIGINT, so they reach the main thread,
    whose close writes the frames still pending whole.
    """

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        plain: bool | str | None = None,
        append: bool = False,
        level: int = 3,
        flush_bytes: int = FLUSH_BYTES,
        flush_seconds: float = FLUSH_SECONDS,
        background: bool = False,
    ) -> None:
        self.path = None if path in (None, "-") else str(path)
        self.kind = output_kind(self.path, plain)
        self.plain = self.kind == "plain"
        if self.path is None:
            self._fh: BinaryIO = sys.stdout.buffer
            self._owns = False
        else:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "ab" if append else "wb")  # noqa: SIM115
            self._owns = True
        self._compress = _compressor(self.kind, level)
        self._buf = bytearray()
        self._flush_bytes = flush_bytes
        self._flush_seconds = flush_seconds
        self._last_flush = time.monotonic()
        self._wrote = False  # whether a frame (or any plain byte) went out
        self.records_written = 0
        self.closed = False
        self._background = background and self._compress is not None
        self._frames: queue.Queue | None = None  # data for the writer thread, which starts with the first
        self._thread: threading.Thread | None = None
        self._thread_error: BaseException | None = None  # what stopped the writer thread

    def write(self, record: dict) -> None:
        self.write_line(dumps(record))

    def write_line(self, line: bytes) -> None:
        self._buf += line
        self._buf += b"\n"
        self.records_written += 1
        if len(self._buf) >= self._flush_bytes or time.monotonic() - self._last_flush >= self._flush_seconds:
            self._hand_over()

    def write_lines(self, data: bytes, count: int) -> None:
        """``count`` records already serialised, as JSON lines joined by newlines (no last newline)."""
        self._buf += data
        self._buf += b"\n"
        self.records_written += count
        if len(self._buf) >= self._flush_bytes or time.monotonic() - self._last_flush >= self._flush_seconds:
            self._hand_over()

    def flush(self) -> None:
        """Write out what is pending, and return when it is written."""
        self._hand_over()
        self._drain()

    def _hand_over(self) -> None:
        """Write out what is pending, or with ``background`` hand it to the writer thread."""
        self._last_flush = time.monotonic()
        if self._thread_error is not None:
            raise self._thread_error
        if not self._buf:
            return
        data = bytes(self._buf)
        self._buf.clear()
        if not self._background:
            self._write_out(data if self._compress is None else self._compress(data))
            return
        if self._thread is None:
            # Bounded: at most two frames wait, so memory stays small when the output is slow.
            self._frames = queue.Queue(maxsize=2)
            self._thread = threading.Thread(target=self._write_frames, name="codeplan-writer", daemon=True)
            self._thread.start()
        assert self._frames is not None
        self._frames.put(data)

    def _write_frames(self) -> None:
        """The writer thread: compress and write what is handed over, in order, until None."""
        signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)  # the main thread handles them
        assert self._frames is not None and self._compress is not None
        while (data := self._frames.get()) is not None:
            if self._thread_error is None:
                try:
                    self._write_out(self._compress(data))
                except BaseException as exc:  # raised in the main thread by its next write or close
                    self._thread_error = exc

    def _drain(self) -> None:
        """Wait until the writer thread has written everything handed over (it then ends)."""
        if self._thread is not None:
            assert self._frames is not None
            self._frames.put(None)
            self._thread.join()
            self._thread = None
        if self._thread_error is not None:
            raise self._thread_error

    def _write_out(self, data: bytes) -> None:
        # A frame is written whole: our own SIGTERM/SIGINT handling waits until it is out.
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _BLOCKED)
        try:
            self._fh.write(data)
            self._fh.flush()
            self._wrote = True
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
            if self._compress is not None and not self._wrote:
                # No records: one empty frame/member, so that the output is a valid (empty) file.
                self._write_out(self._compress(b""))
        except PipeClosed:
            if self._owns:
                raise
        finally:
            if self._thread is not None:  # a flush that failed before it handed over: stop the thread
                self._thread_error = self._thread_error or PipeClosed()
                assert self._frames is not None
                self._frames.put(None)
                self._thread.join()
                self._thread = None
            if self._owns:
                self._fh.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
