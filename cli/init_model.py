"""``codeplan init-model``: a small from-scratch Llama model and tokenizer for tests and the quickstart.

The options are ``InitModelConfig``'s fields (``codeplan_tools.tools.init_model``).
"""

from __future__ import annotations

from typing import Annotated

import typer

from codeplan_cli import options as o
from codeplan_tools.tools.init_model import InitModelConfig

Flag = o.Flag
FLAGS: dict[str, o.Flag | None] = {
    # Every size is at least 1.
    **dict.fromkeys(
        ("hidden_size", "layers", "heads", "kv_heads", "head_dim", "intermediate_size"), Flag(min=1)
    ),
    "max_len": Flag(min=1, old=("--max-position-embeddings",)),
    "vocab_size": Flag(min=264),
    "corpus": Flag(metavar="FILE"),
    "init_range": Flag(min=0.0),
    "tie_word_embeddings": None,  # library only
}


@o.with_options(config=FLAGS)
def init_model_command(
    out_dir: Annotated[str, typer.Argument(metavar="OUT_DIR", help="Folder to write the model into.")],
    config: InitModelConfig,
    quiet: o.Quiet = False,
) -> None:
    """Build a small Llama model from scratch (random weights, byte-level BPE tokenizer trained here, chat
    template) into OUT_DIR. transformers and vLLM load the folder; nothing is downloaded.

    Example: codeplan init-model models/tiny --hidden-size 64 --layers 2 --corpus train.jsonl.zst
    """
    import json
    import sys

    from codeplan_tools.tools.init_model import init_model

    out = init_model(out_dir, config, quiet=quiet)
    if not quiet:
        vocab = json.loads((out / "config.json").read_text())["vocab_size"]
        print(f"codeplan init-model: wrote {out} (vocab {vocab})", file=sys.stderr)


def register(app: typer.Typer) -> None:
    app.command("init-model")(init_model_command)
