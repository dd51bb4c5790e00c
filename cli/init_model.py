"""``codeplan init-model``: a small from-scratch Llama model and tokenizer for tests and the quickstart."""

from __future__ import annotations

from typing import Annotated

import typer

from codeplan_cli import options as o
from codeplan_cli.engine_options import FiniteFloat

SIZE_PANEL = "Size"
TOKENIZER_PANEL = "Tokenizer"


def _size(*names: str, help: str, **kw):
    return typer.Option(*names, min=1, help=help, rich_help_panel=SIZE_PANEL, **kw)


def init_model_command(
    out_dir: Annotated[str, typer.Argument(metavar="OUT_DIR", help="Folder to write the model into.")],
    hidden_size: Annotated[int, _size("--hidden-size", help="Width of the residual stream.")] = 128,
    layers: Annotated[int, _size("--layers", help="Transformer blocks.")] = 2,
    heads: Annotated[int, _size("--heads", help="Attention heads.")] = 4,
    kv_heads: Annotated[int, _size("--kv-heads", help="Key/value heads (grouped-query attention).")] = 2,
    head_dim: Annotated[
        int, _size("--head-dim", help="Size of one head; vLLM-CPU accepts 32, 64, 80, 96, 112, 128, ...")
    ] = 32,
    intermediate_size: Annotated[
        int | None, _size("--intermediate-size", help="MLP width. [default: 2 x --hidden-size]")
    ] = None,
    max_position_embeddings: Annotated[
        int, _size("--max-len", "--max-position-embeddings", help="Context length in tokens.")
    ] = 1024,
    vocab_size: Annotated[
        int,
        typer.Option(
            "--vocab-size",
            min=264,
            help="Most tokens in the vocabulary (256 bytes + specials + merges); a small corpus may give fewer.",
            rich_help_panel=TOKENIZER_PANEL,
        ),
    ] = 1024,
    corpus: Annotated[
        list[str] | None,
        typer.Option(
            "--corpus",
            metavar="FILE",
            help="Text to train the tokenizer on: plain text, or JSONL records (zstd/gzip/plain) whose "
            "prompt/plan/response/text fields are used. Repeatable. [default: a built-in synthetic text]",
            rich_help_panel=TOKENIZER_PANEL,
        ),
    ] = None,
    init_range: Annotated[
        float,
        typer.Option(
            "--init-range",
            click_type=FiniteFloat(min=0.0),
            help="Std of the random weight init; 0.3 makes a random model's greedy output vary.",
        ),
    ] = 0.02,
    seed: Annotated[int, typer.Option(help="Seed of the weights and the built-in corpus.")] = 0,
    quiet: o.Quiet = False,
) -> None:
    """Build a small Llama model from scratch (random weights, byte-level BPE tokenizer trained here, chat
    template) into OUT_DIR. transformers and vLLM load the folder; nothing is downloaded.

    Example: codeplan init-model models/tiny --hidden-size 64 --layers 2 --corpus train.jsonl.zst
    """
    import sys

    from codeplan_tools.tools.init_model import init_model, read_corpus

    out = init_model(
        out_dir,
        hidden_size=hidden_size,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        intermediate_size=intermediate_size,
        vocab_size=vocab_size,
        seed=seed,
        corpus_texts=read_corpus(corpus) if corpus else None,
        init_range=init_range,
        max_position_embeddings=max_position_embeddings,
        quiet=quiet,
    )
    if not quiet:
        import json

        config = json.loads((out / "config.json").read_text())
        print(f"codeplan init-model: wrote {out} (vocab {config['vocab_size']})", file=sys.stderr)


def register(app: typer.Typer) -> None:
    app.command("init-model")(init_model_command)
