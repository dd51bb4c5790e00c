"""The OpenAI-compatible HTTP engine (``vllm serve``, hosted endpoints).

- Chat requests go to ``/v1/chat/completions``, text requests to ``/v1/completions``.
- ``temperature``, ``top_p``, ``max_tokens``, ``stop`` and ``seed`` are passed through. By default each
  sample is its own HTTP request (``n=1``) with the sample's seed ``sample_seed(seed, j)``, like the
  local engines, so a sample is reproducible alone; ``per_sample_requests=False`` sends one request
  with ``n`` and the request's seed instead (cheaper on servers that bill prompt tokens per request).
- At most ``concurrency`` requests are in flight (a thread pool). Connection errors, timeouts, 429 and
  5xx are retried with exponential backoff (``Retry-After`` is honoured); when retries run out the
  engine raises :class:`EngineError`. Other 4xx answers (e.g. a prompt longer than the context) become
  ``Result.error`` for that request only.
- The API key is read from the environment variable named by ``api_key_env`` (default
  ``OPENAI_API_KEY``); it is sent in the ``Authorization`` header and never logged or described.
- Token counts come from the response's ``usage``.

Only the standard library is used (``urllib.request``).
"""

from __future__ import annotations

import http.client
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from codeplan_tools.engines import register
from codeplan_tools.engines.base import FINISH_LENGTH, FINISH_STOP, Completion, Request, Result, sample_seed
from codeplan_tools.errors import EngineError, UsageError

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class _Retryable(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class _Rejected(Exception):
    """The server refused this request (4xx): the row is rejected, the run goes on."""


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
        timeout: float = 600.0,
        max_retries: int = 6,
        backoff: float = 1.0,
        max_backoff: float = 60.0,
        per_sample_requests: bool = True,
        extra_body: dict | None = None,
        **_ignored: Any,
    ):
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        if not base_url.startswith(("http://", "https://")):
            raise UsageError(f"--base-url must start with http:// or https:// (got {base_url!r})")
        base_url = base_url.rstrip("/")
        # Accept both "http://host:port" and "http://host:port/v1".
        self.base_url = base_url if base_url.endswith("/v1") else base_url + "/v1"
        self.model = model
        self.api_key_env = api_key_env
        self._api_key = os.environ.get(api_key_env) or None  # never logged, never described
        self.concurrency = max(1, int(concurrency))
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.per_sample_requests = per_sample_requests
        self.extra_body = dict(extra_body or {})
        self._lock = threading.Lock()
        self.retries = 0  # how many retries this engine made (for stats)

    def describe(self) -> dict:
        return {"engine": self.name, "model": self.model, "base_url": self.base_url}

    # -- HTTP --------------------------------------------------------------------------------------
    def _post(self, path: str, body: dict) -> dict:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        url = self.base_url + path
        attempt = 0
        while True:
            try:
                return self._post_once(url, data, headers)
            except _Retryable as exc:
                if attempt >= self.max_retries:
                    raise EngineError(f"{url}: {exc} (gave up after {attempt + 1} attempts)") from None
                delay = min(self.max_backoff, self.backoff * (2**attempt)) * (0.5 + random.random() / 2)
                if exc.retry_after is not None:
                    delay = min(self.max_backoff, max(delay, exc.retry_after))
                with self._lock:
                    self.retries += 1
                attempt += 1
                time.sleep(delay)

    def _post_once(self, url: str, data: bytes, headers: dict) -> dict:
        req = urllib.request.Request(url, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as err:
            detail = _error_detail(err)
            if err.code in RETRY_STATUS:
                raise _Retryable(f"HTTP {err.code}: {detail}", _retry_after(err)) from None
            if err.code in (401, 403):
                raise EngineError(
                    f"{url}: HTTP {err.code}: {detail} (is the key in ${self.api_key_env} right?)"
                ) from None
            if err.code == 404:
                raise EngineError(
                    f"{url}: HTTP 404: {detail} (check --base-url and the model name)"
                ) from None
            raise _Rejected(f"HTTP {err.code}: {detail}") from None
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as err:
            raise _Retryable(f"{type(err).__name__}: {getattr(err, 'reason', err)}") from None
        except json.JSONDecodeError as err:
            raise _Retryable(f"invalid JSON in the answer: {err}") from None

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

    def _one(self, req: Request, j: int | None) -> tuple[list[Completion], int]:
        """One HTTP call: sample j alone (its own seed), or all n samples when j is None."""
        n, seed = (1, sample_seed(req.seed, j)) if j is not None else (req.n, req.seed)
        path, body = self._body(req, n, seed)
        answer = self._post(path, body)
        usage = answer.get("usage") or {}
        choices = sorted(answer.get("choices") or [], key=lambda c: c.get("index", 0))
        tokens_out_total = int(usage.get("completion_tokens") or 0)
        comps = []
        for c in choices:
            text = (c["message"].get("content") or "") if "message" in c else (c.get("text") or "")
            reason = FINISH_LENGTH if c.get("finish_reason") == "length" else FINISH_STOP
            comps.append(Completion(text=text, finish_reason=reason, tokens_out=0, seed=seed))
        # usage is per call: exact for one choice, split evenly otherwise (servers report no more).
        for c in comps:
            c.tokens_out = tokens_out_total // max(1, len(comps))
        return comps, int(usage.get("prompt_tokens") or 0)

    def generate(self, requests: list[Request]) -> list[Result]:
        calls: list[tuple[int, int | None]] = []
        for ri, req in enumerate(requests):
            if req.greedy or not self.per_sample_requests:
                calls.append((ri, None if not req.greedy else 0))
            else:
                calls.extend((ri, j) for j in range(req.n))
        results = [Result(id=r.id, completions=[], tokens_in=0) for r in requests]

        def run(call):
            ri, j = call
            try:
                return call, self._one(requests[ri], j), None
            except _Rejected as exc:
                return call, None, str(exc)

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            done = list(pool.map(run, calls))
        for (ri, _j), answer, error in done:
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


def _error_detail(err: urllib.error.HTTPError) -> str:
    try:
        raw = err.read().decode("utf-8", "replace")
    except Exception:
        return err.reason or ""
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
        return float(value) if value is not None else None
    except ValueError:
        return None
