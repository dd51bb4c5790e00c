"""Where this process sits in the job, the process group, FSDP2 wrapping and the local launcher.

A process learns its rank from, in this order:

1. torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), which is
   also what ``launch_local`` (``codeplan finetune --nproc N``) sets for its workers;
2. a task of a SLURM job step started by ``srun``: rank ``SLURM_PROCID``, world size
   ``SLURM_STEP_NUM_TASKS`` (else ``SLURM_NTASKS``), local rank ``SLURM_LOCALID``, local world size
   this node's entry of ``SLURM_STEP_TASKS_PER_NODE`` (``8(x2)``: 8 on each of 2 nodes), and as
   master the first host of ``SLURM_STEP_NODELIST`` (else ``SLURM_JOB_NODELIST``/``SLURM_NODELIST``),
   through ``scontrol show hostnames`` or by parsing the list. The port is ``MASTER_PORT`` when set,
   else derived from the job id, so every task of the step (on every node) agrees on it without
   talking; ``MASTER_ADDR`` overrides the master host the same way;
3. otherwise a single process. The batch script itself also has ``SLURM_PROCID=0`` and
   ``SLURM_NTASKS`` (the allocation's tasks), but no step id: ``codeplan finetune --nproc 8`` run
   there is a launcher of its own, not rank 0 of the allocation, which would wait for ranks that
   never come (checked on Slurm 22.05: srun tasks get ``SLURM_STEP_ID``/``SLURM_STEP_NUM_TASKS``,
   the batch shell neither).

CPU runs use gloo, GPU runs nccl. A one-process group uses an in-memory store (no port).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    source: str = "single"  # single | torchrun | slurm

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect(env: dict[str, str] | None = None) -> DistInfo:
    """Read rank, world size and master address from torchrun or SLURM variables."""
    env = dict(os.environ if env is None else env)
    if "RANK" in env and "WORLD_SIZE" in env:
        world = int(env["WORLD_SIZE"])
        return DistInfo(
            rank=int(env["RANK"]),
            world_size=world,
            local_rank=int(env.get("LOCAL_RANK", env["RANK"])),
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", world)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", "29500")),
            source="torchrun",
        )
    if "SLURM_PROCID" in env and in_slurm_step(env):
        world = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or env["SLURM_NPROCS"])
        nodelist = (
            env.get("SLURM_STEP_NODELIST")
            or env.get("SLURM_JOB_NODELIST")
            or env.get("SLURM_NODELIST")
            or "127.0.0.1"
        )
        per_node = tasks_per_node(env.get("SLURM_STEP_TASKS_PER_NODE") or env.get("SLURM_TASKS_PER_NODE"))
        node = int(env.get("SLURM_NODEID", "0") or 0)
        job = int(env.get("SLURM_JOB_ID", "0") or 0)
        return DistInfo(
            rank=int(env["SLURM_PROCID"]),
            world_size=world,
            local_rank=int(env.get("SLURM_LOCALID", "0")),
            local_world_size=per_node[node] if node < len(per_node) else world,
            master_addr=env.get("MASTER_ADDR") or first_host(nodelist),
            master_port=int(env.get("MASTER_PORT") or 20000 + job % 20000),
            source="slurm",
        )
    return DistInfo()


#: SLURM_MAX_NORMAL_STEP_ID (slurm.h): the ids above are the batch, extern and interactive steps.
_MAX_NORMAL_STEP_ID = 0xFFFFFFF0


def in_slurm_step(env: dict[str, str]) -> bool:
    """True in a task of an ``srun`` job step (not in the batch script, nor in a bare allocation)."""
    if env.get("SLURM_STEP_NUM_TASKS"):
        return True
    step = env.get("SLURM_STEP_ID") or env.get("SLURM_STEPID") or ""
    return step.isdigit() and int(step) <= _MAX_NORMAL_STEP_ID and bool(env.get("SLURM_NTASKS"))


def tasks_per_node(spec: str | None) -> list[int]:
    """Expand ``SLURM_TASKS_PER_NODE`` (``2(x3),1`` -> ``[2, 2, 2, 1]``); [] when unset."""
    counts: list[int] = []
    for part in (spec or "").split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", part)
        if m:
            counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list (``node[01-04,07],gpu5`` -> ``node01``)."""
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(
                ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=10
            )
            if out.returncode == 0 and out.stdout.split():
                return out.stdout.split()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    return parse_first_host(nodelist)


def parse_first_host(nodelist: str) -> str:
    """Parse the first host without scontrol: ``prefix[a-b,c]rest`` keeps the first range start."""
    nodelist = nodelist.strip()
    # Split on the first comma that is not inside brackets.
    depth = 0
    for i, ch in enumerate(nodelist):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            nodelist = nodelist[:i]
            break
    m = re.match(r"^([^\[]*)\[([^\]]+)\](.*)$", nodelist)
    if not m:
        return nodelist
    prefix, ranges, rest = m.groups()
    first = ranges.split(",")[0].split("-")[0]
    return prefix + first + parse_first_host(rest) if "[" in rest else prefix + first + rest


# ---------------------------------------------------------------------------------------------
# Process group and FSDP2


def device_for(info: DistInfo):
    import torch

    if torch.cuda.is_available():
        dev = torch.device("cuda", info.local_rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
        return dev
    return torch.device("cpu")


def init_process_group(info: DistInfo, device) -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if info.world_size == 1:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        return
    dist.init_process_group(
        backend,
        init_method=f"tcp://{info.master_addr}:{info.master_port}",
        rank=info.rank,
        world_size=info.world_size,
    )


def destroy_process_group() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def decoder_layers(model) -> list:
    """The repeated transformer blocks of a Hugging Face causal LM (``model.model.layers`` and kin)."""
    base = getattr(model, getattr(model, "base_model_prefix", "model"), None) or getattr(model, "model", None)
    for holder in (base, model):
        layers = getattr(holder, "layers", None) if holder is not None else None
        if layers is not None and len(layers):
            return list(layers)
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__}")


def apply_activation_checkpointing(model) -> None:
    """Recompute each decoder layer in backward (non-reentrant, works with FSDP2)."""
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    base = getattr(model, getattr(model, "base_model_prefix", "model"), None) or model.model
    for i, layer in enumerate(base.layers):
        base.layers[i] = checkpoint_wrapper(layer)


def shard_model(model, device, *, bf16: bool) -> None:
    """FSDP2: ``fully_shard`` every decoder layer, then the root (embeddings, norm, head)."""
    import torch
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else None
    kwargs = {"mesh": mesh}
    if mp is not None:
        kwargs["mp_policy"] = mp
    base = getattr(model, getattr(model, "base_model_prefix", "model"), None) or model.model
    layers = list(base.layers)
    for i, layer in enumerate(layers):
        # The last layer stays unsharded after forward: backward needs it at once.
        fully_shard(layer, reshard_after_forward=i < len(layers) - 1, **kwargs)
    fully_shard(model, **kwargs)


def all_reduce_sum(values: list[float], device) -> list[float]:
    import torch
    import torch.distributed as dist

    t = torch.tensor(values, dtype=torch.float64 if device.type == "cpu" else torch.float32, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return [float(x) for x in t.tolist()]


def all_reduce_max(value: float, device) -> float:
    import torch
    import torch.distributed as dist

    t = torch.tensor([value], dtype=torch.float32, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


# ---------------------------------------------------------------------------------------------
# `--nproc N`: local workers, each a fresh Python running `python -m codeplan_tools.trainer`.


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_local(config_json: str, nproc: int, *, grace_s: float = 60.0) -> int:
    """Run ``nproc`` workers on this machine as torchrun would, and return the job's exit status.

    Each worker gets the torchrun variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ...) and the
    run's config as JSON on its command line. SIGTERM/SIGINT to this process are forwarded to every
    worker (which then checkpoint and exit 0). If a worker fails the others are stopped, so a job
    never hangs in a collective waiting for a dead peer.
    """
    port = free_port()
    procs: list[subprocess.Popen] = []
    base_env = dict(os.environ)
    if "OMP_NUM_THREADS" not in base_env:
        base_env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // nproc))
    for rank in range(nproc):
        env = dict(
            base_env,
            RANK=str(rank),
            WORLD_SIZE=str(nproc),
            LOCAL_RANK=str(rank),
            LOCAL_WORLD_SIZE=str(nproc),
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        procs.append(subprocess.Popen([sys.executable, "-m", "codeplan_tools.trainer", config_json], env=env))

    def forward(signum, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        failed_at = None
        while True:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                break
            if failed_at is None and any(c not in (None, 0) for c in codes):
                failed_at = time.monotonic()
                for p in procs:
                    if p.poll() is None:
                        p.terminate()
            if failed_at is not None and time.monotonic() - failed_at > grace_s:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
            time.sleep(0.1)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    bad = [c for c in (p.wait() for p in procs) if c != 0]  # all have ended: wait() returns at once
    if not bad:
        return 0
    # A signal death is reported as 128 + signal, as a shell would.
    first = bad[0]
    return 128 - first if first < 0 else first
