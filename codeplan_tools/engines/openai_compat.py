"""The OpenAI-compatible HTTP engine (``vllm serve``, hosted endpoints).

- Chat requests go to ``/v1/chat/completions``, text requests to ``/v1/completions``.
- ``temperature``, ``top_p``, ``max_tokens``, ``stop`` and ``seed`` are passed through. By default each
  sample is its own HTTP request (``n=1``) with the sample's seed ``sample_seed(seed, j)``, like the
  local engines, so a sample is reproducible alone; ``per_sample_requests=False`` sends one request
  with ``n`` and the request's seed instead (cheaper on servers that bill prompt tokens per request).
- At most ``concurrency`` requests are in flight (daemon worker threads). Each waits at most
  ``request_timeout`` seconds (120 by default) to connect and for each read of the answer.
  Connection errors, timeouts, 429 and 5xx are retried ``max_retries`` times with exponential
  backoff (``Retry-After`` is honoured); when they run out the engine raises :class:`EngineError`
  (the run stops, exit 69). Other 4xx answers (e.g. a prompt longer than the context) become
  ``Result.error`` for that request only.
- A malformed answer (not JSON, not an object, an ``error`` object with status 200, no or too few
  ``choices``, a choice without its text) is retried the same way, and when retries run out the
  request gets ``Result.error`` (``bad-reply: ...``): the record is rejected with the reason, the run
  goes on. An answer is never taken as "no samples".
- SIGTERM / Ctrl-C stop the run at once: the main thread stops waiting, no new request starts,
  backoff sleeps end, and requests still in flight are abandoned with their daemon threads, so the
  stage closes its output frame promptly whatever the server does.
- The API key is read from the environment variable named by ``api_key_env`` (default
  ``OPENAI_API_KEY``); it is sent in the ``Authorization`` header and never logged or described.
  Every message that leaves the engine (errors, reject reasons) is redacted: the key itself, any
  ``Authorization``/``api-key`` value and any ``Bearer``/``Basic`` token become ``[redacted]``, even
  when a server echoes them back.
- Token counts come from the response's ``usage``.

Only the standard library is used (``urllib.request``, so ``https_proxy`` and friends work).
"""

from __future__ import annotations

import http.client
import json
import os
import queue
import random
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from codeplan_tools.core.errors import EngineError, UsageError
from codeplan_tools.engines import register
from codeplan_tools.engines.base import FINISH_LENGTH, FINISH_STOP, Completion, Request, Result, sample_seed

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}
REDACTED = "[redacted]"
_TOKEN = re.compile(r"(?i)\b(bearer|basic)\s+[^\s\"',;}]+")
_CREDENTIAL = re.compile(
    r"(?i)\b(authorization|proxy-authorization|api[-_]?key|x-api-key|access[-_]?token)"
    r"(\"?\s*[:=]\s*\"?)(?:(?:bearer|basic)\s+)?[^\s\"',;}&]+"
)
_USERINFO = re.compile(r"://[^/@\s]+@")


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Malformed(_Retryable):
    """The server answered 200 with something that is not a usable completion."""


class _Fatal(Exception):
    """The server refuses every request (401/403/404): retrying cannot help."""


class _Rejected(Exception):
    """The server refused this request (4xx): the row is rejected, the run goes on."""


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` without the given secrets, credential values, bearer tokens and URL user info."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    text = _CREDENTIAL.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    text = _TOKEN.sub(lambda m: m.group(1) + " " + REDACTED, text)
    return _USERINFO.sub("://" + REDACTED + "@", text)


@register("openai")
class OpenAIEngine:
    name = "openai"

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        request_timeout: float = 120.0,
        max_retries: int = 6,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        per_sample_requests: bool = True,
        extra_body: dict | None = None,
        **_ignored: Any,
    ) -> None:
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        if not base_url.startswith(("http://", "https://")):
            raise UsageError(f"--base-url must start with http:// or https:// (got {redact(base_url)!r})")
        base_url = base_url.rstrip("/")
        # Accept both "http://host:port" and "http://host:port/v1".
        self.base_url = base_url if base_url.endswith("/v1") else base_url + "/v1"
        self.model = model
        self.api_key_env = api_key_env
        self._api_key = os.environ.get(api_key_env) or None  # never logged, never described
        self.concurrency = max(1, int(concurrency))
        self.request_timeout = float(request_timeout)
        if not self.request_timeout > 0:
            raise UsageError("--request-timeout must be a positive number of seconds")
        self.max_retries = max(0, int(max_retries))
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.per_sample_requests = per_sample_requests
        self.extra_body = dict(extra_body or {})
        self._lock = threading.Lock()
        self.retries = 0  # how many retries this engine made (for stats)

    def describe(self) -> dict:
        return {"engine": self.name, "model": self.model, "base_url": self._redact(self.base_url)}

    def _redact(self, text: str) -> str:
        return redact(text, (self._api_key,) if self._api_key else ())

    # -- HTTP --------------------------------------------------------------------------------------
    def _post(
        self, path: str, body: dict, n: int, stop: threading.Event
    ) -> tuple[list[tuple[str, str]], dict]:
        """The checked answer of one request (:func:`_checked_answer`), retried; raises EngineError
        or _Rejected, their messages redacted."""
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        url = self.base_url + path
        shown = self._redact(url)
        attempt = 0
        while True:
            try:
                return _checked_answer(self._post_once(url, data, headers), n)
            except _Fatal as exc:
                raise EngineError(self._redact(f"{shown}: {exc}")) from None
            except _Rejected as exc:
                raise _Rejected(self._redact(str(exc))) from None
            except _Retryable as exc:
                if attempt >= self.max_retries or stop.is_set():
                    tries = f"gave up after {attempt + 1} attempts"
                    if isinstance(exc, _Malformed):  # this request only: reject it, the run goes on
                        raise _Rejected(self._redact(f"bad-reply: {exc} ({tries})")) from None
                    raise EngineError(self._redact(f"{shown}: {exc} ({tries})")) from None
                delay = min(self.max_backoff, self.backoff * (2**attempt)) * (0.5 + random.random() / 2)
                if exc.retry_after is not None:
                    delay = min(self.max_backoff, max(delay, exc.retry_after))
                with self._lock:
                    self.retries += 1
                attempt += 1
                if stop.wait(delay):  # the run is stopping: no more attempts
                    raise EngineError(self._redact(f"{shown}: {exc} (stopped)")) from None

    def _post_once(self, url: str, data: bytes, headers: dict) -> Any:
        req = urllib.request.Request(url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.request_timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as err:
            detail = _error_detail(err)
            if err.code in RETRY_STATUS:
                raise _Retryable(f"HTTP {err.code}: {detail}", _retry_after(err)) from None
            if err.code in (401, 403):
                raise _Fatal(
                    f"HTTP {err.code}: {detail} (is the key in ${self.api_key_env} right?)"
                ) from None
            if err.code == 404:
                raise _Fatal(f"HTTP 404: {detail} (check --base-url and the model name)") from None
            raise _Rejected(f"HTTP {err.code}: {detail}") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            # ConnectionError, TimeoutError (socket timeout), a reset mid-answer...
            raise _Retryable(f"{type(err).__name__}: {getattr(err, 'reason', err)}") from None
        try:
            return json.loads(raw)
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
            raise _Malformed(f"the answer is not JSON ({err}): {_snippet(raw)}") from None

    # -- generation ------------------------------------------------------------------------------
    def _body(self, req: Request, n: int, seed: int) -> tuple[str, dict]:
        body: dict[str, Any] = {
            "model": self.model,
            "n": n,
            "temperature": max(0.0, req.temperature),
            "top_p": req.top_p,
            "max_tokens": req.max_tokens,
            "seed": seed,
        }
        if req.stop:
            body["stop"] = list(req.stop)
        if req.stop_token_ids:  # a vLLM extension; other servers ignore or refuse it
            body["stop_token_ids"] = list(req.stop_token_ids)
        body.update(self.extra_body)
        if req.messages is not None:
            body["messages"] = req.messages
            return "/chat/completions", body
        body["prompt"] = req.prompt
        return "/completions", body

    def _one(self, req: Request, j: int | None, stop: threading.Event) -> tuple[list[Completion], int]:
        """One HTTP call: sample j alone (its own seed), or all n samples when j is None."""
        n, seed = (1, sample_seed(req.seed, j)) if j is not None else (req.n, req.seed)
        path, body = self._body(req, n, seed)
        choices, usage = self._post(path, body, n, stop)
        tokens_out_total = _count(usage.get("completion_tokens"))
        comps = [
            Completion(text=text, finish_reason=reason, tokens_out=0, seed=seed) for text, reason in choices
        ]
        # usage is per call: exact for one choice, split evenly otherwise (servers report no more).
        for c in comps:
            c.tokens_out = tokens_out_total // max(1, len(comps))
        return comps, _count(usage.get("prompt_tokens"))

    def generate(self, requests: list[Request]) -> list[Result]:
        calls: list[tuple[int, int | None]] = []
        for ri, req in enumerate(requests):
            if req.greedy or not self.per_sample_requests:
                calls.append((ri, None if not req.greedy else 0))
            else:
                calls.extend((ri, j) for j in range(req.n))
        results = [Result(id=r.id, completions=[], tokens_in=0) for r in requests]
        stop = threading.Event()

        def run(call):
            ri, j = call
            try:
                return self._one(requests[ri], j, stop), None
            except _Rejected as exc:
                return None, str(exc)

        done = _run_all(calls, run, self.concurrency, stop)
        for (ri, _j), (answer, error) in zip(calls, done, strict=True):
            res = results[ri]
            if error is not None:
                res.error, res.completions = error, []
                continue
            if res.error is not None:
                continue
            comps, tokens_in = answer
            res.tokens_in = tokens_in
            res.completions.extend(comps)
        for req, res in zip(requests, results, strict=True):
            if res.error is None and req.greedy and req.n > 1 and res.completions:
                c = res.completions[0]
                res.completions = [
                    Completion(c.text, c.finish_reason, c.tokens_out, sample_seed(req.seed, j))
                    for j in range(req.n)
                ]
        return results


def _run_all(calls: list, fn: Callable, workers: int, stop: threading.Event) -> list:
    """``[fn(call) for call in calls]`` on up to ``workers`` daemon threads.

    The first exception (or a signal arriving in the main thread while it waits) sets ``stop`` and
    is raised at once: workers take no new call and stop their backoff, and a call still waiting
    on the server is abandoned (daemon threads never hold up the exit), unlike a
    ``ThreadPoolExecutor``, whose shutdown waits for every running call.
    """
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for i in range(len(calls)):
        todo.put(i)
    finished: queue.SimpleQueue = queue.SimpleQueue()

    def worker() -> None:
        while not stop.is_set():
            try:
                i = todo.get_nowait()
            except queue.Empty:
                return
            try:
                finished.put((i, fn(calls[i]), None))
            except BaseException as exc:  # handed to the main thread, which raises it
                finished.put((i, None, exc))

    for k in range(min(workers, len(calls))):
        threading.Thread(target=worker, name=f"codeplan-openai-{k}", daemon=True).start()
    out: list = [None] * len(calls)
    try:
        for _ in range(len(calls)):
            i, value, exc = finished.get()  # interruptible: SIGTERM/SIGINT handlers raise here
            if exc is not None:
                raise exc
            out[i] = value
    finally:
        stop.set()
    return out


def _checked_answer(answer: Any, n: int) -> tuple[list[tuple[str, str]], dict]:
    """``([(text, finish reason)] * n, usage)`` of a completions answer; _Malformed when it is not one."""
    if not isinstance(answer, dict):
        raise _Malformed(f"the answer is a JSON {type(answer).__name__}, not an object")
    if answer.get("error") is not None:
        error = answer["error"]
        message = error.get("message", error) if isinstance(error, dict) else error
        raise _Malformed(f"the server answered with an error: {_snippet(str(message))}")
    choices = answer.get("choices")
    if not isinstance(choices, list) or not choices:
        raise _Malformed(f"the answer has no 'choices': {_snippet(json.dumps(answer))}")
    if len(choices) < n or not all(isinstance(c, dict) for c in choices):
        raise _Malformed(f"the answer has {len(choices)} choice(s) for n={n}: {_snippet(json.dumps(answer))}")
    out = []
    for c in sorted(choices, key=lambda c: c.get("index") if isinstance(c.get("index"), int) else 0)[:n]:
        if "message" in c:
            message = c["message"]
            text = message.get("content") if isinstance(message, dict) else None
            text = "" if text is None and isinstance(message, dict) else text
        else:
            text = c.get("text")
        if not isinstance(text, str):
            raise _Malformed(f"a choice has no text: {_snippet(json.dumps(c))}")
        out.append((text, FINISH_LENGTH if c.get("finish_reason") == "length" else FINISH_STOP))
    usage = answer.get("usage")
    return out, usage if isinstance(usage, dict) else {}


def _count(value: Any) -> int:
    """A token count from ``usage`` (0 when missing or not a number)."""
    return int(value) if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0 else 0


def _snippet(raw: bytes | str, limit: int = 200) -> str:
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _error_detail(err: urllib.error.HTTPError) -> str:
    try:
        raw = err.read().decode("utf-8", "replace")
    except Exception:
        return str(err.reason or "")
    try:
        payload = json.loads(raw)
        msg = payload.get("error", payload)
        if isinstance(msg, dict):
            msg = msg.get("message", msg)
        return str(msg)[:500]
    except (ValueError, AttributeError):
        return raw[:500]


def _retry_after(err: urllib.error.HTTPError) -> float | None:
    value = err.headers.get("Retry-After") if err.headers else None
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and seconds >= 0 and seconds == seconds else None
