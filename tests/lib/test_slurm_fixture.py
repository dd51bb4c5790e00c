"""The single-node SLURM fixture runs real jobs: srun ranks, array jobs, exit codes, requeue, clean stop."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

from tests.fixtures.slurm import SlurmCluster, SlurmError, require_slurm


def test_srun_two_tasks_get_ranks(slurm):
    out = slurm.run(
        ["srun", "-n", "2", "bash", "-c", "echo $SLURM_PROCID $SLURM_LOCALID $SLURM_NTASKS $SLURM_NODELIST"]
    ).stdout
    rows = sorted(line.split() for line in out.strip().splitlines())
    node = slurm.node
    assert rows == [["0", "0", "2", node], ["1", "1", "2", node]]


def test_jobs_find_the_virtualenvs_codeplan(slurm):
    out = slurm.run(["srun", "-n", "1", "codeplan", "--version"]).stdout
    assert out.startswith("codeplan ")


def test_array_job_runs_every_task(slurm, tmp_path):
    jobid, rc = slurm.sbatch(
        [
            "--array=0-3",
            "-o",
            str(tmp_path / "out_%a"),
            "--wrap",
            "echo task $SLURM_ARRAY_TASK_ID of $SLURM_ARRAY_TASK_COUNT",
        ]
    )
    assert rc == 0 and jobid > 0
    outs = {p.name: p.read_text().strip() for p in tmp_path.glob("out_*")}
    assert outs == {f"out_{i}": f"task {i} of 4" for i in range(4)}


def test_exit_code_and_impossible_request(slurm, tmp_path):
    # The highest exit code of an array's tasks comes back, as with `sbatch --wait`.
    _, rc = slurm.sbatch(
        ["--array=0-2", "-o", str(tmp_path / "o_%a"), "--wrap", "exit $((SLURM_ARRAY_TASK_ID == 1 ? 3 : 0))"]
    )
    assert rc == 3
    # EnforcePartLimits=ALL: more CPUs than the node has is refused at submission, not left pending.
    with pytest.raises(SlurmError, match="sbatch failed"):
        slurm.sbatch(["-n", "64", "--wrap", "true"], wait=False)


def test_requeue_sends_sigterm_and_reruns(slurm, tmp_path):
    script = tmp_path / "job.sh"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/bin/bash
            #SBATCH --requeue
            #SBATCH --open-mode=append
            #SBATCH -o {tmp_path}/out
            echo "start restart=${{SLURM_RESTART_COUNT:-0}}"
            if [ "${{SLURM_RESTART_COUNT:-0}}" = 0 ]; then
                trap 'echo "got TERM"; exit 0' TERM
                touch {tmp_path}/ready
                sleep 120 & wait $!
                echo "not preempted"
            fi
            echo done
            """
        )
    )
    jobid, _ = slurm.sbatch([str(script)], wait=False)
    slurm.requeue(jobid, ready=(tmp_path / "ready").exists)
    assert slurm.wait(jobid, restarts=1, timeout=60) == 0
    out = (tmp_path / "out").read_text()
    assert "DUE TO JOB REQUEUE" in out  # slurmstepd's own line
    ours = [x for x in out.splitlines() if x and not x.startswith("slurmstepd")]
    assert ours == ["start restart=0", "got TERM", "start restart=1", "done"]
    assert slurm.job(jobid)["Restarts"] == "1"


@pytest.mark.slurm
def test_stop_leaves_nothing_running_even_after_an_error(tmp_path):
    """A second private cluster (own ports, own munged) beside the session one; an error inside
    the `with` still stops daemons and kills running job processes."""
    require_slurm()
    cluster = SlurmCluster(tmp_path / "c", kill_wait=2)
    pidfile = tmp_path / "job.pid"
    with pytest.raises(RuntimeError, match="boom"), cluster:
        jobid, _ = cluster.sbatch(
            ["-o", "/dev/null", "--wrap", f"sleep 300 & echo $! > {pidfile}; wait"], wait=False
        )
        cluster.wait_state(jobid, ("RUNNING",))
        daemons = [p.pid for p in cluster._procs.values()]
        assert len(daemons) == 3
        for _ in range(100):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            time.sleep(0.1)
        job_pid = int(pidfile.read_text())
        raise RuntimeError("boom")
    assert not cluster._procs
    for pid in [*daemons, job_pid]:
        assert not _alive(pid), f"pid {pid} still running after stop()"


def _alive(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    try:
        # A zombie (state Z) has exited and only waits for its parent to reap it.
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
