"""Formats: one definition of the model text, used unchanged by ``pack`` (training) and ``generate``.

A format turns ⟨prompt, plan, response⟩ into ``prompt_text`` (what the model is conditioned on) and
``target_text`` (what it must emit, end marker included), and parses generated text back.

Formats
    ``codeplan``  prompt → code-form plan (a ```` ```python ```` block) → response
    ``nlplan``    prompt → natural-language plan → response
    ``vanilla``   prompt → response

Target (assistant-turn) text, the same with or without a chat template::

    codeplan:  "### Plan:\\n```python\\n{plan}\\n```\\n\\n### Answer:\\n{response}{END}"
    nlplan:    "### Plan:\\n{plan}\\n\\n### Answer:\\n{response}{END}"
    vanilla:   "{response}{END}"

Prompt text
    With a tokenizer that has a chat template, the prompt is the single user turn rendered by
    ``apply_chat_template(..., add_generation_prompt=True)``; the target is the assistant turn.
    The template's own BOS (e.g. Llama-3's ``<|begin_of_text|>``) is in the text, so tokenize a text
    that already starts with ``bos_token`` without adding special tokens (the engines do this).
    Without a chat template (base models, e.g. Mistral-7B-v0.1), a plain template is used::

        codeplan, nlplan:  "### Question:\\n{prompt}\\n\\n"
        vanilla:           "### Question:\\n{prompt}\\n\\n### Answer:\\n"

    (the tokenizer adds its BOS when the text is tokenized).

End marker (``END``), chosen per tokenizer by :func:`end_marker_for`:
    1. with a chat template: the special token that closes an assistant turn in that template, found by
       rendering a two-turn conversation (``<|im_end|>`` for Qwen2.5, ``<|eot_id|>`` for Llama-3 — not
       its eos ``<|end_of_text|>`` — and the eos of templates that end turns with it);
    2. otherwise the tokenizer's ``eos_token`` (``</s>`` for Mistral-7B);
    3. with no tokenizer or no eos, the text ``<|end|>`` (learned as ordinary tokens).
    It is a single token the model can emit in cases 1–2; :meth:`Format.end_token_id` gives its id
    so ``finetune`` can put it in ``generation_config.eos_token_id`` and an exported model stops by
    itself under vLLM and transformers. ``generate`` also passes :meth:`Format.stop_strings` (engines
    turn a stop string that is one special token into a stop token id).

Parsing
    :meth:`Format.parse` reads the text after ``prompt_text``: it cuts at the end marker, then splits
    the plan and response at the fixed section separators. ``parse(target_text(p, r)) == (p, r)``
    holds whenever :meth:`Format.unparseable_reason` returns None (the plan does not contain the
    separator, neither part contains the end marker); ``pack`` rejects the few rows where it does not.
    Generated text that does not follow the format parses to ``(None, text)``.

Bind a format to the tokenizer it renders for: ``get_format(name, tokenizer)``. A format obtained
without one binds to the first tokenizer passed to a method; until then it uses the plain template and
the ``<|end|>`` marker.
"""

from __future__ import annotations

from typing import Any

from codeplan_tools.core.errors import UsageError

TEXT_END_MARKER = "<|end|>"
QUESTION_HEADER = "### Question:\n"
PLAN_HEADER = "### Plan:\n"
ANSWER_HEADER = "### Answer:\n"
CODE_OPEN = "```python\n"
CODE_CLOSE = "\n```"
_SENTINEL = "\u2063CODEPLAN_SENTINEL\u2063"


def has_chat_template(tokenizer: Any) -> bool:
    return tokenizer is not None and bool(getattr(tokenizer, "chat_template", None))


def _single_added_token(tokenizer: Any, text: str) -> str | None:
    """The added/special token that ``text`` starts with, if any."""
    added = tokenizer.get_added_vocab() if hasattr(tokenizer, "get_added_vocab") else {}
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    best = None
    for tok in set(added) | specials:
        if tok and text.startswith(tok) and (best is None or len(tok) > len(best)):
            best = tok
    return best


def end_marker_for(tokenizer: Any, chat: bool | None = None) -> str:
    """The end marker for ``tokenizer`` (see the module docstring for the rule)."""
    if tokenizer is None:
        return TEXT_END_MARKER
    if chat is None:
        chat = has_chat_template(tokenizer)
    if chat:
        try:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _SENTINEL}],
                tokenize=False,
            )
        except Exception:  # a template that refuses this shape: fall back to eos
            text = ""
        if isinstance(text, str) and _SENTINEL in text:
            tok = _single_added_token(tokenizer, text.split(_SENTINEL, 1)[1])
            if tok:
                return tok
    eos = getattr(tokenizer, "eos_token", None)
    return eos if eos else TEXT_END_MARKER


class Format:
    """Base of the three formats; subclasses define the sections."""

    name: str = ""
    needs_plan: bool = False
    # Plain-template text after the question, before the target.
    plain_prompt_suffix: str = ""

    def __init__(
        self, tokenizer: Any = None, *, chat: bool | None = None, end_marker: str | None = None
    ) -> None:
        self._chat = chat
        self._end_marker = end_marker
        self._bound = False
        if tokenizer is not None or chat is not None or end_marker is not None:
            self._bind(tokenizer)

    # -- binding ---------------------------------------------------------------------------------
    def _bind(self, tokenizer: Any) -> None:
        if self._chat is None:
            self._chat = has_chat_template(tokenizer)
        elif self._chat and not has_chat_template(tokenizer) and tokenizer is not None:
            raise UsageError(f"format {self.name}: the tokenizer has no chat template")
        if self._end_marker is None:
            self._end_marker = end_marker_for(tokenizer, self._chat)
        self._bound = True

    def _ensure(self, tokenizer: Any) -> None:
        if not self._bound and tokenizer is not None:
            self._bind(tokenizer)

    @property
    def chat(self) -> bool:
        """True when the prompt is rendered with the tokenizer's chat template."""
        return bool(self._chat)

    @property
    def end_marker(self) -> str:
        return self._end_marker if self._end_marker is not None else TEXT_END_MARKER

    def end_token_id(self, tokenizer: Any) -> int | None:
        """Id of the end marker when it is one token of ``tokenizer`` (for ``generation_config``)."""
        ids = tokenizer.encode(self.end_marker, add_special_tokens=False)
        return ids[0] if len(ids) == 1 else None

    def stop_strings(self) -> list[str]:
        stops = [self.end_marker]
        if not self.chat:
            # A base model that has not learned the marker tends to start the next question.
            stops.append("\n" + QUESTION_HEADER.rstrip("\n"))
        return stops

    def describe(self) -> dict:
        """What identifies the rendering (for fingerprints and ``meta``)."""
        return {"format": self.name, "chat_template": self.chat, "end_marker": self.end_marker}

    # -- rendering -------------------------------------------------------------------------------
    def prompt_text(self, tokenizer: Any, prompt: str) -> str:
        self._ensure(tokenizer)
        if self.chat:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
            )
            if not isinstance(text, str):  # some versions return a BatchEncoding-like object
                raise TypeError("apply_chat_template(tokenize=False) did not return text")
            return text
        return QUESTION_HEADER + prompt + "\n\n" + self.plain_prompt_suffix

    def body(self, plan: str | None, response: str) -> str:
        """The target without the end marker."""
        raise NotImplementedError

    def target_text(self, plan: str | None, response: str) -> str:
        return self.body(plan, response) + self.end_marker

    def render(self, tokenizer: Any, prompt: str, plan: str | None, response: str) -> tuple[str, str]:
        return self.prompt_text(tokenizer, prompt), self.target_text(plan, response)

    def plan_section(self, plan: str) -> str:
        """The text of the target up to where the response starts."""
        raise UsageError(f"format {self.name} has no plan section")

    def prefix_with_plan(self, tokenizer: Any, prompt: str, plan: str) -> str:
        """``prompt_text`` plus the plan section: generation from here writes the response only."""
        return self.prompt_text(tokenizer, prompt) + self.plan_section(plan)

    # -- parsing ---------------------------------------------------------------------------------
    def cut_at_end(self, generated: str) -> str:
        i = generated.find(self.end_marker)
        return generated if i == -1 else generated[:i]

    def parse(self, generated: str) -> tuple[str | None, str]:
        """(plan, response) from the text generated after ``prompt_text``."""
        raise NotImplementedError

    def response_after_plan(self, generated: str) -> str:
        """The response from text generated after :meth:`prefix_with_plan`."""
        return self.cut_at_end(generated)

    def unparseable_reason(self, plan: str | None, response: str) -> str | None:
        """Why ``parse(target_text(plan, response))`` would not give them back, or None."""
        if self.needs_plan and plan is None:
            return "missing-plan"
        if self.end_marker in response or (plan is not None and self.needs_plan and self.end_marker in plan):
            return "contains-end-marker"
        expected = (plan if self.needs_plan else None, response)
        if self.parse(self.target_text(plan, response)) != expected:
            return "plan-contains-separator" if self.needs_plan else "contains-end-marker"
        return None


class VanillaFormat(Format):
    name = "vanilla"
    plain_prompt_suffix = ANSWER_HEADER

    def body(self, plan: str | None, response: str) -> str:
        return response

    def parse(self, generated: str) -> tuple[str | None, str]:
        return None, self.cut_at_end(generated)


class _PlanFormat(Format):
    needs_plan = True
    plan_open = PLAN_HEADER
    separator = "\n\n" + ANSWER_HEADER  # between plan and response

    def plan_section(self, plan: str) -> str:
        return self.plan_open + plan + self.separator

    def body(self, plan: str | None, response: str) -> str:
        if plan is None:
            raise ValueError(f"format {self.name} needs a plan")
        return self.plan_section(plan) + response

    def parse(self, generated: str) -> tuple[str | None, str]:
        text = self.cut_at_end(generated)
        if not text.startswith(self.plan_open):
            stripped = text.lstrip()
            if stripped.startswith(self.plan_open):
                text = stripped
            else:
                # Not in the format: an answer section alone, or free text.
                i = text.find(ANSWER_HEADER)
                if i != -1 and not text[:i].strip():
                    return None, text[i + len(ANSWER_HEADER) :]
                return None, text
        rest = text[len(self.plan_open) :]
        i = rest.find(self.separator)
        if i == -1:  # stopped inside the plan (length): the plan so far, no response
            return self._trim_open_plan(rest), ""
        return rest[:i], rest[i + len(self.separator) :]

    def _trim_open_plan(self, rest: str) -> str:
        return rest


class CodePlanFormat(_PlanFormat):
    name = "codeplan"
    plan_open = PLAN_HEADER + CODE_OPEN
    separator = CODE_CLOSE + "\n\n" + ANSWER_HEADER

    def _trim_open_plan(self, rest: str) -> str:
        return rest[: -len(CODE_CLOSE)] if rest.endswith(CODE_CLOSE) else rest


class NLPlanFormat(_PlanFormat):
    name = "nlplan"


FORMATS: dict[str, type[Format]] = {
    "codeplan": CodePlanFormat,
    "nlplan": NLPlanFormat,
    "vanilla": VanillaFormat,
}


def get_format(
    name: str, tokenizer: Any = None, *, chat: bool | None = None, end_marker: str | None = None
) -> Format:
    """Format ``name`` bound to ``tokenizer``.

    ``chat`` forces (True) or refuses (False) the chat template; None uses it when the tokenizer has
    one. ``end_marker`` overrides the marker chosen by :func:`end_marker_for`.
    """
    try:
        cls = FORMATS[name]
    except KeyError:
        raise UsageError(f"unknown format {name!r}; choose one of: {', '.join(FORMATS)}") from None
    return cls(tokenizer, chat=chat, end_marker=end_marker)
