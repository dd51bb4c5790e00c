"""Throughput of `codeplan score` on MATH against a bare math-verify loop over the same samples.

    .venv/bin/python bench/score_bench.py [--workers 1] [--rounds 3] [--limit N] [--base DIR]

The input is MATH test (``../shared/data/math/test.jsonl.zst``, or ``$CODEPLAN_SHARED_DATA``), two
samples a record as in ``bench/peers/score_vs_reference.py``: the gold answer boxed, and the gold with its
first integer + 1, boxed (a near miss; left out where the gold has no integer). In paired rounds (the
order flips each round) it times whole processes, start-up included:

- ``codeplan score -q --no-progress --workers W -i IN -o OUT`` (this checkout);
- the bare loop, in this interpreter: ``g = parse("$" + gold + "$")`` once per record, then
  ``verify(g, parse(sample))`` per sample (no timeout, no output but the verdicts);
- with ``--base DIR``, the same command run on another checkout's library (``PYTHONPATH=DIR``, e.g.
  ``git archive HEAD | tar -x -C DIR``): before and after in one run.

Prints each side's samples/s (median wall time of the rounds), its CPU seconds (its process and
children: on a shared machine the wall times move with the load, the CPU times much less), the ratio
codeplan / bare loop, and how many verdicts agree (codeplan's lenient verdict against the loop's).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench" / "peers"))
from score_vs_reference import math_records, read_jsonl  # noqa: E402

DATA = Path(os.environ.get("CODEPLAN_SHARED_DATA", REPO.parent / "shared" / "data"))


def bare_loop(in_path: str, out_path: str) -> None:
    """math-verify's own loop (the side to beat); writes the verdicts as JSON."""
    import logging

    from math_verify import parse, verify

    logging.disable(logging.WARNING)  # the timeout-disabled notice; the loop runs without one anyway
    verdicts = []
    for r in read_jsonl(Path(in_path)):
        gold = parse("$" + r["answer"] + "$")
        verdicts.extend(bool(verify(gold, parse(s))) for s in r["samples"])
    Path(out_path).write_text(json.dumps(verdicts))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_timed(cmd: list[str], what: str, env: dict | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one whole process and its children; a failure stops the bench."""
    wall, cpu = time.perf_counter(), _children_cpu()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    wall, cpu = time.perf_counter() - wall, _children_cpu() - cpu
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        print(f"error: {what} exited {proc.returncode}: {lines[-1] if lines else ''}", file=sys.stderr)
        raise SystemExit(70)
    return wall, cpu


def lenient_verdicts(path: Path) -> list[bool]:
    return [bool(s["correct"]) for r in read_jsonl(path) for s in r["meta"]["score"]["samples"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers", type=int, default=1, help="codeplan score --workers (the loop runs in one process)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds; medians")
    parser.add_argument(
        "--limit", type=int, default=None, help="the first N records of MATH test (default: all 5,000)"
    )
    parser.add_argument(
        "--base", default=None, metavar="DIR", help="also time the command on the library in DIR"
    )
    parser.add_argument("--as-bare-loop", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.as_bare_loop:
        bare_loop(*args.as_bare_loop)
        return
    if args.rounds < 1 or args.workers < 1 or (args.limit is not None and args.limit < 1):
        parser.error("--rounds, --workers and --limit must be at least 1")
    source = DATA / "math" / "test.jsonl.zst"
    if not source.exists():
        print(f"error: no MATH test set at {source} (set CODEPLAN_SHARED_DATA)", file=sys.stderr)
        raise SystemExit(66)
    if args.base and not (Path(args.base) / "codeplan_tools").is_dir():
        parser.error(f"--base {args.base}: no codeplan_tools/ in it")
    records = math_records(read_jsonl(source)[: args.limit])
    samples = sum(len(r["samples"]) for r in records)
    with tempfile.TemporaryDirectory(prefix="score-bench-") as tmp:
        import orjson

        in_path = Path(tmp, "in.jsonl")
        in_path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
        bare_out = Path(tmp, "bare.json")
        score = [
            sys.executable,
            "-m",
            "codeplan_cli",
            "score",
            "-q",
            "--no-progress",
            "--workers",
            str(args.workers),
        ]

        def command(out: Path, env: dict | None = None):
            def run() -> tuple[float, float]:
                out.unlink(missing_ok=True)  # a run that finds its output resumes it
                return run_timed([*score, "-i", str(in_path), "-o", str(out)], "codeplan score", env)

            return run

        ours_out, base_out = Path(tmp, "ours.jsonl"), Path(tmp, "base.jsonl")
        sides = {
            f"codeplan score --workers {args.workers}": command(ours_out),
            "bare loop": lambda: run_timed(
                [sys.executable, __file__, "--as-bare-loop", str(in_path), str(bare_out)], "bare loop"
            ),
        }
        if args.base:
            env = dict(os.environ, PYTHONPATH=str(Path(args.base).resolve()))
            sides[f"base --workers {args.workers}"] = command(base_out, env)
        names = list(sides)
        walls: dict[str, list[float]] = {n: [] for n in names}
        cpus: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                wall, cpu = sides[name]()
                walls[name].append(wall)
                cpus[name].append(cpu)
                print(f"  round {r + 1}: {name} {wall:.2f}s wall, {cpu:.2f}s CPU", file=sys.stderr)
        print(
            f"score: MATH test, {len(records):,} records, {samples:,} samples, "
            f"whole processes, {os.cpu_count()} CPUs"
        )
        rates = {}
        for name in names:
            wall = statistics.median(walls[name])
            rates[name] = samples / wall
            cpu = statistics.median(cpus[name])
            print(f"  {name:28s} {rates[name]:9,.0f} samples/s  (median {wall:.2f}s wall, {cpu:.2f}s CPU)")
        bare = rates["bare loop"]
        for name in names:
            if name != "bare loop":
                print(f"ratio {name} / bare loop: {rates[name] / bare:.2f}")
        loop = json.loads(bare_out.read_text())
        ours = lenient_verdicts(ours_out)
        agree = sum(a == b for a, b in zip(ours, loop, strict=True))
        print(f"agreement, codeplan lenient vs bare loop: {agree:,} of {samples:,} verdicts")
        if args.base:
            same = lenient_verdicts(base_out) == ours
            print(f"verdicts of this checkout and --base: {'identical' if same else 'DIFFERENT'}")


if __name__ == "__main__":
    main()
