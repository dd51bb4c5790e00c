"""Trainer components on their own: schedule, data sharding, rank detection, checkpoint timing, metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from codeplan_tools.core.errors import SettingsMismatch
from codeplan_tools.trainer import distributed
from codeplan_tools.trainer.checkpoint import Checkpointer
from codeplan_tools.trainer.config import CheckpointConfig, LoaderConfig, LRConfig
from codeplan_tools.trainer.data import IGNORE, Pack, PackLoader, PackSet, shifted_targets
from codeplan_tools.trainer.lr_schedule import WarmupCosine
from codeplan_tools.trainer.metrics import PEAK_BF16_FLOPS, readable


# -- lr schedule ------------------------------------------------------------------------------
def test_warmup_then_cosine_to_the_floor():
    s = WarmupCosine(LRConfig(lr=1.0, warmup_steps=4, min_lr_ratio=0.1), None, total_steps=14)
    lrs = [s.lr_at(i) for i in range(14)]
    assert lrs[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])
    assert lrs[4] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))
    assert s.lr_at(14) == pytest.approx(0.1)
    assert lrs[9] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))


def test_schedule_state_round_trip_and_ratio_warmup():
    s = WarmupCosine(LRConfig(lr=2.0, warmup_ratio=0.1), None, total_steps=50)
    assert s.warmup_steps == 5
    for _ in range(7):
        s.step()
    t = WarmupCosine(LRConfig(lr=2.0, warmup_ratio=0.1), None, total_steps=50)
    t.load_state_dict(s.state_dict())
    assert t.lr == s.lr == s.lr_at(7)


# -- data -------------------------------------------------------------------------------------
def _packset(n: int) -> PackSet:
    packs = []
    for i in range(n):
        lens = [2 + i % 3, 3]
        ids = np.arange(sum(lens)) + 100 * i
        packs.append(Pack(ids, np.ones(len(ids), dtype=bool), lens))
    return PackSet(packs, {"max_len": 16}, 16, 0, 0)


def test_shifted_targets_never_cross_an_example_boundary():
    labels = np.array([IGNORE, 11, 12, IGNORE, 21, 22])
    assert shifted_targets(labels, [3, 3]).tolist() == [11, 12, IGNORE, 21, 22, IGNORE]


@pytest.mark.parametrize("n_packs,world", [(10, 2), (7, 3), (5, 4)])
def test_every_rank_gets_the_same_steps_and_an_epoch_covers_every_pack(n_packs, world):
    cfg = LoaderConfig(micro_batch=1, grad_accum=2, epochs=1, seed=3)
    loaders = [PackLoader(cfg, _packset(n_packs), rank=r, world_size=world, pad_id=0) for r in range(world)]
    steps = {ld.total_steps for ld in loaders}
    assert len(steps) == 1
    total = steps.pop()
    assert total == math.ceil(n_packs / (2 * world))
    seen = [i for s in range(total) for ld in loaders for i in ld.pack_indices(s)]
    assert set(seen) == set(range(n_packs))  # nothing dropped
    assert len(seen) == total * 2 * world  # each rank: exactly 2 packs per step
    # The order is a function of (seed, step): a new loader (a resumed run) sees the same packs.
    again = PackLoader(cfg, _packset(n_packs), rank=1, world_size=world, pad_id=0)
    assert [again.pack_indices(s) for s in range(total)] == [loaders[1].pack_indices(s) for s in range(total)]


def test_collate_pads_with_no_loss_and_restarting_positions():
    import torch

    loader = PackLoader(LoaderConfig(micro_batch=2), _packset(2), rank=0, world_size=1, pad_id=0)
    (mb,) = loader.micro_batches(0, torch.device("cpu"))
    assert mb.input_ids.shape == (2, 8)  # longest pack (6 tokens) rounded up to 8
    row = sorted(range(2), key=lambda r: loader.pack_indices(0)[r])[0]
    assert mb.targets[row, 5:].tolist() == [IGNORE] * 3
    assert mb.n_loss_tokens == int((mb.targets != IGNORE).sum())
    assert mb.position_ids[row].tolist() == [0, 1, 0, 1, 2, 0, 1, 2]


def test_loader_state_refuses_another_layout():
    loader = PackLoader(LoaderConfig(), _packset(4), rank=0, world_size=1, pad_id=0)
    other = PackLoader(LoaderConfig(), _packset(5), rank=0, world_size=1, pad_id=0)
    with pytest.raises(SettingsMismatch, match="n_packs"):
        other.load_state_dict(loader.state_dict())


# -- distributed ------------------------------------------------------------------------------
def test_detect_torchrun_slurm_and_single():
    info = distributed.detect(
        {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "MASTER_ADDR": "h1", "MASTER_PORT": "1234"}
    )
    assert (info.rank, info.world_size, info.local_rank, info.master_addr, info.master_port) == (
        3,
        4,
        1,
        "h1",
        1234,
    )
    slurm = {
        "SLURM_PROCID": "1",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_NTASKS": "2",
        "SLURM_LOCALID": "1",
        "SLURM_STEP_NODELIST": "gpu[07-09],cpu1",
        "SLURM_STEP_TASKS_PER_NODE": "2",
        "SLURM_JOB_ID": "123",
        "MASTER_ADDR": "",
    }
    info = distributed.detect(slurm)
    assert (info.rank, info.world_size, info.local_rank, info.source) == (1, 2, 1, "slurm")
    assert info.master_port == 20123
    assert info.master_addr in ("gpu07",)  # scontrol (if present) and the parser agree
    # A batch script without srun is one process even when the allocation has several tasks.
    info = distributed.detect({"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_NODELIST": "n1"})
    assert (info.world_size, info.source) == (1, "single")


@pytest.mark.parametrize(
    "nodelist,first",
    [
        ("node01", "node01"),
        ("node[01-04,07]", "node01"),
        ("a[3,5],b", "a3"),
        ("x1,y[2-3]", "x1"),
        ("r[1-2]-ib[0-1]", "r1-ib0"),
    ],
)
def test_parse_first_host(nodelist, first):
    assert distributed.parse_first_host(nodelist) == first


# -- checkpoint -------------------------------------------------------------------------------
def test_checkpointer_decides_when_and_ignores_unfinished_saves(tmp_path):
    ck = Checkpointer(tmp_path, CheckpointConfig(save_every=5, keep_checkpoints=1), is_main=True)
    assert [s for s in range(1, 12) if ck.should_save(s)] == [5, 10]
    assert (
        ck.should_save(3, force=True) and ck.should_save(7, last=True) and not ck.should_save(0, force=True)
    )
    (tmp_path / "step-00000012.tmp").mkdir()  # a save that died half-way
    done = tmp_path / "step-00000010"
    done.mkdir()
    (done / ".metadata").write_bytes(b"x")
    (done / "trainer.json").write_text(json.dumps({"step": 10}))
    no_json = tmp_path / "step-00000011"  # shards but no trainer.json: not complete
    no_json.mkdir()
    (no_json / ".metadata").write_bytes(b"x")
    assert ck.latest() == done
    ck_none = Checkpointer(tmp_path / "nothing", CheckpointConfig(), is_main=True)
    assert ck_none.latest() is None


def test_export_every_n_steps_but_not_the_last_and_never_when_off(tmp_path):
    ck = Checkpointer(tmp_path, CheckpointConfig(export_every=3), is_main=True)
    assert [s for s in range(0, 10) if ck.should_export(s, last=s == 9)] == [3, 6]  # 9: the final export
    off = Checkpointer(tmp_path, CheckpointConfig(), is_main=True)
    assert CheckpointConfig().export_every == 0 and not any(off.should_export(s) for s in range(1, 100))


# -- metrics ----------------------------------------------------------------------------------
def test_metrics_line_and_peak_table():
    names = [k for k, _ in PEAK_BF16_FLOPS]
    # More specific names come before the ones they contain (H100 PCIe before H100, L40S before L40).
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert a not in b, (a, b)
    line = readable(
        {
            "step": 3,
            "loss": 1.5,
            "lr": 1e-4,
            "grad_norm": 0.5,
            "tokens_per_s": 1234.0,
            "mfu": None,
            "peak_mem_gib": 0.25,
        }
    )
    assert "step 3" in line and "mfu -" in line and "1234 tok/s" in line
