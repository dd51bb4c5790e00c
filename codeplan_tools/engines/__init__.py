"""Engine registry.

Built-in engines register through the same :func:`register` decorator as any other. Their modules
are imported only when asked for, and each imports its heavy library (vllm, torch, transformers)
inside its constructor, raising :class:`~codeplan_tools.core.errors.MissingDependency` naming the extra.

``get_engine("auto", model)`` picks ``vllm`` when it is importable and a GPU is present, else ``hf``.
Finding a ``--model`` (local folder or hub id), refusing remote code, and the model's content
identity for resume keys live in :mod:`codeplan_tools.engines.model_files`.

From Python, :func:`load_engine` builds an engine the way the CLI does (from an
:class:`~codeplan_tools.engines.spec.EngineSpec`: the model checked, its errors one line)::

    spec = EngineSpec(model="ckpt/", engine="hf", max_model_len=2048)
    engine = load_engine(spec)  # or load_engine("ckpt/", engine="hf", max_model_len=2048)
    answers = generate_records(questions, GenerateConfig(n=4), spec, engine=engine)

The loop that stages run around an engine is :mod:`codeplan_tools.engines.runner`.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import Any

from codeplan_tools.core.errors import UsageError
from codeplan_tools.engines.base import (
    FINISH_LENGTH,
    FINISH_STOP,
    Completion,
    Engine,
    Request,
    Result,
    sample_seed,
)
from codeplan_tools.engines.spec import EngineSpec

__all__ = [
    "FINISH_LENGTH",
    "FINISH_STOP",
    "Completion",
    "Engine",
    "EngineSpec",
    "Request",
    "Result",
    "available_engines",
    "default_engine_name",
    "get_engine",
    "load_engine",
    "register",
    "sample_seed",
]

_REGISTRY: dict[str, Callable[..., Engine]] = {}
# Built-ins: name -> module that registers it on import.
_BUILTIN = {
    "vllm": "codeplan_tools.engines.vllm",
    "hf": "codeplan_tools.engines.hf",
    "openai": "codeplan_tools.engines.openai_compat",
}


def register(name: str):
    """Class decorator: ``@register("hf")``; the class is built as ``cls(model, **options)``."""

    def deco(factory):
        _REGISTRY[name] = factory
        return factory

    return deco


def available_engines() -> list[str]:
    """Names accepted by :func:`get_engine` (besides ``auto``)."""
    return sorted(set(_REGISTRY) | set(_BUILTIN))


def default_engine_name() -> str:
    """``vllm`` when it is importable and a GPU is present, else ``hf``."""
    if importlib.util.find_spec("vllm") is not None:
        try:
            import torch

            if torch.cuda.is_available():
                return "vllm"
        except ImportError:
            pass
    return "hf"


def get_engine(name: str, model: str, **options) -> Engine:
    """Build engine ``name`` (or ``auto``) for ``model``; options go to the engine's constructor."""
    if name == "auto":
        name = default_engine_name()
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    if name not in _REGISTRY:
        raise UsageError(f"unknown engine {name!r}; choose one of: auto, {', '.join(available_engines())}")
    return _REGISTRY[name](model, **options)


def load_engine(spec_or_model: EngineSpec | str, **settings: Any) -> Engine:
    """Build an engine from Python: an :class:`EngineSpec`, or a model (folder, hub id, or a served
    model's name) with ``EngineSpec``'s fields as keywords (``engine="hf"``, ``max_model_len=2048``).
    The model is checked first: one-line errors, as on the command line (``EngineSpec.build``)."""
    if isinstance(spec_or_model, EngineSpec):
        if settings:
            raise TypeError("load_engine(spec) takes no further settings: put them in the EngineSpec")
        spec = spec_or_model
    else:
        spec = EngineSpec(model=spec_or_model, **settings)
    return spec.build()
