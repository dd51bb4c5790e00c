"""Resume a stage from its own output file.

A stage that resumes (extract, generate, score) stamps every record it writes, and every record it
rejects, with ``meta.<stage>.run_key``: a hash of the settings that determine the output (model,
template text, sampling parameters, seed...), with the settings themselves in ``meta.<stage>.settings``.
Re-running the identical command with the same ``-o FILE``:

1. cuts a torn tail off FILE (a partial zstd frame or a line without its newline, left by a kill);
2. collects the ids already in FILE (and in the ``--rejects`` file, so rejected rows are not retried);
3. refuses with ``SettingsMismatch`` if any of them carries another run key, naming the settings
   that differ; otherwise the stage skips those ids and appends to FILE.

Completion is per record and read from the output itself, so there is no state file to lose.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import orjson
import zstandard

from .errors import SettingsMismatch
from .streams import ZSTD_MAGIC


def run_key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(settings, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


def _split_frames(data: bytes) -> tuple[bytes, int]:
    """Decompress consecutive complete zstd frames; return (content, bytes of complete frames)."""
    out = []
    pos = 0
    while pos < len(data):
        dobj = zstandard.ZstdDecompressor().decompressobj()
        try:
            chunk = dobj.decompress(data[pos:])
        except zstandard.ZstdError:
            break
        if not dobj.eof:
            break  # a torn last frame
        used = len(data) - pos - len(dobj.unused_data)
        out.append(chunk)
        pos += used
    return b"".join(out), pos


def repair_and_read(path: str | os.PathLike) -> list[dict]:
    """Cut the torn tail of an output file in place and return its complete records."""
    p = Path(path)
    if not p.exists() or p.stat().st_size == 0:
        return []
    data = p.read_bytes()
    if data.startswith(ZSTD_MAGIC):
        content, good = _split_frames(data)
        # A complete frame always ends with a full line; keep whole lines only.
        cut = content.rfind(b"\n") + 1
        if cut != len(content):
            raise SettingsMismatch(
                f"{path}: a complete frame ends mid-line; this file was not written by codeplan"
            )
    else:
        content = data
        good = content.rfind(b"\n") + 1
        content = content[:good]
    if good != len(data):
        with open(p, "r+b") as fh:
            fh.truncate(good)
    records = []
    for line in content.splitlines():
        if line.strip():
            try:
                records.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise SettingsMismatch(
                    f"{path}: cannot resume, an existing line is not JSON ({exc})"
                ) from exc
    return records


def completed_ids(paths: list[str | None], stage: str, key: str, settings: dict[str, Any]) -> set[str]:
    """Ids already written (or rejected) by a run with the same key; refuse on another key."""
    done: set[str] = set()
    for path in paths:
        if not path:
            continue
        for rec in repair_and_read(path):
            meta = (rec.get("meta") or {}).get(stage) or {}
            other = meta.get("run_key")
            if other != key:
                raise SettingsMismatch(_mismatch_message(path, stage, meta.get("settings") or {}, settings))
            done.add(str(rec.get("id")))
    return done


def _mismatch_message(path: str, stage: str, old: dict, new: dict) -> str:
    diffs = [
        f"{k}: {_short(old.get(k))} -> {_short(new.get(k))}"
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]
    detail = "; ".join(diffs) if diffs else "it has no codeplan run key"
    return (
        f"{path} was made by a '{stage}' run with other settings ({detail}); "
        "use another -o file, or delete it to start over"
    )


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."
