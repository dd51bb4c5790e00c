"""Engine options shared by ``extract`` and ``generate``, declared once so help and defaults agree."""

from __future__ import annotations

import dataclasses
import math
from enum import Enum
from typing import Annotated

import click
import typer

ENGINE_PANEL = "Engine"
SAMPLING_PANEL = "Sampling"


class FiniteFloat(click.FloatRange):
    """A float option that refuses ``nan`` and ``inf`` (exit 2), optionally within ``min``/``max``.

    click's FloatRange lets ``nan`` through every bound (comparisons with nan are false). Use it for
    every float option: ``typer.Option("--x", click_type=FiniteFloat(min=0.0))``.
    """

    name = "float"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number


class EngineName(str, Enum):
    auto = "auto"
    vllm = "vllm"
    hf = "hf"
    openai = "openai"


class DType(str, Enum):
    auto = "auto"
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


def _opt(*names: str, panel: str = ENGINE_PANEL, **kw):
    return typer.Option(*names, rich_help_panel=panel, **kw)


Engine = Annotated[
    EngineName,
    _opt(
        "--engine",
        case_sensitive=False,
        help="auto: vllm when it is installed and a GPU is present, else hf (transformers). "
        "openai: an OpenAI-compatible server at --base-url (e.g. vllm serve).",
    ),
]
Model = Annotated[
    str,
    _opt(
        "-m",
        "--model",
        metavar="PATH|NAME",
        help="Model folder, or a Hugging Face hub id (used from the local cache when it is there; else "
        "looked up once, so a missing model fails in seconds). With --engine openai: the served model's name.",
    ),
]
Dtype = Annotated[
    DType,
    _opt(
        "--dtype",
        case_sensitive=False,
        help="Weights dtype. auto: the engine's choice (hf: fp32 on CPU, bf16 on GPU; vllm: bf16 on CPU). "
        "Use float32 to compare engines token for token.",
    ),
]
TensorParallel = Annotated[
    int | None, _opt("--tensor-parallel-size", "--tp", min=1, metavar="N", help="GPUs per model (vllm).")
]
BaseUrl = Annotated[
    str | None,
    _opt("--base-url", metavar="URL", help="Server of --engine openai, e.g. http://127.0.0.1:8000/v1."),
]
ApiKeyEnv = Annotated[
    str,
    _opt(
        "--api-key-env",
        metavar="VAR",
        help="Environment variable holding the API key (openai). The key is never logged or written.",
    ),
]
Concurrency = Annotated[
    int | None, _opt("--concurrency", min=1, metavar="N", help="Requests in flight at once (openai).")
]
RequestTimeout = Annotated[
    float,
    _opt(
        "--request-timeout",
        click_type=FiniteFloat(min=0.001),
        metavar="SECONDS",
        help="openai: how long to wait for the server to connect and for each read of its answer; "
        "then the request is retried.",
    ),
]
MaxRetries = Annotated[
    int,
    _opt(
        "--max-retries",
        min=0,
        metavar="N",
        help="openai: retries of a request that failed (connection, timeout, 429/5xx) or got a malformed "
        "answer, with exponential backoff. A server still failing ends the run (exit 69); a malformed "
        "answer rejects the record with the reason.",
    ),
]
MaxModelLen = Annotated[
    int | None,
    _opt(
        "--max-model-len",
        min=2,
        metavar="TOKENS",
        help="Context length; a record whose prompt does not fit is rejected with its reason. "
        "[default: the model's]",
    ),
]
BatchSize = Annotated[
    int | None,
    _opt("--batch-size", min=1, metavar="N", help="Sequences per forward batch (hf). [default: 32]"),
]
ChunkSize = Annotated[
    int | None,
    _opt(
        "--chunk-size",
        min=1,
        metavar="N",
        help="Records handed to the engine at a time; the output is flushed after each chunk. "
        "[default: 4096 for vllm, 1024 for hf, 256 for openai]",
    ),
]
EnforceEager = Annotated[
    bool,
    _opt("--enforce-eager", help="vllm: no graph capture or compilation (starts faster, decodes slower)."),
]
GpuMemoryUtilization = Annotated[
    float | None,
    _opt(
        "--gpu-memory-utilization",
        click_type=FiniteFloat(min=0.01, max=1.0),
        metavar="FRACTION",
        help="vllm: share of GPU memory it may take. [default: vllm's]",
    ),
]
TrustRemoteCode = Annotated[
    bool,
    _opt("--trust-remote-code", help="Allow the model folder's own Python code to run (off by default)."),
]
Tokenizer = Annotated[
    str | None,
    _opt(
        "--tokenizer",
        metavar="PATH",
        help="Tokenizer folder, if not the model's (needed for formats with openai).",
    ),
]
Temperature = Annotated[
    float,
    _opt(
        "-t",
        "--temperature",
        click_type=FiniteFloat(min=0.0),
        panel=SAMPLING_PANEL,
        help="0 is greedy decoding.",
    ),
]
TopP = Annotated[
    float,
    _opt(
        "--top-p",
        click_type=FiniteFloat(min=0.0, max=1.0),
        panel=SAMPLING_PANEL,
        help="Nucleus sampling mass.",
    ),
]
MaxTokens = Annotated[
    int,
    _opt("--max-tokens", min=1, metavar="N", panel=SAMPLING_PANEL, help="Most tokens generated per sample."),
]
Seed = Annotated[
    int,
    _opt(
        "--seed",
        panel=SAMPLING_PANEL,
        help="Global seed; each record's seed is derived from it and the record id, and recorded.",
    ),
]


@dataclasses.dataclass(frozen=True)
class EngineOptions:
    """The engine and sampling options of ``extract`` and ``generate`` (expanded by ``with_options``)."""

    engine: Engine = EngineName.auto
    dtype: Dtype = DType.auto
    tensor_parallel_size: TensorParallel = None
    base_url: BaseUrl = None
    api_key_env: ApiKeyEnv = "OPENAI_API_KEY"
    concurrency: Concurrency = None
    request_timeout: RequestTimeout = 120.0
    max_retries: MaxRetries = 6
    max_model_len: MaxModelLen = None
    batch_size: BatchSize = None
    chunk_size: ChunkSize = None
    enforce_eager: EnforceEager = False
    gpu_memory_utilization: GpuMemoryUtilization = None
    trust_remote_code: TrustRemoteCode = False
    tokenizer: Tokenizer = None
    temperature: Temperature = 0.0
    top_p: TopP = 1.0
    max_tokens: MaxTokens = 512
    seed: Seed = 0

    def spec(self, model: str):
        """The ``EngineSpec`` that loads ``model`` with these options."""
        from codeplan_tools.stages.generate import EngineSpec

        return EngineSpec(
            model=model,
            engine=self.engine.value,
            dtype=None if self.dtype is DType.auto else self.dtype.value,
            tensor_parallel_size=self.tensor_parallel_size,
            base_url=self.base_url,
            api_key_env=self.api_key_env,
            concurrency=self.concurrency,
            request_timeout=self.request_timeout,
            max_retries=self.max_retries,
            max_model_len=self.max_model_len,
            batch_size=self.batch_size,
            trust_remote_code=self.trust_remote_code,
            tokenizer=self.tokenizer,
            enforce_eager=self.enforce_eager,
            gpu_memory_utilization=self.gpu_memory_utilization,
        )

    def sampling(self) -> dict:
        """temperature, top_p, max_tokens, seed and chunk_size: the config fields every engine stage has."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
            "chunk_size": self.chunk_size,
        }
