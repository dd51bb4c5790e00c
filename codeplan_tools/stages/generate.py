"""``generate``: sample answers (plan + response) for question records (:class:`GenerateStage`,
:func:`generate_records`).

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
(:class:`~codeplan_tools.formats.tokenizer.RecordTokenizer`): a special-token string in the record's text
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

The engine loop (chunks, flushing, rejecting the rows the engine cannot take with its reason,
stdout kept for records) is :mod:`codeplan_tools.engines.runner`'s. The model
(:class:`~codeplan_tools.engines.spec.EngineSpec`) is checked before any input is read: a missing
model is one line and exit 66, one that needs its own code without ``--trust-remote-code`` exit 77.
The resume key (:meth:`GenerateConfig.settings`) keys a local model on its content fingerprint
alone, so the same model moved or renamed resumes and a re-exported one is refused;
``meta.generate.model`` keeps the path as given.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, get_args

from codeplan_tools.core.errors import UsageError
from codeplan_tools.core.records import derive_seed
from codeplan_tools.core.stage import StageContext
from codeplan_tools.engines.runner import EngineTask, SamplingConfig, Unusable, text_hash
from codeplan_tools.engines.spec import EngineSpec, engine_tokenizer

if TYPE_CHECKING:
    from codeplan_tools.engines.base import Engine, Request, Result

FormatName = Literal["codeplan", "vanilla", "nlplan"]
PromptingMode = Literal["direct", "cot", "plan-and-solve", "code-plan"]
FORMATS: tuple[str, ...] = get_args(FormatName)
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
PROMPTING_MODES: dict[str, str] = {
    "direct": "",
    "cot": "Let's think step by step.",
    "plan-and-solve": PS_TRIGGER,
    "code-plan": CODE_PLAN_INSTRUCTION,
}


assert tuple(PROMPTING_MODES) == get_args(PromptingMode)  # the choices and the texts name the same modes


@dataclass(kw_only=True)
class GenerateConfig(SamplingConfig):
    """How ``generate`` prompts and samples (the engine is an :class:`EngineSpec`)."""

    format: FormatName | None = None
    """For fine-tuned models: render the prompt as 'codeplan' (plan, then answer), 'vanilla' or
    'nlplan' were trained, stop on the format's end and parse plan and response from each sample.
    [default: codeplan unless --mode is given]"""
    mode: PromptingMode | None = None
    """For instruct models (one chat user turn): 'direct', 'cot' (Let's think step by step),
    'plan-and-solve', or 'code-plan' (asks for a pseudo-Python plan, then the answer)."""
    given_plan: bool = False
    """Condition on each record's 'plan' and generate the response only (--format codeplan/nlplan or
    --mode code-plan)."""
    answer_instruction: bool = True
    """With --mode, add the task's answer-format instruction when the tasks registry has one."""
    n: int = 1
    """Samples per record."""

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
        super().__post_init__()  # max_tokens, temperature, top_p

    def settings(self, spec: EngineSpec) -> dict[str, Any]:
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


class GenerateStage(EngineTask):
    """``generate`` as a stage: questions in, records with ``samples`` and ``meta.generate`` out.

    ``engine``: an engine already built (reused, not closed). Otherwise the model is checked here
    (one line, exit 66 or 77, before any input is read) and the engine built from ``spec`` when the
    first records arrive."""

    name = "generate"

    def __init__(self, config: GenerateConfig, spec: EngineSpec, engine: Engine | None = None) -> None:
        super().__init__(spec, config.chunk_size, engine)
        self.config = config
        # The fields every input record must have (``StageIO.require``).
        self.require: tuple[str, ...] = ("prompt", "plan") if config.given_plan else ("prompt",)
        if engine is None:
            spec.check(local_tokenizer=config.format is not None)  # formats render prompts here
        self.format: Any = None  # the Format of --format, once bound
        self.tokenizer: Any = None
        self.records: Any = None  # RecordTokenizer of the format, for engines that take token ids
        self.stop: list[str] = []
        self.meta_base: dict[str, Any] = {}

    def bind(self, engine: Engine) -> None:
        cfg, spec = self.config, self.spec
        from codeplan_tools.formats import end_marker_for, get_format

        if cfg.format:
            tok = engine_tokenizer(engine, spec)
            self.tokenizer = tok
            self.format = get_format(cfg.format, tok)
            self.stop = list(self.format.stop_strings())
            if getattr(engine, "uses_prompt_token_ids", False):
                from codeplan_tools.formats.tokenizer import RecordTokenizer

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

    def request(self, record: dict) -> Request:
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
        assert cfg.mode is not None  # GenerateConfig: a format or a mode
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

    def complete(self, record: dict, request: Request, result: Result) -> dict[str, Any]:
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
        return {
            **self.meta_base,
            "seed": request.seed,
            "tokens_in": result.tokens_in,
            "tokens_out": sum(s["tokens_out"] for s in samples),
        }


def generate_records(
    records: Iterable[dict],
    config: GenerateConfig,
    spec: EngineSpec,
    ctx: StageContext | None = None,
    engine: Engine | None = None,
) -> Iterator[dict]:
    """The library twin of ``codeplan generate``: records in, records with ``samples`` out.

    ``ctx``: the run's context (``run_stage`` passes its own); left out, an in-memory
    ``StageContext("generate")``, so rejected rows are dropped: pass one to read them from
    ``ctx.rejected`` and the counters from ``ctx.stats``. ``engine``: an already built engine, reused.
    """
    return GenerateStage(config, spec, engine).run(records, ctx or StageContext("generate"))
