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


FromGguf = Annotated[
    str | None,
    typer.Option(
        "--from-gguf",
        metavar="FILE",
        help="Write the plain folder of this .gguf model instead (dequantized to fp32 safetensors, with "
        "its tokenizer, chat template and generation config); takes no size options.",
    ),
]


@o.with_options(config=FLAGS)
def init_model_command(
    out_dir: Annotated[str, typer.Argument(metavar="OUT_DIR", help="Folder to write the model into.")],
    config: InitModelConfig,
    from_gguf: FromGguf = None,
    quiet: o.Quiet = False,
) -> None:
    """Build a small Llama model from scratch (random weights, byte-level BPE tokenizer trained here, chat
    template) into OUT_DIR, or with --from-gguf the folder of a .gguf model. transformers and vLLM load
    the folder; nothing is downloaded.

    Example: codeplan init-model models/tiny --hidden-size 64 --layers 2 --corpus train.jsonl.zst

    Example: codeplan init-model --from-gguf SmolLM2-135M-Instruct.Q4_1.gguf models/smollm2
    """
    import json
    import sys

    from codeplan_tools.core.errors import UsageError
    from codeplan_tools.tools.init_model import init_model, init_model_from_gguf

    if from_gguf is not None:
        if config != InitModelConfig():
            raise UsageError("--from-gguf takes no size options: the model is the file's")
        out = init_model_from_gguf(out_dir, from_gguf, quiet=quiet)
    else:
        out = init_model(out_dir, config, quiet=quiet)
    if not quiet:
        vocab = json.loads((out / "config.json").read_text())["vocab_size"]
        print(f"codeplan init-model: wrote {out} (vocab {vocab})", file=sys.stderr)


def register(app: typer.Typer) -> None:
    app.command("init-model")(init_model_command)
