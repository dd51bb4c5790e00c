"""Resume a stage from its own output file.

A stage that resumes (extract, generate, score) stamps every record it writes, and every record it
rejects, with ``meta.<stage>.run_key``: a hash of the settings that determine the output (model,
template text, sampling parameters, seed...), with the settings themselves in ``meta.<stage>.settings``.
Re-running the identical command with the same ``-o FILE`` (under the run's ``OutputLock``):

1. reads the complete records of FILE (and of the ``--rejects`` file, so rejected rows are not
   retried) without changing it, and refuses with ``SettingsMismatch`` (exit 78) at the first one
   that lacks this run key: a record of another run names the settings that differ; a line that
   is not a JSON object, or a record without ``meta.<stage>.run_key``, means FILE is not a codeplan
   output (a ``notes.txt``, a model file, a benchmark input) and is left untouched;
2. only then cuts a torn tail (a partial zstd frame or gzip member, or a line without its newline, left by a kill).
   A file with no complete record is cut only if its torn tail holds this run key, so a foreign
   file without a newline is never emptied;
3. skips the ids found and appends to FILE in the encoding FILE already has (``outputs.OutputWriter``).

Completion is per record and read from the output itself, so there is no state file to lose.
A plain file is read line by line (a foreign file is refused at its first line, whatever its size);
a zstd or gzip file is decompressed whole (its frames or members one by one).
"""

from __future__ import annotations

import hashlib
import os
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import zstandard

from codeplan_tools.core.errors import SettingsMismatch
from codeplan_tools.core.streams import GZIP_MAGIC, ZSTD_MAGIC


def run_key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(settings, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _split_frames(data: bytes, gzip: bool = False) -> tuple[bytes, int]:
    """Decompress consecutive complete zstd frames (or gzip members); return (content, bytes of
    complete frames). A torn or damaged last frame ends the complete part."""
    out = []
    pos = 0
    while pos < len(data):
        # wbits 31: one gzip member with its header and trailer checked.
        dobj = zlib.decompressobj(31) if gzip else zstandard.ZstdDecompressor().decompressobj()
        try:
            chunk = dobj.decompress(data[pos:])
        except (zstandard.ZstdError, zlib.error):
            break
        if not dobj.eof:
            break  # a torn last frame
        used = len(data) - pos - len(dobj.unused_data)
        out.append(chunk)
        pos += used
    return b"".join(out), pos


class _Scan:
    """The complete lines of an output file, read without changing it.

    ``lines()`` yields ``(line number, line)``; afterwards ``complete`` is the byte length of the
    complete part (whole frames, or whole lines) and ``size`` the file's, so ``complete < size``
    means a torn tail, whose (decompressed as far as possible) bytes ``tail()`` returns.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.size = self.path.stat().st_size
        self.complete = 0
        with open(self.path, "rb") as fh:
            head = fh.read(4)
        self.zstd = head == ZSTD_MAGIC
        self.gzip = head.startswith(GZIP_MAGIC)

    def lines(self) -> Iterator[tuple[int, bytes]]:
        if self.zstd or self.gzip:
            yield from self._frame_lines()
            return
        with open(self.path, "rb") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.endswith(b"\n"):
                    return  # the torn tail
                self.complete += len(line)
                if line.strip():
                    yield lineno, line

    def _frame_lines(self) -> Iterator[tuple[int, bytes]]:
        content, self.complete = _split_frames(self.path.read_bytes(), gzip=self.gzip)
        # A complete frame (member) always ends with a full line; keep whole lines only.
        if content and not content.endswith(b"\n"):
            raise SettingsMismatch(
                f"{self.path}: a complete {'gzip member' if self.gzip else 'zstd frame'} ends mid-line, so codeplan did not write this file; "
                "nothing was changed: use another -o file"
            )
        for lineno, line in enumerate(content.splitlines(), 1):
            if line.strip():
                yield lineno, line

    def tail(self) -> bytes:
        with open(self.path, "rb") as fh:
            fh.seek(self.complete)
            data = fh.read()
        if self.zstd or self.gzip:
            try:
                dobj = zlib.decompressobj(31) if self.gzip else zstandard.ZstdDecompressor().decompressobj()
                return dobj.decompress(data)
            except (zstandard.ZstdError, zlib.error):
                return b""
        return data

    def cut(self) -> None:
        with open(self.path, "r+b") as fh:
            fh.truncate(self.complete)


def repair_and_read(path: str | os.PathLike) -> list[dict]:
    """Cut the torn tail of an output file in place and return its complete records.

    It does not check whose file it is: ``completed_ids`` checks the run key before cutting.
    """
    p = Path(path)
    if not p.exists() or p.stat().st_size == 0:
        return []
    scan = _Scan(p)
    records = [_parse(path, lineno, line) for lineno, line in scan.lines()]
    if scan.complete != scan.size:
        scan.cut()
    return records


def _parse(path, lineno: int, line: bytes) -> dict:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        record = None
    if not isinstance(record, dict):
        raise SettingsMismatch(
            f"{path}:{lineno}: not a JSON record, so codeplan did not write this file; "
            "nothing was changed: use another -o file"
        )
    return record


def _stage_meta(record: dict, stage: str) -> dict:
    meta = record.get("meta")
    ours = meta.get(stage) if isinstance(meta, dict) else None
    return ours if isinstance(ours, dict) else {}


def completed_ids(paths: list[str | None], stage: str, key: str, settings: dict[str, Any]) -> set[str]:
    """Ids already written (or rejected) by a run with the same key; refuse on another key.

    Each file is checked whole before its torn tail, if any, is cut (see the module docstring).
    """
    done: set[str] = set()
    for path in paths:
        if not path or not os.path.isfile(path) or os.path.getsize(path) == 0:
            continue
        scan = _Scan(path)
        found = 0
        for lineno, line in scan.lines():
            record = _parse(path, lineno, line)
            meta = _stage_meta(record, stage)
            if meta.get("run_key") != key:
                raise SettingsMismatch(_mismatch_message(path, lineno, stage, meta, settings))
            done.add(str(record.get("id")))
            found += 1
        if scan.complete == scan.size:
            continue
        if not found and f'"run_key":"{key}"'.encode() not in scan.tail():
            raise SettingsMismatch(
                f"{path} holds no complete record of this '{stage}' run (it ends without a newline or "
                "inside a zstd frame); nothing was changed: use another -o file, or delete it to start over"
            )
        scan.cut()
    return done


def _mismatch_message(path: str, lineno: int, stage: str, old: dict, new: dict) -> str:
    if "run_key" not in old:
        return (
            f"{path}:{lineno}: the record has no meta.{stage}.run_key, so no codeplan {stage} run wrote "
            "this file; nothing was changed: use another -o file"
        )
    settings = old.get("settings")
    old_settings = settings if isinstance(settings, dict) else {}
    diffs = [
        f"{k}: {_short(old_settings.get(k))} -> {_short(new.get(k))}"
        for k in sorted(set(old_settings) | set(new))
        if old_settings.get(k) != new.get(k)
    ]
    detail = "; ".join(diffs) if diffs else "another run key"
    return (
        f"{path} was made by a '{stage}' run with other settings ({detail}); "
        "use another -o file, or delete it to start over"
    )


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."
