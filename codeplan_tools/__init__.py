"""codeplan_tools: the library behind the ``codeplan`` command (CodePlan, ICLR 2025).

Every subcommand has a twin here: records (dicts) in, records out, a config dataclass for the
settings and a :class:`StageContext` that keeps the counters and rejects::

    from codeplan_tools import FilterConfig, StageContext, filter_records

    ctx = StageContext("filter")
    kept = list(filter_records(records, FilterConfig(), ctx))
    print(ctx.stats.counters, len(ctx.rejected))

The names below are loaded on first use, so ``import codeplan_tools`` does not import torch.
See ARCHITECTURE.md for the map of the package.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> module that defines it
_PUBLIC = {
    # the stage contract
    "StageContext": "codeplan_tools.core.stage",
    "MemoryContext": "codeplan_tools.core.stage",
    "StageIO": "codeplan_tools.core.stage",
    "Stage": "codeplan_tools.core.stage",
    "PerRecordStage": "codeplan_tools.core.stage",
    "run_stage": "codeplan_tools.core.stage",
    "read_records": "codeplan_tools.core.streams",
    "RecordWriter": "codeplan_tools.core.streams",
    "Stats": "codeplan_tools.core.stats",
    "CodeplanError": "codeplan_tools.core.errors",
    # the stages
    "extract_records": "codeplan_tools.stages.extract",
    "ExtractConfig": "codeplan_tools.stages.extract",
    "ExtractStage": "codeplan_tools.stages.extract",
    "filter_records": "codeplan_tools.stages.filter",
    "FilterConfig": "codeplan_tools.stages.filter",
    "FilterStage": "codeplan_tools.stages.filter",
    "generate_records": "codeplan_tools.stages.generate",
    "GenerateConfig": "codeplan_tools.stages.generate",
    "GenerateStage": "codeplan_tools.stages.generate",
    "pack_records": "codeplan_tools.stages.pack",
    "PackConfig": "codeplan_tools.stages.pack",
    "PackStage": "codeplan_tools.stages.pack",
    "score_records": "codeplan_tools.stages.score",
    "ScoreConfig": "codeplan_tools.stages.score",
    "ScoreStage": "codeplan_tools.stages.score",
    "compare_runs": "codeplan_tools.stages.score",
    "Comparison": "codeplan_tools.eval.report",
    "synth_records": "codeplan_tools.stages.synth",
    "SynthConfig": "codeplan_tools.stages.synth",
    # formats, engines, training
    "get_format": "codeplan_tools.formats",
    "EngineSpec": "codeplan_tools.engines.spec",
    "load_engine": "codeplan_tools.engines",
    "FinetuneConfig": "codeplan_tools.trainer.config",
    "finetune": "codeplan_tools.trainer.loop",
    "init_model": "codeplan_tools.tools.init_model",
}
_RENAMED = {"finetune": "run"}  # the trainer's entry point is `loop.run`

__all__ = [
    "__version__",
    "StageContext",
    "MemoryContext",
    "StageIO",
    "Stage",
    "PerRecordStage",
    "run_stage",
    "read_records",
    "RecordWriter",
    "Stats",
    "CodeplanError",
    "extract_records",
    "ExtractConfig",
    "ExtractStage",
    "filter_records",
    "FilterConfig",
    "FilterStage",
    "generate_records",
    "GenerateConfig",
    "GenerateStage",
    "pack_records",
    "PackConfig",
    "PackStage",
    "score_records",
    "ScoreConfig",
    "ScoreStage",
    "compare_runs",
    "Comparison",
    "synth_records",
    "SynthConfig",
    "get_format",
    "EngineSpec",
    "load_engine",
    "FinetuneConfig",
    "finetune",
    "init_model",
]

if TYPE_CHECKING:  # the same names, for type checkers and editors
    from codeplan_tools.core.errors import CodeplanError
    from codeplan_tools.core.stage import (
        MemoryContext,
        PerRecordStage,
        Stage,
        StageContext,
        StageIO,
        run_stage,
    )
    from codeplan_tools.core.stats import Stats
    from codeplan_tools.core.streams import RecordWriter, read_records
    from codeplan_tools.engines import load_engine
    from codeplan_tools.engines.spec import EngineSpec
    from codeplan_tools.eval.report import Comparison
    from codeplan_tools.formats import get_format
    from codeplan_tools.stages.extract import ExtractConfig, ExtractStage, extract_records
    from codeplan_tools.stages.filter import FilterConfig, FilterStage, filter_records
    from codeplan_tools.stages.generate import GenerateConfig, GenerateStage, generate_records
    from codeplan_tools.stages.pack import PackConfig, PackStage, pack_records
    from codeplan_tools.stages.score import ScoreConfig, ScoreStage, compare_runs, score_records
    from codeplan_tools.stages.synth import SynthConfig, synth_records
    from codeplan_tools.tools.init_model import init_model
    from codeplan_tools.trainer.config import FinetuneConfig
    from codeplan_tools.trainer.loop import run as finetune


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'codeplan_tools' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), _RENAMED.get(name, name))
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
