"""Fuzzing the readers: valid 200-record inputs, damaged at the text or the container level, through
``filter``, ``score`` and ``pack`` in every bad-record mode, must keep the reader's contract
(``codeplan_tools.core.streams``, issue #25):

- skip mode: exit 0, and every intact record (its line complete, inside an intact frame, member or
  file) reaches the output or the rejects file;
- fail mode: exit 0 or 65; on 65, one line on stderr naming ``file:line`` with a line no earlier than
  the first damaged one, and every intact record on the lines before it has been written;
- never exit 70 (under pytest an unexpected exception is raised instead, failing the test).

One seeded sweep (every container x corruption x command x mode, deterministic) and one
property-based search (hypothesis) over the same space. Both run the command in-process.
"""

from __future__ import annotations

import gzip
import json
import lzma
import random
import re
from dataclasses import dataclass, field
from itertools import zip_longest

import orjson
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codeplan_tools.core import pool
from tests.helpers import decode_records, invoke

N = 200
UNITS = 4  # frames / members / streams per compressed input
CONTAINERS = ["plain", "zstd", "gzip", "xz"]
TEXT_DAMAGE = ["flip", "delete", "insert", "truncate", "deep", "bigint", "not-utf8", "nul", "array", "crlf"]
CONTAINER_DAMAGE = ["flip", "truncate", "junk", "nul-padding", "zero-range", "foreign-header"]
MODES = ["fail", "skip", "skip+rejects"]
COMMANDS = ["filter", "score", "pack"]
PLAN = "def solve(items):\n    total = 0\n    for x in items:\n        total += x\n    return total"


def make_records(command: str) -> list[dict]:
    """Records every rule keeps / every scorer scores / pack packs; prompts differ in several places,
    so that a damaged copy of one never equals another (dedup)."""
    rng = random.Random(7)
    out = []
    for i in range(N):
        key = "".join(rng.choices("abcdefghjkmnpqrstuvwxyz", k=10))
        if command == "score":
            out.append(
                {
                    "id": f"q{i}-{key}",
                    "task": "gsm8k",
                    "answer": str(i % 10),
                    "samples": [{"response": f"{i % 10}"}],
                }
            )
        else:
            out.append(
                {
                    "id": f"r{i}-{key}",
                    "prompt": f"Add up the list {key} number {i}.",
                    "plan": PLAN,
                    "response": f"We add the numbers of the list {key} one after another; the total is the answer.",
                }
            )
    return out


def special_line(kind: str, command: str) -> bytes:
    base = make_records(command)[0] | {"id": f"special-{kind}"}
    if command != "score":
        base["prompt"] = f"A special {kind} record."
    if kind == "deep":
        value: dict = {"leaf": 1}
        for _ in range(300):
            value = {"a": value}
        return json.dumps({**base, "x": value}).encode()
    if kind == "bigint":
        return json.dumps({**base, "n": 2**70, "m": -(2**64)}).encode()
    if kind == "not-utf8":
        return orjson.dumps(base).replace(b"special", b"sp\xe9cial")
    if kind == "nul":
        return b"\x00" * 8
    if kind == "array":
        return b"[1, 2, 3]"
    raise ValueError(kind)


@dataclass
class Case:
    """A damaged input and what must survive it."""

    label: str
    stored: bytes
    intact: dict[str, int | None]  # id -> its line number when it comes before the damage, else None
    first_damaged: int  # the first line that may not be read (the error may not name an earlier one)
    exact: dict[str, dict] = field(default_factory=dict)  # id -> fields that must come out exactly


def _units(data: bytes, n: int) -> list[bytes]:
    """``data`` cut at line ends into about ``n`` parts, as codeplan's writer cuts frames."""
    cuts, step = [0], max(1, len(data) // n)
    for k in range(1, n):
        nl = data.find(b"\n", k * step)
        if nl < 0 or nl + 1 <= cuts[-1]:
            continue
        cuts.append(nl + 1)
    cuts.append(len(data))
    return [data[a:b] for a, b in zip(cuts, cuts[1:], strict=False) if b > a]


def _compress(container: str, part: bytes) -> bytes:
    if container == "zstd":
        return zstandard.ZstdCompressor(write_checksum=True).compress(part)
    if container == "gzip":
        return gzip.compress(part, mtime=0)
    return lzma.compress(part)


def _store(container: str, data: bytes) -> tuple[list[bytes], list[bytes]]:
    """(the stored units, the text of each)."""
    if container == "plain":
        return [data], [data]
    texts = _units(data, UNITS)
    return [_compress(container, t) for t in texts], texts


def text_case(command: str, container: str, kind: str, rng: random.Random) -> Case:
    records = make_records(command)
    lines = [orjson.dumps(r) for r in records]
    data = b"".join(line + b"\n" for line in lines)
    exact: dict[str, dict] = {}
    at = rng.randrange(len(data))
    if kind == "flip":
        damaged = data[:at] + bytes([data[at] ^ rng.randrange(1, 256)]) + data[at + 1 :]
    elif kind == "delete":
        damaged = data[:at] + data[at + rng.randint(1, 60) :]
    elif kind == "insert":
        damaged = data[:at] + rng.randbytes(rng.randint(1, 20)) + data[at:]
    elif kind == "truncate":
        damaged = data[:at]
    elif kind == "crlf":
        damaged = data.replace(b"\n", b"\r\n", rng.randint(1, N))
    else:  # a whole line inserted between two lines
        k = rng.randrange(N + 1)
        special = special_line(kind, command)
        damaged = (
            b"".join(line + b"\n" for line in lines[:k])
            + special
            + b"\n"
            + data[len(b"".join(lines[:k])) + k :]
        )
        if kind == "bigint" and command != "pack":
            exact[f"special-{kind}"] = {"n": 2**70, "m": -(2**64)}
    units, _ = _store(container, damaged)
    # Intact: an original line found whole in the damaged text; its number is its place there.
    by_line = {line: r["id"] for line, r in zip(lines, records, strict=True)}
    got = [line.rstrip(b"\r") for line in damaged.split(b"\n")]  # the reader drops a CR before LF
    if damaged.endswith(b"\n"):
        got.pop()
    first = next((j for j, (a, b) in enumerate(zip_longest(got, lines), 1) if a != b), len(got) + 1)
    intact: dict[str, int | None] = {by_line[line]: j for j, line in enumerate(got, 1) if line in by_line}
    return Case(f"text:{kind}@{at}", b"".join(units), intact, first, exact)


def container_case(command: str, container: str, kind: str, rng: random.Random) -> Case:
    """Damage to the stored bytes of a compressed input made of UNITS frames/members/streams."""
    records = make_records(command)
    units, texts = _store(container, b"".join(orjson.dumps(r) + b"\n" for r in records))
    k = rng.randrange(len(units))
    lost = {k}  # the units whose records may be lost
    if kind == "flip":
        u = bytearray(units[k])
        u[rng.randrange(len(u))] ^= rng.randrange(1, 256)
        units[k] = bytes(u)
    elif kind == "truncate":  # the file ends inside unit k
        units = [*units[:k], units[k][: rng.randrange(len(units[k]))]]
        lost = set(range(k, len(texts)))
    elif kind == "zero-range":  # may run into the next unit
        joined = bytearray(b"".join(units))
        a = sum(map(len, units[:k])) + rng.randrange(len(units[k]))
        b = min(len(joined), a + rng.randint(1, 64))
        joined[a:b] = bytes(b - a)
        ends = [sum(map(len, units[: j + 1])) for j in range(len(units))]
        lost = {j for j in range(len(units)) if ends[j] > a and (ends[j] - len(units[j])) < b}
        k = min(lost)
        units = [bytes(joined)]
    else:  # bytes that are no unit, inserted between two units or at either end
        if kind == "nul-padding":
            junk = b"\x00" * rng.randint(1, 40)
        elif kind == "foreign-header":  # another container's header glued on the front
            # (for gzip, a zstd header whose reserved bit is set: a valid one would make a tiny frame
            # of the gzip member's first bytes, which then is not intact any more)
            junk = (
                b"\x28\xb5\x2f\xfd\x08"
                if container == "gzip"
                else b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03"
            )
        else:
            junk = rng.choice([b"\n\n", rng.randbytes(9)])
        k = 0 if kind == "foreign-header" else rng.randrange(len(units) + 1)
        units.insert(k, junk)
        texts.insert(k, b"")
        lost = set()
    # Lines before the first line of unit k are read before any damage, with their own numbers.
    first_damaged = 1 + sum(t.count(b"\n") for t in texts[:k])
    intact: dict[str, int | None] = {}
    line = 0
    for j, t in enumerate(texts):
        for raw in t.splitlines():
            line += 1
            if j not in lost:
                intact[orjson.loads(raw)["id"]] = line if line < first_damaged else None
    return Case(f"container:{kind}@unit{k}", b"".join(units), intact, first_damaged)


@dataclass
class Outcome:
    exit_code: int
    stderr: str
    out_ids: list[str]
    rejected_ids: list[str]
    stats: dict
    out_records: list[dict]


def run(command: str, case: Case, mode: str, channel: str, tmp, model) -> Outcome:
    path = tmp / "input.data"
    path.write_bytes(case.stored)
    args = [command, "--plain"]
    if command == "pack":
        args += ["--model", str(model), "--max-len", "256"]
    args += ["-i", str(path)] if channel != "stdin" else []
    if channel == "file+workers":
        args += ["--workers", "2"]
    if mode != "fail":
        args += ["--on-bad-record", "skip"]
    rejects, stats = tmp / "rejects.jsonl", tmp / "stats.json"
    for p in (rejects, stats):
        p.unlink(missing_ok=True)
    if mode in ("skip+rejects", "fail"):
        args += ["--rejects", str(rejects), "--stats", str(stats)]
    result = invoke(args, input=case.stored if channel == "stdin" else b"")
    records = [json.loads(x) for x in result.stdout.splitlines() if x.strip()]
    if command == "pack":
        out_ids = [i for p in records for i in p["example_ids"]]
    else:
        out_ids = [r["id"] for r in records]
    rejected = decode_records(rejects.read_bytes()) if rejects.exists() else []
    return Outcome(
        result.exit_code,
        result.stderr,
        out_ids,
        [r["id"] for r in rejected if "id" in r],
        json.loads(stats.read_text())["counters"] if stats.exists() else {},
        records,
    )


def check(command: str, case: Case, mode: str, channel: str, tmp, model) -> Outcome:
    got = run(command, case, mode, channel, tmp, model)
    where = f"{command} {mode} {channel} {case.label}: exit {got.exit_code}: {got.stderr[-400:]}"
    seen = set(got.out_ids) | set(got.rejected_ids)
    if mode == "fail":
        assert got.exit_code in (0, 65), where
    else:
        assert got.exit_code == 0, where
    if got.exit_code == 65:
        lines = [x for x in got.stderr.strip().splitlines() if "error:" in x]
        assert len(lines) == 1 and "Traceback" not in got.stderr, where
        m = re.match(rf"codeplan {command}: error: (.+?):(\d+): ", lines[0])
        assert m, where
        named = int(m.group(2))
        assert named >= case.first_damaged, where  # never a line before the damage
        must = {rid for rid, line in case.intact.items() if line is not None and line < named}
    else:
        must = set(case.intact)
    missing = must - seen
    assert not missing, f"{where}: lost {len(missing)} intact records, e.g. {sorted(missing)[:3]}"
    if mode == "skip+rejects" and command != "pack":
        c = got.stats
        assert c["read"] == c["written"] + c.get("rejected", 0), (where, c)
    for rid, fields in case.exact.items():
        for r in got.out_records:
            if r.get("id") == rid:
                assert {k: r[k] for k in fields} == fields, where
    return got


def _pack_model(request):
    return request.getfixturevalue("tiny_model")


def sweep() -> list[tuple]:
    """The seeded cases: every container x damage kind, each with a command, mode and channel."""
    rng = random.Random(2025)
    cases = []
    for container in CONTAINERS:
        for kind in TEXT_DAMAGE:
            cases.append(
                ("text", container, kind, rng.choice(COMMANDS), rng.choice(MODES), rng.randrange(1 << 30))
            )
        if container != "plain":
            for kind in CONTAINER_DAMAGE:
                for command in COMMANDS:
                    cases.append(
                        ("container", container, kind, command, rng.choice(MODES), rng.randrange(1 << 30))
                    )
    return cases


SWEEP = sweep()


@pytest.mark.parametrize("level, container, kind, command, mode, seed", SWEEP)
def test_seeded_sweep(level, container, kind, command, mode, seed, tmp_path, request):
    rng = random.Random(seed)
    make = text_case if level == "text" else container_case
    case = make(command, container, kind, rng)
    model = _pack_model(request) if command == "pack" else None
    channel = "stdin" if seed % 3 == 0 and command != "pack" else "file"
    for m in (mode, "fail") if mode != "fail" else (mode,):
        check(command, case, m, channel, tmp_path, model)


@pytest.mark.parametrize("level, kind", [("container", "flip"), ("text", "deep")])
@pytest.mark.parametrize("mode", ["fail", "skip+rejects"])
@pytest.mark.parametrize("command", ["filter", "score"])
def test_worker_pool_keeps_the_contract(command, mode, level, kind, tmp_path, monkeypatch):
    """``COMMAND -i FILE --workers 2`` with batches small enough that the runner's workers start."""
    monkeypatch.setattr(pool, "BATCH_LINES", 30)
    make = container_case if level == "container" else text_case
    case = make(command, "zstd", kind, random.Random(11))
    check(command, case, mode, "file+workers", tmp_path, None)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    level=st.sampled_from(["text", "container"]),
    container=st.sampled_from(CONTAINERS),
    kind=st.data(),
    command=st.sampled_from(COMMANDS),
    mode=st.sampled_from(MODES),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_any_damage_keeps_the_contract(
    level, container, kind, command, mode, seed, tmp_path, request
):
    kinds = TEXT_DAMAGE if level == "text" or container == "plain" else CONTAINER_DAMAGE
    chosen = kind.draw(st.sampled_from(kinds))
    make = text_case if level == "text" or container == "plain" else container_case
    case = make(command, container, chosen, random.Random(seed))
    model = _pack_model(request) if command == "pack" else None
    check(command, case, mode, "file" if seed % 2 else "stdin", tmp_path, model)
