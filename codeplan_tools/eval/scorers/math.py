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
Such a sample is counted as ``timed_out`` and wrong; the other samples of the run go on. Workers also
get an address-space limit (``MATH_WORKER_MEMORY_MB``, default 4096) so a runaway power fails fast
instead of swapping. The vote key for maj@k is sympy's text of the parsed answer (``1/2`` for both
``\\frac12`` and ``\\frac{1}{2}``); forms that differ in text but are equal still vote apart.
"""

from __future__ import annotations

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from . import Scorer, Verdict, answer_span, gold_answer, own_text, register_scorer, strip_thinking

STARTUP_TIMEOUT = 120.0  # seconds a new worker may take to import math-verify and report ready


def check_answer(gold: str, text: str) -> tuple[bool, bool, str | None, str | None, bool]:
    """(correct_strict, correct, extracted_strict, extracted, invalid): runs inside a worker."""
    from math_verify import parse, verify

    from .numeric import number_key, spelled_number

    g = parse("\\boxed{" + gold + "}", parsing_timeout=None)
    text = strip_thinking(text or "")
    span = answer_span(text, bare=is_bare_math)
    if span is not None:
        # A marked answer in words ("twelve") is that number; math-verify would read it as a product.
        spelled = spelled_number(span) if not re.search(r"\d", span) else None
        number = number_key(spelled) if spelled is not None else None
        p = parse("\\boxed{" + (span if number is None else number) + "}", parsing_timeout=None)
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


class _Worker:
    """One ``python -m codeplan_tools.eval.scorers.math`` process (a subprocess, not multiprocessing:
    nothing of the caller's ``__main__`` is re-imported, and killing it is always safe)."""

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
        self.ready = False
        self.job: tuple[int, float] | None = None  # (index, deadline)
        self.started = time.monotonic()

    def send(self, idx: int, gold: str, text: str) -> None:
        import orjson

        self.stdin.write(orjson.dumps([idx, gold, text]) + b"\n")
        self.stdin.flush()

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


class CheckPool:
    """Processes that run ``check_answer`` with a hard per-call timeout.

    ``run(jobs)`` returns one ``(status, result)`` per job, in order: ``("ok", tuple)``,
    ``("timeout", None)`` when the job passed ``timeout`` seconds (its worker is killed and replaced)
    or ``("error", message)``. Jobs run ``workers`` at a time; workers live until ``close()``.
    """

    def __init__(self, workers: int = 1, timeout: float = 5.0) -> None:
        self.size = max(1, int(workers))
        self.timeout = float(timeout)
        self._workers: list[_Worker] = []
        self.restarts = 0
        self._finalizer = weakref.finalize(self, CheckPool._shutdown, self._workers)

    def run(self, jobs: Sequence[tuple[str, str]]) -> list[tuple[str, Any]]:
        import orjson

        results: list[tuple[str, Any] | None] = [None] * len(jobs)
        pending = deque(enumerate(jobs))
        while len(self._workers) < min(self.size, max(1, len(jobs))):
            self._workers.append(_Worker())
        while pending or any(w.job for w in self._workers):
            now = time.monotonic()
            for w in self._workers:
                if w.ready and w.job is None and pending:
                    idx, (gold, text) = pending.popleft()
                    w.job = (idx, now + self.timeout)
                    try:
                        w.send(idx, gold, text)
                    except (BrokenPipeError, OSError):
                        self._replace(w, results, ("error", "worker died"))
            waits = [w.job[1] - now for w in self._workers if w.job]
            waits += [w.started + STARTUP_TIMEOUT - now for w in self._workers if not w.ready]
            wait = max(0.0, min(waits)) if waits else None
            # (wait() takes any object with a fileno(); typeshed names connections and sockets only)
            streams: dict[Any, _Worker] = {w.stdout: w for w in self._workers}
            for stream in multiprocessing.connection.wait(list(streams), timeout=wait):
                w = streams[stream]
                line = w.stdout.readline()
                if not line.endswith(b"\n"):
                    if not w.ready:
                        raise RuntimeError(f"math-verify worker exited at start (status {w.proc.poll()})")
                    self._replace(w, results, ("error", "worker died"))
                    continue
                msg = orjson.loads(line)
                if msg[0] == "ready":
                    w.ready = True
                    continue
                idx, status, payload = msg
                results[idx] = (status, payload)
                w.job = None
            now = time.monotonic()
            for w in list(self._workers):
                if w.job and now >= w.job[1]:
                    self._replace(w, results, ("timeout", None))
                elif not w.ready and now >= w.started + STARTUP_TIMEOUT:
                    raise RuntimeError(f"math-verify worker did not start within {STARTUP_TIMEOUT:.0f} s")
        return results  # type: ignore[return-value]

    def _replace(self, w: _Worker, results: list, outcome: tuple[str, Any]) -> None:
        if w.job is not None:
            results[w.job[0]] = outcome
            w.job = None
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

    def gold(self, record: Mapping, options: Mapping) -> str:
        return gold_answer(record, " (MATH: the solution's \\boxed{} is empty)").strip()

    def score(self, text: str | None, record: Mapping, options: Mapping) -> Verdict:
        return self.score_many([(text, record, options)])[0]

    def score_many(self, items: Sequence[tuple[str | None, Mapping, Mapping]]) -> list[Verdict]:
        golds = [self.gold(record, options) for _text, record, options in items]
        # Echoes of the prompt ("put your final answer in \\boxed{}") are removed here, before the worker.
        jobs = [(gold, own_text(text, record)) for gold, (text, record, _o) in zip(golds, items, strict=True)]
        out = []
        for status, payload in self.pool.run(jobs):
            if status == "ok":
                ok_strict, ok, span, key, invalid = payload
                out.append(
                    Verdict(
                        correct=ok,
                        correct_strict=ok_strict,
                        extracted=None if invalid else key,
                        extracted_strict=None if invalid else span,
                        invalid=invalid,
                    )
                )
            else:
                out.append(
                    Verdict(
                        correct=False,
                        correct_strict=False,
                        extracted=None,
                        extracted_strict=None,
                        timed_out=status == "timeout",
                        extra={"check_error": payload} if status == "error" else {},
                    )
                )
        return out

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool = None


if __name__ == "__main__":
    _worker_main()
