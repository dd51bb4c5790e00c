"""Counters of one run.

Keys are flat, stable, lower-case and carry their unit (``tokens_out``, ``engine_seconds``).
``Stats`` add up with ``+`` so that ``--stats`` files of shards merge by summing
(``codeplan_tools.core.stats.merge_files`` / ``Stats.from_json``). Values that are not sums
(distributions, summaries) live under ``derived`` and are recomputed, not added.
``--stats FILE`` is checked before a run starts (``outputs.check_writable``); its folder is created
when it is written, at the end of the run.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from codeplan_tools.core.errors import OutputIOError


class Stats:
    def __init__(self, stage: str, counters: dict[str, float] | None = None) -> None:
        self.stage = stage
        # A Counter (a missing key reads 0, ``update`` adds) of counts and of seconds (floats).
        self.counters: Counter[str] = Counter(counters or {})
        # Non-additive extras (e.g. length percentiles); written to JSON under "derived".
        self.derived: dict[str, Any] = {}

    def inc(self, key: str, n: float = 1) -> None:
        self.counters[key] += n  # type: ignore[assignment]  # typeshed's Counter holds ints only

    def __getitem__(self, key: str) -> float:
        return self.counters.get(key, 0)

    def __add__(self, other: Stats) -> Stats:
        out = Stats(self.stage)
        # Key by key, not Counter "+", which drops zeros: merged files show every key.
        for k in (*self.counters, *other.counters):
            out.counters[k] = self.counters[k] + other.counters[k]
        return out

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"stage": self.stage, "counters": dict(sorted(self.counters.items()))}
        if self.derived:
            d["derived"] = self.derived
        return d

    def write_json(self, path: str | Path) -> None:
        """Write the counters to ``path``, creating its folder; a failure is one line (exit 74)."""
        data = orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_bytes(data)
        except OSError as exc:
            raise OutputIOError(
                f"--stats {path}: cannot write the counters ({exc.strerror or exc})"
            ) from None

    @classmethod
    def from_json(cls, path: str | Path) -> Stats:
        d = orjson.loads(Path(path).read_bytes())
        return cls(d.get("stage", ""), d.get("counters", {}))

    def summary(self) -> str:
        """One short line for stderr at the end of a run."""
        parts = [f"{k}={_fmt(v)}" for k, v in sorted(self.counters.items())]
        return f"codeplan {self.stage}: " + ", ".join(parts)


def _fmt(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.3f}"


def merge_files(paths: list[str | Path]) -> Stats:
    """Sum the counters of several ``--stats`` files (e.g. one per shard)."""
    total: Stats | None = None
    for p in paths:
        s = Stats.from_json(p)
        total = s if total is None else total + s
    return total or Stats("")
