"""Record fields, id derivation, input-shape normalisation and ``meta.<stage>`` helpers.

Canonical fields (SPEC §3): ``id``, ``prompt``, ``response``, ``plan``, ``answer``, ``task``,
``samples``, ``meta``. Common input shapes are read without flags and *added to* (never stripped
from) the record, so unknown fields pass through:

- benchmark rows: ``question`` (-> ``prompt``), ``answer`` stays the gold answer;
- MATH rows: ``problem`` -> ``prompt``, ``solution`` -> ``response``;
- Alpaca rows: ``instruction`` + ``input`` -> ``prompt``, ``output`` -> ``response``;
- chat rows: ``messages`` -> the last user turn is ``prompt``, the assistant turn after it ``response``;
- WebInstructSub rows (``orig_question``, ``orig_answer``, ``question``, ``answer``, ``source``,
  ``index``): the refined ``question`` -> ``prompt``, the refined ``answer`` -> ``response`` (a row
  with ``orig_answer`` has a full answer, not a gold one, in ``answer``; it stays there too).
  ``--prompt-field orig_question`` / ``--response-field orig_answer`` pick the original pair.

``--prompt-field`` / ``--response-field`` name other fields (dotted paths such as ``data.q`` work).
An ``id`` already present is kept; otherwise it is a hash of the content fields, so the same row
gets the same id in every run and every shard.

Reading a line (``parse_record``, used by every reader of records) and writing one (``dumps``):

- a line that is not UTF-8 is a bad record "not UTF-8: byte 0x.. at column N", not a JSON error;
- integers stay exact: orjson reads an integer beyond 64 bits as a float, so a line with a run of 19
  or more digits (the shortest integer orjson cannot hold) is read again with the standard ``json``
  module, and ``dumps`` writes such integers with ``json`` (orjson refuses them). Python itself
  refuses integers of more than 4300 digits: such a line is a bad record;
- a record nested more than ``MAX_DEPTH`` (128) levels of objects and lists is a bad record,
  "too deeply nested": orjson cannot write more than 254 levels, and a stage adds a few. The check
  walks the record only when its line holds more than 128 ``{``/``[`` bytes;
- a line that is valid JSON but not an object is a bad record.

The two byte checks (digit runs, brackets) are one ``bytes.translate`` and two C-level searches per
line: about 2 us for a 1 KB line, next to about 2 us for ``orjson.loads`` itself.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import orjson

PROMPT_SOURCES = ("prompt", "question", "problem", "instruction", "messages")
# ``answer`` is a response only in WebInstructSub rows (which have ``orig_answer``).
RESPONSE_SOURCES = ("response", "output", "solution", "messages", "answer")
# Fields that identify a record's content when no id is given.
ID_FIELDS = ("prompt", "response", "plan", "answer", "task")


# Levels of objects and lists a record may have (orjson writes at most 254; stages add a few).
MAX_DEPTH = 128
# digits -> "0", "{" and "[" -> "{", any other byte -> " ": one pass for both checks of parse_record.
_SCAN = bytes(0x30 if 0x30 <= b <= 0x39 else 0x7B if b in (0x7B, 0x5B) else 0x20 for b in range(256))
# 19 digits: the shortest integer orjson may not hold exactly (-9223372036854775809).
_LONG_NUMBER = b"0" * 19


class InvalidRecord(ValueError):
    """A line or record a stage cannot use; readers turn it into BadRecord (or a reject) with its line."""


class MissingField(InvalidRecord):
    """A record lacks a field the stage needs; the reader turns it into BadRecord with a line number."""


def parse_record(line: bytes) -> dict:
    """The record on ``line`` (see the module docstring); ``InvalidRecord`` with the reason if none."""
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        if "infinity" not in str(exc):  # orjson's words for a number beyond a double's range
            raise InvalidRecord(_not_json(line, exc)) from None
        record = None
    scan = line.translate(_SCAN)
    if record is None or _LONG_NUMBER in scan:
        record = _loads_exact(line)
    if record.__class__ is not dict:
        raise InvalidRecord("a record must be a JSON object")
    # (bytes.replace finds a rare byte with memchr: faster than bytes.count)
    if len(scan) - len(scan.replace(b"{", b"")) > MAX_DEPTH and _deeper_than(record, MAX_DEPTH):
        raise InvalidRecord(f"too deeply nested (more than {MAX_DEPTH} levels of objects and lists)")
    return record


def _not_json(line: bytes, exc: orjson.JSONDecodeError) -> str:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as bad:
        return (
            f"not UTF-8: byte 0x{line[bad.start]:02x} at column {bad.start + 1} "
            "(records are UTF-8 JSON; is the file in another encoding or compressed?)"
        )
    if "depth limit" in str(exc):
        return f"too deeply nested (more than {MAX_DEPTH} levels of objects and lists)"
    return f"invalid JSON: {exc}"


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text[:20]} is beyond the range of a double")
    return value


def _loads_exact(line: bytes) -> Any:
    """Read a line with ``json``: integers of any size exact (up to Python's 4300 digits)."""
    try:
        return json.loads(line, parse_constant=_reject_constant, parse_float=_finite)
    except json.JSONDecodeError as exc:
        raise InvalidRecord(f"invalid JSON: {exc}") from None
    except ValueError as exc:  # a float beyond a double, an integer beyond Python's digit limit
        raise InvalidRecord(f"a number cannot be read exactly: {exc}") from None


def _deeper_than(value: dict | list, levels: int) -> bool:
    """Whether ``value`` holds objects and lists nested more than ``levels`` levels deep."""
    if levels <= 0:
        return True
    for child in value.values() if value.__class__ is dict else value:
        if (child.__class__ is dict or child.__class__ is list) and _deeper_than(child, levels - 1):
            return True
    return False


def dumps(record: dict) -> bytes:
    """A record as one line of JSON (no newline); integers beyond 64 bits are written exactly."""
    try:
        return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)
    except orjson.JSONEncodeError as exc:
        if "Integer" not in str(exc):  # "Integer exceeds 64-bit range"
            raise
        return _dumps_exact(record)


def _dumps_exact(value: Any, sort_keys: bool = False) -> bytes:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=sort_keys, default=_plain)
    return text.encode()


def _plain(value: Any) -> Any:
    """For ``json``: numpy arrays and scalars as lists and numbers, as orjson writes them."""
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def get_path(record: dict, path: str) -> Any:
    cur: Any = record
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _from_messages(messages: Any) -> tuple[str | None, str | None]:
    if not isinstance(messages, list):
        return None, None
    prompt = response = None
    for i, m in enumerate(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            prompt = _text(m.get("content"))
            nxt = messages[i + 1] if i + 1 < len(messages) else None
            response = (
                _text(nxt.get("content"))
                if isinstance(nxt, dict) and nxt.get("role") == "assistant"
                else None
            )
    return prompt, response


def _text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts (their text strings; other values ignored)
        return "".join(t for p in content if isinstance(p, dict) and isinstance(t := p.get("text"), str))
    return None


def find_prompt(record: dict, field: str | None = None) -> str | None:
    """The prompt: ``field`` (a dotted path) when given, else read from the first of
    ``PROMPT_SOURCES`` the record has (module docstring); None when there is none."""
    return _find_text(record, field, PROMPT_SOURCES, turn=0)


def find_response(record: dict, field: str | None = None) -> str | None:
    """The response, like ``find_prompt`` from ``RESPONSE_SOURCES``."""
    return _find_text(record, field, RESPONSE_SOURCES, turn=1)


def _find_text(record: dict, field: str | None, sources: tuple[str, ...], turn: int) -> str | None:
    """The string at ``field``, or from the first source that holds a string (``messages``: the
    user turn for ``turn`` 0, the assistant's answer to it for 1, even when that is None)."""
    if field:
        v = get_path(record, field)
        return v if isinstance(v, str) else None
    for name in sources:
        v = record.get(name)
        if v is None:
            continue
        if name == "messages":
            return _from_messages(v)[turn]
        if not isinstance(v, str):
            continue
        if name == "instruction":  # Alpaca
            extra = record.get("input")
            return f"{v}\n\n{extra}" if isinstance(extra, str) and extra.strip() else v
        if name == "answer" and "orig_answer" not in record:
            continue  # a gold answer, not a response (WebInstructSub rows have orig_answer)
        return v
    return None


def derive_id(record: dict) -> str:
    """A stable id from the content fields: the first 16 hex digits of a SHA-256."""
    content = {k: record.get(k) for k in ID_FIELDS if record.get(k) is not None}
    if not content:
        content = record
    try:
        data = orjson.dumps(content, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError:  # an integer beyond 64 bits
        data = _dumps_exact(content, sort_keys=True)
    return hashlib.sha256(data).hexdigest()[:16]


def normalize(
    record: dict,
    prompt_field: str | None = None,
    response_field: str | None = None,
    require: tuple[str, ...] = (),
) -> dict:
    """Fill the canonical ``prompt``/``response``/``id`` fields in place and return the record.

    ``require`` names canonical fields that must be present afterwards (``MissingField`` otherwise).
    """
    if not isinstance(record, dict):
        raise MissingField("a record must be a JSON object")
    if prompt_field or "prompt" not in record:
        p = find_prompt(record, prompt_field)
        if p is not None:
            record["prompt"] = p
    if response_field or "response" not in record:
        r = find_response(record, response_field)
        if r is not None:
            record["response"] = r
    if record.get("id") is None:
        record["id"] = derive_id(record)
    elif not isinstance(record["id"], str):
        record["id"] = str(record["id"])
    for name in require:
        if not isinstance(record.get(name), str):
            hint = {
                "prompt": " (name it with --prompt-field)",
                "response": " (name it with --response-field)",
            }.get(name, "")
            raise MissingField(f"missing required field '{name}'{hint}")
    return record


def set_meta(record: dict, stage: str, values: dict) -> dict:
    """Set ``record['meta'][stage]`` (replacing an earlier run of the same stage)."""
    meta = record.get("meta")
    if not isinstance(meta, dict):
        meta = record["meta"] = {}
    meta[stage] = values
    return record


def derive_seed(global_seed: int, record_id: str) -> int:
    """A per-record seed from (global seed, id): reproducible and independent of order or sharding."""
    h = hashlib.sha256(f"{global_seed}:{record_id}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def id_hash(record_id: str) -> int:
    """The integer used for ``--shard``: independent of Python's randomized ``hash``."""
    return int.from_bytes(hashlib.sha256(record_id.encode()).digest()[:8], "little")


class WrongType(InvalidRecord):
    """A field has a JSON type its reader cannot use. An ``InvalidRecord``, so every reader of records
    (the stage's reader and the runner's worker processes, core.pool) sends it down the bad-record path with its line."""

    def __init__(self, field: str, value: object, expected: str) -> None:
        super().__init__(f"{field} is {json_type(value)}, not {expected}")


_JSON_TYPES = {
    dict: "an object",
    list: "a list",
    str: "a string",
    bool: "true/false",
    int: "a number",
    float: "a number",
}


def json_type(value: object) -> str:
    """The JSON name of ``value``'s type, for messages: ``an object``, ``a list``, ``a string``, ..."""
    return "null" if value is None else _JSON_TYPES.get(type(value), type(value).__name__)
