"""The Trainer in one process: the loss is per loss token over the whole accumulation window."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from codeplan_tools.core.streams import RecordWriter
from codeplan_tools.stages.pack import PackConfig, pack_records
from codeplan_tools.trainer.config import CheckpointConfig, FinetuneConfig, LoaderConfig, LRConfig
from codeplan_tools.trainer.data import IGNORE, PackLoader, read_packs
from codeplan_tools.trainer.loop import run_worker


@pytest.fixture(scope="module")
def packs(tiny_model, tmp_path_factory):
    """Packs whose examples carry very different numbers of loss tokens."""
    rows = [
        {
            "id": f"r{i}",
            "prompt": f"Question number {i}? " * (1 + i % 3),
            "response": "yes " * (2 + 7 * (i % 4)),
        }
        for i in range(16)
    ]
    path = tmp_path_factory.mktemp("packs") / "p.jsonl.zst"
    with RecordWriter(path) as w:
        for p in pack_records(
            rows, PackConfig(model=str(tiny_model), format="vanilla", max_len=96, workers=1)
        ):
            w.write(p)
    return path


def one_step(tiny_model, packs, out, capsys, **loader) -> dict:
    cfg = FinetuneConfig(
        model=str(tiny_model),
        data=[str(packs)],
        out=str(out),
        loader=LoaderConfig(max_steps=1, **loader),
        lr=LRConfig(lr=1e-3, warmup_steps=0),
        checkpoint=CheckpointConfig(save_every=0),
    )
    capsys.readouterr()
    assert run_worker(cfg) == 0
    (line,) = capsys.readouterr().out.splitlines()
    return json.loads(line)


def expected_loss(model_dir, pack_path, indices) -> float:
    """Sum of token losses of every example run alone / number of loss tokens, by hand."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    packs = read_packs([str(pack_path)]).packs
    total, count = 0.0, 0
    for i in indices:
        p = packs[i]
        start = 0
        for n in p.seq_lens:
            ids = torch.tensor(p.input_ids[start : start + n], dtype=torch.long)[None]
            labels = torch.tensor(p.labels[start + 1 : start + n])
            start += n
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, :-1]
            keep = labels != IGNORE
            total += torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum").item()
            count += int(keep.sum())
    return total / count


def test_accumulation_window_normalises_per_token(tiny_model, packs, tmp_path, capsys):
    ps = read_packs([str(packs)])
    assert len({int((p.labels != IGNORE).sum()) for p in ps.packs}) > 1  # unequal packs make the test bite
    loader = PackLoader(LoaderConfig(micro_batch=4), ps, rank=0, world_size=1, pad_id=0)
    want = expected_loss(tiny_model, packs, loader.pack_indices(0))

    together = one_step(tiny_model, packs, tmp_path / "a", capsys, micro_batch=4, grad_accum=1)
    accumulated = one_step(tiny_model, packs, tmp_path / "b", capsys, micro_batch=1, grad_accum=4)
    assert together["loss"] == pytest.approx(want, abs=1e-5)
    assert accumulated["loss"] == pytest.approx(want, abs=1e-5)
    assert accumulated["loss_tokens"] == together["loss_tokens"]
    # Same gradient, whatever the split into micro-batches (a per-micro-batch mean would differ).
    assert accumulated["grad_norm"] == pytest.approx(together["grad_norm"], rel=1e-4)
    for key in ("tokens_per_s", "mfu", "peak_mem_gib", "lr"):
        assert key in together
    assert together["mfu"] is None and together["peak_mem_gib"] > 0


def test_export_reloads_with_the_trained_weights(tiny_model, packs, tmp_path, capsys):
    from safetensors.numpy import load_file

    one_step(tiny_model, packs, tmp_path / "a", capsys, micro_batch=2)
    before = load_file(str(tiny_model / "model.safetensors"))
    after = load_file(str(tmp_path / "a" / "model.safetensors"))
    assert set(after) == set(before)  # same names (tied head left out as save_pretrained does)
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    assert all(after[k].dtype == before[k].dtype for k in before)
