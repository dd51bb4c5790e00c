"""`codeplan finetune --lora-r`: two ranks learn, a SIGKILLed run resumes exactly, bad LoRA flags are one line.

The merge, the adapter export and vLLM are tested in one process in tests/lib/test_lora.py.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import sys

import pytest

from codeplan_tools.trainer.config import LORA_TARGETS
from tests.cli.test_finetune import run_until, write_packs
from tests.helpers import invoke

needs_peft = pytest.mark.skipif(
    importlib.util.find_spec("peft") is None, reason="LoRA needs peft (pip install 'codeplan[lora]')"
)

SUMS = [(12, 7), (30, 45), (8, 9), (61, 22), (5, 16), (40, 2), (33, 33), (9, 90)]
STEPS, SAVE_EVERY, KILL_AT = 16, 4, 6


def sum_rows() -> list[dict]:
    return [
        {"id": f"s{i}", "prompt": f"What is {a} plus {b}?", "response": f"{a} + {b} = {a + b}."}
        for i, (a, b) in enumerate(SUMS)
    ]


@pytest.fixture(scope="module")
def sum_packs(tiny_model, tmp_path_factory):
    """4 packs of 2 examples: one pack per rank and step, 2 steps an epoch."""
    path = tmp_path_factory.mktemp("packs") / "sums.jsonl.zst"
    return write_packs(path, sum_rows(), tiny_model, format="vanilla", max_len=64)


def lora_args(model, packs, out) -> list[str]:
    return [
        "finetune", "--model", str(model), "--data", str(packs), "--out", str(out), "--nproc", "2",
        "--max-steps", str(STEPS), "--lr", "1e-2", "--warmup-steps", "2", "--save-every", str(SAVE_EVERY),
        "--lora-r", "8",
    ]  # fmt: skip


@needs_peft
def test_two_ranks_learn_with_lora_and_a_sigkilled_run_resumes_exactly(tiny_model, sum_packs, tmp_path):
    import torch.distributed.checkpoint as dcp
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    ref_out, log = tmp_path / "ref", tmp_path / "ref.log"
    rc, ref = run_until(lora_args(tiny_model, sum_packs, ref_out), log)
    assert rc == 0, log.read_text()
    assert "2 rank(s)" in log.read_text() and "LoRA r 8" in log.read_text()
    losses = [d["loss"] for d in ref]
    assert len(losses) == STEPS
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 / 4, losses  # seen: 11.4 -> 1.0

    # Sharded checkpoint of two ranks: the adapters and their optimizer state, nothing else.
    keys = set(
        dcp.FileSystemReader(str(ref_out / "checkpoints" / f"step-{STEPS:08d}"))
        .read_metadata()
        .state_dict_metadata
    )
    assert all(".lora_" in k for k in keys if k.startswith(("model.", "optim.state."))), sorted(keys)[:5]
    # The merged export is the base model's folder; only the adapted projections changed.
    base, merged = (
        load_file(str(tiny_model / "model.safetensors")),
        load_file(str(ref_out / "model.safetensors")),
    )
    assert set(merged) == set(base)
    assert {k for k in base if (merged[k] != base[k]).any()} == {
        k for k in base if any(f".{t}." in k for t in LORA_TARGETS)
    }
    AutoModelForCausalLM.from_pretrained(ref_out)  # loads as a plain model

    # SIGKILL after step 6 (checkpoint of step 4 on disk), then the same command to the end.
    out, blog = tmp_path / "b", tmp_path / "b.log"
    rc, first = run_until(lora_args(tiny_model, sum_packs, out), blog, stop_at=KILL_AT, sig=signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert [d["loss"] for d in first] == losses[:KILL_AT]
    rc, second = run_until(lora_args(tiny_model, sum_packs, out), blog)
    assert rc == 0, blog.read_text()
    assert f"resumed from step {SAVE_EVERY}" in blog.read_text()
    # Same machine, same kernels: the resumed run (adapter dropout included) is the uninterrupted one.
    assert [d["step"] for d in second] == list(range(SAVE_EVERY + 1, STEPS + 1))
    assert [(d["loss"], d["grad_norm"]) for d in second] == [
        (d["loss"], d["grad_norm"]) for d in ref[SAVE_EVERY:]
    ]
    resumed = load_file(str(out / "model.safetensors"))
    assert all((resumed[k] == merged[k]).all() for k in merged)


def bad_invoke(tiny_model, tmp_path, *extra: str):
    packs = write_packs(tmp_path / "p.jsonl.zst", sum_rows()[:2], tiny_model, format="vanilla", max_len=64)
    args = ["finetune", "--model", str(tiny_model), "--data", str(packs), "--out", str(tmp_path / "out")]
    return invoke([*args, "--max-steps", "1", *extra])


@pytest.mark.parametrize(
    ("extra", "code", "message"),
    [
        (("--export", "adapter"), 2, "--export adapter needs LoRA: give --lora-r"),
        (("--lora-r", "4", "--lora-dropout", "1"), 2, "--lora-dropout must be in [0, 1)"),
        pytest.param(
            ("--lora-r", "4", "--lora-targets", "q_proj", "--lora-targets", "qproj"),
            2,
            "--lora-targets qproj names no module",
            marks=needs_peft,
        ),
        pytest.param(
            ("--lora-r", "4", "--lora-targets", "embed_tokens"),
            2,
            "--lora-targets embed_tokens is not a Linear layer",
            marks=needs_peft,
        ),
    ],
)
def test_bad_lora_flags_are_one_line(tiny_model, tmp_path, extra, code, message):
    result = bad_invoke(tiny_model, tmp_path, *extra)
    assert result.exit_code == code, result.stderr
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_lora_without_peft_names_the_extra(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft raises ImportError
    result = bad_invoke(tiny_model, tmp_path, "--lora-r", "4")
    assert result.exit_code == 69, result.stderr
    assert "pip install 'codeplan[lora]'" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@needs_peft
def test_the_lora_settings_are_part_of_the_resume_identity(tiny_model, tmp_path):
    first = bad_invoke(tiny_model, tmp_path, "--lora-r", "4", "--save-every", "0")
    assert first.exit_code == 0, first.stderr
    assert json.loads((tmp_path / "out" / "run.json").read_text())["settings"]["lora"]["r"] == 4
    again = bad_invoke(tiny_model, tmp_path, "--lora-r", "4", "--lora-targets", "q_proj")
    refusal = again.stderr.strip().splitlines()[-1]  # after the run's start-up line
    assert again.exit_code == 78 and "other settings (lora:" in refusal, again.stderr
    full = bad_invoke(tiny_model, tmp_path)  # and full fine-tuning is another run
    assert full.exit_code == 78 and "other settings (lora:" in full.stderr, full.stderr
