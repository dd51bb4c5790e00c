"""IFEval instruction checks, strict and loose, from the maintained ``if-verifiable`` package.

``if_verifiable.common.evaluate_instructions`` runs Google's IFEval checkers
(``if_verifiable.ifeval.instructions_registry.INSTRUCTION_DICT``) on the whole response; we do not
re-implement any check. Per sample: ``correct_strict`` is the prompt-level strict result (every
instruction followed as written), ``correct`` the prompt-level loose one (also accepted after dropping
the first/last line or markdown ``*``, as in the reference evaluation); the instruction-level counts
(``instructions``, ``instructions_strict``, ``instructions_loose``) let the report give the
instruction-level accuracies too. IFEval has no gold answer, so nothing is "extracted": ``extracted``
is None only for an empty response, and maj@k does not apply.

Determinism: some checkers draw from Python's global ``random`` when an instruction's arguments are
missing or invalid (``letter_frequency`` with ``letter: "#"`` picks a random letter), so every sample
is checked with ``random`` seeded from its record (the ``id``, else the prompt) and the global state is
put back afterwards; scoring the same file twice gives the same verdicts, and nothing else in the
process sees a changed ``random``. ``langdetect`` is seeded too (it is random otherwise). When NLTK's
``punkt_tab`` data is not installed (no network here), sentence counting and ``word_tokenize`` fall
back to NLTK's untrained Punkt splitter, with a warning; ``python -m nltk.downloader punkt_tab``
restores the reference tokenizer.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping

from . import NoGold, Scorer, Verdict, register_scorer

log = logging.getLogger("codeplan")
_TOKENIZER: str | None = None


class _NltkShim:
    """``nltk`` as if_verifiable sees it, with ``word_tokenize`` working without downloaded data."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        return getattr(self._real, name)

    @staticmethod
    def word_tokenize(text, language="english", preserve_line=False):
        from nltk.tokenize import NLTKWordTokenizer
        from nltk.tokenize.punkt import PunktSentenceTokenizer

        sentences = [text] if preserve_line else PunktSentenceTokenizer().tokenize(text)
        tok = NLTKWordTokenizer()
        return [t for s in sentences for t in tok.tokenize(s)]


def ensure_tokenizers() -> str:
    """Use NLTK's Punkt data when installed, else the untrained fallback; return which."""
    global _TOKENIZER
    if _TOKENIZER is not None:
        return _TOKENIZER
    import langdetect
    from if_verifiable.ifeval import instructions_util as iu

    langdetect.DetectorFactory.seed = 0
    try:
        iu._get_sentence_tokenizer()
        iu.nltk.word_tokenize("A test.")
        _TOKENIZER = "punkt"
    except LookupError:
        from nltk.tokenize.punkt import PunktSentenceTokenizer

        splitter = PunktSentenceTokenizer()
        iu._get_sentence_tokenizer = lambda: splitter
        iu.nltk = _NltkShim(iu.nltk)
        _TOKENIZER = "punkt-untrained"
        log.warning(
            "IFEval: NLTK punkt_tab data is not installed; sentence counts use an untrained Punkt splitter "
            "(python -m nltk.downloader punkt_tab gives the reference behaviour)"
        )
    return _TOKENIZER


def check_seed(record: Mapping) -> str:
    """The seed of ``random`` while a record's samples are checked: its id, else its prompt."""
    rid = record.get("id")
    if isinstance(rid, (str, int)) and not isinstance(rid, bool):
        return f"ifeval:{rid}"
    prompt = record.get("question") or record.get("prompt")
    return f"ifeval-prompt:{prompt if isinstance(prompt, str) else ''}"


@register_scorer("ifeval")
class IFEvalScorer(Scorer):
    votable = False

    def gold(self, record: Mapping, options: Mapping) -> tuple[list, list]:
        ids = record.get("instruction_id_list")
        if not isinstance(ids, list) or not ids:
            raise NoGold("IFEval record has no 'instruction_id_list'")
        kwargs = record.get("kwargs")
        if not isinstance(kwargs, list):
            kwargs = [{} for _ in ids]
        return ids, kwargs

    def score(self, text: str | None, record: Mapping, options: Mapping) -> Verdict:
        ids, kwargs = self.gold(record, options)
        ensure_tokenizers()
        from if_verifiable.common import evaluate_instructions
        from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

        prompt = record.get("question") or record.get("prompt") or ""
        state = random.getstate()
        random.seed(check_seed(record))
        try:
            results, scores = evaluate_instructions(
                response=text or "",
                instruction_id_list=ids,
                kwargs_list=kwargs,
                prompt=prompt,
                instruction_registry=INSTRUCTION_DICT,
            )
        finally:
            random.setstate(state)
        known = [i for i in ids if i in INSTRUCTION_DICT]
        n_strict = sum(r.strict_pass for r in results)
        n_loose = sum(r.loose_pass for r in results)
        empty = not (text or "").strip()
        return Verdict(
            correct=bool(scores.binary_loose),
            correct_strict=bool(scores.binary_strict),
            extracted=None if empty else "response",
            extracted_strict=None if empty else "response",
            extra={
                "instructions": len(known),
                "instructions_strict": n_strict,
                "instructions_loose": n_loose,
                "instructions_unknown": len(ids) - len(known),
                "failed_strict": [r.instruction_id for r in results if not r.strict_pass],
            },
        )
