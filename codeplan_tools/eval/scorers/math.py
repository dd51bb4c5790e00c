"""Math expressions (MATH, MATH-500): ``\\boxed{}`` extraction and math-verify equivalence.

Strict: the marked answer span (normally the last ``\\boxed{}``; also "the answer is X", the last
```` ```output ```` block of a tool-integrated solution, or a bare one-line answer) parsed by
math-verify and compared with the gold; a span that is only English number words (``twelve``) is read
as that number. A marked span math-verify cannot parse is ``invalid``. Lenient: the strict answer when
one is marked, else whatever math-verify's own extraction finds in the whole response (its LaTeX and
plain-expression targets). There is no hedge check here: ``x = 2 or x = 3`` is a valid answer (a set)
and math-verify compares it with the gold as such. Equivalence is math-verify's ``verify`` (symbolic and numeric), so
``\\frac{1}{2}`` = ``0.5`` = ``1/2`` and ``\\left( 3, \\frac{\\pi}{2} \\right)`` = ``(3, \\frac{\\pi}{2})``.

Every check runs in a worker process with a **hard** timeout: sympy can hang on inputs such as
``9^{9^{9^{9}}}`` inside C code where no signal reaches it, so math-verify's own ``signal.alarm``
timeouts are switched off and a worker that passes its deadline is killed and replaced (``CheckPool``).
Such a sample is counted as ``timed_out`` and wrong; the other samples of the run go on (those queued
behind it go to the new worker). Each worker has a few jobs queued so it never waits for the parent
between them, and each job's deadline counts from when the answer before it came back. A worker parses each
distinct answer text once (``parse_boxed``: a gold is parsed once, not once per sample; switched off
with ``CODEPLAN_MATH_PARSE_CACHE=0``, which changes no verdict, only the time). Workers also
get an address-space limit (``MATH_WORKER_MEMORY_MB``, default 4096) so a runaway power fails fast
instead of swapping. The vote key for maj@k is sympy's text of the parsed answer (``1/2`` for both
``\\frac12`` and ``\\frac{1}{2}``); forms that differ in text but are equal still vote apart.
"""

from __future__ import annotations

import functools
import logging
import multiprocessing.connection
import os
import re
import signal
import subprocess
import sys
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from . import Scorer, Verdict, answer_span, gold_answer, own_text, register_scorer, strip_thinking

STARTUP_TIMEOUT = 120.0  # seconds a new worker may take to import math-verify and report ready


PARSE_CACHE_ENV = "CODEPLAN_MATH_PARSE_CACHE"
"""Set to 0 to parse every answer anew (the cache changes no verdict; the switch is there to show it)."""
PARSE_CACHE_SIZE = 4096  # distinct answer texts kept per worker process


def _parse_boxed(answer: str) -> list:
    """math-verify's parse of ``\\boxed{answer}`` (a gold answer or a marked span)."""
    from math_verify import parse

    return parse("\\boxed{" + answer + "}", parsing_timeout=None)


def parse_boxed(answer: str) -> list:
    """``_parse_boxed``, cached by the answer's text in the worker process (bounded, least recently used
    dropped): a gold is parsed once per worker, not once per sample, and a span that is the gold's very
    text is not parsed again. math-verify's ``parse`` is a function of its text and nothing mutates its
    result (``verify`` and ``_key`` only read it), so a cached parse gives the verdict a fresh one gives.
    A parse that raises is not cached; a worker killed at its deadline takes its cache with it."""
    return _cached_parse(answer)


def _cache_wanted() -> bool:
    return os.environ.get(PARSE_CACHE_ENV, "1").strip() not in ("0", "false", "no", "off")


_cached_parse = (
    functools.lru_cache(maxsize=PARSE_CACHE_SIZE)(_parse_boxed) if _cache_wanted() else _parse_boxed
)


def check_answer(gold: str, text: str) -> tuple[bool, bool, str | None, str | None, bool]:
    """(correct_strict, correct, extracted_strict, extracted, invalid): runs inside a worker."""
    from math_verify import parse, verify

    from .numeric import number_key, spelled_number

    g = parse_boxed(gold)
    text = strip_thinking(text or "")
    span = answer_span(text, bare=is_bare_math)
    if span is not None:
        # A marked answer in words ("twelve") is that number; math-verify would read it as a product.
        spelled = spelled_number(span) if not re.search(r"\d", span) else None
        number = number_key(spelled) if spelled is not None else None
        p = parse_boxed(span if number is None else number)
        ok = bool(g) and bool(p) and verify(g, p, timeout_seconds=None)
        key = _key(p) or span
        return ok, ok, span, key, not p
    p = parse(text, parsing_timeout=None)
    ok = bool(g) and bool(p) and verify(g, p, timeout_seconds=None)
    return False, ok, None, _key(p), False


_MATH_WORDS = {"sqrt", "sin", "cos", "tan", "cot", "sec", "csc", "log", "exp", "inf", "infty", "and", "or"}


def is_bare_math(line: str) -> bool:
    """A one-line response that is an expression, not a sentence (``\\frac{1}{2}``, ``x = 5``, ``sqrt(2)``)."""
    line = re.sub(r"\\text\{[^{}]*\}|\\[A-Za-z]+", " ", line)
    return all(w.lower() in _MATH_WORDS for w in re.findall(r"[A-Za-z]{3,}", line))


def _key(parsed: list) -> str | None:
    if not parsed:
        return None
    return "".join(str(parsed[0]).split())


def _worker_main() -> None:
    """Worker loop (``python -m codeplan_tools.eval.scorers.math``): JSON lines in, JSON lines out."""
    import orjson

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    memory_mb = int(os.environ.get("MATH_WORKER_MEMORY_MB", 4096))
    if memory_mb > 0:
        try:
            import resource

            limit = memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ImportError, ValueError, OSError):
            pass
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    logging.getLogger("latex2sympy2_extended").setLevel(logging.ERROR)
    out = sys.stdout.buffer
    try:
        check_answer("1", "\\boxed{1}")  # warm the lazy imports before the first deadline starts
    except Exception:
        pass
    out.write(b'["ready"]\n')
    out.flush()
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        idx, gold, text = orjson.loads(line)
        try:
            reply = [idx, "ok", check_answer(gold, text)]
        except MemoryError:
            reply = [idx, "error", "MemoryError"]
        except Exception as exc:  # a parse/verify bug must not kill the run
            reply = [idx, "error", f"{type(exc).__name__}: {exc}"[:200]]
        out.write(orjson.dumps(reply) + b"\n")
        out.flush()


# Jobs queued to one worker beyond the one it is running, so it never waits for the parent between
# jobs. Their bytes are kept under what the pipe holds: the parent's write then never blocks, and a
# worker stuck in sympy is still killed at its deadline.
IN_FLIGHT_JOBS = 32
PIPE_BYTES = 1 << 20  # asked for (Linux F_SETPIPE_SZ); the kernel's own size is used where it says no


class _Worker:
    """One ``python -m codeplan_tools.eval.scorers.math`` process (a subprocess, not multiprocessing:
    nothing of the caller's ``__main__`` is re-imported, and killing it is always safe).

    Jobs go out in order and come back in order; ``inflight`` holds the ids of those sent and not
    answered, the first being the one it runs: its deadline counts from when the answer before it came
    back (or from when it was sent to an idle worker), so every job keeps the whole hard timeout."""

    def __init__(self) -> None:
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[3])
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "codeplan_tools.eval.scorers.math"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=root,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None  # both are pipes
        self.stdin: IO[bytes] = self.proc.stdin
        self.stdout: IO[bytes] = self.proc.stdout
        self.capacity = _pipe_capacity(self.stdin.fileno())
        self.ready = False
        self.inflight: deque[tuple[int, bytes]] = deque()  # (job id, the line sent)
        self.inflight_bytes = 0
        self.deadline = 0.0  # of inflight[0]
        self.started = time.monotonic()
        self._partial = b""

    def take(self, pending: deque[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        """The jobs at the head of ``pending`` that may be sent now without the write blocking."""
        batch: list[tuple[int, bytes]] = []
        size = self.inflight_bytes
        while pending:
            queued = len(self.inflight) + len(batch)
            line = pending[0][1]
            # An idle worker is reading: it takes one job of any size.
            if queued and (queued > IN_FLIGHT_JOBS or size + len(line) > self.capacity):
                break
            batch.append(pending.popleft())
            size += len(line)
        return batch

    def send(self, jobs: list[tuple[int, bytes]], now: float, timeout: float) -> None:
        if not self.inflight:
            self.deadline = now + timeout
        for job in jobs:
            self.inflight.append(job)
            self.inflight_bytes += len(job[1])
        self.stdin.write(b"".join(line for _id, line in jobs))
        self.stdin.flush()

    def done(self, now: float, timeout: float) -> int:
        """The first job in flight has its answer: the next one starts now."""
        job_id, line = self.inflight.popleft()
        self.inflight_bytes -= len(line)
        self.deadline = now + timeout
        return job_id

    def read_lines(self) -> list[bytes] | None:
        """The complete lines the worker has written so far (unbuffered: ``wait`` sees the pipe, not a
        buffer); None at end of file."""
        data = os.read(self.stdout.fileno(), 1 << 16)
        if not data:
            return None
        *lines, self._partial = (self._partial + data).split(b"\n")
        return lines

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        for f in (self.stdin, self.stdout):
            try:
                f.close()
            except OSError:
                pass


def _pipe_capacity(fd: int) -> int:
    """Bytes the pipe ``fd`` holds: enlarged to PIPE_BYTES where Linux allows, else its own size (64 KiB
    on Linux; 16 KiB assumed elsewhere)."""
    try:
        import fcntl

        set_size = getattr(fcntl, "F_SETPIPE_SZ", 1031)
        get_size = getattr(fcntl, "F_GETPIPE_SZ", 1032)
        try:
            fcntl.fcntl(fd, set_size, PIPE_BYTES)
        except OSError:
            pass  # over /proc/sys/fs/pipe-max-size: keep what it has
        return max(4096, fcntl.fcntl(fd, get_size) - 4096)
    except (ImportError, OSError, ValueError):
        return 16384


class CheckPool:
    """Processes that run ``check_answer`` with a hard per-call timeout.

    ``run(jobs)`` returns one ``(status, result)`` per job, in order: ``("ok", tuple)``,
    ``("timeout", None)`` when the job passed ``timeout`` seconds (its worker is killed and replaced,
    and the jobs queued behind it go to another) or ``("error", message)``. Up to ``workers`` jobs run
    at once; each worker has more queued (``IN_FLIGHT_JOBS``). ``submit(jobs)`` sends jobs and returns
    their ids at once, ``collect(ids)`` waits for their results: a caller prepares its next batch while
    the workers check this one. Workers live until ``close()``; ``start()`` starts them early.
    """

    def __init__(self, workers: int = 1, timeout: float = 5.0) -> None:
        self.size = max(1, int(workers))
        self.timeout = float(timeout)
        self._workers: list[_Worker] = []
        self.restarts = 0
        self._next_id = 0
        self._pending: deque[tuple[int, bytes]] = deque()  # (job id, the line to send)
        self._results: dict[int, tuple[str, Any]] = {}
        self._finalizer = weakref.finalize(self, CheckPool._shutdown, self._workers)

    def start(self, jobs: int | None = None) -> None:
        """Start the worker processes (``jobs``: no more than that many); they import math-verify while
        the caller goes on."""
        want = self.size if jobs is None else min(self.size, max(1, jobs))
        while len(self._workers) < want:
            self._workers.append(_Worker())

    def run(self, jobs: Sequence[tuple[str, str]]) -> list[tuple[str, Any]]:
        return self.collect(self.submit(jobs))

    def submit(self, jobs: Sequence[tuple[str, str]]) -> range:
        """Queue ``jobs`` (``(gold, text)``) and send what the workers have room for; their ids."""
        import orjson

        first = self._next_id
        for gold, text in jobs:
            self._pending.append((self._next_id, orjson.dumps([self._next_id, gold, text]) + b"\n"))
            self._next_id += 1
        self.start(len(self._pending) + sum(len(w.inflight) for w in self._workers))
        self._send(time.monotonic())
        return range(first, self._next_id)

    def collect(self, ids: range) -> list[tuple[str, Any]]:
        """The results of the jobs ``ids`` (from ``submit``), waiting for them."""
        results = self._results
        for job_id in ids:
            while job_id not in results:
                self._step()
        return [results.pop(job_id) for job_id in ids]

    def _send(self, now: float) -> None:
        for w in self._workers:
            if w.ready and self._pending:
                batch = w.take(self._pending)
                if batch:
                    try:
                        w.send(batch, now, self.timeout)
                    except (BrokenPipeError, OSError):
                        self._replace(w, ("error", "worker died"))

    def _step(self) -> None:
        """Send what fits, wait for answers (or the first deadline), take them, kill what is late."""
        import orjson

        now = time.monotonic()
        self._send(now)
        waits = [w.deadline - now for w in self._workers if w.inflight]
        waits += [w.started + STARTUP_TIMEOUT - now for w in self._workers if not w.ready]
        wait = max(0.0, min(waits)) if waits else None
        # (wait() takes any object with a fileno(); typeshed names connections and sockets only)
        streams: dict[Any, _Worker] = {w.stdout: w for w in self._workers}
        for stream in multiprocessing.connection.wait(list(streams), timeout=wait):
            w = streams[stream]
            lines = w.read_lines()
            now = time.monotonic()
            if lines is None:
                if not w.ready:
                    raise RuntimeError(f"math-verify worker exited at start (status {w.proc.poll()})")
                self._replace(w, ("error", "worker died"))
                continue
            for line in lines:
                msg = orjson.loads(line)
                if msg[0] == "ready":
                    w.ready = True
                    continue
                job_id, status, payload = msg
                if not w.inflight or w.inflight[0][0] != job_id:
                    raise RuntimeError(f"math-verify worker answered job {job_id} out of order")
                w.done(now, self.timeout)
                self._results[job_id] = (status, payload)
        now = time.monotonic()
        for w in list(self._workers):
            if w.inflight and now >= w.deadline:
                self._replace(w, ("timeout", None))
            elif not w.ready and now >= w.started + STARTUP_TIMEOUT:
                raise RuntimeError(f"math-verify worker did not start within {STARTUP_TIMEOUT:.0f} s")
        self._send(now)

    def _replace(self, w: _Worker, outcome: tuple[str, Any]) -> None:
        """Kill ``w``: the job it was running gets ``outcome``; those queued behind it are sent again
        (first in line, in order) to whichever worker has room."""
        if w.inflight:
            self._results[w.inflight[0][0]] = outcome
            self._pending.extendleft(reversed(list(w.inflight)[1:]))
        w.kill()
        self.restarts += 1
        self._workers[self._workers.index(w)] = _Worker()

    @staticmethod
    def _shutdown(workers: list[_Worker]) -> None:
        for w in workers:
            try:
                w.stdin.close()  # the worker's loop ends at EOF
            except OSError:
                pass
        for w in workers:
            try:
                w.proc.wait(2)
            except subprocess.TimeoutExpired:
                pass
            w.kill()
        workers.clear()

    def close(self) -> None:
        self._finalizer()


@register_scorer("math")
class MathScorer(Scorer):
    def __init__(self, timeout: float = 5.0, workers: int = 1) -> None:
        super().__init__(timeout, workers)
        self._pool: CheckPool | None = None

    @property
    def pool(self) -> CheckPool:
        if self._pool is None:
            self._pool = CheckPool(self.workers, self.timeout)
        return self._pool

    def warm(self) -> None:
        """Start a math-verify process now: it imports math-verify while the first records are read
        (the others start with the first batch, as many as it has answers)."""
        self.pool.start(1)

    def gold(self, record: Mapping, options: Mapping) -> str:
        return gold_answer(record, " (MATH: the solution's \\boxed{} is empty)").strip()

    def score(self, text: str | None, record: Mapping, options: Mapping) -> Verdict:
        return self.score_many([(text, record, options)])[0]

    def score_many(self, items: Sequence[tuple[str | None, Mapping, Mapping]]) -> list[Verdict]:
        return self.submit(items)()

    def submit(self, items: Sequence[tuple[str | None, Mapping, Mapping]]) -> Callable[[], list[Verdict]]:
        golds = [self.gold(record, options) for _text, record, options in items]
        # Echoes of the prompt ("put your final answer in \\boxed{}") are removed here, before the worker.
        jobs = [(gold, own_text(text, record)) for gold, (text, record, _o) in zip(golds, items, strict=True)]
        pool = self.pool
        ids = pool.submit(jobs)
        return lambda: [_verdict(status, payload) for status, payload in pool.collect(ids)]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


def _verdict(status: str, payload: Any) -> Verdict:
    if status == "ok":
        ok_strict, ok, span, key, invalid = payload
        return Verdict(
            correct=ok,
            correct_strict=ok_strict,
            extracted=None if invalid else key,
            extracted_strict=None if invalid else span,
            invalid=invalid,
        )
    return Verdict(
        correct=False,
        correct_strict=False,
        extracted=None,
        extracted_strict=None,
        timed_out=status == "timeout",
        extra={"check_error": payload} if status == "error" else {},
    )


if __name__ == "__main__":
    _worker_main()
