"""``--shard I/N|auto``: keep the records whose id hashes to I mod N.

The hash is a SHA-256 of the id (``records.id_hash``), so the split does not depend on input order,
Python's hash seed or the machine; the union of the N shard outputs is exactly the unsharded set.
``auto`` reads the SLURM array variables, as a batch job submitted with ``sbatch --array=0-(N-1)`` sees them;
a variable that is not a whole number, or a task outside the array, is a usage error (exit 2).
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from codeplan_tools.core.errors import UsageError
from codeplan_tools.core.records import id_hash


def parse_shard(spec: str | None, environ: Mapping[str, str] | None = None) -> tuple[int, int] | None:
    """``"2/8"`` -> (2, 8); ``"auto"`` -> from SLURM_ARRAY_TASK_ID/COUNT; None -> no sharding."""
    if spec is None or spec == "":
        return None
    env = os.environ if environ is None else environ
    if spec == "auto":
        if "SLURM_ARRAY_TASK_ID" not in env:
            raise UsageError(
                "--shard auto needs SLURM_ARRAY_TASK_ID (run it as a SLURM array task) or use --shard I/N"
            )
        task = _env_int(env, "SLURM_ARRAY_TASK_ID")
        low = _env_int(env, "SLURM_ARRAY_TASK_MIN", 0)
        if "SLURM_ARRAY_TASK_COUNT" in env:
            count = _env_int(env, "SLURM_ARRAY_TASK_COUNT")
        else:
            count = _env_int(env, "SLURM_ARRAY_TASK_MAX", task) - low + 1
        index = task - low
    else:
        try:
            left, right = spec.split("/")
            index, count = int(left), int(right)
        except ValueError:
            raise UsageError(f"--shard must be I/N (e.g. 0/4) or auto, not {spec!r}") from None
    if count < 1 or not 0 <= index < count:
        source = " (from SLURM_ARRAY_TASK_ID/MIN/COUNT)" if spec == "auto" else ""
        raise UsageError(f"--shard {index}/{count}{source}: need 0 <= I < N")
    return index, count


def _env_int(env: Mapping[str, str], name: str, default: int = 0) -> int:
    """An integer SLURM variable (``default`` when unset); anything else is a usage error naming it
    (exit 2)."""
    value = env.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"--shard auto: {name}={value!r} is not a whole number") from None


def in_shard(record_id: str, shard: tuple[int, int] | None) -> bool:
    if shard is None:
        return True
    index, count = shard
    return id_hash(record_id) % count == index
