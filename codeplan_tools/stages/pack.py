"""``codeplan pack``: records -> tokenized examples -> best-fit-decreasing packs.

Tokenization goes through :mod:`codeplan_tools.formats`, the same rendering ``generate`` uses:
``render(tokenizer, prompt, plan, response) -> (prompt_text, target_text)``. The prompt text and the
target text are tokenized *separately* and concatenated, so the prompt tokens are exactly the ones
the model is conditioned on at inference (the prompt is tokenized alone there too), and the
loss boundary falls exactly between them. The prompt gets the tokenizer's special tokens unless its
text already starts with the BOS (a chat template that writes ``<|begin_of_text|>`` itself); the
target never does (its end marker is in the text).

Loss (``--loss``): ``assistant`` (default) puts the loss on the target (plan + response + end
marker, the assistant turn) and not on the prompt; ``all`` on every token.

Over-long examples (more than ``--max-len`` tokens), ``--overlong``:
``drop`` (to rejects, reason ``overlong``), ``truncate`` (keep the first ``max_len`` tokens) or
``split`` (cut into ``max_len`` pieces, each its own example with positions from 0; pieces without
loss tokens are dropped). Rows the format cannot render reversibly go to rejects with the format's
reason (e.g. ``plan-contains-separator``).

Huge rows are handled by their length in characters first: a rendering longer than ``max_chars`` =
``max_len`` x :func:`chars_per_token_bound` (4 x the tokenizer's longest token: 512 characters per
token for Llama-3, 1 Mi characters at ``--max-len 2048``) holds more than ``max_len`` tokens, so
``drop`` rejects it without tokenizing (``overlong`` with ``chars`` instead of ``tokens``: a 50 MB
row costs milliseconds, not 45 s and 7 GB); ``truncate`` tokenizes only its first ``max_chars``
characters (more than the tokens it keeps, which are therefore the same); ``split`` tokenizes all of
it in pieces of ``max_chars`` characters cut before a space, so the tokenizer's memory stays bounded.

Special-token strings in a record's text (a prompt that says ``<|user|>`` or ``<s>``) stay text:
they become ordinary tokens, not control tokens, while the template's own role and end tokens stay
special (:class:`~codeplan_tools.formats.tokenizer.RecordTokenizer`, whose ``prompt_ids`` is what
``generate`` must condition on to see the same tokens). Records without such strings are tokenized
exactly as before (batched, same ids).

When reading the input fails part-way (a bad line in fail mode, a damaged file), the records read so
far are packed and written before the error.

A pack is one JSON record::

    {"id", "input_ids", "labels" (-100 = no loss), "position_ids" (restart at 0 per example),
     "seq_lens" (example lengths, in order), "example_ids", "n_tokens", "n_loss_tokens",
     "fingerprint": {"tokenizer", "format", "chat_template", "end_marker", "max_len", "loss",
                     "overlong", "version"}}

Packs are not padded; ``finetune`` pads. Packing efficiency = tokens / (packs * max_len).

Bin packing is best-fit-decreasing over a window of ``buffer`` examples at a time (all of the input
when it is smaller), which bounds memory on corpora of millions of rows and costs almost nothing in
efficiency. Rendering and tokenization run in ``workers`` processes (forked on Linux, so they inherit
the loaded tokenizer; spawned elsewhere; at most one per CPU), chunk by chunk, in order; each sends
back a chunk's ids as one int32 array. The output does not depend on the number of workers. In one
process the tokenizing is already parallel: threads, one per CPU (up to eight), each encode a chunk
of their own (the Rust tokenizer lets go of the GIL; prompts and targets of a chunk in one call, its
own threads off while ours run) while this one renders the chunks ahead and reads the ids out of
those already encoded; so worker processes mostly parallelise the chat-template rendering and the
Python around it, which pays on machines with many cores. The fingerprint's file hashing runs on a
thread while the tokenizer loads.

The tokenizer: a folder whose ``tokenizer.json`` transformers uses as it is (Llama-3, models saved
by ``init-model``) is loaded with the ``tokenizers`` library and its chat template rendered with jinja2
the way transformers renders it (:class:`~codeplan_tools.formats.tokenizer.DirectTokenizer`): no
``import transformers``, so ``pack`` starts in well under a second; other folders (a class that
rebuilds its tokenizer, only a ``tokenizer.model``) load through transformers. The packs are the same
bytes either way (``tests/lib/test_pack_identical.py``).

The tokenizer part of the fingerprint hashes the tokenizer files of the model folder (``finetune``
copies them byte for byte into its export, so an exported model keeps the fingerprint): see
:mod:`codeplan_tools.formats.tokenizer`. Rejects (``overlong``, ``no-loss-tokens``, the format's
reasons) and counters go through the stage's context (:class:`PackStage`, :func:`pack_records`).

numpy and the stage machinery are imported when packing starts, not with this module: the CLI
imports :class:`PackConfig` at start-up to build ``pack``'s options.
"""

from __future__ import annotations

import hashlib
import os
from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from codeplan_tools.core.errors import UsageError

# The tokenizer helpers live in codeplan_tools.formats.tokenizer; older callers import
# TOKENIZER_FILES, check_model_path and read_fingerprint from here too.
from codeplan_tools.formats.tokenizer import (
    TOKENIZER_FILES,  # noqa: F401
    RecordTokenizer,
    chars_per_token_bound,
    check_model_path,  # noqa: F401
    load_pack_tokenizer,
    read_fingerprint,  # noqa: F401
    tokenizer_fingerprint,
)

if TYPE_CHECKING:
    import numpy as np

    from codeplan_tools.core.stage import StageContext
    from codeplan_tools.core.stats import Stats

IGNORE = -100
FINGERPRINT_VERSION = 1
FormatName = Literal["codeplan", "nlplan", "vanilla"]
LossMode = Literal["assistant", "all"]
OverlongMode = Literal["drop", "truncate", "split"]
TemplateChoice = Literal["auto", "chat", "plain"]
LOSS_MODES: tuple[str, ...] = get_args(LossMode)
OVERLONG_MODES: tuple[str, ...] = get_args(OverlongMode)
TEMPLATES: tuple[str, ...] = get_args(TemplateChoice)
# Below this many records per window, worker processes cost more than they save (auto mode).
AUTO_WORKERS_MIN_RECORDS = 5_000
# In one process: chunks rendered ahead of the tokenizer threads (bounds the texts held at once), and
# how many worker chunks (``chunk``) make one of its chunks.
_AHEAD = 3
_HERE_CHUNKS = 4
# In one process: tokenizer threads at most (this thread renders for all of them: ~30 us a record, the
# pace of about seven single-threaded tokenizer threads).
_HERE_THREADS = 8


@dataclass(kw_only=True)
class PackConfig:
    """How ``pack`` tokenizes and packs."""

    model: str
    """The model to be fine-tuned: its tokenizer (and chat template) tokenizes the records."""
    format: FormatName = "codeplan"
    """How ⟨prompt, plan, response⟩ becomes model text: codeplan (plan as a Python block, then the
    response), nlplan (natural-language plan), vanilla (response only). generate must use the same."""
    max_len: int = 2048
    """Tokens per pack."""
    loss: LossMode = "assistant"
    """assistant: loss on the plan + response (the assistant turn), not on the prompt; all: every token."""
    overlong: OverlongMode = "drop"
    """An example longer than --max-len: drop it (to --rejects, reason overlong; one far too long in
    characters is dropped without tokenizing), truncate it to --max-len, or split it into --max-len
    pieces (pieces without loss tokens are dropped)."""
    template: TemplateChoice = "auto"
    """auto: the tokenizer's chat template when it has one, else the plain template; chat or plain to
    force one."""
    workers: int = 0
    """Processes that render and tokenize, at most one per usable CPU. 0: half the cores (up to 8;
    in-process below 4 cores) for windows of 5,000+ records. The output does not depend on it."""
    buffer: int = 200_000
    """Examples bin-packed together (best-fit-decreasing window); bounds memory on huge inputs."""
    chunk: int = 256
    """Records per worker task; in one process, tokenizer calls of a quarter to four times as many
    (library only)."""
    trust_remote_code: bool = False
    """Allow a tokenizer that ships its own code."""

    def __post_init__(self) -> None:
        if self.loss not in LOSS_MODES:
            raise UsageError(f"--loss must be one of {', '.join(LOSS_MODES)}, not {self.loss!r}")
        if self.overlong not in OVERLONG_MODES:
            raise UsageError(f"--overlong must be one of {', '.join(OVERLONG_MODES)}, not {self.overlong!r}")
        if self.template not in TEMPLATES:
            raise UsageError(f"--template must be one of {', '.join(TEMPLATES)}, not {self.template!r}")
        if self.max_len < 2:
            raise UsageError("--max-len must be at least 2")
        if self.buffer < 1 or self.chunk < 1:
            raise UsageError("--buffer and the chunk size must be at least 1")

    @property
    def chat(self) -> bool | None:
        """The template as ``get_format`` takes it: True (chat), False (plain), None (auto)."""
        return {"auto": None, "chat": True, "plain": False}[self.template]


# ---------------------------------------------------------------------------------------------
# Fingerprint


def make_fingerprint(config: PackConfig, tokenizer_hash: str, fmt: Any) -> dict[str, Any]:
    """The fingerprint every pack carries (``finetune`` reads it back with ``read_fingerprint``)."""
    d = fmt.describe()
    return {
        "tokenizer": tokenizer_hash,
        "format": d["format"],
        "chat_template": bool(d["chat_template"]),
        "end_marker": d["end_marker"],
        "max_len": config.max_len,
        "loss": config.loss,
        "overlong": config.overlong,
        "version": FINGERPRINT_VERSION,
    }


# ---------------------------------------------------------------------------------------------
# Tokenization


@dataclass(frozen=True)
class TooLong:
    """A rendered example with more characters than ``max_len`` tokens can hold (dropped untokenized)."""

    chars: int


@dataclass
class _Prepared:
    """A chunk of records rendered and checked (:meth:`Encoder.prepare`), waiting to be tokenized.

    ``out`` holds a result per record: a reject reason, ``TooLong``, or None where the tokenizer
    fills it in; ``batch`` the (slot, prompt text, target text) tokenized in one batch call, ``one``
    the (slot, prompt, plan, response, prompt text, target text) tokenized alone."""

    out: list
    batch: list[tuple[int, str, str]]
    one: list[tuple[int, str, str | None, str, str, str]]


@dataclass
class _Encoded:
    """A tokenized chunk in a few objects (what a worker process sends back: one array, not one per record).

    ``out`` holds a result per record: a reject reason, ``TooLong``, or an int ``k``: the ``k``-th
    tokenized record, whose ids are ``ids[bounds[k]:bounds[k + 1]]`` (prompt then target; int32) and
    whose first ``n_prompt[k]`` tokens are the prompt's."""

    out: list
    ids: np.ndarray
    bounds: list[int]
    n_prompt: list[int]

    def results(self) -> list[tuple[np.ndarray, int] | str | TooLong]:
        """Per record: (token ids, number of prompt tokens) (views of ``ids``), a reason or ``TooLong``."""
        ids, bounds, n_prompt = self.ids, self.bounds, self.n_prompt
        return [
            (ids[bounds[r] : bounds[r + 1]], n_prompt[r]) if type(r) is int else r  # noqa: E721
            for r in self.out
        ]


class Encoder:
    """Renders records through the format and tokenizes prompt and target.

    In two steps, so that a chunk is tokenized (Rust, without the GIL) while the next one is rendered
    (Python): :meth:`prepare` renders and checks, :meth:`tokenize` tokenizes; :meth:`encode` does both.
    """

    def __init__(self, config: PackConfig, tokenizer: Any = None) -> None:
        from codeplan_tools.formats import get_format

        self.config = config
        self.tokenizer = tokenizer or load_pack_tokenizer(config.model, config.trust_remote_code)
        self.format = get_format(config.format, self.tokenizer, chat=config.chat)
        self.bos = getattr(self.tokenizer, "bos_token", None)
        self.records = RecordTokenizer(self.tokenizer, self.format)
        # Any token stands for at least one character: a rendering of at most this many characters is
        # within max_chars without reading the vocabulary (which takes a tenth of a second for Llama-3).
        self._surely_short = config.max_len * 4
        self._max_chars: int | None = None
        backend = (
            getattr(self.tokenizer, "backend_tokenizer", None)
            if getattr(self.tokenizer, "is_fast", False)
            else None
        )
        direct = backend is not None and backend.truncation is None and backend.padding is None
        self._backend = backend if direct else None
        self._split_special = bool(getattr(self.tokenizer, "split_special_tokens", False))

    @property
    def max_chars(self) -> int:
        """Characters that surely hold more than ``max_len`` tokens (:func:`chars_per_token_bound`)."""
        if self._max_chars is None:
            self._max_chars = self.config.max_len * chars_per_token_bound(self.tokenizer)
        return self._max_chars

    def _ids(self, texts: list[str], add_special_tokens: bool, lazy: bool = False) -> list:
        """Token ids of ``texts``, as ``tokenizer(texts)`` gives them.

        A fast tokenizer without truncation or padding is called directly through its Rust backend
        (``encode_batch_fast`` skips the character offsets): the same ids, about a quarter faster.
        ``lazy``: the backend's ``Encoding`` objects instead (or id lists, from transformers; read
        with :func:`_ids_of`), so that reading the ids out can be left to another thread.
        """
        backend = self._backend
        if backend is not None:
            self.settle_backend()
            fn = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
            encodings = fn(texts, add_special_tokens=add_special_tokens)
            return encodings if lazy else [e.ids for e in encodings]
        return self.tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]

    @property
    def threadable(self) -> bool:
        """Whether several threads may tokenize prepared chunks at once (:meth:`call_tokenizer`, without
        their ``one`` records): the Rust backend called directly, whose settings stay as
        :meth:`settle_backend` leaves them. (transformers' ``tokenizer(texts)`` sets them at each call:
        the backend lets one thread set them while another encodes, which then encodes with them.)"""
        return self._backend is not None

    def settle_backend(self) -> None:
        """Set the backend as ``tokenizer(texts)`` sets it (a previous call with
        ``split_special_tokens=True`` may have left it splitting special-token strings); set only when it
        differs, so that threads encoding at the same time only read it."""
        backend = self._backend
        if backend is not None and backend.encode_special_tokens != self._split_special:
            backend.encode_special_tokens = self._split_special

    def encode(
        self, items: list[tuple[str, str | None, str]]
    ) -> list[tuple[np.ndarray, int] | str | TooLong]:
        """For each (prompt, plan, response): (token ids, number of prompt tokens), a reject reason, or
        ``TooLong`` (more characters than ``max_len`` tokens can hold, with ``--overlong drop``).

        Ordinary records are tokenized in batches; those longer than ``max_chars`` or whose text holds
        a special-token string one by one (:meth:`encode_one`)."""
        return self.tokenize(self.prepare(items)).results()

    def prepare(self, items: list[tuple[str, str | None, str]]) -> _Prepared:
        """Render and check ``items`` (no tokenizer call)."""
        out: list = []
        batch: list[tuple[int, str, str]] = []
        one: list[tuple[int, str, str | None, str, str, str]] = []
        holds_special = self.records.holds_special
        unparseable, render, tokenizer = self.format.unparseable_reason, self.format.render, self.tokenizer
        surely_short = self._surely_short
        for prompt, plan, response in items:
            reason = unparseable(plan, response)
            if reason:
                out.append(reason)
                continue
            p, t = render(tokenizer, prompt, plan, response)
            n = len(p) + len(t)
            if (n > surely_short and n > self.max_chars) or holds_special(prompt, plan, response):
                one.append((len(out), prompt, plan, response, p, t))
            else:
                batch.append((len(out), p, t))
            out.append(None)
        return _Prepared(out, batch, one)

    def tokenize(self, prepared: _Prepared) -> _Encoded:
        """The results of a prepared chunk: its records tokenized (:meth:`_Encoded.results` for a list).

        Prompts that start with the BOS and all targets are tokenized in one batch call (both without
        the tokenizer's special tokens), the other prompts in a second one: the same ids as a call per
        text, with one parallel Rust call per chunk instead of one per kind of text."""
        return self.collect(prepared, self.call_tokenizer(prepared))

    def call_tokenizer(self, prepared: _Prepared) -> tuple:
        """The tokenizer calls of :meth:`tokenize`; :meth:`collect` reads the results out. Several threads
        may run it at once on chunks without ``one`` records (those switch the backend's
        ``encode_special_tokens``, which every thread's calls share: :meth:`Packer._encode_here`)."""
        one = {}
        for slot, prompt, plan, response, p, t in prepared.one:
            one[slot] = self._one_ids(prompt, plan, response, p, t)
        batch = prepared.batch
        if not batch:
            return one, [], [], [], []
        bos = self.bos
        prompts = [p for _, p, _ in batch]
        starts = [p.startswith(bos) for p in prompts] if bos else [False] * len(prompts)
        # Without special tokens: the prompts that start with the BOS, then every target.
        plain = [i for i, w in enumerate(starts) if w]
        added = [i for i, w in enumerate(starts) if not w]
        encoded = self._ids([prompts[i] for i in plain] + [t for _, _, t in batch], False, lazy=True)
        with_specials = self._ids([prompts[i] for i in added], True, lazy=True) if added else []
        return one, plain, encoded, added, with_specials

    def collect(self, prepared: _Prepared, called: tuple) -> _Encoded:
        """The :class:`_Encoded` of a chunk from :meth:`call_tokenizer`'s results (any thread)."""
        from itertools import accumulate, chain

        import numpy as np

        one, plain, encoded, added, with_specials = called
        out = list(prepared.out)
        parts: dict[int, tuple[list[int], list[int]]] = {}  # slot -> (prompt ids, target ids)
        for slot, res in one.items():
            if isinstance(res, tuple):
                parts[slot] = res
            else:
                out[slot] = res
        batch = prepared.batch
        if batch:
            ids = [_ids_of(e) for e in encoded]
            prompt_ids: list[list[int]] = [[]] * len(batch)
            for i, p_ids in zip(plain, ids, strict=False):
                prompt_ids[i] = p_ids
            for i, e in zip(added, with_specials, strict=True):
                prompt_ids[i] = _ids_of(e)
            for (slot, _, _), p_ids, t_ids in zip(batch, prompt_ids, ids[len(plain) :], strict=True):
                parts[slot] = (p_ids, t_ids)
        slots = sorted(parts)
        lists = [parts[s] for s in slots]
        for k, slot in enumerate(slots):
            out[slot] = k
        n_prompt = [len(p) for p, _ in lists]
        bounds = [0, *accumulate(len(p) + len(t) for p, t in lists)]
        flat = np.fromiter(chain.from_iterable(chain.from_iterable(lists)), dtype=np.int32, count=bounds[-1])
        return _Encoded(out, flat, bounds, n_prompt)

    def encode_one(
        self, prompt: str, plan: str | None, response: str, p: str, t: str
    ) -> tuple[np.ndarray, int] | str | TooLong:
        """One record whose text holds a special-token string, or whose rendering is longer than
        ``max_chars`` (it cannot fit in ``max_len`` tokens): ``drop`` rejects it before tokenizing;
        ``truncate`` keeps only the first ``max_chars`` characters of prompt and target (more than
        the ``max_len`` tokens it keeps, so those tokens are the same); ``split`` keeps everything and
        tokenizes it in pieces of ``max_chars`` characters, so memory stays bounded."""
        import numpy as np

        res = self._one_ids(prompt, plan, response, p, t)
        if not isinstance(res, tuple):
            return res
        p_ids, t_ids = res
        return np.asarray(p_ids + t_ids, dtype=np.int32), len(p_ids)

    def _one_ids(
        self, prompt: str, plan: str | None, response: str, p: str, t: str
    ) -> tuple[list[int], list[int]] | str | TooLong:
        """:meth:`encode_one` as (prompt ids, target ids) lists."""
        chars = len(p) + len(t)
        cut = piece = None
        if chars > self._surely_short and chars > self.max_chars:
            if self.config.overlong == "drop":
                return TooLong(chars)
            if self.config.overlong == "truncate":
                cut = self.max_chars
            else:
                piece = self.max_chars
        p_ids = self.records.prompt_ids(prompt, p, cut=cut, piece=piece)
        t_ids = self.records.target_ids(plan, response, t, cut=cut, piece=piece)
        if p_ids is None or t_ids is None:
            return "special-token-text"
        return p_ids, t_ids


@contextmanager
def _rust_threads_off() -> Iterator[None]:
    """``TOKENIZERS_PARALLELISM=false`` inside (the Rust tokenizer reads it at each call: our threads are
    then the parallelism), then as it was. Set and restored while none of our threads is calling the
    tokenizer."""
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


def _ids_of(encoding: Any) -> list[int]:
    """The ids of an ``Encoding`` of the Rust backend (or an id list, from transformers)."""
    return encoding if isinstance(encoding, list) else encoding.ids


_WORKER: Encoder | None = None


def _worker_init(config_dict: dict) -> None:
    global _WORKER
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _WORKER = Encoder(PackConfig(**config_dict))


def _worker_forked() -> None:
    # One tokenizer thread per worker process: the processes are the parallelism.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _worker_encode(items: list[tuple[str, str | None, str]]) -> _Encoded:
    assert _WORKER is not None  # set by _worker_init or before forking
    return _WORKER.tokenize(_WORKER.prepare(items))


# ---------------------------------------------------------------------------------------------
# Bin packing


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices grouped into bins of at most ``capacity``: longest first, each into the fullest bin it fits.

    Deterministic (ties by index); members of a bin are returned in input order.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    free: list[tuple[int, int]] = []  # (room left, bin), sorted
    bins: list[list[int]] = []
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"item of length {n} exceeds capacity {capacity}")
        j = bisect_left(free, (n, -1))
        if j < len(free):
            room, b = free.pop(j)
            bins[b].append(i)
            room -= n
        else:
            b = len(bins)
            bins.append([i])
            room = capacity - n
        if room > 0:
            insort(free, (room, b))
    return [sorted(b) for b in bins]


# ---------------------------------------------------------------------------------------------
# The stage


@dataclass
class _Example:
    """An example (or a piece of one): its token ids and how many of its first tokens carry no loss."""

    id: str
    ids: np.ndarray
    n_masked: int


class Packer:
    """One run of ``pack`` (what :class:`PackStage` runs): the encoder, the worker pool and the
    fingerprint, with counters and rejects going to ``ctx``."""

    def __init__(self, config: PackConfig, ctx: StageContext, *, tokenizer: Any = None) -> None:
        self.config = config
        self.stats = ctx.stats
        self.reject = ctx.reject
        if tokenizer is None and os.path.isfile(os.path.join(config.model, "tokenizer.json")):
            # A folder's fingerprint hashes its files (hashlib and file reads let go of the GIL): on a
            # thread of its own while the tokenizer loads.
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(1, thread_name_prefix="pack-fingerprint") as hasher:
                hashing = hasher.submit(tokenizer_fingerprint, config.model)
                self.encoder = Encoder(config, tokenizer)
                tokenizer_hash = hashing.result()
        else:
            self.encoder = Encoder(config, tokenizer)
            tokenizer_hash = tokenizer_fingerprint(config.model, self.encoder.tokenizer)
        self.fingerprint = make_fingerprint(config, tokenizer_hash, self.encoder.format)
        self.needs_plan = self.encoder.format.needs_plan
        self._pool: Any = None
        # Auto: half the cores (one process already tokenizes on several cores, on threads).
        from codeplan_tools.core.pool import usable_cpus

        cpus = self._cpus = usable_cpus()
        # More processes than CPUs only take turns on them (and each costs a fork and its pickles):
        # --workers is capped at the CPUs this process may run on.
        self._n_workers = min(config.workers, cpus) if config.workers > 0 else min(8, cpus // 2)

    # -- encoding ----------------------------------------------------------------------------
    def _items(self, records: list[dict]) -> list[tuple[str, str | None, str]]:
        return [(r["prompt"], r.get("plan") if self.needs_plan else None, r["response"]) for r in records]

    def _encode(self, records: list[dict]) -> list:
        cfg = self.config
        chunks = [records[i : i + cfg.chunk] for i in range(0, len(records), cfg.chunk)]
        parallel = self._n_workers > 1 and len(chunks) > 1
        if cfg.workers == 0 and len(records) < AUTO_WORKERS_MIN_RECORDS:
            parallel = False
        if not parallel:
            return self._encode_here(records)
        if self._pool is None:
            self._pool = self._start_pool()
        results = []
        for encoded in self._pool.imap(_worker_encode, [self._items(c) for c in chunks]):
            results.extend(encoded.results())
        return results

    def _encode_here(self, records: list[dict]) -> list:
        """In this process: tokenizer threads encode chunks (the Rust tokenizer lets go of the GIL) while
        this thread renders the chunks ahead and reads the ids out of those already encoded, so that the
        tokenizer always has the next chunk waiting.

        Where the tokenizer allows it (:attr:`Encoder.threadable`), one thread per CPU, each encoding a
        chunk of its own with the Rust tokenizer's own threads off (``TOKENIZERS_PARALLELISM=false`` while
        they run) instead of one call at a time spread over all cores by the tokenizer: measured on 2
        cores, 7 to 10% faster in a process that has been running (the bench's, a notebook's), as fast
        in a fresh ``codeplan pack`` process. The rare records tokenized one by one (special-token text,
        over-long renderings) switch the backend's ``encode_special_tokens`` (shared by every thread's
        calls), so they wait until those threads are done.
        Otherwise one thread makes the calls, each on all cores. Besides the chunks being encoded, at most
        ``_AHEAD - 1`` wait rendered; at most ``_HERE_THREADS`` threads (beyond that, this thread's
        rendering cannot keep them busy: ``--workers`` spreads the rendering too)."""
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        encoder = self.encoder
        threads = min(self._cpus, _HERE_THREADS) if encoder.threadable else 1
        chunks = self._here_chunks(records, threads)
        if len(chunks) < 2:
            return [res for c in chunks for res in encoder.encode(self._items(c))]
        threads = min(threads, len(chunks))
        results: list = []
        alone: list[tuple[int, tuple]] = []  # (index in results, a ``one`` record), tokenized at the end
        pending: deque = deque()

        def read_out() -> None:
            prepared, called = pending.popleft()
            results.extend(encoder.collect(prepared, called.result()).results())

        offset = 0  # of the chunk in records
        encoder.settle_backend()  # before the threads: while they encode, they only read it
        with (
            _rust_threads_off() if threads > 1 else nullcontext(),
            ThreadPoolExecutor(threads, thread_name_prefix="pack-tokenize") as pool,
        ):
            for chunk in chunks:
                prepared = encoder.prepare(self._items(chunk))
                if threads > 1 and prepared.one:
                    alone.extend((offset + slot, tuple(item)) for slot, *item in prepared.one)
                    prepared = _Prepared(prepared.out, prepared.batch, [])
                offset += len(chunk)
                pending.append((prepared, pool.submit(encoder.call_tokenizer, prepared)))
                # Read out a chunk once every thread has a later one to work on.
                while len(pending) > threads + _AHEAD - 1 or (
                    len(pending) > threads and pending[0][1].done()
                ):
                    read_out()
            while pending:
                read_out()
        for index, item in alone:
            results[index] = encoder.encode_one(*item)
        return results

    def _here_chunks(self, records: list[dict], threads: int) -> list[list[dict]]:
        """``records`` cut for :meth:`_encode_here`: chunks of ``chunk`` x ``_HERE_CHUNKS`` records (fewer,
        larger calls keep the tokenizer busy), but at most half of each thread's share of what is left and
        at least a quarter of ``chunk``: they shrink towards the end, so that the threads finish
        together instead of one waiting for the other's last large chunk. The first ones grow from a
        quarter of ``chunk``, doubling, so that the tokenizer starts as soon as a few records are
        rendered."""
        cfg, start = self.config, 0
        chunks: list[list[dict]] = []
        largest, smallest = cfg.chunk * _HERE_CHUNKS, max(1, cfg.chunk // 4)
        while start < len(records):
            size = min(largest, max(smallest, -(-(len(records) - start) // (2 * threads))))
            size = min(size, smallest << min(len(chunks), 16))
            chunks.append(records[start : start + size])
            start += size
        return chunks

    def _start_pool(self):
        """Worker processes: forked where possible (they inherit the loaded tokenizer and start at once),
        spawned otherwise (each imports transformers and loads the tokenizer, seconds per worker)."""
        import multiprocessing

        global _WORKER
        if "fork" in multiprocessing.get_all_start_methods():
            import gc

            _WORKER = self.encoder
            # Frozen objects are left alone by the children's garbage collector, so it does not write to
            # (and copy) every page of the parent's heap they share.
            gc.freeze()
            try:
                return multiprocessing.get_context("fork").Pool(self._n_workers, initializer=_worker_forked)
            finally:
                gc.unfreeze()
        ctx = multiprocessing.get_context("spawn")
        return ctx.Pool(self._n_workers, initializer=_worker_init, initargs=(asdict(self.config),))

    # -- over-long handling --------------------------------------------------------------------
    def _examples(self, record: dict, ids: np.ndarray, n_prompt: int) -> list[_Example]:
        cfg, stats = self.config, self.stats
        # Tokens without loss at the start: the prompt's with --loss assistant (token ids are never
        # IGNORE, so a piece has loss tokens exactly when it reaches past them).
        masked = n_prompt if cfg.loss == "assistant" else 0
        n = len(ids)
        if n <= cfg.max_len:
            pieces = [(record["id"], ids, masked)]
        else:
            if cfg.overlong == "drop":
                self._drop_overlong(record, tokens=n)
                return []
            stats.inc("overlong")
            if cfg.overlong == "truncate":
                stats.inc("overlong_truncated")
                pieces = [(record["id"], ids[: cfg.max_len], min(masked, cfg.max_len))]
            else:
                stats.inc("overlong_split")
                pieces = [
                    (f"{record['id']}#{k}", ids[s : s + cfg.max_len], min(max(masked - s, 0), cfg.max_len))
                    for k, s in enumerate(range(0, n, cfg.max_len))
                ]
                stats.inc("split_pieces", len(pieces))
        kept = [_Example(i, x, m) for i, x, m in pieces if len(x) > m]
        if len(pieces) > 1:
            stats.inc("split_pieces_dropped_no_loss", len(pieces) - len(kept))
        if not kept:
            self.reject(record, "no-loss-tokens", tokens=n, max_len=cfg.max_len)
        return kept

    def _drop_overlong(self, record: dict, **size) -> None:
        """``--overlong drop``: count it and reject it (``size``: its tokens, or characters if it was
        too long to tokenize)."""
        self.stats.inc("overlong")
        self.stats.inc("overlong_dropped")
        self.reject(record, "overlong", max_len=self.config.max_len, **size)

    # -- packing -------------------------------------------------------------------------------
    def _packs(self, examples: list[_Example]) -> Iterator[dict]:
        import numpy as np

        stats, max_len = self.stats, self.config.max_len
        positions: np.ndarray = np.arange(max_len, dtype=np.int32)
        for members in best_fit_decreasing([len(e.ids) for e in examples], max_len):
            exs = [examples[i] for i in members]
            ids = np.concatenate([e.ids for e in exs])
            labels = ids.copy()
            seq_lens = [len(e.ids) for e in exs]
            start = n_loss = 0
            for e, n in zip(exs, seq_lens, strict=True):
                labels[start : start + e.n_masked] = IGNORE
                n_loss += n - e.n_masked
                start += n
            pos = np.concatenate([positions[:n] for n in seq_lens])
            example_ids = [e.id for e in exs]
            stats.inc("packs")
            stats.inc("tokens", len(ids))
            stats.inc("loss_tokens", n_loss)
            stats.inc("capacity_tokens", max_len)
            stats.inc("examples_packed", len(exs))
            yield {
                "id": "pack-" + hashlib.sha256("\n".join(example_ids).encode()).hexdigest()[:16],
                "input_ids": ids,
                "labels": labels,
                "position_ids": pos,
                "seq_lens": seq_lens,
                "example_ids": example_ids,
                "n_tokens": int(len(ids)),
                "n_loss_tokens": n_loss,
                "fingerprint": self.fingerprint,
            }

    def _window(self, records: list[dict]) -> Iterator[dict]:
        examples: list[_Example] = []
        for record, res in zip(records, self._encode(records), strict=True):
            self.stats.inc("examples_in")
            if isinstance(res, str):
                self.reject(record, res)
                continue
            if isinstance(res, TooLong):
                self._drop_overlong(record, chars=res.chars)
                continue
            examples.extend(self._examples(record, *res))
        yield from self._packs(examples)

    def packs(self, records: Iterable[dict]) -> Iterator[dict]:
        """Packs of ``records``, window by window. When reading ``records`` fails, the window read so far
        is packed and yielded before the error is raised (``take_batches``), so nothing read is lost."""
        from codeplan_tools.core.stage import take_batches

        try:
            for window in take_batches(records, self.config.buffer):
                yield from self._window(window)
        finally:
            self.close()
            self._derive()

    def _derive(self) -> None:
        s = self.stats
        s.derived.update(derived_stats(s))
        s.derived["fingerprint"] = self.fingerprint

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None


def derived_stats(stats: Stats) -> dict:
    """Ratios recomputed from the (summable) counters."""
    cap = stats["capacity_tokens"]
    tokens = stats["tokens"]
    return {
        "packing_efficiency": round(tokens / cap, 6) if cap else None,
        "loss_token_share": round(stats["loss_tokens"] / tokens, 6) if tokens else None,
        "examples_per_pack": round(stats["examples_packed"] / stats["packs"], 3) if stats["packs"] else None,
    }


def required_fields(config: PackConfig) -> tuple[str, ...]:
    """Canonical fields every input record must have for this format."""
    from codeplan_tools.formats import FORMATS

    cls = FORMATS.get(config.format)
    if cls is None:
        raise UsageError(f"unknown format {config.format!r}; choose one of: {', '.join(FORMATS)}")
    return ("prompt", "response", "plan") if cls.needs_plan else ("prompt", "response")


class PackStage:
    """``pack`` as a stage: records with prompt/response (and plan) in, packs out.

    ``tokenizer``: an already loaded one (else ``config.model``'s is loaded when the stage runs, after
    ``run_stage`` has checked the outputs). ``require``: the fields every record must have."""

    name = "pack"

    def __init__(self, config: PackConfig, *, tokenizer: Any = None) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.require = required_fields(config)

    def run(self, records: Iterable[dict], ctx: StageContext) -> Iterator[dict]:
        return Packer(self.config, ctx, tokenizer=self.tokenizer).packs(records)


def pack_records(
    records: Iterable[dict], config: PackConfig, ctx: StageContext | None = None, *, tokenizer: Any = None
) -> Iterator[dict]:
    """The library twin of ``codeplan pack``: records in, packs out.

    ``ctx``: the run's context (``run_stage`` passes its own); left out, an in-memory
    ``StageContext("pack")``: pass one to read the counters (``ctx.stats``, with ``derived`` packing
    efficiency) and the rejected records (``ctx.rejected``, each with ``meta.pack.reason``).
    ``tokenizer``: an already loaded one.
    """
    from codeplan_tools.core.stage import StageContext

    return PackStage(config, tokenizer=tokenizer).run(records, ctx or StageContext("pack"))
