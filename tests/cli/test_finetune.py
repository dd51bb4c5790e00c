"""`codeplan finetune` end to end: 2-process training, kill/SIGTERM and resume, refusal, export to vLLM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import orjson
import pytest

from codeplan_tools.core.records import normalize
from codeplan_tools.core.streams import RecordWriter, read_records
from codeplan_tools.stages.pack import PackConfig, pack_records, tokenizer_fingerprint
from tests.helpers import CODEPLAN, invoke

METRIC_KEYS = {"step", "loss", "lr", "grad_norm", "tokens_per_s", "mfu", "peak_mem_gib"}


def write_packs(path: Path, records: list[dict], model: Path, **kw) -> Path:
    with RecordWriter(path) as w:
        for p in pack_records(records, PackConfig(model=str(model), workers=1, **kw)):
            w.write(p)
    return path


@pytest.fixture(scope="module")
def gsm_packs(tiny_model, shared_data, tmp_path_factory) -> Path:
    """Packs of 48 real GSM8K question/solution pairs (vanilla format) for the tiny model."""
    rows = []
    for i, r in enumerate(read_records([str(shared_data / "gsm8k" / "train.jsonl.zst")])):
        if i == 48:
            break
        rows.append(normalize(r))
    return write_packs(
        tmp_path_factory.mktemp("packs") / "gsm.jsonl.zst", rows, tiny_model, format="vanilla", max_len=512
    )


def finetune_args(model, packs, out, steps=12) -> list[str]:
    return [
        "finetune", "--model", str(model), "--data", str(packs), "--out", str(out), "--nproc", "2",
        "--max-steps", str(steps), "--grad-accum", "2", "--lr", "3e-3", "--warmup-steps", "2", "--save-every", "4",
        "--export-every", "8",
    ]  # fmt: skip


def run_until(args, log: Path, *, stop_at: int | None = None, sig=signal.SIGTERM):
    """Run codeplan; with ``stop_at``, send ``sig`` after the metrics line of that step. (rc, metrics lines)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(log, "ab") as err:
        p = subprocess.Popen(
            [*CODEPLAN, *args], stdout=subprocess.PIPE, stderr=err, env=env, start_new_session=True
        )
        lines = []
        for raw in p.stdout:
            d = orjson.loads(raw)  # stdout carries metrics lines only
            lines.append(d)
            if stop_at is not None and d["step"] == stop_at:
                if sig == signal.SIGKILL:
                    os.killpg(p.pid, signal.SIGKILL)  # the launcher and its workers, no chance to save
                else:
                    p.send_signal(sig)  # the launcher forwards it to its workers
        return p.wait(timeout=300), lines


def test_two_processes_train_and_resume_exactly_after_kill_and_sigterm(tiny_model, gsm_packs, tmp_path):
    ref_out = tmp_path / "ref"
    rc, ref = run_until(finetune_args(tiny_model, gsm_packs, ref_out), tmp_path / "ref.log")
    log = (tmp_path / "ref.log").read_text()
    assert rc == 0, log
    assert "2 rank(s)" in log
    assert [d["step"] for d in ref] == list(range(1, 13))
    assert all(METRIC_KEYS <= set(d) and d["mfu"] is None and d["tokens_per_s"] > 0 for d in ref)
    losses = [d["loss"] for d in ref]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses  # the loss goes down
    assert (ref_out / "model.safetensors").is_file() and (ref_out / "checkpoints" / "step-00000012").is_dir()
    # --export-every 8 on two ranks: the export collective in the middle of the run.
    assert json.loads((ref_out / "step-000008" / "codeplan.json").read_text())["step"] == 8

    # The same run killed hard after the step-4 checkpoint, then re-run and stopped by SIGTERM.
    out, blog = tmp_path / "b", tmp_path / "b.log"
    args = finetune_args(tiny_model, gsm_packs, out)
    rc, first = run_until(args, blog, stop_at=5, sig=signal.SIGKILL)
    assert rc == -signal.SIGKILL
    assert [d["loss"] for d in first] == pytest.approx(
        [d["loss"] for d in ref[:5]], abs=1e-6
    )  # deterministic
    assert [p.name for p in (out / "checkpoints").glob("step-*[0-9]")] == ["step-00000004"]
    rc, second = run_until(args, blog, stop_at=7)
    assert rc == 0, blog.read_text()  # SIGTERM: save, then exit 0
    stopped = second[-1]["step"]
    assert "resumed from step 4" in blog.read_text() and f"stopped at step {stopped}" in blog.read_text()
    assert (out / "checkpoints" / f"step-{stopped:08d}").is_dir() and not (out / "model.safetensors").exists()
    # Resumed from step 4, the losses are those of the uninterrupted run. (Resuming from a SIGTERM
    # checkpoint is tested under SLURM, in test_finetune_slurm.py.)
    assert [d["step"] for d in second] == list(range(5, stopped + 1))
    for a, b in zip(second, ref[4:stopped], strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-6, (a, b)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5) and a["lr"] == pytest.approx(
            b["lr"], rel=1e-12
        )


def test_packs_of_another_tokenizer_are_refused(tiny_model, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(tiny_model, other)
    cfg = other / "tokenizer_config.json"
    cfg.write_text(cfg.read_text().replace("{", '{"model_max_length_note": 1,', 1))
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tiny_model)
    rows = [{"id": "a", "prompt": "Q?", "response": "A."}]
    packs = write_packs(tmp_path / "p.jsonl.zst", rows, other, format="vanilla", max_len=64)
    result = invoke(
        ["finetune", "--model", str(tiny_model), "--data", str(packs), "--out", str(tmp_path / "o")]
    )
    assert result.exit_code == 78
    assert "made with another tokenizer" in result.stderr and not (tmp_path / "o").exists()


def test_run_with_other_settings_on_the_same_out_is_refused(tiny_model, gsm_packs, tmp_path):
    base = ["finetune", "--model", str(tiny_model), "--data", str(gsm_packs), "--out", str(tmp_path / "o"),
            "--max-steps", "1", "--save-every", "0"]  # fmt: skip
    assert invoke(base).exit_code == 0
    again = invoke(base)  # the same command again: nothing left to do
    assert (
        again.exit_code == 0 and "resumed from step 1" in again.stderr and "already complete" in again.stderr
    )
    assert again.stdout == b""
    other = invoke([*base, "--lr", "1e-3"])
    assert other.exit_code == 78 and "other settings" in other.stderr and "lr" in other.stderr


def test_export_every_writes_loadable_models_of_those_steps_and_a_resume_keeps_them(
    tiny_model, gsm_packs, tmp_path
):
    import torch
    from transformers import AutoModelForCausalLM

    out = tmp_path / "o"
    args = ["finetune", "--model", str(tiny_model), "--data", str(gsm_packs), "--out", str(out), "--lr", "3e-3",
            "--max-steps", "4", "--export-every", "2", "--save-every", "1", "--keep-checkpoints", "4"]  # fmt: skip
    result = invoke(args)
    assert result.exit_code == 0, result.stderr
    step2 = out / "step-000002"
    assert sorted(p.name for p in out.glob("step-*")) == [step2.name]  # the last step's export is OUT
    mid, end = (json.loads((d / "codeplan.json").read_text()) for d in (step2, out))
    assert mid["step"] == 2 and end["step"] == 4 and mid["run_key"] == end["run_key"]
    # The same files as the final export (the run's own bookkeeping aside).
    assert {p.name for p in step2.iterdir()} == {
        p.name for p in out.iterdir() if p.is_file() and p.name != "run.json"
    }
    mid_model, end_model = (AutoModelForCausalLM.from_pretrained(d) for d in (step2, out))
    mid_weights, end_weights = mid_model.state_dict(), end_model.state_dict()
    assert mid_weights.keys() == end_weights.keys()
    assert any(not torch.equal(mid_weights[k], end_weights[k]) for k in mid_weights)

    def resume_from_step_1() -> str:
        """Re-run the command as if killed after step 1: it trains steps 2 to 4 again."""
        for ckpt in (out / "checkpoints").glob("step-*"):
            if ckpt.name != "step-00000001":
                shutil.rmtree(ckpt)
        (out / "codeplan.json").unlink()
        again = invoke(args)
        assert again.exit_code == 0 and "resumed from step 1" in again.stderr, again.stderr
        return again.stderr

    written = {p.name: p.stat().st_mtime_ns for p in step2.iterdir()}
    assert "already holds the model of step 2" in resume_from_step_1()
    assert {p.name: p.stat().st_mtime_ns for p in step2.iterdir()} == written  # not rewritten
    (step2 / "codeplan.json").unlink()  # an export cut short: written again
    assert f"exported the model to {step2} (step 2)" in resume_from_step_1()
    assert json.loads((step2 / "codeplan.json").read_text()) == mid


def test_export_every_0_exports_only_the_final_model(tiny_model, gsm_packs, tmp_path):
    out = tmp_path / "o"
    result = invoke(["finetune", "--model", str(tiny_model), "--data", str(gsm_packs), "--out", str(out),
                     "--max-steps", "2", "--save-every", "0", "--export-every", "0"])  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert (out / "codeplan.json").is_file() and not list(out.glob("step-*"))


MEMO = [(12, 7), (30, 45), (8, 9), (61, 22)]
# Why lr 5e-3 and not higher: at 2e-2 (and 1e-2) the run settled on a plateau (loss ~0.03) where the
# two tokens after the plan's closing fence ("\n" then "###": the separator is two "\n" tokens for
# this tokenizer) stayed a coin flip (margin 0.0 +- 0.3 nats), and the float path decided the greedy
# output: AVX2 passed and AVX-512 failed on one machine, the reverse on another. The token ids the
# model is trained on were the ones `generate` feeds and emits (asserted below): no mismatch, an
# under-trained knife edge. At 5e-3 every target token wins by more than 10 nats on the avx2,
# avx512 and default kernels (loss < 1e-4 by step 100), so the asserts below hold with margin.
MEMO_STEPS, MEMO_LR, MIN_MARGIN_NATS = 200, "5e-3", 3.0


@pytest.mark.vllm
def test_exported_model_memorizes_and_stops_at_the_end_marker_in_transformers_and_vllm(tiny_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from codeplan_tools.formats import get_format
    from tests.fixtures.models import vllm_or_fail

    rows = [
        {"id": f"m{i}", "prompt": f"What is {a} plus {b}?", "plan": f"x = {a} + {b}\nprint(x)",
         "response": f"{a} + {b} = {a + b}. The answer is {a + b}."}
        for i, (a, b) in enumerate(MEMO)
    ]  # fmt: skip
    packs = write_packs(tmp_path / "memo.jsonl.zst", rows, tiny_model, max_len=512)
    out = tmp_path / "out"
    result = invoke(
        ["finetune", "--model", str(tiny_model), "--data", str(packs), "--out", str(out),
         "--max-steps", str(MEMO_STEPS), "--lr", MEMO_LR, "--warmup-steps", "5", "--save-every", "0",
         "--log-every", "50"]
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    metrics = [json.loads(x) for x in result.stdout.splitlines()]
    assert [d["step"] for d in metrics] == [50, 100, 150, 200]
    assert metrics[-1]["loss"] < 1e-3, metrics  # a threshold reached with margin (seen: < 1e-4)

    tok = AutoTokenizer.from_pretrained(out)
    fmt = get_format("codeplan", tok)
    end_id = fmt.end_token_id(tok)
    gen_cfg = json.loads((out / "generation_config.json").read_text())
    eos = gen_cfg["eos_token_id"]
    assert (eos[0] if isinstance(eos, list) else eos) == end_id
    info = json.loads((out / "codeplan.json").read_text())
    assert (
        info["format"] == "codeplan" and info["end_marker"] == fmt.end_marker and info["step"] == MEMO_STEPS
    )
    # Packs made for the base model fit the export; the config is the base's (use_cache on, dtype kept).
    assert tokenizer_fingerprint(out) == tokenizer_fingerprint(tiny_model)
    assert json.loads((out / "config.json").read_text()) == json.loads(
        (tiny_model / "config.json").read_text()
    )

    prompts = [fmt.prompt_text(tok, r["prompt"]) for r in rows]
    targets = [fmt.target_text(r["plan"], r["response"]) for r in rows]
    prompt_ids = [tok(p, add_special_tokens=not p.startswith(tok.bos_token))["input_ids"] for p in prompts]
    max_new = 120

    # Train/inference agreement: each packed example is exactly the prompt ids `generate` feeds
    # followed by the target ids the model must emit.
    examples = {}
    for pack in read_records([str(packs)]):
        start = 0
        for example_id, n in zip(pack["example_ids"], pack["seq_lens"], strict=True):
            examples[example_id] = pack["input_ids"][start : start + n]
            start += n
    target_ids = []
    for row, ids, target in zip(rows, prompt_ids, targets, strict=True):
        trained = examples[row["id"]]
        assert trained[: len(ids)] == ids
        target_ids.append(trained[len(ids) :])
        assert tok.decode(target_ids[-1]) == target

    model = AutoModelForCausalLM.from_pretrained(out).eval()
    for ids, target in zip(prompt_ids, target_ids, strict=True):
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids + target])).logits[0].float(), -1)
            gen = model.generate(torch.tensor([ids]), max_new_tokens=max_new, do_sample=False)[
                0, len(ids) :
            ].tolist()
        # Teacher-forced, every target token beats the runner-up by a margin no float path erases.
        for i, t in enumerate(target):
            row_logp = logp[len(ids) + i - 1].clone()
            chosen = row_logp[t].item()
            row_logp[t] = float("-inf")
            assert chosen - row_logp.max().item() > MIN_MARGIN_NATS, (i, tok.decode([t]))
        assert gen == target  # greedy reproduces the plan and answer and stops at the marker
        assert gen[-1] == end_id and len(gen) < max_new

    vllm = vllm_or_fail()
    llm = vllm.LLM(model=str(out), dtype="float32", enforce_eager=True, seed=0)
    try:
        outs = llm.generate(
            [{"prompt_token_ids": ids} for ids in prompt_ids],
            vllm.SamplingParams(temperature=0, max_tokens=max_new),
        )
    finally:
        del llm
    exact = 0
    for o, row in zip(outs, rows, strict=True):
        c = o.outputs[0]
        assert c.finish_reason == "stop" and c.token_ids[-1] == end_id and len(c.token_ids) < max_new
        exact += fmt.parse(c.text) == (row["plan"], row["response"])
    assert exact == len(rows)


@pytest.mark.parametrize("where", ["model", "parent-of-model", "packs-folder"])
def test_an_out_that_is_or_contains_the_model_or_the_packs_is_refused(tiny_model, tmp_path, where):
    model = tmp_path / "base" / "model"
    shutil.copytree(tiny_model, model)
    packs = write_packs(tmp_path / "p" / "packs.jsonl.zst", [{"id": "a", "prompt": "Q?", "response": "A."}], model,
                        format="vanilla", max_len=64)  # fmt: skip
    out = {"model": model, "parent-of-model": model.parent, "packs-folder": packs.parent}[where]
    before = {p: p.read_bytes() for p in [*model.iterdir(), packs]}
    result = invoke(["finetune", "--model", str(model), "--data", str(packs), "--out", str(out) + "/"])
    assert result.exit_code == 2, result.stderr
    assert "the export would overwrite it" in result.stderr
    assert {p: p.read_bytes() for p in [*model.iterdir(), packs]} == before
    assert not (out / "run.json").exists() and not (out / "checkpoints").exists()


def test_a_second_finetune_on_the_same_out_stops_with_75_while_the_first_runs(
    tiny_model, gsm_packs, tmp_path
):
    out = tmp_path / "o"
    args = ["finetune", "--model", str(tiny_model), "--data", str(gsm_packs), "--out", str(out),
            "--max-steps", "100000", "--save-every", "0", "--log-every", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([*CODEPLAN, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        assert first.stdout.readline(), first.stderr.read().decode()  # the first step is done: it runs
        second = invoke(args)
        assert second.exit_code == 75, second.stderr
        assert f"is being written by pid {first.pid}" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)  # saves a checkpoint and exits 0
        first.communicate(timeout=120)
    assert first.returncode == 0
    assert not list(tmp_path.glob(".*lock*"))  # the lock file goes with the run
