"""LoRA in the trainer, in one process: what is trained and checkpointed, the merge, the two exports.

The 2-rank runs (learning, SIGKILL + resume) are in tests/cli/test_finetune_lora.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
import torch

from codeplan_tools.core.errors import SettingsMismatch
from codeplan_tools.core.streams import RecordWriter
from codeplan_tools.stages.pack import PackConfig, pack_records
from codeplan_tools.trainer.config import (
    LORA_TARGETS,
    CheckpointConfig,
    FinetuneConfig,
    LoaderConfig,
    LoraConfig,
    LRConfig,
)
from codeplan_tools.trainer.loop import run_worker

peft = pytest.importorskip("peft", reason="LoRA needs peft (pip install 'codeplan[lora]')")

MEMO = [(12, 7), (30, 45), (8, 9), (61, 22)]
STEPS, RANK = 40, 8
MAX_NEW = 32
LAYERS = 2  # the tiny model's


def memo_rows() -> list[dict]:
    return [
        {
            "id": f"m{i}",
            "prompt": f"What is {a} plus {b}?",
            "response": f"{a} + {b} = {a + b}. The answer is {a + b}.",
        }
        for i, (a, b) in enumerate(MEMO)
    ]


def lora_config(model, packs, out, **lora) -> FinetuneConfig:
    return FinetuneConfig(
        model=str(model),
        data=[str(packs)],
        out=str(out),
        loader=LoaderConfig(max_steps=STEPS),
        lr=LRConfig(lr=1e-2, warmup_steps=2),
        checkpoint=CheckpointConfig(save_every=0),
        lora=LoraConfig(lora_r=RANK, **lora),
    )


@pytest.fixture(scope="module")
def trained(tiny_model, tmp_path_factory):
    """One LoRA run on 4 memorisable examples: its metrics, the merged export (copied aside), then the
    same command with ``export="adapter"``, which finds the run complete and writes the adapter folder."""
    import io
    from contextlib import redirect_stdout

    root = tmp_path_factory.mktemp("lora")
    packs = root / "memo.jsonl.zst"
    with RecordWriter(packs) as w:
        for p in pack_records(
            memo_rows(), PackConfig(model=str(tiny_model), format="vanilla", max_len=256, workers=1)
        ):
            w.write(p)
    out = root / "out"
    stdout = io.StringIO()
    with redirect_stdout(stdout):
        assert run_worker(lora_config(tiny_model, packs, out)) == 0
    metrics = [json.loads(line) for line in stdout.getvalue().splitlines()]
    merged = root / "merged"
    shutil.copytree(out, merged, ignore=shutil.ignore_patterns("checkpoints"))
    with redirect_stdout(io.StringIO()):
        assert run_worker(lora_config(tiny_model, packs, out, export="adapter")) == 0
    return {"base": tiny_model, "packs": packs, "out": out, "merged": merged, "metrics": metrics}


def test_only_the_adapters_are_trained_and_checkpointed(trained):
    import torch.distributed.checkpoint as dcp

    losses = [d["loss"] for d in trained["metrics"]]
    assert len(losses) == STEPS
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 / 20, losses  # seen: ~9.7 -> ~0.001

    (ckpt,) = (trained["out"] / "checkpoints").glob("step-*")
    keys = set(dcp.FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata)
    model_keys = {k for k in keys if k.startswith("model.")}
    optim_state = {k for k in keys if k.startswith("optim.state.")}
    # Two matrices (A, B) per target module per layer; no base weight, not even the tied lm_head.
    assert len(model_keys) == 2 * len(LORA_TARGETS) * LAYERS
    assert all(".lora_A." in k or ".lora_B." in k for k in model_keys), sorted(model_keys)[:4]
    # AdamW moments (and step) of those parameters only.
    assert optim_state and all(".lora_" in k for k in optim_state), sorted(optim_state)[:4]
    assert {k.rsplit(".", 1)[0].removeprefix("optim.state.") for k in optim_state} == {
        k.removeprefix("model.") for k in model_keys
    }
    settings = json.loads((trained["out"] / "run.json").read_text())["settings"]
    assert settings["lora"] == {
        "r": RANK,
        "alpha": 2.0 * RANK,
        "dropout": 0.05,
        "targets": sorted(LORA_TARGETS),
    }


def memo_prompts(model_dir) -> tuple:
    """(tokenizer, the training prompts' token ids as the packs hold them)."""
    from transformers import AutoTokenizer

    from codeplan_tools.formats import get_format

    tok = AutoTokenizer.from_pretrained(model_dir)
    fmt = get_format("vanilla", tok)
    texts = [fmt.prompt_text(tok, r["prompt"]) for r in memo_rows()]
    return tok, [tok(t, add_special_tokens=not t.startswith(tok.bos_token))["input_ids"] for t in texts]


def greedy(model, prompts: list[list[int]], n: int = MAX_NEW) -> list[list[int]]:
    out = []
    for ids in prompts:
        with torch.no_grad():
            gen = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False)
        out.append(gen[0, len(ids) :].tolist())
    return out


def test_merged_export_is_a_plain_folder_whose_greedy_output_is_the_adapter_models(trained):
    from peft import PeftModel
    from safetensors.numpy import load_file
    from transformers import AutoModelForCausalLM

    base_dir, merged_dir, adapter_dir = trained["base"], trained["merged"], trained["out"]
    base_weights = load_file(str(base_dir / "model.safetensors"))
    merged_weights = load_file(str(merged_dir / "model.safetensors"))
    assert set(merged_weights) == set(base_weights)  # the base model's names: nothing of peft's left
    changed = {k for k in base_weights if (merged_weights[k] != base_weights[k]).any()}
    assert changed == {k for k in base_weights if any(f".{t}." in k for t in LORA_TARGETS)}
    assert not list(merged_dir.glob("adapter_*"))
    assert json.loads((merged_dir / "codeplan.json").read_text())["export"] == "merged"

    # The adapter export replaced the merged weights in OUT with peft's folder alone.
    assert (adapter_dir / "adapter_model.safetensors").is_file() and not list(
        adapter_dir.glob("model*.safetensors")
    )
    assert json.loads((adapter_dir / "codeplan.json").read_text())["export"] == "adapter"
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    assert adapter_config["r"] == RANK and set(adapter_config["target_modules"]) == set(LORA_TARGETS)

    tok, prompts = memo_prompts(base_dir)
    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32).eval()
    base_greedy = greedy(base, prompts)
    adapted = PeftModel.from_pretrained(base, str(adapter_dir)).eval()
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    adapted_greedy = greedy(adapted, prompts)
    assert greedy(merged, prompts) == adapted_greedy
    assert adapted_greedy != base_greedy  # the adapters change what the model says: it learnt the sums
    assert all(
        f"The answer is {a + b}." in tok.decode(g) for (a, b), g in zip(MEMO, adapted_greedy, strict=True)
    )
    ids = torch.tensor([prompts[0]])
    with torch.no_grad():
        torch.testing.assert_close(merged(ids).logits, adapted(ids).logits, atol=1e-4, rtol=1e-4)


def test_merged_state_dict_equals_peft_merge_and_unload(tiny_model):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from codeplan_tools.trainer import lora

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    adapted = lora.apply(
        model,
        LoraConfig(lora_r=4, lora_alpha=8, lora_targets=("q_proj", "down_proj")),
        base_name=str(tiny_model),
    )
    torch.manual_seed(1)
    for name, p in adapted.model.named_parameters():
        if "lora_B" in name:
            p.data.normal_()  # B starts at zero: make the merge do something
    ours = lora.merged_state_dict(adapted.model.state_dict(), adapted.scaling)

    reference = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    peft_model = get_peft_model(
        reference, PeftLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"])
    )
    peft_model.load_state_dict(
        {f"base_model.model.{k}": v for k, v in adapted.model.state_dict().items()}, strict=False
    )
    theirs = peft_model.merge_and_unload().state_dict()
    assert set(ours) == set(theirs)
    for k in theirs:
        torch.testing.assert_close(ours[k], theirs[k], atol=1e-6, rtol=1e-6)


def test_other_lora_settings_on_the_same_out_are_refused(trained):
    config = lora_config(trained["base"], trained["packs"], trained["out"])
    config.lora.lora_r = RANK // 2
    with pytest.raises(SettingsMismatch, match="lora"):
        run_worker(config)


@pytest.mark.vllm
def test_merged_export_in_vllm_gives_the_adapter_models_greedy_output(trained):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tests.fixtures.models import vllm_or_fail

    vllm_or_fail()
    tok, prompts = memo_prompts(trained["base"])
    base = AutoModelForCausalLM.from_pretrained(trained["base"], dtype=torch.float32).eval()
    want = greedy(PeftModel.from_pretrained(base, str(trained["out"])).eval(), prompts)
    # In its own process: the trainer runs in this one (the `trained` fixture), and vLLM's in-process
    # engine then trips over the process groups torch.distributed left here.
    script = (
        "import json, sys, vllm\n"
        "llm = vllm.LLM(model=sys.argv[1], dtype='float32', enforce_eager=True, seed=0)\n"
        "outs = llm.generate([{'prompt_token_ids': ids} for ids in json.loads(sys.argv[2])],\n"
        "                    vllm.SamplingParams(temperature=0, max_tokens=int(sys.argv[3])))\n"
        "print('IDS=' + json.dumps([list(o.outputs[0].token_ids) for o in outs]))\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", script, str(trained["merged"]), json.dumps(prompts), str(MAX_NEW)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    (line,) = [x for x in ran.stdout.splitlines() if x.startswith("IDS=")]
    got = json.loads(line[4:])
    # vLLM stops at eos; transformers' generate pads after it: compare up to vLLM's length.
    assert [w[: len(g)] for w, g in zip(want, got, strict=True)] == got
    assert all(f"The answer is {a + b}." in tok.decode(g) for (a, b), g in zip(MEMO, got, strict=True))


def test_lora_with_activation_checkpointing_saves_resumes_and_exports(trained, tmp_path):
    """The checkpoint wrapper renames the parameters (``_checkpoint_wrapped_module``): the frozen
    filter, the strict check on load and the export must see through it."""
    import io
    from contextlib import redirect_stdout

    import torch.distributed.checkpoint as dcp
    from safetensors.numpy import load_file

    config = lora_config(trained["base"], trained["packs"], tmp_path / "out")
    config.activation_checkpointing = True
    config.loader.max_steps = 2
    with redirect_stdout(io.StringIO()):
        assert run_worker(config) == 0
        assert run_worker(config) == 0  # loads the checkpoint of step 2: nothing missing but the base
    (ckpt,) = (tmp_path / "out" / "checkpoints").glob("step-*")
    keys = dcp.FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata
    model_keys = [k for k in keys if k.startswith("model.")]
    assert len(model_keys) == 2 * len(LORA_TARGETS) * LAYERS and all(".lora_" in k for k in model_keys)
    base = load_file(str(trained["base"] / "model.safetensors"))
    assert set(load_file(str(tmp_path / "out" / "model.safetensors"))) == set(base)
    config.lora.export = "adapter"
    with redirect_stdout(io.StringIO()):
        assert run_worker(config) == 0
    adapter = load_file(str(tmp_path / "out" / "adapter_model.safetensors"))
    assert set(adapter) == set(load_file(str(trained["out"] / "adapter_model.safetensors")))  # peft's names
