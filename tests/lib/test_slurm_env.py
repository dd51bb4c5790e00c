"""Where a task of `srun` sits in the job, from SLURM's variables alone (distributed.detect).

The variables are those srun gives each task of a 2-node, 8-tasks-per-node step (16 tasks), as
`sbatch -N 2 --ntasks-per-node 8 --gpus-per-node 8 examples/slurm/finetune.sbatch` makes; the batch
shell's own variables (no step id) are the ones recorded on the single-node cluster of
tests/fixtures/slurm.py (Slurm 22.05).
"""

from __future__ import annotations

import os
import stat

import pytest

from codeplan_tools.trainer import distributed

NODES = "gpu-[017,042]"


def srun_task(rank: int, **extra: str) -> dict[str, str]:
    """The variables srun sets for task ``rank`` of a 2 x 8 step of job 4711 (block distribution)."""
    return {
        "SLURM_JOB_ID": "4711",
        "SLURM_JOB_NODELIST": NODES,
        "SLURM_NODELIST": NODES,
        "SLURM_NTASKS": "16",
        "SLURM_NPROCS": "16",
        "SLURM_TASKS_PER_NODE": "8(x2)",
        "SLURM_STEP_ID": "0",
        "SLURM_STEPID": "0",
        "SLURM_STEP_NODELIST": NODES,
        "SLURM_STEP_NUM_NODES": "2",
        "SLURM_STEP_NUM_TASKS": "16",
        "SLURM_STEP_TASKS_PER_NODE": "8(x2)",
        "SLURM_PROCID": str(rank),
        "SLURM_LOCALID": str(rank % 8),
        "SLURM_NODEID": str(rank // 8),
        **extra,
    }


@pytest.fixture
def no_scontrol(monkeypatch, tmp_path):
    """A PATH without scontrol: the node list is parsed."""
    monkeypatch.setenv("PATH", str(tmp_path))


def test_every_task_of_a_two_node_step_gets_its_place_and_one_master(no_scontrol):
    infos = [distributed.detect(srun_task(r)) for r in range(16)]
    assert [i.rank for i in infos] == list(range(16))
    assert [i.local_rank for i in infos] == [r % 8 for r in range(16)]
    assert {(i.world_size, i.local_world_size, i.source) for i in infos} == {(16, 8, "slurm")}
    # One rendezvous for all 16: the first host of the list and a port every task derives alike.
    assert {(i.master_addr, i.master_port) for i in infos} == {("gpu-017", 20000 + 4711)}
    nine = infos[9]  # rank 9 runs on the second node as its local rank 1
    assert (nine.rank, nine.local_rank, nine.is_main) == (9, 1, False)
    assert infos[0].is_main and sum(i.is_main for i in infos) == 1


def test_ntasks_is_the_world_size_when_the_step_count_is_missing(no_scontrol):
    env = srun_task(9)
    del env["SLURM_STEP_NUM_TASKS"], env["SLURM_STEP_TASKS_PER_NODE"], env["SLURM_STEP_NODELIST"]
    info = distributed.detect(env)
    assert (info.rank, info.world_size, info.local_rank, info.local_world_size) == (9, 16, 1, 8)
    assert info.master_addr == "gpu-017"  # from SLURM_JOB_NODELIST


def test_master_addr_and_port_from_the_environment_win(no_scontrol):
    info = distributed.detect(srun_task(3, MASTER_ADDR="10.0.0.5", MASTER_PORT="29555"))
    assert (info.master_addr, info.master_port, info.local_rank) == ("10.0.0.5", 29555, 3)


def test_uneven_tasks_per_node_give_each_node_its_own_local_world():
    assert distributed.tasks_per_node("8(x2)") == [8, 8]
    assert distributed.tasks_per_node("2(x3),1") == [2, 2, 2, 1]
    assert distributed.tasks_per_node(None) == []
    env = srun_task(6, SLURM_STEP_TASKS_PER_NODE="2(x3),1", SLURM_NODEID="3", SLURM_LOCALID="0")
    env["SLURM_STEP_NUM_TASKS"] = "7"
    info = distributed.detect(env)
    assert (info.world_size, info.local_world_size, info.local_rank) == (7, 1, 0)


def test_the_batch_shell_and_special_steps_are_one_process():
    # Recorded in an `sbatch -n 2` script: PROCID and NTASKS, but no step: `--nproc` launches from here.
    batch = {
        "SLURM_JOB_ID": "1",
        "SLURM_JOB_NODELIST": "vm",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NPROCS": "2",
        "SLURM_NTASKS": "2",
        "SLURM_PROCID": "0",
        "SLURM_TASKS_PER_NODE": "2",
    }
    assert distributed.detect(batch).source == "single"
    # The extern (0xFFFFFFFC) and interactive (0xFFFFFFFA) steps are not srun tasks either.
    for step in ("4294967292", "4294967290", "batch"):
        assert distributed.detect({**batch, "SLURM_STEP_ID": step}).source == "single"
    assert distributed.detect({**batch, "SLURM_STEP_ID": "3"}).world_size == 2


def test_scontrol_expands_the_node_list_when_present(monkeypatch, tmp_path):
    calls = tmp_path / "calls"
    fake = tmp_path / "scontrol"
    # Prints a host the parser could not produce: the answer must come from scontrol.
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nprintf "gpu-017.cluster\\ngpu-042.cluster\\n"\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ.get('PATH', '')}")
    info = distributed.detect(srun_task(12))
    assert info.master_addr == "gpu-017.cluster"
    assert calls.read_text().split() == ["show", "hostnames", NODES]
    # A failing scontrol (no slurm.conf on this host, say) falls back to parsing.
    fake.write_text("#!/bin/sh\necho 'scontrol: fatal: no config' >&2\nexit 1\n")
    assert distributed.detect(srun_task(12)).master_addr == "gpu-017"
