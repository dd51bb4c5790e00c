"""Two torchrun "nodes" on loopback run `codeplan finetune` as one job: the same losses as `--nproc 2`
on one node, the same steps on every rank, each checkpoint file written by one rank, the export and
the checkpoint rename by global rank 0 alone, and a kill of both nodes resumes with the same losses.

Each "node" is its own `torchrun --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d` (its own agent,
its own worker, its own session); they meet at a c10d rendezvous on 127.0.0.1 as two machines would.
Which one becomes global rank 0 is decided by the rendezvous, so both nodes' stdout is read.

Who writes what is observed from outside the trainer: a ``sitecustomize`` on the workers' PYTHONPATH
installs a Python audit hook (``sys.addaudithook``) that logs every file opened for writing, every
rename and every rmtree under ``--out`` with the worker's global rank, and wraps ``Trainer.train_step``
to log each rank's steps. The trainer itself is unchanged.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter, defaultdict
from pathlib import Path

import orjson
import pytest

from codeplan_tools.core.records import normalize
from codeplan_tools.core.streams import read_records
from codeplan_tools.trainer.distributed import free_port
from tests.cli.test_finetune import finetune_args, run_until, write_packs

STEPS = 12  # finetune_args: --save-every 4, --export-every 8, --grad-accum 2

AUDIT = textwrap.dedent(
    """\
    # Loaded by every Python of the test's jobs; active only in a trainer worker (RANK set by torchrun).
    import os
    import sys

    _out, _log = os.environ.get("AUDIT_OUT"), os.environ.get("AUDIT_LOG")
    if _out and _log and "RANK" in os.environ:
        _rank = os.environ["RANK"]
        _out = os.path.realpath(_out)
        _fh = open(_log, "a", buffering=1)  # opened before the hook: not logged
        _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

        def _emit(kind, *fields):
            _fh.write("\\t".join([_rank, str(os.getpid()), kind, *map(str, fields)]) + "\\n")

        def _under_out(path):
            if isinstance(path, int) or path is None:
                return None
            path = os.path.realpath(os.fsdecode(path))
            return os.path.relpath(path, _out) if path.startswith(_out + os.sep) else None

        def _hook(event, args):
            if event == "open":
                path, mode, flags = args
                writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(flags & _WRITE)
                rel = _under_out(path) if writes else None
                if rel is not None:
                    _emit("write", rel)
            elif event == "os.rename":
                src, dst = _under_out(args[0]), _under_out(args[1])
                if dst is not None:
                    _emit("rename", src, dst)
            elif event == "shutil.rmtree":
                rel = _under_out(args[0])
                if rel is not None:
                    _emit("rmtree", rel)

        _emit("start")
        sys.addaudithook(_hook)

        from codeplan_tools.trainer import loop as _loop

        _train_step = _loop.Trainer.train_step

        def _logged_train_step(self):
            values = _train_step(self)
            _emit("step", self.step, repr(values["loss"]))
            return values

        _loop.Trainer.train_step = _logged_train_step
    """
)


class TwoNodes:
    """Both "nodes" of one run: two torchrun agents with a worker each, stdout to files."""

    def __init__(self, args: list[str], work: Path, out: Path, name: str):
        self.work, self.name = work, name
        site = work / "site"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(AUDIT)
        self.audit = work / f"{name}.audit"
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])),
            "AUDIT_OUT": str(out),
            "AUDIT_LOG": str(self.audit),
        }
        port = free_port()
        self.procs: list[subprocess.Popen] = []
        self.stdout = [work / f"{name}.node{n}.out" for n in range(2)]
        self.stderr = [work / f"{name}.node{n}.err" for n in range(2)]
        for n in range(2):
            cmd = [
                sys.executable, "-m", "torch.distributed.run",
                "--nnodes", "2", "--nproc-per-node", "1",
                "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", name,
                # The first agent hosts the rendezvous store; the workers reach each other on loopback.
                "--rdzv-conf", f"is_host={int(n == 0)}", "--local-addr", "127.0.0.1",
                "-m", "codeplan_cli", *args,
            ]  # fmt: skip
            with open(self.stdout[n], "wb") as out_fh, open(self.stderr[n], "wb") as err_fh:
                self.procs.append(
                    subprocess.Popen(cmd, stdout=out_fh, stderr=err_fh, env=env, start_new_session=True)
                )

    def metrics(self) -> list[dict]:
        """The metrics lines of global rank 0, whichever node it ran on (the other prints none)."""
        lines = [[orjson.loads(x) for x in p.read_bytes().splitlines() if x.strip()] for p in self.stdout]
        assert not (lines[0] and lines[1]), "both nodes printed metrics: two ranks think they are rank 0"
        return lines[0] or lines[1]

    def log(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')}" for p in self.stderr)

    def wait(self, timeout: float = 600) -> list[int]:
        return [p.wait(timeout=timeout) for p in self.procs]

    def kill_after_step(self, step: int, timeout: float = 600) -> None:
        """SIGKILL both agents and both workers (torchrun starts its worker in a session of its own)."""
        deadline = time.monotonic() + timeout
        while not any(d["step"] >= step for d in self.metrics()):
            assert time.monotonic() < deadline and all(p.poll() is None for p in self.procs), self.log()
            time.sleep(0.05)
        workers = {int(line.split("\t")[1]) for line in self.audit.read_text().splitlines()}
        for p in self.procs:
            os.killpg(p.pid, signal.SIGKILL)
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.wait()

    def events(self) -> list[tuple[int, str, tuple[str, ...]]]:
        rows = [line.split("\t") for line in self.audit.read_text().splitlines()]
        return [(int(r[0]), r[2], tuple(r[3:])) for r in rows]


@pytest.fixture(scope="module")
def gsm_packs(tiny_model, shared_data, tmp_path_factory) -> Path:
    """Packs of 48 GSM8K pairs, as test_finetune.py makes them (same run settings, same data)."""
    records = read_records([str(shared_data / "gsm8k" / "train.jsonl.zst")])
    rows = [normalize(r) for r in itertools.islice(records, 48)]
    path = tmp_path_factory.mktemp("packs") / "gsm.jsonl.zst"
    return write_packs(path, rows, tiny_model, format="vanilla", max_len=512)


def single_node_args(model, packs, out) -> list[str]:
    return finetune_args(model, packs, out, steps=STEPS)


def multi_node_args(model, packs, out) -> list[str]:
    args = finetune_args(model, packs, out, steps=STEPS)
    i = args.index("--nproc")
    return args[:i] + args[i + 2 :]  # torchrun starts the processes


@pytest.mark.slow  # three 2-rank training runs (~1.5-3 min on 2 shared cores)
def test_two_torchrun_nodes_match_one_node_write_once_and_resume_after_kill(tiny_model, gsm_packs, tmp_path):
    # The reference: the same run as two local workers of one `--nproc 2` launcher.
    rc, ref = run_until(single_node_args(tiny_model, gsm_packs, tmp_path / "ref"), tmp_path / "ref.log")
    assert rc == 0, (tmp_path / "ref.log").read_text()
    assert [d["step"] for d in ref] == list(range(1, STEPS + 1))

    out = tmp_path / "out"
    args = multi_node_args(tiny_model, gsm_packs, out)
    # Run 1: killed (SIGKILL, both nodes) once step 5 is logged; the step-4 checkpoint is the newest.
    first = TwoNodes(args, tmp_path, out, "first")
    first.kill_after_step(5)
    assert "2 rank(s) [torchrun]" in first.log()
    losses = {d["step"]: d["loss"] for d in first.metrics()}
    assert set(losses) >= {1, 2, 3, 4, 5}
    for step in range(1, 6):
        assert abs(losses[step] - ref[step - 1]["loss"]) <= 1e-6, (step, losses[step], ref[step - 1])
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*[0-9]")) == ["step-00000004"]
    assert not (out / "model.safetensors").exists()

    # Run 2: the same command on both nodes resumes from step 4 and runs to the end.
    second = TwoNodes(args, tmp_path, out, "second")
    assert second.wait() == [0, 0], second.log()
    log = second.log()
    assert "resumed from step 4" in log and "exported the model" in log
    metrics = second.metrics()
    assert [d["step"] for d in metrics] == list(range(5, STEPS + 1))
    for a, b in zip(metrics, ref[4:], strict=True):
        assert abs(a["loss"] - b["loss"]) <= 1e-6, (a, b)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)

    for run, steps in ((first, None), (second, list(range(5, STEPS + 1)))):
        events = run.events()
        ranks = {rank for rank, _, _ in events}
        assert ranks == {0, 1}, events[:5]
        # Every rank ran the same steps (rank 0's loss is the global one: it is all-reduced).
        by_rank = defaultdict(list)
        for rank, kind, fields in events:
            if kind == "step":
                by_rank[rank].append((int(fields[0]), float(fields[1])))
        assert by_rank[0] == by_rank[1], by_rank
        saved = check_writes(events)
        if steps is None:  # the killed run: --save-every 4, killed after step 5
            assert saved == [4], saved
        else:  # the resumed run: steps 5-12, checkpoints at 8 and at the end
            assert [s for s, _ in by_rank[0]] == steps
            assert saved == [8, STEPS], saved

    # The final layout: each checkpoint holds one shard file per rank, .metadata and trainer.json.
    kept = sorted((out / "checkpoints").glob("step-*"))
    assert [p.name for p in kept] == [f"step-{STEPS:08d}"]
    assert sorted(p.name for p in kept[0].iterdir()) == [
        ".metadata",
        "__0_0.distcp",
        "__1_0.distcp",
        "trainer.json",
    ]
    assert orjson.loads((out / "codeplan.json").read_bytes())["step"] == STEPS
    assert orjson.loads((out / "step-000008" / "codeplan.json").read_bytes())["step"] == 8


def check_writes(events) -> list[int]:
    """No file under --out is written by two ranks, nor twice; checkpoints and exports are finished by
    rank 0. Returns the steps whose checkpoint was written."""
    times = Counter(fields[0] for _, kind, fields in events if kind == "write")
    twice = {path: n for path, n in times.items() if n > 1 and path.startswith("checkpoints/")}
    assert not twice, f"checkpoint files written more than once: {twice}"
    writers: dict[str, set[int]] = defaultdict(set)
    for rank, kind, fields in events:
        if kind == "write":
            writers[fields[0]].add(rank)
        if kind == "rename":
            writers["rename -> " + fields[1]].add(rank)
        if kind == "rmtree":
            assert rank == 0, (rank, fields)  # pruning old checkpoints and stale .tmp folders
    shared = {path: ranks for path, ranks in writers.items() if len(ranks) > 1}
    assert not shared, f"written by more than one rank: {shared}"
    shards = {path: ranks for path, ranks in writers.items() if path.endswith(".distcp")}
    assert shards, writers
    for path, (rank,) in shards.items():
        assert Path(path).name == f"__{rank}_0.distcp", (path, rank)  # each rank its own shard file
    for path, (rank,) in writers.items():
        name = path.rsplit("/", 1)[-1]
        # Rank 0 alone finishes a checkpoint (trainer.json, the step-N.tmp -> step-N rename that
        # marks it complete) and writes every exported file and run.json.
        if not name.endswith(".distcp"):
            assert rank == 0, (path, rank)
    renames = Counter(fields[1] for _, kind, fields in events if kind == "rename")
    assert all(n == 1 for n in renames.values()), renames  # nothing renamed into place twice
    # One checkpoint per saved step: both shards, the metadata and trainer.json, in its .tmp folder.
    steps = sorted(int(p.split("/")[1][5:13]) for p in times if p.endswith(".tmp/trainer.json"))
    for step in steps:
        folder = f"checkpoints/step-{step:08d}.tmp/"
        assert {f"{folder}__0_0.distcp", f"{folder}__1_0.distcp", f"{folder}trainer.json"} <= set(times), step
    return steps


def audit_of_one_save(step: int) -> list[tuple[int, str, tuple[str, ...]]]:
    tmp = f"checkpoints/step-{step:08d}.tmp"
    return [
        (0, "write", (f"{tmp}/__0_0.distcp",)),
        (1, "write", (f"{tmp}/__1_0.distcp",)),
        (0, "write", (f"{tmp}/.metadata.tmp",)),
        (0, "write", (f"{tmp}/trainer.json",)),
        (0, "rename", (tmp, f"checkpoints/step-{step:08d}")),
        (0, "write", ("codeplan.json.tmp",)),
        (0, "rename", ("codeplan.json.tmp", "codeplan.json")),
    ]


@pytest.mark.parametrize(
    "bad, why",
    [
        ((1, "write", ("codeplan.json.tmp",)), "rank 1 writes the export"),
        (
            (1, "rename", ("checkpoints/step-00000004.tmp", "checkpoints/step-00000004")),
            "rank 1 marks it complete",
        ),
        ((0, "write", ("checkpoints/step-00000004.tmp/__1_0.distcp",)), "rank 0 writes rank 1's shard"),
        ((1, "write", ("checkpoints/step-00000004.tmp/__1_0.distcp",)), "a shard written twice"),
        ((1, "rmtree", ("checkpoints/step-00000004",)), "rank 1 prunes"),
    ],
)
def test_the_write_audit_catches_a_rank_writing_what_is_not_its_own(bad, why):
    good = audit_of_one_save(4)
    assert check_writes(good) == [4]
    with pytest.raises(AssertionError):
        check_writes([*good, bad])
