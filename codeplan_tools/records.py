"""Record fields, id derivation, input-shape normalisation and ``meta.<stage>`` helpers.

Canonical fields (SPEC §3): ``id``, ``prompt``, ``response``, ``plan``, ``answer``, ``task``,
``samples``, ``meta``. Common input shapes are read without flags and *added to* (never stripped
from) the record, so unknown fields pass through:

- benchmark rows: ``question`` (-> ``prompt``), ``answer`` stays the gold answer;
- MATH rows: ``problem`` -> ``prompt``, ``solution`` -> ``response``;
- Alpaca rows: ``instruction`` + ``input`` -> ``prompt``, ``output`` -> ``response``;
- chat rows: ``messages`` -> the last user turn is ``prompt``, the assistant turn after it ``response``.

``--prompt-field`` / ``--response-field`` name other fields (dotted paths such as ``data.q`` work).
An ``id`` already present is kept; otherwise it is a hash of the content fields, so the same row
gets the same id in every run and every shard.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

PROMPT_SOURCES = ("prompt", "question", "problem", "instruction", "messages")
RESPONSE_SOURCES = ("response", "output", "solution", "messages")
# Fields that identify a record's content when no id is given.
ID_FIELDS = ("prompt", "response", "plan", "answer", "task")


class MissingField(ValueError):
    """A record lacks a field the stage needs; the reader turns it into BadRecord with a line number."""


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
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return None


def find_prompt(record: dict, field: str | None = None) -> str | None:
    if field:
        v = get_path(record, field)
        return v if isinstance(v, str) else None
    for name in PROMPT_SOURCES:
        v = record.get(name)
        if v is None:
            continue
        if name == "messages":
            return _from_messages(v)[0]
        if name == "instruction":
            extra = record.get("input")
            return f"{v}\n\n{extra}" if isinstance(extra, str) and extra.strip() else v
        if isinstance(v, str):
            return v
    return None


def find_response(record: dict, field: str | None = None) -> str | None:
    if field:
        v = get_path(record, field)
        return v if isinstance(v, str) else None
    for name in RESPONSE_SOURCES:
        v = record.get(name)
        if v is None:
            continue
        if name == "messages":
            return _from_messages(v)[1]
        if isinstance(v, str):
            return v
    return None


def derive_id(record: dict) -> str:
    """A stable id from the content fields: the first 16 hex digits of a SHA-256."""
    content = {k: record.get(k) for k in ID_FIELDS if record.get(k) is not None}
    if not content:
        content = record
    return hashlib.sha256(orjson.dumps(content, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]


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
