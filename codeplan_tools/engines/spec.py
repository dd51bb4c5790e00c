"""Which engine and model a stage runs, and how: :class:`EngineSpec`, the one description of an engine
that ``extract`` and ``generate`` take (and the CLI's engine options fill), and
:class:`SamplingConfig`, the sampling settings of every engine stage. This module imports only
``core.errors`` at load, so the CLI can build its options from both without loading the stage
machinery (``engines.runner`` re-exports ``SamplingConfig``).

The spec is checked and built lazily, so a run checks its outputs and resume state before any model
is loaded, and a run with nothing left to do never loads one:

- :meth:`EngineSpec.check` fails at once, with one line, on a model (or ``--tokenizer``) that cannot
  be found (66) or that needs its own code without ``trust_remote_code`` (77)
  (:mod:`codeplan_tools.engines.model_files`).
- :meth:`EngineSpec.identity` is the engine's part of a stage's resume key: a local model is keyed on
  its content fingerprint alone (``ckpt``, ``ckpt/`` and ``/abs/ckpt`` resume each other, a renamed copy
  resumes, a re-exported ``ckpt/`` is refused); a served model on its name (and ``--tokenizer``'s
  fingerprint when given). :meth:`EngineSpec.meta` keeps the model as given, for provenance.
- :meth:`EngineSpec.build` loads the engine. A built-in engine gets each option it takes
  (``ENGINE_OPTIONS``), whose defaults here are the engine's own; an engine registered under another
  name gets only the options set away from their defaults, plus ``options``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from codeplan_tools.core.errors import InputMissing, UsageError

if TYPE_CHECKING:
    from codeplan_tools.engines.base import Engine
    from codeplan_tools.engines.model_files import ModelSource

EngineName = Literal["auto", "vllm", "hf", "openai"]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]

# Which EngineSpec fields each built-in engine's constructor takes (others do not apply to it).
ENGINE_OPTIONS: dict[str, tuple[str, ...]] = {
    "hf": ("dtype", "max_model_len", "batch_size", "trust_remote_code", "tokenizer"),
    "vllm": (
        "dtype",
        "max_model_len",
        "tensor_parallel_size",
        "trust_remote_code",
        "tokenizer",
        "enforce_eager",
        "gpu_memory_utilization",
    ),
    "openai": ("base_url", "api_key_env", "concurrency", "request_timeout", "max_retries"),
}
# Fields whose False is a choice (--no-enforce-eager), not "unset" (None is).
EXPLICIT_FALSE = frozenset({"enforce_eager"})
ENGINE_FIELDS = sorted({key for keys in ENGINE_OPTIONS.values() for key in keys})
# Engines that load the model from a local folder (or the hub); others get the name as it is.
LOCAL_ENGINES = ("hf", "vllm")


@dataclass(kw_only=True)
class SamplingConfig:
    """The sampling settings every engine stage has (``GenerateConfig`` and ``ExtractConfig`` extend it)."""

    temperature: float = 0.0
    """0 is greedy decoding."""
    top_p: float = 1.0
    """Nucleus sampling mass."""
    max_tokens: int = 512
    """Most tokens generated per sample."""
    seed: int = 0
    """Global seed; each record's seed is derived from it and the record id, and recorded."""
    chunk_size: int | None = None
    """Records handed to the engine at a time; the output is flushed after each chunk. [default: 4096
    for vllm, 1024 for hf, 256 for openai]"""

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise UsageError("--max-tokens must be at least 1")
        check_sampling(self.temperature, self.top_p)


def check_sampling(temperature: float, top_p: float) -> None:
    """The sampling settings every engine stage shares: finite, temperature >= 0, 0 < top_p <= 1."""
    if not (math.isfinite(temperature) and math.isfinite(top_p)):
        raise UsageError("--temperature and --top-p must be finite numbers (not nan or inf)")
    if temperature < 0 or not 0 < top_p <= 1:
        raise UsageError("need --temperature >= 0 and 0 < --top-p <= 1")


@dataclass(kw_only=True)
class EngineSpec:
    """Which engine and model to run, and how; built lazily so resume checks happen before loading."""

    model: str
    """Model folder, or a Hugging Face hub id (used from the local cache when it is there; else looked
    up once, so a missing model fails in seconds). With --engine openai: the served model's name."""
    engine: EngineName = "auto"
    """auto: vllm when it is installed and a GPU is present, else hf (transformers). openai: an
    OpenAI-compatible server at --base-url (e.g. vllm serve)."""
    dtype: Dtype = "auto"
    """Weights dtype. auto: the engine's choice (hf: fp32 on CPU, bf16 on GPU; vllm: bf16 on CPU). Use
    float32 to compare engines token for token."""
    tensor_parallel_size: int | None = None
    """GPUs per model (vllm)."""
    base_url: str | None = None
    """Server of --engine openai, e.g. http://127.0.0.1:8000/v1."""
    api_key_env: str = "OPENAI_API_KEY"
    """Environment variable holding the API key (openai). The key is never logged or written."""
    concurrency: int | None = None
    """Requests in flight at once (openai)."""
    request_timeout: float = 120.0
    """openai: how long to wait for the server to connect and for each read of its answer; then the
    request is retried."""
    max_retries: int = 6
    """openai: retries of a request that failed (connection, timeout, 429/5xx) or got a malformed
    answer, with exponential backoff. A server still failing ends the run (exit 69); a malformed
    answer rejects the record with the reason."""
    max_model_len: int | None = None
    """Context length; a record whose prompt does not fit is rejected with its reason. [default: the
    model's]"""
    batch_size: int | None = None
    """Sequences per forward batch (hf). [default: 32]"""
    enforce_eager: bool | None = None
    """vllm: no graph capture or compilation (on CPU: starts ~3x faster, decodes ~1.1x slower).
    [default: on for CPU, the faster total up to ~950 prompts; vllm's (off) for GPU]"""
    gpu_memory_utilization: float | None = None
    """vllm: share of GPU memory it may take. [default: vllm's]"""
    trust_remote_code: bool = False
    """Allow the model folder's own Python code to run (off by default)."""
    tokenizer: str | None = None
    """Tokenizer folder, if not the model's (needed for formats with openai)."""
    options: dict[str, Any] = field(default_factory=dict)
    """Extra constructor options passed to the engine as they are (library use)."""
    _sources: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def resolved_engine(self) -> str:
        """The engine's name, ``auto`` resolved (:func:`~codeplan_tools.engines.default_engine_name`)."""
        if self.engine == "auto":
            from codeplan_tools.engines import default_engine_name

            return default_engine_name()
        return self.engine

    def source(self, role: str = "model", strict: bool = True) -> ModelSource:
        """Where the model (``role="model"``) or ``--tokenizer`` (``"tokenizer"``) is loaded from, and
        its content identity (:mod:`codeplan_tools.engines.model_files`); ``strict`` raises the
        one-line error of a model that cannot be found."""
        from codeplan_tools.engines.model_files import resolve_model

        cached = self._sources.get(role)
        if cached is not None and (cached[1] or not strict):
            return cached[0]
        if role == "model":
            need = "weights" if self.tokenizer else "model"  # --tokenizer: the folder may have none
            found = resolve_model(self.model, need=need, strict=strict)
        else:
            assert self.tokenizer is not None
            found = resolve_model(self.tokenizer, need="tokenizer", option="--tokenizer", strict=strict)
        self._sources[role] = (found, strict)
        return found

    def check(self, local_tokenizer: bool = False) -> None:
        """Fail now, with one line, on a model (or tokenizer) that cannot be found or is refused,
        before any input is read. ``local_tokenizer``: prompts are rendered here (formats), so an
        HTTP engine needs a tokenizer on this machine too."""
        from codeplan_tools.engines.model_files import refuse_remote_code

        if self.resolved_engine() in LOCAL_ENGINES:
            refuse_remote_code(self.source("model"), self.trust_remote_code)
        if self.tokenizer:
            refuse_remote_code(self.source("tokenizer"), self.trust_remote_code, "--tokenizer")
        elif local_tokenizer and self.resolved_engine() not in LOCAL_ENGINES:
            self.tokenizer_source()

    def tokenizer_source(self) -> ModelSource:
        """The source of the tokenizer that renders prompts here: ``--tokenizer``, else the model."""
        from codeplan_tools.engines.model_files import refuse_remote_code, resolve_model

        if self.tokenizer:
            found, option = self.source("tokenizer"), "--tokenizer"
        else:
            option = "--model"
            try:
                found = resolve_model(self.model, need="tokenizer")
            except InputMissing as exc:
                raise InputMissing(f"{exc}; formats render prompts locally: pass --tokenizer DIR") from exc
        refuse_remote_code(found, self.trust_remote_code, option)
        return found

    def identity(self) -> dict[str, Any]:
        """What about the engine determines the output: the resume key's part. A local model is
        keyed on its content fingerprint alone (not its path, not its folder's name: a renamed or
        moved copy is the same model); ``meta()`` keeps the path as given, for provenance."""
        name = self.resolved_engine()
        ident: dict[str, Any] = {
            "engine": name,
            "model": self.model,
            "dtype": self.dtype or "auto",
            "max_model_len": self.max_model_len,
        }
        if name in LOCAL_ENGINES:
            found = self.source("model", strict=False)
            del ident["model"]
            ident["model_fingerprint"] = found.identity
        if self.tokenizer:
            ident["tokenizer_fingerprint"] = self.source("tokenizer", strict=False).identity
        return ident

    def meta(self) -> dict[str, Any]:
        """``identity()`` with the model as given (provenance in ``meta.<stage>``)."""
        return {**self.identity(), "model": self.model}

    def engine_options(self, name: str) -> dict[str, Any]:
        """The constructor options of engine ``name``: those of its fields it takes that are set (not
        None, nor False except in ``EXPLICIT_FALSE``), or for an engine that is not built in, those set away from their defaults;
        then ``options``."""
        wanted = ENGINE_OPTIONS.get(name)
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        opts: dict[str, Any] = {}
        for key in ENGINE_FIELDS:
            value = getattr(self, key)
            if value is None or (value is False and key not in EXPLICIT_FALSE):
                continue  # unset
            if wanted is not None and key not in wanted:
                continue  # not an option of this engine
            if wanted is None and value == defaults[key]:
                continue  # a registered engine keeps its own default
            opts[key] = value
        opts.update(self.options)
        return opts

    def build(self) -> Engine:
        """The engine, loaded; what the loaders raise about the model becomes one line."""
        from codeplan_tools.engines import get_engine
        from codeplan_tools.engines.model_files import loading

        name = self.resolved_engine()
        opts = self.engine_options(name)
        if name not in LOCAL_ENGINES:
            return get_engine(name, self.model, **opts)
        self.check()
        found = self.source("model")
        if self.tokenizer:
            opts["tokenizer"] = self.source("tokenizer").path
        with loading(found):
            return get_engine(name, found.path, **opts)


def engine_tokenizer(engine: Engine, spec: EngineSpec) -> Any:
    """The tokenizer the engine uses, or one loaded from ``spec.tokenizer`` / the model folder."""
    tok = getattr(engine, "tokenizer", None)
    if tok is not None:
        return tok
    from transformers import AutoTokenizer

    from codeplan_tools.engines.model_files import loading

    found = spec.tokenizer_source()
    with loading(found, "--tokenizer" if spec.tokenizer else "--model"):
        return AutoTokenizer.from_pretrained(found.path, trust_remote_code=spec.trust_remote_code)
