"""A small Llama model and tokenizer built from scratch, for tests, the quickstart and experiments.

- Tokenizer: byte-level BPE trained locally with ``tokenizers`` (all 256 bytes in the initial
  alphabet, so no text is unknown), wrapped as ``PreTrainedTokenizerFast`` with ``<s>`` (BOS, added
  when text is tokenized), ``</s>`` (EOS), ``<pad>`` and a simple chat template whose turns end with
  EOS (so the formats' end marker is EOS; see :mod:`codeplan_tools.formats`).
- Model: ``LlamaForCausalLM`` with random weights (``init_range`` is the normal init's std; 0.3 makes
  greedy output of a random model vary, useful when comparing engines), tied embeddings, fp32.
  ``head_dim`` defaults to 32: vLLM-CPU accepts 32, 64, 80, 96, 112, 128, ... (not 16).
- The default tokenizer corpus is generated here (question/plan/answer templates, Python-like plans,
  numbers), so nothing outside the package is needed; ``InitModelConfig.corpus`` names files to
  train on instead, ``corpus_texts`` gives the texts themselves.
- ``InitModelConfig`` holds the settings; its field docstrings are ``codeplan init-model``'s help.

:func:`init_model_from_gguf` writes instead the plain folder of a ``.gguf`` model (dequantized; see
:mod:`codeplan_tools.formats.gguf`): ``codeplan init-model --from-gguf FILE OUT_DIR``.

The folder loads with ``AutoModelForCausalLM`` / ``AutoTokenizer`` and with vLLM. A folder that
cannot be created is :class:`~codeplan_tools.core.errors.CannotCreate` (exit 73); a write failing part-way
is :class:`~codeplan_tools.core.errors.OutputIOError` (exit 74).
"""

from __future__ import annotations

import dataclasses
import json
import random
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from codeplan_tools.core.errors import CannotCreate, OutputIOError, UsageError

PAD, BOS, EOS = "<pad>", "<s>", "</s>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

_WORDS = (
    "the a an of to and in is it that for on with as was at by be this from or are have has had not "
    "but what all were when we there can one each which she he they their how if will up other about "
    "out many then them these so some her would make like him into time two more write go see number "
    "way could people my than first water been call who its now find long down day did get come made "
    "may part apple book cat dog tree river house garden train ticket price total sum answer question "
    "plan step list word letter last first count add subtract multiply divide result value store "
    "buy sell cost each every left right true false yes no coin flip heads tails date year month"
).split()
_NAMES = "Alice Bob Carol Dave Erin Frank Grace Heidi Ivan Judy Mallory Niaj Olivia Peggy Rupert".split()
_ITEMS = "apples pens books cookies marbles stickers coins cards shells eggs".split()


def builtin_corpus(seed: int = 0, n: int = 3000) -> list[str]:
    """A deterministic synthetic corpus shaped like the pipeline's records (prompts, plans, answers)."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        name, other = rng.sample(_NAMES, 2)
        item = rng.choice(_ITEMS)
        a, b, c = rng.randint(2, 99), rng.randint(2, 99), rng.randint(2, 9)
        words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12)))
        q = (
            f"{name} has {a} {item}. {other} gives {name} {b} more, then {name} shares them among "
            f"{c} friends. How many {item} does each friend get?"
        )
        plan = (
            f"def solve():\n    total = {a} + {b}\n    share = total // {c}\n    return share\n"
            if rng.random() < 0.5
            else f"words = {words.split()[:3]!r}\nresult = ''\nfor w in words:\n    result += w[-1]\n"
            "print(result)"
        )
        answer = f"{name} has {a} + {b} = {a + b} {item}. Each friend gets {(a + b) // c}. The answer is {(a + b) // c}."
        texts.append(
            f"### Question:\n{q}\n\n### Plan:\n```python\n{plan}\n```\n\n### Answer:\n{answer}\n"
            f"<|user|>\n{words.capitalize()}?\n<|assistant|>\n{rng.choice(_WORDS).capitalize()} {words}.\n"
        )
    return texts


def read_corpus(paths: Iterable[str]) -> list[str]:
    """Tokenizer training texts from files: JSONL records (zstd, gzip or plain) or plain text.

    Records are rendered with the plain ``codeplan`` / ``vanilla`` template (prompt, plan, response), so
    the template's phrases get their own tokens; other files are used as text, 64 lines per chunk.
    """
    from codeplan_tools.core.records import find_prompt, find_response
    from codeplan_tools.core.streams import open_input
    from codeplan_tools.formats import get_format

    with_plan = get_format("codeplan", chat=False, end_marker="\n")
    without = get_format("vanilla", chat=False, end_marker="\n")
    texts: list[str] = []
    for path in paths:
        with open_input(path) as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
        records = _as_records(lines)
        if records is None:
            texts.extend("\n".join(lines[i : i + 64]) for i in range(0, len(lines), 64))
            continue
        for r in records:
            answer = r["answer"] if isinstance(r.get("answer"), str) else ""
            prompt, response, plan = find_prompt(r) or "", find_response(r) or answer, r.get("plan")
            fmt = with_plan if isinstance(plan, str) else without
            texts.append("".join(fmt.render(None, prompt, plan, response)))
            if isinstance(r.get("text"), str):
                texts.append(r["text"])
    if not texts:
        raise UsageError("the --corpus files hold no text")
    return texts


def _as_records(lines: list[str]) -> list[dict] | None:
    """The lines as JSON objects, or None when they are not JSONL."""
    out = []
    for line in lines:
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError:
            return None
        if not isinstance(value, dict):
            return None
        out.append(value)
    return out or None


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024):
    """Byte-level BPE on ``texts``, wrapped as a ``PreTrainedTokenizerFast`` with the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, BOS, EOS, *ROLE_TOKENS]
    if vocab_size < 256 + len(specials) + 1:
        raise UsageError(f"--vocab-size must be at least {256 + len(specials) + 1} (all bytes + specials)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    # Like Llama/Mistral tokenizers: BOS is added when text is tokenized with special tokens.
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=ROLE_TOKENS,
        model_max_length=1 << 30,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


@dataclasses.dataclass(kw_only=True)
class InitModelConfig:
    """The size of the model and of its tokenizer, and the seed."""

    hidden_size: int = 128
    """Width of the residual stream."""
    layers: int = 2
    """Transformer blocks."""
    heads: int = 4
    """Attention heads."""
    kv_heads: int = 2
    """Key/value heads (grouped-query attention)."""
    head_dim: int = 32
    """Size of one head; vLLM-CPU accepts 32, 64, 80, 96, 112, 128, ..."""
    intermediate_size: int | None = None
    """MLP width. [default: 2 x --hidden-size]"""
    max_len: int = 1024
    """Context length in tokens."""
    vocab_size: int = 1024
    """Most tokens in the vocabulary (256 bytes + specials + merges); a small corpus may give fewer."""
    corpus: list[str] | None = None
    """Text to train the tokenizer on: plain text, or JSONL records (zstd/gzip/plain) whose
    prompt/plan/response/text fields are used. Repeatable. [default: a built-in synthetic text]"""
    init_range: float = 0.02
    """Std of the random weight init; 0.3 makes a random model's greedy output vary."""
    seed: int = 0
    """Seed of the weights and the built-in corpus."""
    tie_word_embeddings: bool = True
    """Share the input embedding with the output layer."""


def init_model(
    out_dir: str | Path,
    config: InitModelConfig | None = None,
    *,
    corpus_texts: Iterable[str] | None = None,
    quiet: bool = True,
    **settings: Any,
) -> Path:
    """Write a from-scratch Llama model + tokenizer + generation_config to ``out_dir``; returns it.

    ``settings`` are ``InitModelConfig`` fields, over ``config`` (``init_model(path, layers=1)``);
    ``corpus_texts`` are tokenizer training texts, used instead of ``config.corpus``'s files.
    """
    config = dataclasses.replace(config or InitModelConfig(), **settings)
    heads, kv_heads, hidden_size = config.heads, config.kv_heads, config.hidden_size
    if heads % kv_heads:
        raise UsageError(f"--heads ({heads}) must be a multiple of --kv-heads ({kv_heads})")
    if corpus_texts is None:  # read before the folder is made: a bad --corpus leaves nothing behind
        corpus_texts = read_corpus(config.corpus) if config.corpus else builtin_corpus(config.seed)
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file of that name, a read-only or missing mount...
        raise CannotCreate(f"{out}: cannot create the model folder ({exc.strerror or exc})") from exc
    tokenizer = train_tokenizer(corpus_texts, config.vocab_size)
    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=config.intermediate_size or 2 * hidden_size,
        num_hidden_layers=config.layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=config.head_dim,
        max_position_embeddings=config.max_len,
        initializer_range=config.init_range,
        rms_norm_eps=1e-5,
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(llama).to(torch.float32)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    if quiet and bars:
        hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        _portable_tokenizer_config(out)
    except OSError as exc:  # disk full, permissions changed under us
        raise OutputIOError(f"{out}: writing the model failed ({exc.strerror or exc})") from exc
    finally:
        if quiet and bars:
            hf_logging.enable_progress_bar()
    return out


def init_model_from_gguf(out_dir: str | Path, gguf_file: str | Path, *, quiet: bool = True) -> Path:
    """Write the plain model folder (safetensors, tokenizer, chat template, generation config) of the
    ``.gguf`` file ``gguf_file`` to ``out_dir`` (new, or an empty folder); returns it."""
    from codeplan_tools.formats.gguf import convert_gguf

    return convert_gguf(gguf_file, out_dir, quiet=quiet)


def _portable_tokenizer_config(out: Path) -> None:
    """Name the generic fast class so transformers 4.x and 5.x both load the folder."""
    path = out / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    if "chat_template" not in cfg and not (out / "chat_template.jinja").exists():
        cfg["chat_template"] = CHAT_TEMPLATE
    path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
