"""Tokenizers: loading ``--model``'s, its content fingerprint, and token ids of a format's rendering
in which a record's own text stays text (:class:`RecordTokenizer`).

One home for what ``pack`` (training examples), ``generate`` (the prompt ids it conditions on), the
local engines (:class:`~codeplan_tools.engines.base.PromptTokenizer`) and ``finetune`` (the
fingerprint it checks packs against, the files it copies into an export) must agree on.

- :func:`load_tokenizer`: a missing folder or tokenizer is one line and exit 66 at once (no hub
  retries), a tokenizer with its own code without ``trust_remote_code`` exit 77
  (:mod:`codeplan_tools.engines.model_files`).
- :func:`load_pack_tokenizer`: the same checks; for a folder whose ``tokenizer.json`` transformers
  uses unchanged, a :class:`DirectTokenizer` (``tokenizers`` + jinja2, no transformers import: start-up
  in a fraction of a second), else :func:`load_tokenizer`'s. :func:`render_chat_template` renders a
  chat template as transformers' ``apply_chat_template(..., tokenize=False)`` does.
- :func:`tokenizer_fingerprint`: SHA-256 over the :data:`TOKENIZER_FILES` of a model folder (names and
  bytes; ``finetune`` copies them byte for byte into its export, so an exported model keeps it); for a
  model that is not a local folder, over the loaded tokenizer's serialised form and chat template.
- :func:`read_fingerprint`: the fingerprint ``pack`` wrote into a packs file (tokenizer, format and
  packing settings), read back by ``finetune``.
- :class:`RecordTokenizer`: special-token strings in a record's text (``<|user|>``, ``</s>``) become
  ordinary tokens, the template's own role and end tokens stay special; a record without such strings
  gets exactly ``tokenizer(text)``'s ids.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def tokenizer_fingerprint(model: str | os.PathLike, tokenizer: Any = None) -> str:
    """SHA-256 over the tokenizer files of a model folder (names and bytes).

    For a model that is not a local folder, over the loaded tokenizer's serialised form and chat
    template instead.
    """
    check_model_path(str(model))
    h = hashlib.sha256()
    path = Path(model)
    from codeplan_tools.formats import gguf

    if gguf.is_gguf(path):  # the folder converted from it (cached): the file and the folder agree
        path = gguf.converted_model(path)
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


def load_tokenizer(model: str, trust_remote_code: bool = False) -> Any:
    """The tokenizer of ``--model``: a missing folder or tokenizer -> 66, remote code refused -> 77."""
    from transformers import AutoTokenizer

    from codeplan_tools.engines.model_files import loading, refuse_remote_code, resolve_model

    found = resolve_model(str(model), need="tokenizer")
    refuse_remote_code(found, trust_remote_code)
    with loading(found):
        return AutoTokenizer.from_pretrained(found.path, trust_remote_code=trust_remote_code)


def load_pack_tokenizer(model: str, trust_remote_code: bool = False) -> Any:
    """The tokenizer of ``--model`` as ``pack`` uses it: a :class:`DirectTokenizer` (the ``tokenizers``
    library and jinja2, no ``import transformers``: about 0.4 s instead of 3 to 5 s for Llama-3) when
    the folder is one that transformers loads as is (:func:`direct_tokenizer_files`), else
    :func:`load_tokenizer`'s. Both give the same ids and renderings (``tests/lib/test_pack_identical.py``).
    """
    from codeplan_tools.engines.model_files import refuse_remote_code, resolve_model

    found = resolve_model(str(model), need="tokenizer")
    refuse_remote_code(found, trust_remote_code)
    files = direct_tokenizer_files(Path(found.path)) if found.local else None
    if files is None:
        return load_tokenizer(model, trust_remote_code)
    return DirectTokenizer.from_files(*files)


# The tokenizer classes that transformers builds from tokenizer.json unchanged; the others (LlamaTokenizer,
# Qwen2Tokenizer, ...) rebuild the normaliser, pre-tokenizer or post-processor from their own code.
_GENERIC_CLASSES = (None, "PreTrainedTokenizerFast", "TokenizersBackend")
SPECIAL_TOKEN_ATTRIBUTES = (
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
)


def direct_tokenizer_files(folder: Path) -> tuple[Path, dict, str | None] | None:
    """(tokenizer.json, tokenizer config, chat template) of a folder whose tokenizer transformers builds
    from ``tokenizer.json`` as it is, or None when it would change or extend it (another class, legacy
    ``special_tokens_map.json`` / ``added_tokens.json``, several chat templates, special tokens of the
    config missing from ``tokenizer.json``, no post-processor, ``split_special_tokens`` on, remote code):
    those load through transformers."""
    import json

    tokenizer_file, config_file = folder / "tokenizer.json", folder / "tokenizer_config.json"
    if not tokenizer_file.is_file() or not config_file.is_file():
        return None
    if any(
        (folder / n).exists()
        for n in ("special_tokens_map.json", "added_tokens.json", "additional_chat_templates")
    ):
        return None
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or config.get("tokenizer_class") not in _GENERIC_CLASSES:
        return None
    if config.get("auto_map") or config.get("split_special_tokens") or config.get("fix_mistral_regex"):
        return None
    template_file = folder / "chat_template.jinja"
    template = (
        template_file.read_text(encoding="utf-8") if template_file.is_file() else config.get("chat_template")
    )
    if template is not None and not isinstance(template, str):
        return None  # named templates: transformers picks among them
    return tokenizer_file, config, template


def _token_text(value: Any) -> str | None:
    """A special token of a tokenizer config: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class DirectTokenizer:
    """A ``tokenizer.json`` through the ``tokenizers`` library, with the special tokens and chat template
    of ``tokenizer_config.json``: the part of transformers' tokenizer API that the formats,
    :class:`RecordTokenizer` and ``pack`` use, giving the same results (ids, special tokens, chat
    template rendering: :func:`render_chat_template`) without importing transformers.

    Built by :func:`load_pack_tokenizer` only for folders transformers loads unchanged
    (:func:`direct_tokenizer_files`). Like transformers, truncation and padding of the file are off
    unless asked for, and ``split_special_tokens`` is per call.
    """

    is_fast = True

    def __init__(self, backend: Any, config: dict, chat_template: str | None, name_or_path: str = "") -> None:
        backend.no_truncation()
        backend.no_padding()
        backend.encode_special_tokens = False
        self.backend_tokenizer = backend
        self.name_or_path = name_or_path
        self.chat_template = chat_template
        self.special_tokens_map = {
            attr: text
            for attr in SPECIAL_TOKEN_ATTRIBUTES
            if (text := _token_text(config.get(attr))) is not None
        }
        extra = config.get("extra_special_tokens", config.get("additional_special_tokens")) or []
        self.extra_special_tokens = [t for t in map(_token_text, extra) if t]
        self.all_special_tokens = list(
            dict.fromkeys([*self.special_tokens_map.values(), *self.extra_special_tokens])
        )
        self.added_tokens_decoder = backend.get_added_tokens_decoder()
        self._added_vocab = {t.content: i for i, t in sorted(self.added_tokens_decoder.items())}

    @classmethod
    def from_files(cls, tokenizer_file: Path, config: dict, chat_template: str | None) -> Any:
        """The tokenizer of these files, or transformers' when the config names special tokens that are
        not in ``tokenizer.json`` as special tokens (transformers would add them)."""
        from tokenizers import Tokenizer

        backend = Tokenizer.from_file(str(tokenizer_file))
        if backend.truncation is not None or backend.padding is not None:
            return load_tokenizer(str(tokenizer_file.parent))  # transformers takes settings from them
        tok = cls(backend, config, chat_template, str(tokenizer_file.parent))
        specials = {t.content for t in tok.added_tokens_decoder.values() if t.special}
        declared = config.get("added_tokens_decoder") or {}
        same_added = all(
            int(i) in tok.added_tokens_decoder
            and tok.added_tokens_decoder[int(i)].content == t.get("content")
            and tok.added_tokens_decoder[int(i)].special == bool(t.get("special"))
            for i, t in declared.items()
        )
        if not same_added or not set(tok.all_special_tokens) <= specials or backend.post_processor is None:
            return load_tokenizer(str(tokenizer_file.parent))
        return tok

    def __getattr__(self, name: str) -> Any:
        # bos_token, eos_token, ...: None when the config names none, as in transformers.
        if name in SPECIAL_TOKEN_ATTRIBUTES:
            return self.__dict__.get("special_tokens_map", {}).get(name)
        raise AttributeError(name)

    def get_vocab(self) -> dict[str, int]:
        return self.backend_tokenizer.get_vocab(with_added_tokens=True)

    def get_added_vocab(self) -> dict[str, int]:
        return dict(self._added_vocab)

    def __call__(
        self, text: str | list[str], add_special_tokens: bool = True, split_special_tokens: bool = False
    ) -> dict[str, Any]:
        """``{"input_ids": ...}`` of a text or a list of texts, as transformers' ``tokenizer(text)``."""
        backend = self.backend_tokenizer
        backend.encode_special_tokens = split_special_tokens
        try:
            texts = [text] if isinstance(text, str) else list(text)
            ids = [e.ids for e in backend.encode_batch(texts, add_special_tokens=add_special_tokens)]
        finally:
            backend.encode_special_tokens = False
        return {"input_ids": ids[0] if isinstance(text, str) else ids}

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self(text, add_special_tokens=add_special_tokens)["input_ids"]

    def apply_chat_template(
        self,
        conversation: list[dict],
        tokenize: bool = False,
        add_generation_prompt: bool = False,
        **kwargs: Any,
    ) -> str:
        """The text of ``conversation`` in the chat template (``tokenize=False`` only)."""
        if tokenize:
            raise NotImplementedError(
                "DirectTokenizer.apply_chat_template renders text only (tokenize=False)"
            )
        if not self.chat_template:
            raise ValueError("the tokenizer has no chat template")
        # As transformers: the caller's variables override the special tokens of the same name.
        variables: dict[str, Any] = {**self.special_tokens_map, **kwargs}
        return render_chat_template(
            self.chat_template, conversation, add_generation_prompt=add_generation_prompt, **variables
        )


def render_chat_template(
    template: str,
    messages: list[dict],
    *,
    add_generation_prompt: bool = False,
    tools: list[dict] | None = None,
    documents: list[dict] | None = None,
    **variables: Any,
) -> str:
    """``messages`` rendered by the jinja ``template`` as transformers' ``apply_chat_template(...,
    tokenize=False)`` renders them: the same sandboxed environment (``trim_blocks``, ``lstrip_blocks``,
    loop controls, a ``{% generation %}`` block), ``tojson`` without HTML escaping, ``raise_exception``
    and ``strftime_now``, and the same variables (``variables``: the special tokens, then the caller's).

    What ``Template.render(**variables)`` does, with the template's globals copied into a dict once
    (jinja2 reads its ``ChainMap`` of them for every render: about half the time of a short one)."""
    compiled = _compiled_template(template)
    env = compiled.environment
    # As jinja2's new_context: the globals, then the variables over them.
    parent = {
        **_template_globals(compiled),
        "messages": messages,
        "tools": tools,
        "documents": documents,
        "add_generation_prompt": add_generation_prompt,
        **variables,
    }
    context = env.context_class(env, parent, compiled.name, compiled.blocks, globals=compiled.globals)
    try:
        return env.concat(compiled.root_render_func(context))
    except Exception:
        env.handle_exception()  # raises it, with the template's lines in the traceback (as render does)
        raise


@functools.lru_cache(maxsize=16)
def _template_globals(compiled: Any) -> dict[str, Any]:
    """The globals of a template of :func:`_compiled_template` (whose environment's globals are set once,
    when it is made), as one dict."""
    return dict(compiled.globals)


@functools.lru_cache(maxsize=16)
def _compiled_template(template: str) -> Any:
    import json
    from datetime import datetime

    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(jinja2.ext.Extension):
        """``{% generation %}...{% endgeneration %}``: transformers marks assistant text with it; its
        body renders as it is."""

        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    def raise_exception(message: str) -> None:
        raise jinja2.exceptions.TemplateError(message)

    def tojson(
        x: Any,
        ensure_ascii: bool = False,
        indent: Any = None,
        separators: Any = None,
        sort_keys: bool = False,
    ) -> str:
        return json.dumps(
            x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
        )

    def strftime_now(format: str) -> str:
        return datetime.now().strftime(format)

    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env.from_string(template)


def read_fingerprint(path: str) -> dict | None:
    """The fingerprint of the first pack in ``path`` (None for an empty file): what ``finetune``
    checks against its model's :func:`tokenizer_fingerprint`."""
    import orjson

    from codeplan_tools.core.streams import iter_lines

    for _name, _lineno, line in iter_lines([path]):
        rec = orjson.loads(line)
        return rec.get("fingerprint") if isinstance(rec, dict) else None
    return None


def chars_per_token_bound(tokenizer: Any) -> int:
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

    def __init__(self, tokenizer: Any, fmt: Any) -> None:
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
