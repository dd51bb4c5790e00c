"""Throughput of `codeplan filter` (all rules on) against a bare stream loop over the same file.

    .venv/bin/python bench/filter_bench.py [--n 1000000] [--rounds 3]

Builds N synthetic mined records (prompt, plan, response, meta.extract) as one zstd file, then in
the same run times (1) the real command, `codeplan filter -i FILE -o OUT`, as a subprocess: with its
default --workers, with --workers 1 and 2, and with --stats (which adds the length profile of what
passed), and (2) the bare loop the command cannot beat: zstd decompress, orjson.loads, orjson.dumps,
zstd compress. Each round runs every variant once, the bare loop first (paired rounds); the medians
are printed: records/s of each, their ratio (filter / bare) and the scaling of --workers 2 over 1. With --breakdown it also times, in this
process, the stage runner with no rules, the --stats profile alone and each rule alone, as
microseconds per record: where the time goes.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import zstandard

WORDS = "add the list total number loop over each item if greater than keep count return result value".split()


def make_records(n: int, seed: int = 0):
    rng = random.Random(seed)
    for i in range(n):
        prompt = " ".join(rng.choices(WORDS, k=rng.randint(10, 60)))
        plan = "\n".join(
            [
                "def solve(items):",
                "    total = 0",
                "    for x in items:",
                f"        if x > {rng.randint(0, 9)}:",
                "            total += x",
                "    return total",
            ]
        )
        response = " ".join(rng.choices(WORDS, k=rng.randint(40, 200)))
        finish = "length" if rng.random() < 0.02 else "stop"
        yield {
            "id": f"b{i}",
            "prompt": prompt,
            "plan": plan,
            "response": response,
            "meta": {"extract": {"finish_reason": finish, "tokens_out": 40}},
        }


def build(path: Path, n: int) -> None:
    cctx = zstandard.ZstdCompressor(level=3)
    with open(path, "wb") as fh, cctx.stream_writer(fh) as writer:
        for r in make_records(n):
            writer.write(orjson.dumps(r) + b"\n")


def bare_loop(src: Path, dst: Path) -> int:
    n = 0
    cctx = zstandard.ZstdCompressor(level=3)
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        reader = io.BufferedReader(
            zstandard.ZstdDecompressor().stream_reader(fin, read_across_frames=True), 1 << 20
        )
        buf = bytearray()
        for line in reader:
            buf += orjson.dumps(orjson.loads(line)) + b"\n"
            n += 1
            if len(buf) >= 1 << 20:
                fout.write(cctx.compress(bytes(buf)))
                buf.clear()
        fout.write(cctx.compress(bytes(buf)))
    return n


def breakdown(src: Path, out: Path, n: int) -> None:
    """Microseconds per record of the single-process path, piece by piece (same file, same process)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from codeplan_tools.core.stage import StageIO, run_stage
    from codeplan_tools.stages.filter import RULES, FilterConfig, FilterStage

    def timed(stage) -> float:
        io = StageIO(stage="filter", inputs=[str(src)], output=str(out), require=("prompt", "plan"))
        io.progress = False
        t = time.perf_counter()
        run_stage(io, stage)
        return (time.perf_counter() - t) / n * 1e6

    def rules(enabled):
        return FilterStage(FilterConfig(enabled=enabled))

    t = time.perf_counter()
    bare_loop(src, out)
    print(f"  bare loop                          {(time.perf_counter() - t) / n * 1e6:6.2f} us/record")
    base = timed(lambda records, ctx: records)
    print(f"  stage runner, records unchanged    {base:6.2f} us/record")
    profile = timed(rules(()))
    print(f"  + --stats profile and meta.filter  {profile - base:+6.2f} us/record")
    for name in RULES:
        print(f"  + rule {name:27s} {timed(rules((name,))) - profile:+6.2f} us/record")
    print(f"  default rules (the command's)      {timed(rules(FilterConfig().enabled)):6.2f} us/record")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="records to build")
    parser.add_argument("--rounds", type=int, default=1, help="paired rounds (medians are printed)")
    parser.add_argument("--breakdown", action="store_true", help="also time each piece in-process")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src, out_bare, out_cmd = Path(tmp, "in.zst"), Path(tmp, "bare.zst"), Path(tmp, "cmd.zst")
        t = time.perf_counter()
        build(src, args.n)
        print(
            f"built {args.n} records ({src.stat().st_size / 1e6:.1f} MB zstd) in {time.perf_counter() - t:.1f}s",
            file=sys.stderr,
        )
        variants = (
            ("default --workers", []),
            ("--workers 1", ["--workers", "1"]),
            ("--workers 2", ["--workers", "2"]),
            # --stats adds the length/structure profile of what passed (measured only when asked for).
            ("default, --stats", ["--stats", str(Path(tmp, "stats.json"))]),
        )
        bare_times: list[tuple[float, float]] = []
        runs: dict[str, list[tuple[float, float]]] = {label: [] for label, _ in variants}
        for _ in range(args.rounds):
            t, c = time.perf_counter(), time.process_time()
            n = bare_loop(src, out_bare)
            bare_times.append((time.perf_counter() - t, time.process_time() - c))
            for label, extra in variants:
                # Worker processes are the command's children: their CPU time is in RUSAGE_CHILDREN too.
                t, c = time.perf_counter(), _children_cpu()
                subprocess.run(
                    [
                        sys.executable,
                        "-m",
                        "codeplan_cli",
                        "filter",
                        "-q",
                        "--no-progress",
                        "-i",
                        str(src),
                        "-o",
                        str(out_cmd),
                        *extra,
                    ],
                    check=True,
                )
                runs[label].append((time.perf_counter() - t, _children_cpu() - c))
        if args.breakdown:
            print("where the time goes (single process, in-process timings):")
            breakdown(src, out_cmd, args.n)
    # Wall time is what a user sees; CPU time is steadier on a shared machine. Both are printed.
    # CPU time counts all processes: worker processes add wall-clock speed, not CPU-time efficiency.
    bare_s, bare_cpu = _medians(bare_times)
    bare_rate = n / bare_s
    print(
        f"bare loop (zstd -> orjson.loads -> orjson.dumps -> zstd): {bare_rate:,.0f} records/s wall "
        f"({bare_s:.1f}s), {n / bare_cpu:,.0f} records/s CPU"
    )
    for label, times in runs.items():
        cmd_s, cmd_cpu = _medians(times)
        cmd_rate = args.n / cmd_s
        print(
            f"codeplan filter, {label:17s} (all rules, incl. start-up): {cmd_rate:,.0f} records/s wall "
            f"({cmd_s:.1f}s), {args.n / cmd_cpu:,.0f} records/s CPU"
        )
        print(f"  ratio filter / bare: {cmd_rate / bare_rate:.2f} (wall), {bare_cpu / cmd_cpu:.2f} (CPU)")
    one, two = _medians(runs["--workers 1"])[0], _medians(runs["--workers 2"])[0]
    print(f"scaling, --workers 2 over --workers 1: {one / two:.2f}x (wall; {usable_cpus()} usable CPUs)")


def _medians(times: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(t for t, _ in times), statistics.median(c for _, c in times)


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


if __name__ == "__main__":
    main()
