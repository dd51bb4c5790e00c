"""`srun -n 2 codeplan finetune` under a real single-node SLURM: ranks from SLURM, requeue saves and resumes."""

from __future__ import annotations

import itertools
import json
import textwrap

import pytest

from codeplan_tools.core.records import normalize
from codeplan_tools.core.streams import read_records
from tests.cli.test_finetune import write_packs

pytestmark = pytest.mark.slurm

STEPS = 40


def test_srun_two_ranks_and_requeue_saves_exits_and_resumes(slurm_cluster, tiny_model, shared_data, tmp_path):
    rows = [
        normalize(r)
        for r in itertools.islice(read_records([str(shared_data / "gsm8k" / "train.jsonl.zst")]), 24)
    ]
    packs = write_packs(tmp_path / "packs.jsonl.zst", rows, tiny_model, format="vanilla", max_len=256)
    out = tmp_path / "out"
    script = tmp_path / "job.sh"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/bash
            #SBATCH --requeue
            #SBATCH --open-mode=append
            #SBATCH -n 2
            #SBATCH -o {tmp_path}/job.out
            export OMP_NUM_THREADS=1
            srun -n 2 codeplan finetune --model {tiny_model} --data {packs} --out {out} \\
                --max-steps {STEPS} --save-every 0 --lr 3e-3 --warmup-steps 2 >> {tmp_path}/metrics.jsonl
            """
        )
    )
    jobid, _ = slurm_cluster.sbatch([str(script)], wait=False)
    metrics = tmp_path / "metrics.jsonl"

    def training() -> bool:  # a few steps done; no checkpoint yet (--save-every 0): SIGTERM must write one
        return metrics.exists() and len(metrics.read_text().splitlines()) >= 2

    slurm_cluster.requeue(jobid, ready=training, timeout=120)
    assert slurm_cluster.wait(jobid, restarts=1, timeout=240) == 0, (tmp_path / "job.out").read_text()

    log = (tmp_path / "job.out").read_text()
    assert log.count("2 rank(s) [slurm]") == 2, log  # rank, world size and master came from SLURM, twice
    stopped = int(log.split("stopped at step ")[1].split()[0])
    assert 2 <= stopped < STEPS
    assert f"resumed from step {stopped}" in log and "exported the model" in log
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    # Rank 0 alone writes metrics: every step once, the first run up to the stop, the rerun after it.
    assert steps == list(range(1, STEPS + 1))
    assert (out / "model.safetensors").is_file() and (out / "checkpoints" / f"step-{STEPS:08d}").is_dir()
