"""Parquet and Arrow input: the rows of columnar files and folders, as JSON Lines.

Every command reads these through ``streams.iter_lines`` (and ``open_input``), which tells them apart
by their first bytes, like the compressed containers:

- ``PAR1``: a Parquet file; ``ARROW1``: an Arrow IPC file (Feather v2); ``FF FF FF FF``: an Arrow IPC
  stream (the ``.arrow`` files of a ``datasets`` folder are streams);
- ``-i DIR``: a folder saved by ``datasets``' ``save_to_disk`` (its ``state.json`` names the shards in
  order; a ``DatasetDict`` folder with one split reads that split, with several it asks for one), or
  else every ``.parquet`` / ``.arrow`` file under it (subfolders too, hidden ones skipped) in name
  order: point at one split's files to read one split.

Each row becomes one JSON line (``orjson.dumps`` of the row as a dict), and its 1-based row number in
its file is the line number, so every stage, resume, score and pack read it unchanged. The row number
is a :class:`RowNumber`, which prints as ``row N``: messages read ``data.parquet:row 17: reason``.
Files are read in record batches (Parquet: per row group, ``BATCH_ROWS`` rows at a time; Arrow: as
written, sliced to ``BATCH_ROWS``), so memory holds one row group or batch, never the whole file.
Parquet and Arrow files need to be seekable: on a pipe they are first copied to a temporary file;
an Arrow stream is read from the pipe as it comes.

Values: nested lists and structs become JSON arrays and objects; a map becomes an object (keys that
are not strings are written as strings); timestamps, dates and times are ISO 8601 strings; durations
are seconds; decimals are exact JSON numbers; binary values are UTF-8 text when they are valid
UTF-8, else base64 text; NaN and infinities become ``null`` (JSON has no such numbers).

Bad rows and damage, under the same ``--on-bad-record`` rules as damaged compressed input (an
``InputDamage`` to ``on_damage`` in skip mode, else ``BadRecord``, exit 65):

- a row that cannot be turned into JSON (a string column holding bytes that are not UTF-8): the row
  is skipped, ``file:row N: column 'x': reason``; the other rows of its batch are read;
- a Parquet row group that cannot be decoded: its rows are lost (their number is known from the
  footer, so later rows keep their row numbers) and reading goes on at the next row group;
- an Arrow batch that cannot be read, or a file that cannot be opened at all (a damaged footer):
  the rest of the file is lost and reading goes on at the next input.

A row that is valid JSON but not a usable record (nested deeper than 128 levels) is a bad record as
in JSON Lines: rejected with its file and row in skip mode.

pyarrow (``pip install 'codeplan[parquet]'``; ``datasets`` and vLLM pull it in too) is imported here
only when a columnar input is read; without it such an input stops with exit 69 naming the extra.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import decimal
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from codeplan_tools.core.errors import BadRecord, InputMissing, MissingDependency, require

PARQUET_MAGIC = b"PAR1"
ARROW_FILE_MAGIC = b"ARROW1"
ARROW_STREAM_MAGIC = b"\xff\xff\xff\xff"  # the continuation marker before each stream message
HEAD = 6  # bytes needed to tell the kinds apart
BATCH_ROWS = 2048  # rows turned into Python values at a time
SHARD_SUFFIXES = (".parquet", ".arrow")
_MAGICS = {"Parquet": PARQUET_MAGIC, "Arrow file": ARROW_FILE_MAGIC, "Arrow stream": ARROW_STREAM_MAGIC}
_DUMP = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


class RowNumber(int):
    """A 1-based row number used as a line number; prints as ``row N`` (``file:row N: reason``)."""

    __slots__ = ()

    def __str__(self) -> str:
        return f"row {int(self)}"

    __repr__ = __str__


def kind_of(head: bytes) -> str | None:
    """The columnar kind an input starting with ``head`` is (None: not columnar)."""
    for kind, magic in _MAGICS.items():
        if head[: len(magic)] == magic:
            return kind
    return None


def may_start(head: bytes) -> bool:
    """Whether ``head`` is still too short to tell: it is a strict prefix of a columnar magic."""
    return any(len(head) < len(m) and m.startswith(head) for m in _MAGICS.values())


# ---------------------------------------------------------------------------------------------
# Folders


def folder_files(path: str) -> list[str]:
    """The columnar files of folder ``path`` in reading order (see the module docstring);
    ``InputMissing`` naming what to give when it holds none."""
    base = Path(path)
    dict_info = base / "dataset_dict.json"
    if dict_info.is_file():
        splits = _json_file(dict_info).get("splits") or []
        if len(splits) != 1:
            names = " or ".join(f"-i {path}/{s}" for s in splits)
            raise InputMissing(
                f"{path}: is a datasets folder with splits {', '.join(splits)}; give one: {names}"
            )
        return folder_files(str(base / splits[0]))
    state = base / "state.json"
    if state.is_file():
        shards = _json_file(state).get("_data_files") or []
        files = [str(base / f["filename"]) for f in shards if isinstance(f, dict) and "filename" in f]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:
            raise InputMissing(f"{path}: datasets folder without its shard {missing[0]}")
        return files
    files = sorted(
        str(p)
        for p in base.rglob("*")
        if p.suffix in SHARD_SUFFIXES
        and not any(part.startswith(".") for part in p.relative_to(base).parts)
        and p.is_file()
    )
    if not files:
        raise InputMissing(
            f"{path}: is a folder with no .parquet or .arrow files (nor a datasets folder); "
            "give the record files inside it"
        )
    return files


def _json_file(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputMissing(f"{path}: cannot be read as a datasets folder description ({exc})") from None
    return data if isinstance(data, dict) else {}


# ---------------------------------------------------------------------------------------------
# Rows as JSON lines


def _json_value(value: Any) -> Any:
    """orjson's fallback for the Python values pyarrow gives that JSON has no type for."""
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(data).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return orjson.Fragment(str(value)) if value.is_finite() else None
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, datetime.datetime | datetime.date | datetime.time):
        return value.isoformat()  # pandas Timestamps (nanosecond timestamps) are datetime subclasses
    if hasattr(value, "tolist"):  # numpy scalars and arrays
        return value.tolist()
    raise TypeError(f"{type(value).__name__} has no JSON form")


def _row_json(row: dict) -> bytes:
    return orjson.dumps(row, default=_json_value, option=_DUMP)


def _has_map(arrow_type) -> bool:
    from pyarrow import types

    if types.is_map(arrow_type):
        return True
    return any(_has_map(arrow_type.field(i).type) for i in range(arrow_type.num_fields))


def _python_values(data) -> list:
    """``to_pylist`` of a batch or array; maps as dicts (that option makes it 3x slower: only when
    there is a map)."""
    fields = data.schema if hasattr(data, "schema") else [data]
    if any(_has_map(f.type) for f in fields):
        return data.to_pylist(maps_as_pydicts="lossy")
    return data.to_pylist()


def _batch_lines(batch) -> list[bytes | str]:
    """The rows of ``batch`` as JSON lines; a row that cannot be converted is its reason (a str)."""
    try:
        return [_row_json(row) for row in _python_values(batch)]
    except Exception:  # noqa: BLE001 - found again row by row below, with the column named
        pass
    out: list[bytes | str] = []
    for i in range(batch.num_rows):
        row = batch.slice(i, 1)
        try:
            out.append(_row_json(_python_values(row)[0]))
        except Exception as exc:  # noqa: BLE001
            out.append(_row_reason(row, exc))
    return out


def _row_reason(row, exc: Exception) -> str:
    for name, column in zip(row.schema.names, row.columns, strict=True):
        try:
            _row_json({name: _python_values(column)[0]})
        except Exception as col_exc:  # noqa: BLE001
            return f"column '{name}' cannot be read: {_short(col_exc)}"
    return f"the row cannot be written as JSON: {_short(exc)}"


def _short(exc: BaseException) -> str:
    """An exception as a short one-line reason (pyarrow's messages may hold raw control bytes)."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 (byte 0x{exc.object[exc.start]:02x} at position {exc.start + 1} of the value)"
    text = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


# ---------------------------------------------------------------------------------------------
# Reading


def _pyarrow(part: str = ""):
    """pyarrow (or ``pyarrow.<part>``), imported when a columnar input is read; exit 69 without it."""
    return require(f"pyarrow.{part}" if part else "pyarrow", "parquet")


class _Lost:
    """Rows that could not be read: ``rows`` of them from row ``first`` (0: unknown), ``resumed``
    whether reading goes on in this file."""

    def __init__(self, first: int, rows: int, reason: str, resumed: bool, offset: int = 0, size: int = 0):
        self.first, self.rows, self.reason, self.resumed = first, rows, reason, resumed
        self.offset, self.size = offset, size


def _parquet_batches(source) -> Iterator[Any]:
    pa, pq = _pyarrow(), _pyarrow("parquet")
    try:
        pf = pq.ParquetFile(source)
    except (pa.ArrowException, OSError) as exc:
        yield _Lost(1, 0, f"damaged Parquet file: {_short(exc)}", False)
        return
    meta = pf.metadata
    first = 1
    for group in range(meta.num_row_groups):
        info = meta.row_group(group)
        done = 0
        try:
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=[group]):
                yield batch
                done += batch.num_rows
        except (pa.ArrowException, OSError) as exc:
            offset = info.column(0).file_offset if info.num_columns else 0
            yield _Lost(
                first + done,
                info.num_rows - done,
                f"damaged Parquet row group {group} (rows {first}-{first + info.num_rows - 1}): {_short(exc)}",
                group + 1 < meta.num_row_groups,
                offset,
                info.total_byte_size,
            )
        first += info.num_rows


def _arrow_batches(source, kind: str) -> Iterator[Any]:
    pa = _pyarrow()
    try:
        reader = pa.ipc.open_file(source) if kind == "Arrow file" else pa.ipc.open_stream(source)
    except (pa.ArrowException, OSError) as exc:
        yield _Lost(1, 0, f"damaged {kind}: {_short(exc)}", False)
        return
    if kind == "Arrow file":
        count = reader.num_record_batches
        for i in range(count):
            try:
                batch = reader.get_batch(i)
            except (pa.ArrowException, OSError) as exc:
                yield _Lost(0, 0, f"damaged {kind}: batch {i} cannot be read: {_short(exc)}", i + 1 < count)
                continue
            yield from _slices(batch)
        return
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            yield _Lost(0, 0, f"damaged {kind}: {_short(exc)}", False)
            return
        yield from _slices(batch)


def _slices(batch) -> Iterator[Any]:
    for start in range(0, batch.num_rows, BATCH_ROWS):
        yield batch.slice(start, BATCH_ROWS)


def file_lines(
    source: str | BinaryIO, name: str, kind: str, on_damage: Callable | None = None
) -> Iterator[tuple[str, int, bytes]]:
    """``(name, row number, JSON line)`` for each row of one columnar input (``kind`` from
    :func:`kind_of`); ``source`` is a path or a binary handle positioned at the input's start."""
    from codeplan_tools.core.streams import InputDamage

    spool = None
    if not isinstance(source, str) and kind != "Arrow stream" and not _seekable(source):
        # The footer is at the end: spool the pipe to a temporary file and hand pyarrow its *path*.
        # (Given the Python file object instead, pyarrow wraps it in a PythonFile, and about one run in
        # 40 aborted at interpreter exit with "terminate called without an active exception".)
        fd, spool = tempfile.mkstemp(prefix="codeplan-columnar-")
        with os.fdopen(fd, "wb") as fh:
            shutil.copyfileobj(source, fh, 1 << 20)
        source = spool
    try:
        batches = _parquet_batches(source) if kind == "Parquet" else _arrow_batches(source, kind)
        row = 0  # rows counted so far (read, skipped or lost)
        for batch in batches:
            if batch.__class__ is _Lost:
                first = batch.first or row + 1
                damage = InputDamage(
                    name,
                    RowNumber(first),
                    batch.offset,
                    batch.size,
                    batch.rows,
                    batch.reason,
                    batch.resumed,
                    "row",
                )
                if on_damage is None:
                    raise BadRecord(
                        name, RowNumber(first), f"{batch.reason}; {first - 1} rows read before it"
                    )
                on_damage(damage)
                row = first - 1 + batch.rows
                continue
            for line in _batch_lines(batch):
                row += 1
                if isinstance(line, str):
                    if on_damage is None:
                        raise BadRecord(name, RowNumber(row), line)
                    on_damage(InputDamage(name, RowNumber(row), 0, 0, 1, line, True, "row"))
                    continue
                yield name, RowNumber(row), line
    finally:
        if spool is not None:
            with contextlib.suppress(OSError):
                os.unlink(spool)


def _seekable(fh) -> bool:
    try:
        return fh.seekable()
    except (AttributeError, OSError, ValueError):
        return False


def folder_lines(path: str, on_damage: Callable | None = None) -> Iterator[tuple[str, int, bytes]]:
    """The rows of every columnar file of folder ``path`` (see :func:`folder_files`)."""
    for file in folder_files(path):
        with open(file, "rb") as fh:
            kind = kind_of(fh.read(HEAD))
        if kind is None:
            raise BadRecord(file, 1, "not a Parquet or Arrow file (its first bytes are no such magic)")
        yield from file_lines(file, file, kind, on_damage)


def iter_rows(path: str) -> Iterator[dict]:
    """Rows of a columnar file or folder as dicts (for ``tasks prepare``): ``BadRecord`` for a bad row."""
    lines = folder_lines(path) if os.path.isdir(path) else None
    if lines is None:
        with open(path, "rb") as fh:
            kind = kind_of(fh.read(HEAD))
        if kind is None:
            raise BadRecord(path, 1, "not a Parquet or Arrow file")
        lines = file_lines(path, path, kind)
    for _name, _row, line in lines:
        yield orjson.loads(line)


def is_columnar(path: str) -> bool:
    """Whether ``path`` is a folder or a file that this module reads (by its first bytes)."""
    if os.path.isdir(path):
        return True
    try:
        with open(path, "rb") as fh:
            return kind_of(fh.read(HEAD)) is not None
    except OSError:
        return False


def row_count(path: str) -> int | None:
    """The rows of a columnar file or folder, from Parquet footers and Arrow batch headers (nothing is
    decoded; for progress ETAs); None when ``path`` is not columnar or cannot be counted."""
    try:
        files = folder_files(path) if os.path.isdir(path) else [path]
        kinds = []
        for file in files:
            with open(file, "rb") as fh:
                kinds.append(kind_of(fh.read(HEAD)))
        if not files or None in kinds:
            return None  # JSONL and the like: pyarrow is not imported for them
        pa, pq = _pyarrow(), _pyarrow("parquet")
        total = 0
        for file, kind in zip(files, kinds, strict=True):
            if kind == "Parquet":
                total += pq.ParquetFile(file).metadata.num_rows
                continue
            with pa.memory_map(file) as source:
                if kind == "Arrow file":
                    reader = pa.ipc.open_file(source)
                    batches = (reader.get_batch(i) for i in range(reader.num_record_batches))
                else:
                    batches = pa.ipc.open_stream(source)
                total += sum(batch.num_rows for batch in batches)
        return total
    except (MissingDependency, InputMissing, OSError):
        return None
    except Exception as exc:  # pyarrow's ArrowException (pyarrow may be unimported here)
        if type(exc).__module__.startswith("pyarrow"):
            return None
        raise
