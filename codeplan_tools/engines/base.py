"""The engine interface: requests in, results out, one method.

Every engine (``vllm``, ``hf``, ``openai``) takes a list of :class:`Request` and returns one
:class:`Result` per request, in the same order. Semantics shared by all engines:

- ``temperature == 0`` is greedy decoding; the ``n`` samples of a greedy request are copies of one.
- Sample ``j`` of a request is drawn with its own seed ``sample_seed(request.seed, j)`` and reports it
  in ``Completion.seed``, so one sample can be reproduced alone (same engine, model and settings).
- ``stop`` strings end a sample; the returned text stops before the stop string and the finish reason
  is ``"stop"``. The end-of-sequence token (and any stop string that is a single special token of the
  tokenizer, e.g. ``<|eot_id|>``) also ends a sample with ``"stop"`` and is not part of the text.
  Reaching ``max_tokens`` (or the end of the model's context) gives ``"length"``.
- A request the engine cannot take (a prompt longer than the context) gets ``Result.error`` and no
  completions; it never makes the whole batch fail. Errors the engine cannot recover from (server
  down after retries) raise :class:`codeplan_tools.core.errors.EngineError`.
- Prompt tokens (local engines, hf and vllm, through :class:`PromptTokenizer`): a request's
  ``prompt_token_ids`` when the caller made them (``generate`` does for the prompts of a format whose
  record text holds a special-token string, and for plan-conditioned prompts, with
  :class:`~codeplan_tools.formats.tokenizer.RecordTokenizer`, exactly as ``pack`` trains on them); otherwise the
  ``prompt`` text, or the chat template's rendering of ``messages``, tokenized in batches. A message's
  content stays text: a special-token string inside it (``<|user|>``, ``</s>``) is tokenized as plain
  text, not as that control token, by the same rule as ``pack`` (the rendering is cut only at the
  template's own special tokens). When such a content cannot be located in the rendering (a template
  that changes the text, or a conversation of more than one message), the request gets
  ``Result.error`` ``special-token-text``. A raw ``prompt`` is the caller's rendering and is tokenized
  as it is (its special-token strings are tokens).
- The ``openai`` engine sends text (``prompt``, or ``messages`` for the server's chat template) and never
  ``prompt_token_ids``: the server tokenizes it, and special-token strings in a record's text may
  become control tokens there.
- stdout carries records only: whatever an engine library prints while it is built, generates or
  shuts down (vLLM logs INFO lines to stdout; C code may write to fd 1) goes to stderr through
  :func:`stdout_to_stderr`, which the stages wrap around every engine call.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

FINISH_STOP = "stop"
FINISH_LENGTH = "length"
# The reject reason of a prompt whose record text holds a special-token string that cannot be located
# in its rendering (the same name as pack's).
SPECIAL_TOKEN_TEXT = "special-token-text"


@dataclass
class Request:
    """One prompt, ``n`` samples. Exactly one of ``prompt`` / ``messages`` is set."""

    id: str
    prompt: str | None = None  # raw text, already rendered (base / fine-tuned models)
    messages: list[dict] | None = None  # chat turns; the engine applies the chat template
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 256
    seed: int = 0  # per-request seed; sample j uses sample_seed(seed, j) and reports it
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)  # more ids that end a sample like EOS
    # The ids of ``prompt`` when the caller tokenized it (generate's format prompts, as pack trains on
    # them): local engines use them as given; the openai engine sends ``prompt``.
    prompt_token_ids: list[int] | None = None

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError(f"request {self.id!r}: set exactly one of prompt or messages")
        if self.prompt_token_ids is not None and self.prompt is None:
            raise ValueError(f"request {self.id!r}: prompt_token_ids need the prompt text too")
        if self.n < 1 or self.max_tokens < 1:
            raise ValueError(f"request {self.id!r}: n and max_tokens must be >= 1")

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


@dataclass
class Completion:
    text: str
    finish_reason: str  # "stop" | "length"
    tokens_out: int
    seed: int
    # Generated token ids (EOS / stop token included when the engine knows them; None over HTTP).
    token_ids: list[int] | None = None


@dataclass
class Result:
    id: str
    completions: list[Completion]
    tokens_in: int
    error: str | None = None  # the engine could not take this request: the caller rejects the row


@runtime_checkable
class Engine(Protocol):
    """An engine; one that tokenizes locally and honours ``Request.prompt_token_ids`` also sets the
    class attribute ``uses_prompt_token_ids = True`` (callers skip making ids for the others)."""

    name: str

    def generate(self, requests: list[Request]) -> list[Result]:
        """One Result per request, in the same order."""
        ...

    def describe(self) -> dict:
        """Model path/name, dtype, engine name: what goes into ``meta.<stage>``."""
        ...


class Tokenizer(Protocol):
    """What the local engines use of a Hugging Face tokenizer (``PreTrainedTokenizerBase``).
    ``bos_token``, ``chat_template`` and ``get_added_vocab`` are read where present."""

    @property
    def eos_token_id(self) -> int | None: ...

    def __call__(self, text: list[str], *, add_special_tokens: bool = True) -> Mapping[str, Any]:
        """A batch of texts -> ``{"input_ids": [[int, ...], ...], ...}``."""
        ...

    def apply_chat_template(self, conversation: list[dict], **kwargs: Any) -> Any: ...

    def decode(self, token_ids: Sequence[int], *, skip_special_tokens: bool = False) -> str: ...


def sample_seed(seed: int, j: int) -> int:
    """The seed of sample ``j`` of a request seeded ``seed`` (31-bit, stable across runs and engines)."""
    digest = hashlib.blake2b(f"{int(seed)}/{int(j)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF


def truncate_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """Cut ``text`` before the earliest stop string; returns (text, whether a stop string was found)."""
    cut = -1
    for s in stop:
        if not s:
            continue
        i = text.find(s)
        if i != -1 and (cut == -1 or i < cut):
            cut = i
    if cut == -1:
        return text, False
    return text[:cut], True


def too_long_error(tokens_in: int, context: int) -> str:
    """The one wording of the "prompt does not fit" reason, shared by engines (rejects carry it)."""
    return f"prompt-too-long: {tokens_in} prompt tokens, the model's context is {context}"


# -- helpers shared by the local engines (hf, vllm); they take a Hugging Face tokenizer ------------


class LocalEngine:
    """What the engines that tokenize here (hf, vllm) share around their own :meth:`sample`: prompt
    ids (:class:`PromptTokenizer`), stop rules (:class:`StopRules`), the per-request checks
    (:func:`start_result`), and a greedy request's ``n`` samples as copies of one.

    A subclass sets ``name`` and ``context`` (the model's context length), calls
    :meth:`use_tokenizer` once it has its tokenizer, and implements :meth:`sample`, which sees only
    the prompts that can be generated from."""

    name = ""
    uses_prompt_token_ids = True
    context: int

    def use_tokenizer(self, tokenizer: Any, extra_eos: int | list[int] | None) -> None:
        """Prompt ids and stop rules by ``tokenizer``; ``extra_eos``: the generation config's EOS ids."""
        self.tokenizer = tokenizer
        self._eos = extra_eos
        self._stop_rules = StopRules(tokenizer, extra_eos)
        self._prompt_ids = PromptTokenizer(tokenizer)

    def generate(self, requests: list[Request]) -> list[Result]:
        ids = self._prompt_ids(requests)
        results = [start_result(req, x, self.context) for req, x in zip(requests, ids, strict=True)]
        todo = [(i, x) for i, (res, x) in enumerate(zip(results, ids, strict=True)) if not res.error and x]
        sampled = self.sample([(requests[i], x) for i, x in todo])
        for (i, _), completions in zip(todo, sampled, strict=True):
            req = requests[i]
            if req.greedy and req.n > 1 and completions:  # identical samples: each reported with its seed
                completions = [replace(completions[0], seed=sample_seed(req.seed, j)) for j in range(req.n)]
            results[i].completions = completions
        return results

    def sample(self, prompts: list[tuple[Request, list[int]]]) -> list[list[Completion]]:
        """The completions of each (request, its prompt ids), in order: sample ``j`` drawn with
        ``sample_seed(request.seed, j)``; one sample for a greedy request."""
        raise NotImplementedError

    def max_new_tokens(self, request: Request, ids: list[int]) -> int:
        """The tokens a sample may add: ``max_tokens``, within what is left of the context."""
        return min(request.max_tokens, self.context - len(ids))


def start_result(request: Request, ids: list[int] | None, context: int) -> Result:
    """The request's ``Result``, with ``error`` set when nothing can be generated from its prompt:
    special-token text in it (``ids`` None), no tokens, or no room left in the model's context."""
    result = Result(id=request.id, completions=[], tokens_in=len(ids or ()))
    if ids is None:
        result.error = SPECIAL_TOKEN_TEXT
    elif not ids:
        result.error = "empty-prompt: the prompt has no tokens"
    elif len(ids) >= context:
        result.error = too_long_error(len(ids), context)
    return result


def prompt_token_ids(tokenizer: Tokenizer, request: Request) -> list[int] | None:
    """Token ids of a request's prompt, the same for every local engine (:class:`PromptTokenizer`)."""
    return PromptTokenizer(tokenizer)([request])[0]


def prompts_token_ids(tokenizer: Tokenizer, requests: list[Request]) -> list[list[int] | None]:
    """:func:`prompt_token_ids` of many requests (engines hold one :class:`PromptTokenizer` instead)."""
    return PromptTokenizer(tokenizer)(requests)


class PromptTokenizer:
    """Token ids of requests' prompts for one tokenizer; each local engine holds one.

    ``prompt_token_ids`` given by the caller are used as they are. Chat requests go through the
    tokenizer's chat template (``add_generation_prompt=True``). A text that already starts with the
    BOS token (chat templates such as Llama-3's put it in) is tokenized without special tokens, so
    BOS is never doubled; other text gets the tokenizer's special tokens. Texts are tokenized in
    batched calls (fast tokenizers encode a batch in parallel in Rust; one call per prompt costs more
    than the tiny models' decoding); only a conversation whose content holds a special-token string
    is tokenized alone, by :class:`~codeplan_tools.formats.tokenizer.RecordTokenizer` (the content stays text),
    and gives None when its content cannot be located in the rendering.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.bos = getattr(tokenizer, "bos_token", None)
        self._turns: dict = {}  # role -> RecordTokenizer of a one-message conversation, built lazily

    def __call__(self, requests: list[Request]) -> list[list[int] | None]:
        """One entry per request: its ids, or None (``special-token-text``)."""
        ids: list[list[int] | None] = [None] * len(requests)
        texts: dict[int, str] = {}  # request index -> text tokenized in the batch
        for i, request in enumerate(requests):
            if request.prompt_token_ids is not None:
                ids[i] = list(request.prompt_token_ids)
            elif request.messages is None:
                texts[i] = request.prompt or ""  # never None: a request has a prompt or messages
            else:
                text = self._chat_text(request.messages)
                if self._turn("user").holds_special(*_contents(request.messages)):
                    ids[i] = self._content_ids(request.messages, text)
                else:
                    texts[i] = text
        bos = self.bos
        for add_special in (False, True):
            group = [i for i, t in texts.items() if (not (bos and t.startswith(bos))) == add_special]
            if group:
                encoded = self.tokenizer([texts[i] for i in group], add_special_tokens=add_special)
                for i, x in zip(group, encoded["input_ids"], strict=True):
                    ids[i] = list(x)
        return ids

    def _chat_text(self, messages: list[dict]) -> str:
        from codeplan_tools.core.errors import UsageError

        if not getattr(self.tokenizer, "chat_template", None):
            raise UsageError(
                "the model's tokenizer has no chat template; give raw prompts instead of messages"
            )
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def _content_ids(self, messages: list[dict], text: str) -> list[int] | None:
        """Ids of a conversation whose content holds a special-token string, the content as text; None
        unless it is one message whose content the template embeds verbatim."""
        if len(messages) != 1 or not isinstance(messages[0].get("content"), str):
            return None
        return self._turn(messages[0].get("role", "user")).prompt_ids(messages[0]["content"], text)

    def _turn(self, role: str):
        turn = self._turns.get(role)
        if turn is None:
            from codeplan_tools.formats.tokenizer import RecordTokenizer

            turn = self._turns[role] = RecordTokenizer(self.tokenizer, _OneMessage(role))
        return turn


class _OneMessage:
    """A conversation of one message as a format for ``RecordTokenizer``: the content is the prompt."""

    def __init__(self, role: str):
        self.role = role

    def prompt_text(self, tokenizer, content: str) -> str:
        return tokenizer.apply_chat_template(
            [{"role": self.role, "content": content}], tokenize=False, add_generation_prompt=True
        )


def _contents(messages: list[dict]) -> list[str]:
    return [c for m in messages if isinstance(c := m.get("content"), str)]


class StopRules:
    """``stop_token_ids`` and ``text_stops`` per distinct stop list, computed once per engine
    (``get_added_vocab`` builds a new dict on every call)."""

    def __init__(self, tokenizer: Tokenizer, extra_eos: int | list[int] | None) -> None:
        self.tokenizer, self.extra_eos = tokenizer, extra_eos
        self._cache: dict[tuple, tuple[frozenset[int], tuple[str, ...]]] = {}

    def __call__(self, request: Request) -> tuple[frozenset[int], tuple[str, ...]]:
        """(token ids that end a sample, stop strings matched in text) for ``request``."""
        key = (tuple(request.stop), tuple(request.stop_token_ids))
        rules = self._cache.get(key)
        if rules is None:
            ids = stop_token_ids(self.tokenizer, self.extra_eos, request.stop, request.stop_token_ids)
            rules = self._cache[key] = (frozenset(ids), tuple(text_stops(self.tokenizer, request.stop)))
        return rules


def stop_token_ids(
    tokenizer: Tokenizer, extra_eos: int | list[int] | None, stop: list[str], more: Iterable[int] = ()
) -> set[int]:
    """EOS ids (tokenizer + generation_config), ``more``, and stop strings that are one added token."""
    ids: set[int] = {int(i) for i in more}
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        ids.add(int(eos))
    if extra_eos is not None:
        ids.update(int(i) for i in ([extra_eos] if isinstance(extra_eos, int) else extra_eos))
    added = tokenizer.get_added_vocab() if hasattr(tokenizer, "get_added_vocab") else {}
    for s in stop:
        if s in added:
            ids.add(int(added[s]))
    return ids


def text_stops(tokenizer: Tokenizer, stop: list[str]) -> list[str]:
    """The stop strings that are matched in text (those that are not a single added token)."""
    added = tokenizer.get_added_vocab() if hasattr(tokenizer, "get_added_vocab") else {}
    return [s for s in stop if s and s not in added]


# -- stdout carries records only ------------------------------------------------------------------


_HELD_SIGNALS = {signal.SIGTERM, signal.SIGINT}


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send everything written to stdout inside the block to stderr, at both levels: Python's
    ``sys.stdout`` (``print``) and file descriptor 1 (loggers holding the old stream, C code, child
    processes started here, which keep it). Both are restored on the way out, exceptions and
    signals included, so the records written between engine calls reach the real stdout.

    The stages' record writer flushes whole frames and writes nothing inside the block, so no
    record can land on stderr. SIGTERM/SIGINT are held while fd 1 is swapped, so a signal cannot
    leave it pointing at stderr. Where fd 1 or 2 cannot be duplicated (closed), only the Python
    level is redirected.
    """
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    held = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
    saved = _swap_fd1_to_stderr()
    try:
        # A signal that arrived meanwhile is handled here, inside the try: fd 1 is still restored.
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _HELD_SIGNALS)
        try:
            # What a library left in Python's stdout buffer belongs to stderr too: flush it first.
            with contextlib.suppress(Exception):
                sys.stdout.flush()
            if saved is not None:
                os.dup2(saved, 1)
                os.close(saved)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)


def _swap_fd1_to_stderr() -> int | None:
    """Point fd 1 at stderr; return a duplicate of the old fd 1 (None when that is impossible)."""
    try:
        saved = os.dup(1)
    except OSError:
        return None
    try:
        os.dup2(2, 1)
    except OSError:
        os.close(saved)
        return None
    return saved
