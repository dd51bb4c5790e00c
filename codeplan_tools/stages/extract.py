"""``extract``: mine a plan for each ⟨prompt, response⟩ record with an instruct model (SPEC §0, §6).

The instruction template (``paper`` by default: the paper's text verbatim; ``nlplan``: the
natural-language-plan variant; or a file) is filled with the record's ``prompt`` and ``response`` and
sent as one chat user turn; the local engines tokenize that turn's content as text, so a
special-token string in a record (``<|user|>``, ``</s>``) never becomes a control token (such a
record, where the chat template does not embed the turn verbatim, is rejected ``special-token-text``)
(:class:`~codeplan_tools.engines.base.PromptTokenizer`; the ``openai`` engine sends the text to the
server, which tokenizes it). Only the two placeholders ``{prompt}`` and ``{response}`` are replaced (by
plain substitution, not ``str.format``), so a template may contain other braces, e.g. code. One
trailing newline of a template file is dropped. A template file must be UTF-8: otherwise exit 65
naming the file and the line of the first bad byte (an unreadable file: exit 66).

The reply is cleaned into a bare plan by :func:`clean_plan` and written to ``plan``; ``meta.extract``
records the model, engine, template name and hash, sampling parameters, the record's seed (derived
from the global seed and the id), the finish reason (``length`` means the plan was cut at
``max_tokens``; ``filter``'s ``terminated`` rule drops those) and token counts. A row the engine cannot
take (longer than the context) is rejected with the engine's reason.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from codeplan_tools.core.errors import BadRecord, InputMissing, UsageError
from codeplan_tools.core.records import derive_seed
from codeplan_tools.core.stage import StageContext
from codeplan_tools.engines.runner import EngineTask, SamplingConfig, Unusable, text_hash
from codeplan_tools.engines.spec import EngineSpec

if TYPE_CHECKING:
    from codeplan_tools.engines.base import Engine, Request, Result

BUILTIN_TEMPLATES = ("paper", "nlplan")


def load_template(spec: str) -> tuple[str, str]:
    """``paper`` | ``nlplan`` | a file path -> (name, text). The text must contain both placeholders."""
    if spec in BUILTIN_TEMPLATES:
        text = (
            resources.files("codeplan_tools.stages")
            .joinpath("templates", f"{spec}.txt")
            .read_text(encoding="utf-8")
        )
        name = spec
    else:
        path = Path(spec)
        if not path.is_file():
            raise UsageError(f"--template {spec!r}: not {' or '.join(BUILTIN_TEMPLATES)} and no such file")
        text = _read_template_file(path)
        name = str(path)
    if text.endswith("\n"):
        text = text[:-1]
    missing = [p for p in ("{prompt}", "{response}") if p not in text]
    if missing:
        raise UsageError(f"template {name!r} lacks the placeholder(s) {', '.join(missing)}")
    return name, text


def _read_template_file(path: Path) -> str:
    """The text of a template file; unreadable -> InputMissing (66), not UTF-8 -> BadRecord (65)
    naming the line of the first bad byte."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputMissing(f"--template {path}: cannot be read ({exc.strerror or exc})") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise BadRecord(
            str(path),
            line,
            f"the template is not UTF-8 text (byte 0x{data[exc.start]:02x}); save it as UTF-8",
        ) from None


def fill_template(template: str, prompt: str, response: str) -> str:
    # One pass over the placeholders, so a prompt containing "{response}" is not filled in again.
    return re.sub(
        r"\{(prompt|response)\}", lambda m: prompt if m.group(1) == "prompt" else response, template
    )


# -- cleaning the reply into a bare plan --------------------------------------------------------

_FENCE_LINE = re.compile(r"^[ \t]*(```|~~~)[ \t]*([\w+.#-]*)[ \t]*$")
_INTRO = re.compile(
    r"^(sure|certainly|okay|ok|of course|absolutely|great|here(?:'s| is| are)|below|the following|"
    r"this is|i(?:'ll| will| have| would)|let me|let's)\b",
    re.I,
)
_HEADING = re.compile(
    r"^\s*(?:#+\s*|\*\*)?(?:high[- ]level\s+)?(?:pseudo[- ]?(?:python\s+)?code|python\s+code|code|plan|logic)"
    r"(?:\s+plan)?\s*:?\s*(?:\*\*)?\s*:?\s*$",
    re.I,
)
_OUTRO = re.compile(
    r"^(?:this|the above|above|in this|in the above|the)\s+(?:high[- ]level\s+)?(?:pseudo[- ]?(?:python\s+)?code|"
    r"python\s+code|code|plan|pseudocode|outline|logic)\b|^(?:note|explanation|i hope|hope this|let me know|"
    r"feel free|this (?:should|captures|outlines|describes|follows|way))\b",
    re.I,
)
_CODE_START = re.compile(
    r"^\s*(def|class|if|elif|else|for|while|try|except|with|return|import|from|print|#)\b|^\s*[\w.\[\]]+\s*=|^\s*\w+\(",
    re.I,
)
_ABOUT_PLAN = re.compile(r"\b(code|plan|pseudo|pseudocode|logic|steps|outline)\b", re.I)
_ENUMERATED = re.compile(r"^\s*(\d+[.)]|[-*•]|step\s+\d+)", re.I)


def _fenced_blocks(lines: list[str]) -> list[str]:
    """Contents of the fenced code blocks; an unclosed last fence runs to the end (a cut-off reply)."""
    blocks: list[str] = []
    current: list[str] = []
    inside, marker = False, ""
    for line in lines:
        m = _FENCE_LINE.match(line)
        if not inside and m:
            inside, marker, current = True, m.group(1), []
        elif inside and m and m.group(1) == marker and not m.group(2):
            blocks.append("\n".join(current))
            inside = False
        elif inside:
            current.append(line)
    if inside:
        blocks.append("\n".join(current))
    return blocks


def _is_chatter_intro(line: str) -> bool:
    s = line.strip()
    if not s or _CODE_START.match(s):
        return False
    if _HEADING.match(s):
        return True
    if _ENUMERATED.match(s):
        return False
    return bool(_INTRO.match(s)) or (s.endswith(":") and bool(_ABOUT_PLAN.search(s)))


def clean_plan(reply: str) -> str:
    """The bare plan in a model's reply: code fences, introductions and closing remarks removed.

    - With fenced blocks (```` ``` ```` or ``~~~``), the first non-empty block is the plan.
    - Otherwise leading lines that introduce the plan ("Here is the pseudo code:", "Plan:") and
      trailing paragraphs that comment on it ("This code ...", "Note: ...") are dropped.
    Indentation common to all lines is removed; the plan's own indentation is kept.
    """
    text = reply.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    blocks = [b for b in _fenced_blocks(lines) if b.strip()]
    if blocks:
        text = blocks[0]
    else:
        while lines and (not lines[0].strip() or _is_chatter_intro(lines[0])):
            lines.pop(0)
        paragraphs = re.split(r"\n[ \t]*\n", "\n".join(lines))
        while len(paragraphs) > 1 and _OUTRO.match(paragraphs[-1].strip()):
            paragraphs.pop()
        text = "\n\n".join(paragraphs)
    text = textwrap.dedent(text)
    return "\n".join(line.rstrip() for line in text.strip("\n").split("\n")).strip("\n")


# -- the stage ----------------------------------------------------------------------------------


@dataclass(kw_only=True)
class ExtractConfig(SamplingConfig):
    """How ``extract`` asks for a plan (the engine is an :class:`EngineSpec`)."""

    template: str = "paper"
    """Extraction instruction: 'paper' (the CodePlan paper's, verbatim), 'nlplan' (a natural-language
    plan), or a file containing {prompt} and {response}."""
    keep_raw: bool = False
    """Also keep the model's reply before cleaning in meta.extract.raw."""

    def __post_init__(self) -> None:
        self.template_name, self.template_text = load_template(self.template)
        super().__post_init__()  # max_tokens, temperature, top_p

    @property
    def template_sha256(self) -> str:
        return text_hash(self.template_text)

    def settings(self, spec: EngineSpec) -> dict[str, Any]:
        """Everything that determines the output: the resume key of ``extract``."""
        return {
            **spec.identity(),
            "template": self.template_name,
            "template_sha256": self.template_sha256,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_tokens": self.max_tokens,
            "seed": self.seed,
        }


class ExtractStage(EngineTask):
    """``extract`` as a stage: prompt/response records in, records with ``plan`` and ``meta.extract``
    out. ``engine``: an engine already built (reused, not closed). Otherwise the model is checked
    here (one line, exit 66 or 77, before any input is read) and the engine built from ``spec`` when
    the first records arrive."""

    name = "extract"
    # The fields every input record must have (``StageIO.require``).
    require = ("prompt", "response")

    def __init__(self, config: ExtractConfig, spec: EngineSpec, engine: Engine | None = None) -> None:
        super().__init__(spec, config.chunk_size, engine)
        self.config = config
        if engine is None:
            spec.check()
        self.meta_base: dict[str, Any] = {}

    def bind(self, engine: Engine) -> None:
        cfg = self.config
        describe = getattr(engine, "describe", None)
        self.meta_base = {
            **self.spec.meta(),
            **({k: v for k, v in describe().items() if k != "model"} if describe else {}),
            "template": cfg.template_name,
            "template_sha256": cfg.template_sha256,
            "temperature": cfg.temperature,
            "top_p": cfg.top_p,
            "max_tokens": cfg.max_tokens,
            "global_seed": cfg.seed,
        }

    def request(self, record: dict) -> Request:
        from codeplan_tools.engines.base import Request

        prompt, response = record.get("prompt"), record.get("response")
        if not isinstance(prompt, str) or not isinstance(response, str):
            raise Unusable("missing-prompt-or-response")
        cfg = self.config
        content = fill_template(cfg.template_text, prompt, response)
        return Request(
            id=record["id"],
            messages=[{"role": "user", "content": content}],
            n=1,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            max_tokens=cfg.max_tokens,
            seed=derive_seed(cfg.seed, record["id"]),
        )

    def complete(self, record: dict, request: Request, result: Result) -> dict[str, Any]:
        c = result.completions[0]
        record["plan"] = clean_plan(c.text)
        meta = {
            **self.meta_base,
            "seed": request.seed,
            "finish_reason": c.finish_reason,
            "tokens_in": result.tokens_in,
            "tokens_out": c.tokens_out,
        }
        if self.config.keep_raw:
            meta["raw"] = c.text
        return meta


def extract_records(
    records: Iterable[dict],
    config: ExtractConfig,
    spec: EngineSpec,
    ctx: StageContext | None = None,
    engine: Engine | None = None,
) -> Iterator[dict]:
    """The library twin of ``codeplan extract``: records in, records with ``plan`` and ``meta.extract`` out.

    ``ctx``: the run's context (``run_stage`` passes its own); left out, an in-memory
    ``StageContext("extract")``, so rejected rows are dropped: pass one to read them from
    ``ctx.rejected`` and the counters from ``ctx.stats``. ``engine``: an already built engine, reused.
    """
    return ExtractStage(config, spec, engine).run(records, ctx or StageContext("extract"))
