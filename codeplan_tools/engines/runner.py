"""The engine runner: the loop every stage that calls an engine shares (``extract``, ``generate``).

An engine stage is an :class:`EngineTask`: it builds one request per record (:meth:`~EngineTask.request`,
raising :class:`Unusable` for a record it cannot ask about), and turns each result into the output
record (:meth:`~EngineTask.complete`). :func:`run_engine_task` does the rest, the same way for all:

- Records go to the engine in chunks (``chunk_size``, else ``DEFAULT_CHUNK`` of the engine); the
  output is flushed (``ctx.flush``) after each chunk, so a run killed part-way resumes from there.
- The engine is built from the :class:`~codeplan_tools.engines.spec.EngineSpec` when the first chunk
  arrives (a run with nothing left to do never loads a model), unless the stage was given one already
  built (library use, benchmarks: it is then not closed here).
- A row the engine cannot take (a prompt longer than the context, a malformed server answer after its
  retries) is rejected with the engine's reason (``ctx.reject``, the record named by its id), not the
  run failed.
- Building, binding, generating and closing run under
  :func:`~codeplan_tools.engines.base.stdout_to_stderr`: stdout carries records only, whatever the
  engine library prints.
- Counters: ``requests``, ``tokens_in``, ``tokens_out``, ``samples``, ``engine_seconds``, and the derived
  ``tokens_out_per_engine_s``; throughput and ETA go to stderr (``ctx.progress`` and
  ``ctx.show_progress``, counted over ``ctx.inputs``: :class:`~codeplan_tools.core.progress.EngineProgress`).

The runner reads its context through :class:`~codeplan_tools.core.stage.StageContext` only, so the
same stage runs on files (``run_stage``) and in memory (``StageContext``, where progress is off).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TYPE_CHECKING, Any

from codeplan_tools.core.errors import UsageError
from codeplan_tools.core.records import normalize

# SamplingConfig lives with EngineSpec, light to import (the CLI builds its options from both at
# start-up); it is re-exported here for the stages.
from codeplan_tools.engines.spec import EngineSpec, SamplingConfig, check_sampling  # noqa: F401

if TYPE_CHECKING:
    from codeplan_tools.core.stage import StageContext
    from codeplan_tools.engines.base import Engine, Request, Result

# Records per engine call when --chunk-size is not given. vLLM schedules a large chunk best. The
# transformers engine sorts a chunk by length into batches of --batch-size, so a chunk much larger than
# a batch pads less (64 records ran at 0.77x the speed of one sorted 256-record call on the tiny
# model), while staying small enough to flush often. Over HTTP the chunk only bounds what is pending.
DEFAULT_CHUNK = {"vllm": 4096, "hf": 1024, "openai": 256}


def text_hash(text: str) -> str:
    """A short content hash of an instruction text, for resume keys and ``meta.<stage>``."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def chunked(items: Iterable, size: int) -> Iterator[list]:
    """Lists of up to ``size`` items of ``items``, in order."""
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


class Unusable(Exception):
    """A record this stage cannot turn into a request; it is rejected with this reason."""


class EngineTask:
    """A stage around an engine, in the ``Stage`` shape: ``run(records, ctx)``.

    A subclass sets ``name`` and implements :meth:`request` and :meth:`complete` (and :meth:`bind`
    when it needs the loaded engine, e.g. its tokenizer)."""

    name = ""

    def __init__(self, spec: EngineSpec, chunk_size: int | None = None, engine: Engine | None = None) -> None:
        self.spec = spec
        self.chunk_size = chunk_size
        # An engine built by the caller (reused across runs); otherwise built from ``spec`` and closed.
        self.engine = engine

    def bind(self, engine: Engine) -> None:
        """Called once the engine is loaded, before the first request."""

    def request(self, record: dict) -> Request:
        """The request for ``record``; raise :class:`Unusable` to reject it with a reason."""
        raise NotImplementedError

    def complete(self, record: dict, request: Request, result: Result) -> dict[str, Any]:
        """Put the result into ``record`` and return its ``meta.<stage>`` values."""
        raise NotImplementedError

    def run(self, records: Iterable[dict], ctx: StageContext) -> Iterator[dict]:
        """The stage: ``records`` through the engine (see :func:`run_engine_task`)."""
        normalized = (normalize(r) for r in records)  # a no-op on records run_stage has normalised
        return run_engine_task(normalized, ctx, self)


def run_engine_task(records: Iterator[dict], ctx: StageContext, task: EngineTask) -> Iterator[dict]:
    """Chunk ``records``, call the engine, reject or yield (see the module docstring)."""
    from codeplan_tools.core.progress import EngineProgress, LineCounter
    from codeplan_tools.engines.base import stdout_to_stderr

    size = task.chunk_size or DEFAULT_CHUNK.get(task.spec.resolved_engine(), 256)
    if size < 1:
        raise UsageError("--chunk-size must be at least 1")
    stats = ctx.stats
    show = ctx.show_progress
    progress = EngineProgress(
        task.name,
        stats,
        bar=ctx.progress,
        enabled=show,
        counter=LineCounter(ctx.inputs) if show and ctx.inputs else None,
    )
    engine = task.engine
    owned, bound = engine is None, False
    try:
        for chunk in chunked(records, size):
            ctx.flush()
            if not bound:
                with stdout_to_stderr():
                    if engine is None:
                        engine = task.spec.build()
                    task.bind(engine)
                bound = True
            assert engine is not None
            pending, requests = [], []
            for record in chunk:
                try:
                    req = task.request(record)
                except Unusable as exc:
                    ctx.reject(record, str(exc))
                    continue
                pending.append(record)
                requests.append(req)
            if not requests:
                continue
            progress.start()
            t0 = time.monotonic()
            with stdout_to_stderr():
                results = engine.generate(requests)
            seconds = time.monotonic() - t0
            stats.inc("engine_seconds", round(seconds, 3))
            stats.inc("requests", len(requests))
            tokens_out = 0
            for record, req, res in zip(pending, requests, results, strict=True):
                stats.inc("tokens_in", res.tokens_in)
                if res.error:
                    ctx.reject(record, res.error, tokens_in=res.tokens_in)
                    continue
                n_out = sum(c.tokens_out for c in res.completions)
                tokens_out += n_out
                stats.inc("tokens_out", n_out)
                stats.inc("samples", len(res.completions))
                yield ctx.stamp(record, task.complete(record, req, res))
            progress.chunk_done(len(requests), tokens_out, seconds)
        ctx.flush()
    finally:
        if owned and engine is not None:
            close = getattr(engine, "close", None)  # engines holding processes or sockets have one
            if close is not None:
                with stdout_to_stderr():
                    close()
    if progress.engine_seconds > 0:
        stats.derived["tokens_out_per_engine_s"] = round(progress.tokens_out / progress.engine_seconds, 1)
