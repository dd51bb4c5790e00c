"""Parquet read rate of codeplan against a bare pyarrow batch loop over the same file.

    .venv/bin/python bench/parquet_read_bench.py [--n 200000]

Builds N WebInstructSub-shaped rows (orig_question, orig_answer, question, answer, source, index;
about 1.5 KB each) as one Parquet file in row groups of 64k rows, then times, best of --repeat runs:

1. bare: ``ParquetFile.iter_batches()`` with each batch turned into Python rows (``to_pylist``):
   the least any row reader does;
2. codeplan reader: ``streams.iter_lines`` (what every command reads through): the same batches,
   each row written as a JSON line (``columnar``);
3. codeplan command: ``codeplan filter`` with every rule off, ``-i FILE -o /dev/null``, as a
   subprocess: parsing, normalising (prompt/response from question/answer) and writing zstd too;
   and the same command on the same rows as a JSON Lines zstd file (what Parquet input costs on top).

Prints rows/s of each and the ratios to the bare loop.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = "find the value of x if the sum of two numbers is twelve and their product is thirty five".split()


def build(path: Path, n: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(0)
    writer = None
    for start in range(0, n, 65536):
        rows = []
        for i in range(start, min(n, start + 65536)):
            q = " ".join(rng.choices(WORDS, k=rng.randint(20, 60)))
            a = " ".join(rng.choices(WORDS, k=rng.randint(100, 250)))
            rows.append(
                {
                    "orig_question": q,
                    "orig_answer": a,
                    "question": q + " Explain.",
                    "answer": a + " So the answer is 7.",
                    "source": rng.choice(["socratic", "mathstackexchange", "stackexchange"]),
                    "index": i,
                }
            )
        table = pa.Table.from_pylist(rows)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table, row_group_size=65536)
    writer.close()


def best(fn, repeat: int) -> tuple[float, int]:
    times, count = [], 0
    for _ in range(repeat):
        t = time.perf_counter()
        count = fn()
        times.append(time.perf_counter() - t)
    return min(times), count


def bare(path: Path) -> int:
    import pyarrow.parquet as pq

    n = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=2048):
        n += len(batch.to_pylist())
    return n


def reader(path: Path) -> int:
    from codeplan_tools.core.streams import iter_lines

    return sum(1 for _ in iter_lines([str(path)]))


def command(path: Path) -> int:
    skip = [f"--skip-{r}" for r in ("terminated", "nonempty", "length", "code", "no-leak", "dedup")]
    args = [sys.executable, "-m", "codeplan_cli", "filter", *skip, "-q", "-i", str(path), "-o", "/dev/null"]
    subprocess.run(args, check=True)
    return -1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="rows to build")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the best is reported")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "webinstruct.parquet"
        build(path, args.n)
        print(f"{args.n} rows, {path.stat().st_size / 1e6:.1f} MB Parquet")
        t_bare, n = best(lambda: bare(path), args.repeat)
        assert n == args.n
        t_reader, n = best(lambda: reader(path), args.repeat)
        assert n == args.n
        t_cmd, _ = best(lambda: command(path), args.repeat)
        jsonl = Path(tmp) / "webinstruct.jsonl.zst"
        from codeplan_tools.core.streams import RecordWriter, iter_lines

        with RecordWriter(jsonl) as writer:
            for _, _, line in iter_lines([str(path)]):
                writer.write_line(line)
        t_jsonl, _ = best(lambda: command(jsonl), args.repeat)
        for name, t in (
            ("bare pyarrow iter_batches+to_pylist", t_bare),
            ("codeplan reader (iter_lines)", t_reader),
            ("codeplan filter, Parquet in", t_cmd),
            ("codeplan filter, same rows as JSONL zstd", t_jsonl),
        ):
            print(f"{name:42s} {args.n / t:>10,.0f} rows/s  ({t_bare / t:.2f} x bare)")


if __name__ == "__main__":
    main()
