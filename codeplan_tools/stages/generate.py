"""``generate``: sample answers (plan + response) for question records, and the engine plumbing
``extract`` shares.

Two ways to prompt (SPEC §6):

- **Formats** for fine-tuned models (``codeplan``, ``vanilla``, ``nlplan``): the prompt is rendered by
  :mod:`codeplan_tools.formats` exactly as ``pack`` rendered it for training, generation stops on the
  format's end marker, and each sample is parsed back into ``plan`` and ``response`` by the same format.
- **Prompting modes** for instruct models, sent as one chat user turn (the engine applies the chat
  template): ``direct`` (the question alone), ``cot`` (Kojima et al.'s "Let's think step by step."),
  ``plan-and-solve`` (Wang et al. 2023's PS trigger) and ``code-plan`` (asks for a pseudo-Python plan in a
  code block, then the answer; the plan and response are parsed out). When the tasks registry offers an
  answer-format instruction for the record's ``task`` it is added before the trigger.

``given_plan`` conditions on the record's own ``plan`` (plan studies): with ``codeplan``/``nlplan`` the
model continues after the rendered plan section and writes the response only; with ``code-plan``
prompting the plan is put in the user turn. Each sample's ``plan`` is then the given plan.

Prompt tokens. With an engine that tokenizes locally (``hf``, ``vllm``) a format prompt gets exactly the
ids of the prompt of the training example ``pack`` makes of the record
(:class:`~codeplan_tools.stages.pack.RecordTokenizer`): a special-token string in the record's text
(``<|user|>``, ``</s>``) stays text, not a control token. Only such a record is tokenized here, one
by one; an ordinary prompt goes to the engine as text, tokenized there in batches with the same ids.
A plan-conditioned prompt (``given_plan``) is the prompt's ids followed by the plan section's,
tokenized apart as ``pack`` tokenizes prompt and target (tokenizing the two as one text can merge
tokens across the junction that training never saw). A record whose special-token string cannot be
located in the rendering (a chat template that changes the text) is rejected ``special-token-text``,
as ``pack`` rejects it. The prompting modes' user turn is tokenized by the engine with the same rule
(:class:`~codeplan_tools.engines.base.PromptTokenizer`). The ``openai`` engine sends text: the server
tokenizes it, special-token strings included.

Every record gets a seed ``derive_seed(seed, id)``; sample ``j`` is drawn with the engine's
``sample_seed(record seed, j)`` and records it, so one sample can be reproduced alone. Each output record
has ``samples`` (one per sample: ``text``, ``plan``, ``response``, ``finish_reason``, ``tokens_out``,
``seed``) and ``meta.generate`` (model, engine, format or mode, sampling parameters, seeds, token counts).

Records go to the engine in chunks (``chunk_size``; thousands for vLLM); the output is flushed after
each chunk, and rows the engine cannot take (prompt longer than the context, a malformed server
answer after its retries) are rejected with the engine's reason (``ctx.reject`` with the record,
so its id is named) instead of failing the run. Building the engine and every engine call run
under :func:`~codeplan_tools.engines.base.stdout_to_stderr`: stdout carries records only, whatever
the engine library prints.

The model (:class:`EngineSpec`) is checked before any input is read
(:mod:`codeplan_tools.engines.model_files`): a missing folder, a folder without a tokenizer, or a
hub id that is neither cached nor on a reachable hub is one line and exit 66; a model that needs its
own code without ``--trust-remote-code`` is exit 77. The resume key (``settings``) keys a local
model on its content fingerprint (``model_fingerprint``) alone, so ``ckpt``, ``ckpt/`` and
``/abs/ckpt`` resume each other, the same model moved or renamed resumes, and a re-exported
``ckpt/`` is refused; ``meta.<stage>.model`` keeps the path as given. A model
served over HTTP is keyed on its served name (and ``--tokenizer``'s fingerprint when given).
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from codeplan_tools.core.errors import InputMissing, UsageError
from codeplan_tools.core.progress import EngineProgress, LineCounter
from codeplan_tools.core.records import derive_seed, normalize

# -- engines ------------------------------------------------------------------------------------

# Records per engine call when --chunk-size is not given. vLLM schedules a large chunk best. The
# transformers engine sorts a chunk by length into batches of --batch-size, so a chunk much larger than
# a batch pads less (64 records ran at 0.77x the speed of one sorted 256-record call on the tiny
# model), while staying small enough to flush often. Over HTTP the chunk only bounds what is pending.
DEFAULT_CHUNK = {"vllm": 4096, "hf": 1024, "openai": 256}
# Which EngineSpec fields each built-in engine's constructor takes (others do not apply to it).
ENGINE_OPTIONS = {
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
# Engines that load the model from a local folder (or the hub); others get the name as it is.
LOCAL_ENGINES = ("hf", "vllm")


ENGINE_FIELDS = sorted({key for keys in ENGINE_OPTIONS.values() for key in keys})


@dataclass(kw_only=True)
class EngineSpec:
    """Which engine and model to run, and how; built lazily so resume checks happen before loading."""

    model: str
    engine: str = "auto"
    dtype: str | None = None
    """Weights and activations dtype (auto, float32, bfloat16, float16); None = the engine's default."""
    tensor_parallel_size: int | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (the key itself is never stored)."""
    concurrency: int | None = None
    max_model_len: int | None = None
    """Context length; prompts that do not fit are rejected."""
    batch_size: int | None = None
    enforce_eager: bool = False
    """vLLM: no graph capture or compilation (faster start, slower decoding)."""
    gpu_memory_utilization: float | None = None
    trust_remote_code: bool = False
    tokenizer: str | None = None
    """Local tokenizer folder, for formats with an HTTP engine (default: the model path)."""
    request_timeout: float | None = None
    """openai: seconds to wait for the server (to connect, and for each read of the answer)."""
    max_retries: int | None = None
    """openai: retries of a failed or malformed answer before giving up."""
    options: dict[str, Any] = field(default_factory=dict)
    """Extra constructor options passed to the engine as they are."""
    _sources: dict[str, Any] = field(default_factory=dict, init=False, repr=False, compare=False)

    def resolved_engine(self) -> str:
        if self.engine == "auto":
            from codeplan_tools.engines import default_engine_name

            return default_engine_name()
        return self.engine

    def source(self, role: str = "model", strict: bool = True):
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

    def tokenizer_source(self):
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

    def identity(self) -> dict:
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

    def meta(self) -> dict:
        """``identity()`` with the model as given (provenance in ``meta.<stage>``)."""
        return {**self.identity(), "model": self.model}

    def build(self):
        """The engine, loaded; what the loaders raise about the model becomes one line."""
        from codeplan_tools.engines import get_engine
        from codeplan_tools.engines.model_files import loading

        name = self.resolved_engine()
        wanted = ENGINE_OPTIONS.get(name)
        opts: dict[str, Any] = {}
        for key in ENGINE_FIELDS:
            value = getattr(self, key)
            if value is None or value is False or (wanted is not None and key not in wanted):
                continue  # unset, or not an option of this engine
            opts[key] = value
        opts.update(self.options)
        if name not in LOCAL_ENGINES:
            return get_engine(name, self.model, **opts)
        self.check()
        found = self.source("model")
        if self.tokenizer:
            opts["tokenizer"] = self.source("tokenizer").path
        with loading(found):
            return get_engine(name, found.path, **opts)


def engine_tokenizer(engine, spec: EngineSpec):
    """The tokenizer the engine uses, or one loaded from ``spec.tokenizer`` / the model folder."""
    tok = getattr(engine, "tokenizer", None)
    if tok is not None:
        return tok
    from transformers import AutoTokenizer

    from codeplan_tools.engines.model_files import loading

    found = spec.tokenizer_source()
    with loading(found, "--tokenizer" if spec.tokenizer else "--model"):
        return AutoTokenizer.from_pretrained(found.path, trust_remote_code=spec.trust_remote_code)


def chunked(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class Unusable(Exception):
    """A record this stage cannot turn into a request; it is rejected with this reason."""


class EngineTask:
    """What a stage does around the engine: build one request per record, turn a result into output."""

    stage = ""

    def bind(self, engine, spec: EngineSpec) -> None:
        """Called once the engine is loaded (e.g. to get its tokenizer)."""

    def request(self, record: dict):
        raise NotImplementedError

    def output(self, record: dict, request, result) -> dict:
        raise NotImplementedError


def run_engine_task(
    records: Iterator[dict],
    ctx,
    task: EngineTask,
    spec: EngineSpec,
    chunk_size: int | None = None,
    engine=None,
) -> Iterator[dict]:
    """The shared loop of ``extract`` and ``generate``: chunk, call the engine, reject or yield.

    ``engine`` may be given already built (library use, benchmarks); otherwise it is built from
    ``spec`` when the first chunk arrives, so a run with nothing left to do never loads a model.
    Building, binding, generating and closing run under ``stdout_to_stderr``: whatever the engine
    library prints goes to stderr, and the records yielded in between reach the real stdout.
    """
    from codeplan_tools.engines.base import stdout_to_stderr

    size = chunk_size or DEFAULT_CHUNK.get(spec.resolved_engine(), 256)
    if size < 1:
        raise UsageError("--chunk-size must be at least 1")
    stats = ctx.stats
    io = getattr(ctx, "io", None)
    inputs = list(getattr(io, "inputs", None) or [])
    show = bool(getattr(io, "progress", True)) and not getattr(io, "quiet", False)
    progress = EngineProgress(
        task.stage,
        stats,
        bar=getattr(ctx, "progress", None),
        enabled=show,
        counter=LineCounter(inputs) if show and inputs else None,
    )
    owned, bound = engine is None, False
    try:
        for chunk in chunked(records, size):
            _flush(ctx)
            if not bound:
                with stdout_to_stderr():
                    if engine is None:
                        engine = spec.build()
                    task.bind(engine, spec)
                bound = True
            pending, requests = [], []
            for record in chunk:
                try:
                    req = task.request(record)
                except Unusable as exc:
                    ctx.reject(record, str(exc))
                    continue
                pending.append(record)
                requests.append(req)
            if not requests:
                continue
            progress.start()
            t0 = time.monotonic()
            with stdout_to_stderr():
                results = engine.generate(requests)
            seconds = time.monotonic() - t0
            stats.inc("engine_seconds", round(seconds, 3))
            stats.inc("requests", len(requests))
            tokens_out = 0
            for record, req, res in zip(pending, requests, results, strict=True):
                stats.inc("tokens_in", res.tokens_in)
                if res.error:
                    ctx.reject(record, res.error, tokens_in=res.tokens_in)
                    continue
                n_out = sum(c.tokens_out for c in res.completions)
                tokens_out += n_out
                stats.inc("tokens_out", n_out)
                stats.inc("samples", len(res.completions))
                yield task.output(record, req, res)
            progress.chunk_done(len(requests), tokens_out, seconds)
        _flush(ctx)
    finally:
        if owned and engine is not None:
            close = getattr(engine, "close", None)
            if close is not None:
                with stdout_to_stderr():
                    close()
    if progress.engine_seconds > 0:
        stats.derived["tokens_out_per_engine_s"] = round(progress.tokens_out / progress.engine_seconds, 1)


class LibraryContext:
    """A stand-in for ``run_stage``'s context when the library is called directly from Python."""

    def __init__(self, stage: str):
        from codeplan_tools.core.stats import Stats

        self.stage = stage
        self.stats = Stats(stage)
        self.rejected: list[dict] = []

    def stamp(self, record: dict, values: dict) -> dict:
        from codeplan_tools.core.records import set_meta

        return set_meta(record, self.stage, values)

    def reject(self, record: dict, reason: str, **details: Any) -> None:
        self.stats.inc("rejected")
        self.stats.inc(f"rejected.{reason.split(':')[0]}")
        self.rejected.append(self.stamp(record, {**details, "reason": reason}))


def _flush(ctx) -> None:
    """Flush what the stage has written so far (the output of the last chunk)."""
    flush = getattr(ctx, "flush", None)
    if flush is not None:
        flush()


def check_sampling(temperature: float, top_p: float) -> None:
    """The sampling settings every engine stage shares: finite, temperature >= 0, 0 < top_p <= 1."""
    if not (math.isfinite(temperature) and math.isfinite(top_p)):
        raise UsageError("--temperature and --top-p must be finite numbers (not nan or inf)")
    if temperature < 0 or not 0 < top_p <= 1:
        raise UsageError("need --temperature >= 0 and 0 < --top-p <= 1")


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- generate ----------------------------------------------------------------------------------

FORMATS = ("codeplan", "vanilla", "nlplan")
PS_TRIGGER = (
    "Let's first understand the problem and devise a plan to solve the problem. "
    "Then, let's carry out the plan and solve the problem step by step."
)
CODE_PLAN_INSTRUCTION = (
    "First write the high-level logic of your solution as a short pseudo Python code plan (conditions, loops, "
    "functions, variables) under the heading '### Plan:' in a ```python code block. Then, under the heading "
    "'### Answer:', write your response following the plan."
)
GIVEN_PLAN_INSTRUCTION = (
    "Write your response following this plan of its high-level logic:\n```python\n{plan}\n```"
)
# Prompting modes for instruct models: the text after the question in the user turn.
PROMPTING_MODES = {
    "direct": "",
    "cot": "Let's think step by step.",
    "plan-and-solve": PS_TRIGGER,
    "code-plan": CODE_PLAN_INSTRUCTION,
}


@dataclass(kw_only=True)
class GenerateConfig:
    format: str | None = None
    """codeplan | vanilla | nlplan (fine-tuned models); exclusive with ``mode``."""
    mode: str | None = None
    """direct | cot | plan-and-solve | code-plan (instruct models, chat user turn)."""
    n: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    max_tokens: int = 512
    seed: int = 0
    given_plan: bool = False
    """Condition on each record's ``plan`` and generate the response only."""
    answer_instruction: bool = True
    """Add the task's answer-format instruction (prompting modes, when the tasks registry has one)."""
    chunk_size: int | None = None

    def __post_init__(self) -> None:
        if self.format and self.mode:
            raise UsageError("give either --format (fine-tuned models) or --mode (instruct models), not both")
        if not self.format and not self.mode:
            self.format = "codeplan"
        if self.format and self.format not in FORMATS:
            raise UsageError(f"unknown format {self.format!r}; choose one of: {', '.join(FORMATS)}")
        if self.mode and self.mode not in PROMPTING_MODES:
            raise UsageError(f"unknown mode {self.mode!r}; choose one of: {', '.join(PROMPTING_MODES)}")
        if self.given_plan and (self.format == "vanilla" or self.mode not in (None, "code-plan")):
            raise UsageError("--given-plan works with --format codeplan/nlplan or --mode code-plan")
        if self.n < 1:
            raise UsageError("-n must be at least 1")
        if self.max_tokens < 1:
            raise UsageError("--max-tokens must be at least 1")
        check_sampling(self.temperature, self.top_p)

    def settings(self, spec: EngineSpec) -> dict:
        """Everything that determines the output: the resume key of ``generate``."""
        return {
            **spec.identity(),
            "format": self.format,
            "mode": self.mode,
            "mode_instruction_sha256": text_hash(PROMPTING_MODES[self.mode]) if self.mode else None,
            "given_plan": self.given_plan,
            "answer_instruction": self.answer_instruction if self.mode else False,
            "n": self.n,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        }


def task_answer_instruction(record: dict) -> str | None:
    """The answer-format instruction of the record's task (tasks registry), unless the prompt has it.

    Records made by ``codeplan tasks prepare`` already end with it; it is never added twice.
    """
    if not isinstance(record.get("task"), str) or not record["task"]:
        return None
    from codeplan_tools.core.errors import CodeplanError
    from codeplan_tools.eval.tasks import resolve_task

    try:
        text = (resolve_task(record).instruction or "").strip()
    except (CodeplanError, KeyError, LookupError, ValueError):
        return None  # a task the registry does not know: the question alone
    if not text or text in (record.get("prompt") or ""):
        return None
    return text


def mode_prompt(
    mode: str, prompt: str, *, plan: str | None = None, answer_instruction: str | None = None
) -> str:
    """The user turn of a prompting mode: question, answer-format instruction, then the trigger."""
    parts = [prompt.rstrip()]
    if answer_instruction:
        parts.append(answer_instruction.strip())
    if plan is not None:
        parts.append(GIVEN_PLAN_INSTRUCTION.format(plan=plan))
    elif PROMPTING_MODES[mode]:
        parts.append(PROMPTING_MODES[mode])
    return "\n\n".join(parts)


_FENCED = re.compile(r"```[ \t]*[\w+.-]*[ \t]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S)
_ANSWER_HEAD = re.compile(r"^\s*(?:#+\s*)?(?:final\s+)?answer\s*(?::[ \t]*\n?|\n)", re.I)


def parse_code_plan_reply(text: str) -> tuple[str | None, str]:
    """(plan, response) from an instruct model's reply to ``code-plan`` prompting.

    The requested layout parses exactly as the ``codeplan`` format; otherwise the first fenced block is
    the plan and what follows it (without an "Answer:" heading) is the response.
    """
    from codeplan_tools.formats import get_format

    plan, response = get_format("codeplan", chat=False, end_marker="\x00").parse(text)
    if plan is not None:
        return plan, response.strip()
    m = _FENCED.search(text)
    if m is None:
        return None, text.strip()
    rest = text[m.end() :]
    rest = _ANSWER_HEAD.sub("", rest, count=1)
    return m.group(1).strip("\n"), rest.strip()


class GenerateTask(EngineTask):
    stage = "generate"

    def __init__(self, config: GenerateConfig, spec: EngineSpec, ctx=None):
        self.config = config
        self.spec = spec
        self.ctx = ctx
        self.format = None
        self.records = None  # RecordTokenizer of the format, for engines that take token ids
        self.stop: list[str] = []
        self.meta_base: dict = {}

    def bind(self, engine, spec: EngineSpec) -> None:
        cfg = self.config
        from codeplan_tools.formats import end_marker_for, get_format

        if cfg.format:
            tok = engine_tokenizer(engine, spec)
            self.tokenizer = tok
            self.format = get_format(cfg.format, tok)
            self.stop = list(self.format.stop_strings())
            if getattr(engine, "uses_prompt_token_ids", False):
                from codeplan_tools.stages.pack import RecordTokenizer

                self.records = RecordTokenizer(tok, self.format)
        else:
            tok = getattr(engine, "tokenizer", None)
            # The turn-closing token (e.g. Llama-3's <|eot_id|>, not its eos) ends an instruct reply.
            self.stop = (
                [end_marker_for(tok, chat=True)]
                if tok is not None and getattr(tok, "chat_template", None)
                else []
            )
        describe = getattr(engine, "describe", None)
        self.meta_base = {
            **spec.meta(),
            **({k: v for k, v in describe().items() if k not in ("model",)} if describe else {}),
            "format": cfg.format,
            "mode": cfg.mode,
            "given_plan": cfg.given_plan,
            "n": cfg.n,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "max_tokens": cfg.max_tokens,
            "global_seed": cfg.seed,
        }
        if self.format is not None:
            self.meta_base.update(self.format.describe())

    def request(self, record: dict):
        from codeplan_tools.engines.base import SPECIAL_TOKEN_TEXT, Request

        cfg = self.config
        prompt = record.get("prompt")
        if not isinstance(prompt, str):
            raise Unusable("missing-prompt")
        plan = record.get("plan") if cfg.given_plan else None
        if cfg.given_plan and not isinstance(plan, str):
            raise Unusable("missing-plan")
        seed = derive_seed(cfg.seed, record["id"])
        common = dict(
            id=record["id"],
            n=cfg.n,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_tokens=cfg.max_tokens,
            seed=seed,
            stop=list(self.stop),
        )
        if self.format is not None:
            text = self.format.prompt_text(self.tokenizer, prompt)
            ids = None
            if plan is not None:
                section = self.format.plan_section(plan)
                ids = self._plan_prompt_ids(prompt, plan, text, section)
                text += section  # = format.prefix_with_plan(...)
            elif self.records is not None and self.records.holds_special(prompt):
                ids = self.records.prompt_ids(prompt, text)
                if ids is None:
                    raise Unusable(SPECIAL_TOKEN_TEXT)
            return Request(prompt=text, prompt_token_ids=ids, **common)
        instruction = task_answer_instruction(record) if cfg.answer_instruction else None
        content = mode_prompt(cfg.mode, prompt, plan=plan, answer_instruction=instruction)
        return Request(messages=[{"role": "user", "content": content}], **common)

    def _plan_prompt_ids(self, prompt: str, plan: str, text: str, section: str) -> list[int] | None:
        """Ids of a plan-conditioned prompt as ``pack`` tokenizes the training example: the prompt,
        then the target up to the response (the plan section), each on its own, the record's text as
        text. None when the engine tokenizes the text itself (HTTP)."""
        from codeplan_tools.engines.base import SPECIAL_TOKEN_TEXT

        if self.records is None:
            return None
        prompt_ids = self.records.prompt_ids(prompt, text)
        plan_ids = self.records.target_ids(plan, "", cut=len(section))
        if prompt_ids is None or plan_ids is None:
            raise Unusable(SPECIAL_TOKEN_TEXT)
        return prompt_ids + plan_ids

    def parse(self, text: str, given: str | None) -> tuple[str | None, str]:
        cfg = self.config
        if self.format is not None:
            if given is not None:
                return given, self.format.response_after_plan(text)
            return self.format.parse(text)
        if cfg.mode == "code-plan":
            if given is not None:
                return given, text.strip()
            return parse_code_plan_reply(text)
        return None, text

    def output(self, record: dict, request, result) -> dict:
        given = record.get("plan") if self.config.given_plan else None
        samples = []
        for c in result.completions:
            plan, response = self.parse(c.text, given)
            samples.append(
                {
                    "text": c.text,
                    "plan": plan,
                    "response": response,
                    "finish_reason": c.finish_reason,
                    "tokens_out": c.tokens_out,
                    "seed": c.seed,
                }
            )
        record["samples"] = samples
        meta = {
            **self.meta_base,
            "seed": request.seed,
            "tokens_in": result.tokens_in,
            "tokens_out": sum(s["tokens_out"] for s in samples),
        }
        return self.ctx.stamp(record, meta)


def generate_records(
    records: Iterable[dict], config: GenerateConfig, spec: EngineSpec, ctx=None, engine=None
) -> Iterator[dict]:
    """The library twin of ``codeplan generate``: records in, records with ``samples`` out.

    Inside ``run_stage`` pass its ``ctx``; from Python leave it out (rejected rows are then kept on
    ``LibraryContext.rejected``) and pass an already built ``engine`` to reuse it.
    """
    ctx = ctx or LibraryContext("generate")
    records = (normalize(r) for r in records)  # a no-op on records run_stage has normalised
    task = GenerateTask(config, spec, ctx)
    return run_engine_task(iter(records), ctx, task, spec, config.chunk_size, engine=engine)
