"""Engine options shared by ``extract`` and ``generate``: ``EngineSpec``'s fields and ``SamplingConfig``'s,
and the one way both run their stage (``EngineOptions.run``).

Help, choices and defaults are the library fields'; only spellings, metavars and bounds are here.
"""

from __future__ import annotations

from typing import Any

from codeplan_cli import options as o
from codeplan_tools.engines.spec import EngineSpec, SamplingConfig

Flag = o.Flag
Model = o.option(EngineSpec, "model", Flag("-m", "--model", metavar="PATH|NAME"))

EngineBundle = o.bundle(
    "EngineBundle",
    (EngineSpec, "engine dtype tensor_parallel_size base_url api_key_env concurrency request_timeout"),
    (EngineSpec, "max_retries max_model_len batch_size"),
    (SamplingConfig, "chunk_size"),
    (EngineSpec, "enforce_eager gpu_memory_utilization trust_remote_code tokenizer"),
    (SamplingConfig, "temperature top_p max_tokens seed"),
    flags={
        "tensor_parallel_size": Flag("--tensor-parallel-size", "--tp", min=1, metavar="N"),
        "base_url": Flag(metavar="URL"),
        "api_key_env": Flag(metavar="VAR"),
        "concurrency": Flag(min=1, metavar="N"),
        "request_timeout": Flag(min=0.001, metavar="SECONDS"),
        "max_retries": Flag(min=0, metavar="N"),
        "max_model_len": Flag(min=2, metavar="TOKENS"),
        "batch_size": Flag(min=1, metavar="N"),
        "chunk_size": Flag(min=1, metavar="N"),
        "gpu_memory_utilization": Flag(min=0.01, max=1.0, metavar="FRACTION"),
        "tokenizer": Flag(metavar="PATH"),
        "temperature": Flag("-t", "--temperature", min=0.0),
        "top_p": Flag(min=0.0, max=1.0),
        "max_tokens": Flag(min=1, metavar="N"),
    },
)


class EngineOptions(EngineBundle):
    """The engine and sampling options of ``extract`` and ``generate`` (expanded by ``with_options``)."""

    def spec(self, model: str) -> EngineSpec:
        """The ``EngineSpec`` that loads ``model`` with these options."""
        return EngineSpec(model=model, **self.of(EngineSpec))

    def sampling(self) -> dict[str, Any]:
        """temperature, top_p, max_tokens, seed and chunk_size: the config fields every engine stage has."""
        return self.of(SamplingConfig)

    def run(self, stage_class: type, config: Any, model: str, io: o.StreamOptions) -> None:
        """Run the engine stage ``stage_class(config, spec)`` over ``io``, resuming by the config's
        settings, and print the summary. The stage checks the model when it is made: before any
        input is read."""
        from codeplan_tools.core.stage import run_stage

        spec = self.spec(model)
        stage = stage_class(config, spec)
        stage_io = io.stage_io(stage.name, require=stage.require, resume_settings=config.settings(spec))
        o.print_summary(run_stage(stage_io, stage), io.quiet)
