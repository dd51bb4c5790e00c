"""`codeplan init-model` end to end through the real app."""

from __future__ import annotations

import json

from tests.helpers import invoke


def test_init_model_writes_a_loadable_folder_and_nothing_on_stdout(tmp_path):
    out = tmp_path / "m"
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat on the mat\n" * 50)
    args = ["init-model", str(out), "--hidden-size", "64", "--layers", "1", "--heads", "2", "--kv-heads", "1"]
    result = invoke(
        [*args, "--head-dim", "32", "--vocab-size", "300", "--corpus", str(corpus), "--max-len", "256"]
    )
    assert result.exit_code == 0, result.stderr
    assert result.stdout == b""
    assert f"wrote {out}" in result.stderr
    config = json.loads((out / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (64, 1, 2)
    assert (config["num_key_value_heads"], config["head_dim"], config["max_position_embeddings"]) == (
        1,
        32,
        256,
    )
    # --vocab-size is an upper bound: a small corpus has fewer merges to learn.
    assert 256 < config["vocab_size"] <= 300
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    AutoModelForCausalLM.from_pretrained(out)
    assert tok.decode(tok("the cat", add_special_tokens=False)["input_ids"]) == "the cat"
    assert len(tok) == config["vocab_size"] and f"vocab {len(tok)}" in result.stderr


def test_init_model_quiet_and_bad_flags(tmp_path):
    quiet = invoke(
        [
            "init-model",
            str(tmp_path / "q"),
            "--hidden-size",
            "32",
            "--layers",
            "1",
            "-q",
            "--heads",
            "1",
            "--kv-heads",
            "1",
            "--vocab-size",
            "300",
        ]
    )
    assert quiet.exit_code == 0 and quiet.stderr == "" and quiet.stdout == b""
    bad = invoke(["init-model", str(tmp_path / "b"), "--heads", "4", "--kv-heads", "3"])
    assert bad.exit_code == 2 and "multiple of --kv-heads" in bad.stderr
    assert not (tmp_path / "b" / "config.json").exists()
    missing = invoke(["init-model"])
    assert missing.exit_code == 2


def test_init_model_from_gguf_writes_the_converted_folder_and_refuses_with_one_line(
    tmp_path, monkeypatch, tiny_model
):
    """--from-gguf FILE OUT: the converted folder where asked (the dequantization is replaced by a copy
    of the tiny model here; tests/real converts a real GGUF); size options, a missing file and a
    non-empty OUT are one line each with their exit codes."""
    import shutil
    from pathlib import Path

    from codeplan_tools.formats import gguf

    def convert(src: Path, out: Path) -> None:
        shutil.copytree(tiny_model, out, dirs_exist_ok=True)

    monkeypatch.setattr(gguf, "_convert", convert)
    monkeypatch.setenv("CODEPLAN_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "m.gguf"
    src.write_bytes(b"GGUF fake")
    out = tmp_path / "m"
    result = invoke(["init-model", "--from-gguf", str(src), str(out)])
    assert result.exit_code == 0, result.stderr
    assert f"wrote {out}" in result.stderr and (out / "config.json").is_file()
    assert json.loads((out / gguf.DONE_MARKER).read_text())["gguf"] == "m.gguf"
    for args, code, message in [
        (["--from-gguf", str(src), "--layers", "3", str(tmp_path / "x")], 2, "takes no size options"),
        (["--from-gguf", str(tmp_path / "none.gguf"), str(tmp_path / "y")], 66, "no such .gguf file"),
        (["--from-gguf", str(src), str(out)], 73, "exists and is not an empty folder"),
    ]:
        result = invoke(["init-model", *args])
        errors = [line for line in result.stderr.splitlines() if "error:" in line]
        assert result.exit_code == code and len(errors) == 1 and message in errors[0], result.stderr
