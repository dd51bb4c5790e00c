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
special (:class:`RecordTokenizer`, whose ``prompt_ids`` is what ``generate`` must condition on to see
the same tokens). Records without such strings are tokenized exactly as before (batched, same ids).

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
the loaded tokenizer; spawned elsewhere), chunk by chunk, in order; the output does not depend on
the number of workers. Note that a fast tokenizer's batch encoding is already multi-threaded, so
workers mostly parallelise the chat-template rendering and the Python around it.

The tokenizer part of the fingerprint hashes the tokenizer files of the model folder (``finetune``
copies them byte for byte into its export, so an exported model keeps the fingerprint).
"""

from __future__ import annotations

import hashlib
import os
import re
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from codeplan_tools.core.errors import UsageError
from codeplan_tools.core.stats import Stats

IGNORE = -100
FINGERPRINT_VERSION = 1
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
LOSS_MODES = ("assistant", "all")
OVERLONG_MODES = ("drop", "truncate", "split")
# Below this many records per window, worker processes cost more than they save (auto mode).
AUTO_WORKERS_MIN_RECORDS = 5_000


@dataclass(kw_only=True)
class PackConfig:
    model: str
    """Folder (or name) of the tokenizer to pack for: the model that will be fine-tuned."""
    format: str = "codeplan"
    """codeplan, nlplan or vanilla (see codeplan_tools.formats)."""
    max_len: int = 2048
    """Tokens per pack."""
    loss: str = "assistant"
    """assistant: loss on plan + response only; all: on every token."""
    overlong: str = "drop"
    """What to do with an example longer than max_len: drop, truncate or split."""
    chat: bool | None = None
    """Use the chat template (True), the plain template (False), or the chat template when the tokenizer has one."""
    workers: int = 0
    """Processes that render and tokenize; 0 = half the cores, up to 8, for windows of 5,000+ records."""
    buffer: int = 200_000
    """Examples bin-packed together (best-fit-decreasing window)."""
    chunk: int = 256
    """Records per worker task."""
    trust_remote_code: bool = False
    """Allow a tokenizer with custom code."""

    def __post_init__(self) -> None:
        if self.loss not in LOSS_MODES:
            raise UsageError(f"--loss must be one of {', '.join(LOSS_MODES)}, not {self.loss!r}")
        if self.overlong not in OVERLONG_MODES:
            raise UsageError(f"--overlong must be one of {', '.join(OVERLONG_MODES)}, not {self.overlong!r}")
        if self.max_len < 2:
            raise UsageError("--max-len must be at least 2")
        if self.buffer < 1 or self.chunk < 1:
            raise UsageError("--buffer and the chunk size must be at least 1")


# ---------------------------------------------------------------------------------------------
# Fingerprint


def tokenizer_fingerprint(model: str | os.PathLike, tokenizer=None) -> str:
    """SHA-256 over the tokenizer files of a model folder (names and bytes).

    For a model that is not a local folder, over the loaded tokenizer's serialised form and chat
    template instead.
    """
    check_model_path(str(model))
    h = hashlib.sha256()
    path = Path(model)
    files = [n for n in TOKENIZER_FILES if (path / n).is_file()] if path.is_dir() else []
    if files:
        for name in files:
            h.update(name.encode() + b"\0")
            h.update(hashlib.sha256((path / name).read_bytes()).digest())
        return h.hexdigest()
    tokenizer = tokenizer or load_tokenizer(str(model))
    backend = getattr(tokenizer, "backend_tokenizer", None)
    h.update(
        (backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))).encode()
    )
    h.update(str(getattr(tokenizer, "chat_template", None)).encode())
    return h.hexdigest()


def check_model_path(model: str) -> None:
    """``--model`` must be a local folder with a tokenizer, or a hub id that is cached or exists on a
    reachable hub: otherwise one line and exit 66 at once, instead of transformers' hub retries
    (see :mod:`codeplan_tools.engines.model_files`)."""
    from codeplan_tools.engines.model_files import resolve_model

    resolve_model(str(model), need="tokenizer")


def load_tokenizer(model: str, trust_remote_code: bool = False):
    """The tokenizer of ``--model``: a missing folder or tokenizer -> 66, remote code refused -> 77."""
    from transformers import AutoTokenizer

    from codeplan_tools.engines.model_files import loading, refuse_remote_code, resolve_model

    found = resolve_model(str(model), need="tokenizer")
    refuse_remote_code(found, trust_remote_code)
    with loading(found):
        return AutoTokenizer.from_pretrained(found.path, trust_remote_code=trust_remote_code)


def make_fingerprint(config: PackConfig, tokenizer_hash: str, fmt) -> dict:
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


def read_fingerprint(path: str) -> dict | None:
    """The fingerprint of the first pack in ``path`` (None for an empty file)."""
    import orjson

    from codeplan_tools.core.streams import iter_lines

    for _name, _lineno, line in iter_lines([path]):
        rec = orjson.loads(line)
        return rec.get("fingerprint") if isinstance(rec, dict) else None
    return None


# ---------------------------------------------------------------------------------------------
# Tokenization


def chars_per_token_bound(tokenizer) -> int:
    """Most characters of text one token can stand for, with room to spare: 4 x the longest token.

    A token covers at most its own length of (normalised) text; the factor 4 leaves room for
    normalisers that shrink text (NFC composes at most 3 code points into one). So a rendering longer
    than ``max_len`` times this holds more than ``max_len`` tokens (``pack``'s ``max_chars``). For
    Llama-3 and Qwen2.5 (longest token 128 characters) that is 512 characters per token: 1 Mi
    characters at ``--max-len 2048``.
    """
    vocab = tokenizer.get_vocab()
    return 4 * max((len(t) for t in vocab), default=1)


# Sentinels standing for the record's texts when a format's layout is rendered (invisible separators).
_CONTENT = tuple(f"\u2063CODEPLAN_CONTENT_{i}\u2063" for i in range(2))


class RecordTokenizer:
    """Token ids of a format's rendering of a record, in which the record's own text stays text.

    A prompt, plan or response may contain the string of a special token of the tokenizer
    (``<|user|>``, ``<s>``, ``<|eot_id|>``); tokenized as usual it would become that control token,
    e.g. a real role token in the middle of a training example. For a record whose text holds such a
    string, the rendering is cut at the template's own special tokens only (where the tokenizer cuts
    it anyway), which stay special; the stretches between them are tokenized with
    ``split_special_tokens=True``, so the string inside the record's text becomes ordinary tokens,
    in its context. A record without such a
    string takes the ordinary path: its ids are exactly ``tokenizer(text)``'s. "Special" means the
    tokens the tokenizer marks special; non-special added tokens (Qwen's ``<tool_call>``) are
    vocabulary and tokenized as always. Where the record's text sits in the rendering is found by
    rendering the format once with placeholders; a template that does not embed the text
    verbatim (and a record that needs it) gives ``None`` (pack rejects it: ``special-token-text``).

    ``pack`` uses :meth:`prompt_ids` and :meth:`target_ids`; ``generate`` must use
    :meth:`prompt_ids` for the prompts of a format, so training and inference see the same tokens.
    """

    def __init__(self, tokenizer, fmt):
        self.tokenizer, self.format = tokenizer, fmt
        self.bos = getattr(tokenizer, "bos_token", None)
        decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        specials = {t.content for t in decoder.values() if getattr(t, "special", False)}
        specials |= set(getattr(tokenizer, "all_special_tokens", []) or [])
        # Longest first, so that the longest special string at a position is the one cut out.
        names = sorted((t for t in specials if t), key=len, reverse=True)
        self._special = re.compile("|".join(map(re.escape, names))) if names else None
        # What add_special_tokens=True puts around a text (BOS, sometimes EOS), added around the pieces.
        plain = tokenizer("a", add_special_tokens=False)["input_ids"]
        full = tokenizer("a", add_special_tokens=True)["input_ids"]
        at = next((i for i in range(len(full)) if full[i : i + len(plain)] == plain), 0)
        self._prefix, self._suffix = full[:at], full[at + len(plain) :]
        self._layouts: dict[str, list[str] | None] = {}

    def holds_special(self, *texts: str | None) -> bool:
        """Whether any of ``texts`` contains a special-token string."""
        search = self._special.search if self._special is not None else None
        return search is not None and any(t and search(t) for t in texts)

    def prompt_ids(
        self, prompt: str, text: str | None = None, *, cut: int | None = None, piece: int | None = None
    ) -> list[int] | None:
        """Ids of the prompt text (``text``: the format's rendering of ``prompt``, if already made).

        BOS as ``generate`` conditions on it: the tokenizer's special tokens, unless the text already
        starts with the BOS (a chat template that writes it). ``cut``: keep only the first ``cut``
        characters; ``piece``: tokenize in pieces of at most that many characters (see
        :meth:`ids`). None when the record's text holds a special-token string and cannot be
        located in the rendering.
        """
        if text is None:
            text = self.format.prompt_text(self.tokenizer, prompt)
        spans = self._spans("prompt", text, (prompt,)) if self.holds_special(prompt) else []
        if spans is None:
            return None
        add = not (self.bos and text.startswith(self.bos))
        return self.ids(text[:cut] if cut else text, spans, add, piece=piece)

    def target_ids(
        self,
        plan: str | None,
        response: str,
        text: str | None = None,
        *,
        cut: int | None = None,
        piece: int | None = None,
    ) -> list[int] | None:
        """Ids of the target text (never with the tokenizer's special tokens: its end marker is in the
        text); like :meth:`prompt_ids`."""
        if text is None:
            text = self.format.target_text(plan, response)
        contents = (plan, response) if self.format.needs_plan else (response,)
        spans = self._spans("target", text, contents) if self.holds_special(*contents) else []
        if spans is None:
            return None
        return self.ids(text[:cut] if cut else text, spans, False, piece=piece)

    def ids(
        self, text: str, spans: list[tuple[int, int]], add_special_tokens: bool, piece: int | None = None
    ) -> list[int]:
        """Ids of ``text`` with the special-token strings inside ``spans`` tokenized as plain text.

        ``text`` is cut at the special-token strings outside ``spans`` (the template's), each of which
        gives its token; the stretches between them, where the tokenizer would cut anyway, are
        tokenized with ``split_special_tokens=True``. ``piece``: a stretch longer than this is
        tokenized in pieces of at most ``piece`` characters, each cut just before a space (words stay
        whole), so the tokenizer never holds more than that at once; only the tokens at those cuts
        can differ from tokenizing it whole.
        """
        if not spans and (piece is None or len(text) <= piece):
            return self._encode(text, add_special_tokens, False)
        out: list[int] = []
        pos = 0

        def stretch(end: int) -> None:
            for chunk in _pieces(text[pos:end], piece):
                out.extend(self._encode(chunk, False, True))

        for match in self._special.finditer(text) if self._special is not None else ():
            start, stop = match.span()
            if any(s <= start and stop <= e for s, e in spans):
                continue  # the record's own text: stays in its stretch, as text
            stretch(start)
            out.extend(self._encode(text[start:stop], False, False))
            pos = stop
        stretch(len(text))
        return self._prefix + out + self._suffix if add_special_tokens else out

    def _encode(self, text: str, add_special_tokens: bool, as_text: bool) -> list[int]:
        if not text:
            return []
        encoded = self.tokenizer(text, add_special_tokens=add_special_tokens, split_special_tokens=as_text)
        return list(encoded["input_ids"])

    def _spans(self, part: str, text: str, contents: tuple[str | None, ...]) -> list[tuple[int, int]] | None:
        """Where ``contents`` (the record's texts, in order) sit in ``text``, the rendering of ``part``
        (prompt or target); None unless the rendering is the format's layout with them put in."""
        if part not in self._layouts:
            if part == "prompt":
                layout = self.format.prompt_text(self.tokenizer, _CONTENT[0])
            elif self.format.needs_plan:
                layout = self.format.target_text(*_CONTENT)
            else:
                layout = self.format.target_text(None, _CONTENT[1])
            pieces = re.split("|".join(_CONTENT), layout)
            self._layouts[part] = pieces if len(pieces) == len(contents) + 1 else None
        layout = self._layouts[part]
        if layout is None or not text.startswith(layout[0]):
            return None
        spans, pos = [], len(layout[0])
        for content, after in zip(contents, layout[1:], strict=True):
            content = content or ""
            if text[pos : pos + len(content)] != content:
                return None
            spans.append((pos, pos + len(content)))
            pos += len(content)
            if text[pos : pos + len(after)] != after:
                return None
            pos += len(after)
        return spans if pos == len(text) else None


def _pieces(text: str, size: int | None) -> Iterator[str]:
    """``text`` in pieces of at most ``size`` characters, each cut just before a space when there is one
    in its second half (BPE pre-tokenizers start a word with its space)."""
    start = 0
    while size is not None and len(text) - start > size:
        stop = text.rfind(" ", start + size // 2, start + size)
        if stop <= start:
            stop = start + size
        yield text[start:stop]
        start = stop
    if start < len(text):
        yield text[start:]


@dataclass(frozen=True)
class TooLong:
    """A rendered example with more characters than ``max_len`` tokens can hold (dropped untokenized)."""

    chars: int


class Encoder:
    """Renders records through the format and tokenizes prompt and target."""

    def __init__(self, config: PackConfig, tokenizer=None):
        from codeplan_tools.formats import get_format

        self.config = config
        self.tokenizer = tokenizer or load_tokenizer(config.model, config.trust_remote_code)
        self.format = get_format(config.format, self.tokenizer, chat=config.chat)
        self.bos = getattr(self.tokenizer, "bos_token", None)
        self.records = RecordTokenizer(self.tokenizer, self.format)
        self.max_chars = config.max_len * chars_per_token_bound(self.tokenizer)

    def _ids(self, texts: list[str], add_special_tokens: bool) -> list[list[int]]:
        """Token ids of ``texts``, as ``tokenizer(texts)`` gives them.

        A fast tokenizer without truncation or padding is called directly through its Rust backend
        (``encode_batch_fast`` skips the character offsets): the same ids, about a quarter faster.
        """
        backend = (
            getattr(self.tokenizer, "backend_tokenizer", None)
            if getattr(self.tokenizer, "is_fast", False)
            else None
        )
        if backend is not None and backend.truncation is None and backend.padding is None:
            fn = getattr(backend, "encode_batch_fast", None) or backend.encode_batch
            return [e.ids for e in fn(texts, add_special_tokens=add_special_tokens)]
        return self.tokenizer(texts, add_special_tokens=add_special_tokens)["input_ids"]

    def encode(
        self, items: list[tuple[str, str | None, str]]
    ) -> list[tuple[np.ndarray, int] | str | TooLong]:
        """For each (prompt, plan, response): (token ids, number of prompt tokens), a reject reason, or
        ``TooLong`` (more characters than ``max_len`` tokens can hold, with ``--overlong drop``).

        Ordinary records are tokenized in batches; those longer than ``max_chars`` or whose text holds
        a special-token string one by one (:meth:`_encode_one`)."""
        out: list[tuple[np.ndarray, int] | str | TooLong] = []
        prompts, targets, where = [], [], []
        holds_special = self.records.holds_special
        for prompt, plan, response in items:
            reason = self.format.unparseable_reason(plan, response)
            if reason:
                out.append(reason)
                continue
            p, t = self.format.render(self.tokenizer, prompt, plan, response)
            if len(p) + len(t) > self.max_chars or holds_special(prompt, plan, response):
                out.append(self._encode_one(prompt, plan, response, p, t))
                continue
            where.append(len(out))
            out.append("")
            prompts.append(p)
            targets.append(t)
        if not prompts:
            return out
        with_bos = [bool(self.bos) and p.startswith(self.bos) for p in prompts]
        prompt_ids: list[list[int]] = [[] for _ in prompts]
        for flag in (False, True):
            idx = [i for i, w in enumerate(with_bos) if w == flag]
            if idx:
                enc = self._ids([prompts[i] for i in idx], add_special_tokens=not flag)
                for i, ids in zip(idx, enc, strict=True):
                    prompt_ids[i] = ids
        target_ids = self._ids(targets, add_special_tokens=False)
        for k, (p_ids, t_ids) in enumerate(zip(prompt_ids, target_ids, strict=True)):
            out[where[k]] = (np.asarray(p_ids + t_ids, dtype=np.int32), len(p_ids))
        return out

    def _encode_one(
        self, prompt: str, plan: str | None, response: str, p: str, t: str
    ) -> tuple[np.ndarray, int] | str | TooLong:
        """One record whose text holds a special-token string, or whose rendering is longer than
        ``max_chars`` (it cannot fit in ``max_len`` tokens): ``drop`` rejects it before tokenizing;
        ``truncate`` keeps only the first ``max_chars`` characters of prompt and target (more than
        the ``max_len`` tokens it keeps, so those tokens are the same); ``split`` keeps everything and
        tokenizes it in pieces of ``max_chars`` characters, so memory stays bounded."""
        cut = piece = None
        chars = len(p) + len(t)
        if chars > self.max_chars:
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
        return np.asarray(p_ids + t_ids, dtype=np.int32), len(p_ids)


_WORKER: Encoder | None = None


def _worker_init(config_dict: dict) -> None:
    global _WORKER
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    _WORKER = Encoder(PackConfig(**config_dict))


def _worker_forked() -> None:
    # One tokenizer thread per worker process: the processes are the parallelism.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"


def _worker_encode(items):
    return _WORKER.encode(items)


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
    id: str
    ids: np.ndarray
    labels: np.ndarray


def _labels(ids: np.ndarray, n_prompt: int, loss: str) -> np.ndarray:
    labels = ids.astype(np.int32, copy=True)
    if loss == "assistant":
        labels[:n_prompt] = IGNORE
    return labels


class Packer:
    """The library twin of ``codeplan pack``: records in, packs out, counters in ``stats``."""

    def __init__(
        self,
        config: PackConfig,
        stats: Stats | None = None,
        reject: Callable | None = None,
        *,
        tokenizer=None,
    ):
        self.config = config
        self.stats = stats or Stats("pack")
        self.reject = reject or self._count_reject
        self.encoder = Encoder(config, tokenizer)
        self.fingerprint = make_fingerprint(
            config, tokenizer_fingerprint(config.model, self.encoder.tokenizer), self.encoder.format
        )
        self.needs_plan = self.encoder.format.needs_plan
        self._pool = None
        # Auto: half the cores (the fast tokenizers' batch encoding already runs on several threads).
        self._n_workers = config.workers if config.workers > 0 else min(8, (os.cpu_count() or 1) // 2)

    def _count_reject(self, record: dict, reason: str, **details) -> None:
        """Without a stage's rejects writer: count, as ``StageContext.reject`` does."""
        self.stats.inc("rejected")
        self.stats.inc(f"rejected.{reason}")

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
            return [res for c in chunks for res in self.encoder.encode(self._items(c))]
        if self._pool is None:
            self._pool = self._start_pool()
        results = []
        for res in self._pool.imap(_worker_encode, [self._items(c) for c in chunks]):
            results.extend(res)
        return results

    def _start_pool(self):
        """Worker processes: forked where possible (they inherit the loaded tokenizer and start at once),
        spawned otherwise (each imports transformers and loads the tokenizer, seconds per worker)."""
        import multiprocessing

        global _WORKER
        if "fork" in multiprocessing.get_all_start_methods():
            _WORKER = self.encoder
            return multiprocessing.get_context("fork").Pool(self._n_workers, initializer=_worker_forked)
        ctx = multiprocessing.get_context("spawn")
        return ctx.Pool(self._n_workers, initializer=_worker_init, initargs=(asdict(self.config),))

    # -- over-long handling --------------------------------------------------------------------
    def _examples(self, record: dict, ids: np.ndarray, n_prompt: int) -> list[_Example]:
        cfg, stats = self.config, self.stats
        labels = _labels(ids, n_prompt, cfg.loss)
        n = len(ids)
        if n <= cfg.max_len:
            pieces = [(record["id"], ids, labels)]
        else:
            if cfg.overlong == "drop":
                self._drop_overlong(record, tokens=n)
                return []
            stats.inc("overlong")
            if cfg.overlong == "truncate":
                stats.inc("overlong_truncated")
                pieces = [(record["id"], ids[: cfg.max_len], labels[: cfg.max_len])]
            else:
                stats.inc("overlong_split")
                pieces = [
                    (f"{record['id']}#{k}", ids[s : s + cfg.max_len], labels[s : s + cfg.max_len])
                    for k, s in enumerate(range(0, n, cfg.max_len))
                ]
                stats.inc("split_pieces", len(pieces))
        kept = [_Example(i, x, y) for i, x, y in pieces if (y != IGNORE).any()]
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
        stats, max_len = self.stats, self.config.max_len
        for members in best_fit_decreasing([len(e.ids) for e in examples], max_len):
            exs = [examples[i] for i in members]
            ids = np.concatenate([e.ids for e in exs])
            labels = np.concatenate([e.labels for e in exs])
            pos = np.concatenate([np.arange(len(e.ids), dtype=np.int32) for e in exs])
            n_loss = int((labels != IGNORE).sum())
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
                "seq_lens": [len(e.ids) for e in exs],
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

    def run(self, records: Iterable[dict]) -> Iterator[dict]:
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


def pack_records(
    records: Iterable[dict],
    config: PackConfig,
    stats: Stats | None = None,
    reject: Callable | None = None,
    *,
    tokenizer=None,
) -> Iterator[dict]:
    """Records with prompt/response (and plan) in, packs out (``tokenizer``: an already loaded one)."""
    return Packer(config, stats, reject, tokenizer=tokenizer).run(records)
